"""The model registry, weights, checkpoints, devices, the typed recipe, inference (torch and ONNX Runtime), the lung
model and lung framing."""
