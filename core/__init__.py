"""Library shared by the trainer and the dashboard: data, models, metrics, explanations, artifact I/O.

It imports neither Streamlit nor argparse (see docs/design.md).
"""
