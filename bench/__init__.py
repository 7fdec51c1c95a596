"""Benchmark suite: ``python -m bench [--quick] [--only data,train,infer,cam,dashboard,lungs]``.

Sections (one module each): data pipeline, training step, inference, CAM latency, dashboard, lung focus.
Every figure is a median of repeated runs after a warm-up; every comparison is a ratio of two figures measured
in the same run, interleaved (A B A B ...) so that a change in the shared machine's load hits both sides alike.
Results: a table on stdout and JSON in ``bench/results/<timestamp>.json`` and ``bench/results/latest.json``
(see BENCHMARKS.md).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA", REPO.parent / "shared" / "data"))
FULLRES = SHARED_DATA / "kermany_fullres"
KERMANY224 = SHARED_DATA / "kermany224"
LINEUP = REPO / "configs" / "lineup.yaml"
SECTIONS = ("data", "train", "infer", "cam", "dashboard", "lungs")
