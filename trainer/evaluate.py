"""``trainer evaluate``: score every finished model of a run on another data set (external validation).

Thresholds come from each model's ``metrics_val.json``, chosen on the run's own validation split; nothing
about the new data set moves them. Its predictions and metrics are written into each model's folder as
``predictions_<name>.csv`` and ``metrics_<name>.json``, and what was scored into ``evaluated_<name>.json``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np

from core import data, metrics
from core.artifacts import ArtifactError, ModelWriter, Run, now_iso, write_json
from core.data import DataError
from core.inference import load_trained, predict_loaded
from trainer import ensemble
from trainer.prepare import build_cache, prepare, rows_for

RESERVED = {"train", "val"}


def evaluate_run(run_dir, data_root, *, split_name: str, only_split: str | None = None, cache_dir=None,
                 workers=None, command=None) -> int:
    run = Run(Path(run_dir))
    run.info  # a missing or broken run.json is an ArtifactError here, before any work
    if split_name in RESERVED or not split_name.replace("_", "").replace("-", "").isalnum():
        raise DataError(f"--split-name {split_name!r}: use letters, digits, '-' or '_', and not train/val "
                        "(val holds the thresholds)")
    prepared = prepare(data_root, assign=False)
    if only_split:
        prepared.samples = [s for s in prepared.samples if s.split == only_split]
        if not prepared.samples:
            raise DataError(f"{data_root}: no images in split {only_split!r}")
    if not prepared.samples:
        raise DataError(f"{data_root}: no images found")
    overlap = _overlap_with_run(run, prepared.samples)
    if overlap:
        print(f"warning: {len(overlap)} of these images were used by the run itself (e.g. {overlap[0]})",
              file=sys.stderr)

    scored = 0
    ensembles = [a for a in run.models if a.is_ensemble]
    for art in run.models:
        if art in ensembles:
            continue
        try:
            loaded = load_trained(art)
            thresholds = art.metrics("val")["thresholds"]
        except ArtifactError as e:
            print(f"skip {art.name}: {e}", file=sys.stderr)
            continue
        cache = build_cache(prepared, loaded.input_size, cache_dir=cache_dir, workers=workers)
        if not prepared.samples:
            raise DataError(f"{data_root}: no readable images ({len(prepared.skipped)} skipped)")
        rows = rows_for(prepared, cache)
        labels = np.array([s.label for s in prepared.samples])
        probs = predict_loaded(loaded, cache.images[rows])
        writer = ModelWriter(run.dir, art.name)
        writer.predictions(split_name, [s.path for s in prepared.samples], labels, probs)
        m = metrics.evaluate_split(labels, probs, thresholds, split=split_name)
        writer.metrics(split_name, m)
        _report(art.name, m)
        scored += 1
    for art in ensembles:
        try:
            thresholds = art.metrics("val")["thresholds"]
            m = ensemble.score_split(run, art.name, list(art.config["members"]), split_name, thresholds)
        except (ArtifactError, KeyError) as e:
            print(f"skip {art.name}: {e}", file=sys.stderr)
            continue
        _report(art.name, m)
        scored += 1
    if not scored:
        raise ArtifactError(f"{run.dir}: no model could be scored (no finished model with a best checkpoint)")
    write_json(run.dir / f"evaluated_{split_name}.json", {
        "split_name": split_name, "data_root": prepared.root, "layout": prepared.layout, "only_split": only_split,
        "data_fingerprint": data.fingerprint(prepared.samples), "n": len(prepared.samples),
        "counts": data.split_counts(prepared.samples), "skipped": prepared.skipped, "created": now_iso(),
        "command": "python -m trainer " + " ".join(shlex.quote(a) for a in (command or []))})
    return 0


def _report(name: str, m: dict) -> None:
    at = m["at"]["youden"]
    print(f"{name:<24} n={m['n']:<5} AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}] "
          f"acc {at['accuracy']:.3f} sens {at['sensitivity']:.3f} spec {at['specificity']:.3f} "
          f"(threshold {at['threshold']:.3f} from val)")


def _overlap_with_run(run: Run, samples) -> list[str]:
    try:
        used = set(run.split_table()["path"])
    except ArtifactError:
        return []
    return [s.path for s in samples if s.path in used]
