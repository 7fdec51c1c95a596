"""Smoke test of the benchmark suite: ``python -m bench --quick`` runs every section and writes complete JSON.

It checks that the benchmarks run and report, not the figures (those depend on the machine and its load).
About three minutes (plus about two the first time: the 8-model run the dashboard section uses is trained once
per version of core/ and trainer/ and kept in $TMPDIR/cxr-bench).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, FULLRES, KERMANY224, REPO, need

pytestmark = pytest.mark.browser

SECTIONS = ("data", "train", "infer", "cam", "dashboard", "lungs")


@pytest.mark.slow  # the whole benchmark, quick mode: 3.5 min on 2 quiet cores (or `python -m bench --quick`)
def test_quick_bench_runs_every_section(tmp_path):
    need(KERMANY224), need(FULLRES)
    if not Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")).exists():
        pytest.skip("no Chromium for the dashboard section")
    env = {**os.environ, "CXR_SHARED_DATA": str(DATA)}  # the benchmarks read the data the tests use
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--results", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    latest = json.loads((tmp_path / "latest.json").read_text())
    stamped = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1 and json.loads(stamped[0].read_text()) == latest
    assert latest["quick"] is True
    for key in ("cpu_model", "cores", "ram_gb", "torch", "load_avg_start"):
        assert key in latest["machine"], key
    assert set(latest["sections"]) == set(SECTIONS)
    for name, sec in latest["sections"].items():
        assert not sec.get("error"), f"{name}: {sec.get('error')}"
        assert sec["figures"] and sec["checks"], name
        assert all(f["value"] is not None for f in sec["figures"]), name
        assert len(sec["load_avg_end"]) == 3
    assert "target" in out.stdout and "JSON:" in out.stdout  # the printed table


def test_only_rejects_unknown_sections():
    out = subprocess.run([sys.executable, "-m", "bench", "--only", "data,nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "nope" in out.stderr
