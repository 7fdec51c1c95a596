"""``trainer export``: write each model's ONNX graph beside its best checkpoint (``checkpoints/model.onnx``).

Scoring does not need this step: ``core.models.inference`` builds the graph on first use into the cache folder (keyed
by the checkpoint's sha256). Exporting into the run folder is for shipping a run to a machine that will serve it
with ONNX Runtime alone, or for a read-only deployment. Every export is checked with ``onnx.checker`` and then
against eager torch on random input; a model whose probabilities differ by more than ``TOLERANCE`` fails.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.models import onnx_backend
from core.models.inference import load_trained, predict_probabilities
from core.models.weights import sha256_of
from core.store import ArtifactError, Run, onnx_beside

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max abs difference in P(PNEUMONIA) between ONNX Runtime and eager torch


def agreement(loaded, om, n: int = 8, seed: int = 0) -> float:
    """Max abs difference of P(PNEUMONIA) between eager torch and ``om`` on ``n`` random films."""
    images = np.random.default_rng(seed).integers(0, 256, (n, loaded.input_size, loaded.input_size), np.uint8)
    ref = predict_probabilities(loaded.model, images, loaded.mean, loaded.std, preprocess=loaded.preprocess)
    got = predict_probabilities(om, images, loaded.mean, loaded.std, preprocess=loaded.preprocess)
    return float(np.abs(ref - got).max())


def export_run(run_dir, models: list[str] | None = None) -> int:
    run = Run(Path(run_dir))
    arts = [a for a in run.models if not models or a.name in models]
    unknown = sorted(set(models or []) - {a.name for a in run.models})
    if unknown:
        raise ArtifactError(f"{run.dir}: no model named {', '.join(unknown)}")
    failed = written = 0
    for art in arts:
        if art.is_ensemble:
            continue  # an ensemble has no network of its own
        try:
            loaded = load_trained(art)
        except ArtifactError as e:
            log.warning(f"skip {art.name}: {e}")
            continue
        ckpt = art.best_checkpoint()
        path = onnx_beside(ckpt)
        meta = {"checkpoint_sha256": sha256_of(ckpt), "arch": loaded.spec.name, "model": art.name}
        onnx_backend.write_export(loaded.model, loaded.input_size, path, meta)
        diff = agreement(loaded, onnx_backend.cached_session(path, loaded.input_size))
        ok = diff <= TOLERANCE
        failed += not ok
        print(f"{art.name:<24} {path.stat().st_size / 1e6:7.1f} MB  opset {onnx_backend.OPSET}  "
              f"max |p_onnx - p_torch| = {diff:.2e} {'ok' if ok else f'FAIL (> {TOLERANCE:.0e})'}  {path}")
        if ok:
            written += 1
            onnx_backend.mark_verified(path, meta["checkpoint_sha256"])  # exported here, from this checkpoint
        else:
            path.unlink(missing_ok=True)  # never leave a graph that scores differently
    if not written and not failed:  # asked to export and nothing was: that is not success
        log.error(f"error: nothing exported from {run.dir}: every model was skipped (above) or is an ensemble")
        return 1
    return 1 if failed else 0
