"""The dashboard's "8 models in a run": made once by the real trainer (tiny and fast), kept per git HEAD.

    python -m trainer train --data KERMANY224 --models <all 8> --subset 20 --epochs 1 --input-size 64
        --max-train-batches 2 --run bench8 --artifacts DIR

It lives in ``<work>/bench8-<key>/artifacts/bench8``, the key being git HEAD's trees of core/ and trainer/ (a commit
that changes neither keeps the run), and is rebuilt when absent or incomplete (built in a temporary folder and
renamed, so a killed build leaves nothing half-made behind).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import KERMANY224, REPO
from bench.report import git_head
from core.store import ArtifactError, ModelArtifacts, Run, is_run

MODELS = ("small_cnn", "deep_cnn", "mobilenet_v2", "resnet18", "resnet50", "densenet121", "efficientnet_lite0",
          "vit_tiny")
RUN = "bench8"
INPUT_SIZE = 64  # every model accepts it (the ViT needs a multiple of 16)


def _complete(artifacts: Path) -> bool:
    run = Run(artifacts / RUN)
    if not is_run(run.dir):
        return False
    for m in MODELS:
        try:
            if ModelArtifacts(run.dir, m).status().get("state") != "finished":
                return False
        except ArtifactError:
            return False
    return True


def command(artifacts: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--data", str(KERMANY224), "--models", ",".join(MODELS),
            "--subset", "20", "--epochs", "1", "--input-size", str(INPUT_SIZE), "--max-train-batches", "2",
            "--run", RUN, "--artifacts", str(artifacts), "--cache-dir", str(cache), "--threads", "2"]


def key() -> str:
    """git HEAD's tree ids of core/ and trainer/ (what the run depends on), else HEAD itself."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD:core", "HEAD:trainer"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return hashlib.sha1(out.stdout.encode()).hexdigest()[:12]
    except (OSError, subprocess.SubprocessError):
        pass
    return git_head()[:12]


def ensure(work: Path) -> tuple[Path, dict]:
    """The artifacts root holding run ``bench8``, and how it was obtained (reused, or built in N seconds)."""
    home = work / f"bench8-{key()}"
    artifacts = home / "artifacts"
    if _complete(artifacts):
        return artifacts, {"reused": True, "path": str(artifacts),
                           "command": " ".join(command(artifacts, work / "cache"))}
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bench8-", dir=work))
    try:
        env = {**os.environ, "CXR_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        cmd = command(tmp / "artifacts", work / "cache")
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0 or not _complete(tmp / "artifacts"):
            raise RuntimeError(f"building the 8-model run failed ({out.returncode}): {' '.join(cmd)}\n"
                               f"{(out.stdout + out.stderr)[-3000:]}")
        seconds = time.perf_counter() - t0
        shutil.rmtree(home, ignore_errors=True)
        os.replace(tmp, home)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return artifacts, {"reused": False, "build_seconds": seconds, "path": str(artifacts), "command": " ".join(cmd)}
