"""Library shared by the trainer and the dashboard: data, models, metrics, explanations, artifact I/O.

It imports neither Streamlit nor argparse (see docs/design.md).
"""

import os as _os

# OpenMP threads that spin-wait for work fight any other busy process for the cores; on a shared 2-core machine
# that made every torch operation wait for its slowest thread (training 1.9-3.7x slower, BENCHMARKS.md).
# Passive waiting costs little when the machine is idle. Must be set before torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
