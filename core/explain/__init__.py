"""Explanations of a model's decision: CAM methods, fast Score-CAM/EigenCAM, faithfulness, lung focus (pure: no file
I/O)."""
