"""``trainer evaluate``: score every finished model of a run on another data set (external validation).

Thresholds come from each model's ``metrics_val.json``, chosen on the run's own validation split; nothing
about the new data set moves them. Its predictions and metrics are written into each model's folder as
``predictions_<name>.csv`` and ``metrics_<name>.json``, and what was scored into ``evaluated_<name>.json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.data import layouts as data
from core.data.layouts import DataError
from core.evaluate.metrics import evaluate_split, headline_rule
from core.models.inference import load_trained, predict_loaded
from core.models.recipe import model_config
from core.store import ArtifactError, ModelWriter, Run, now_iso, stored_path, write_evaluated
from trainer import ensemble, report
from trainer.config import check_split_name
from trainer.overlap import content_overlap, leak_message
from trainer.prepare import Prepared, build_cache, prepare, rows_for, strata_of

log = logging.getLogger(__name__)

def evaluate_run(run_dir, data_root, *, split_name: str, only_split: str | None = None, cache_dir=None,
                 workers=None, command=None) -> int:
    run = Run(Path(run_dir))
    _ = run.info  # a missing or broken run.json is an ArtifactError here, before any work
    check_split_name(split_name)
    prepared = prepare(data_root, assign=False)
    if only_split:
        prepared.samples = [s for s in prepared.samples if s.split == only_split]
        if not prepared.samples:
            raise DataError(f"{data_root}: no images in split {only_split!r}")
    if not prepared.samples:
        raise DataError(f"{data_root}: no images found")
    overlap = _overlap_with_run(run, prepared.samples)
    if overlap:
        log.warning(f"warning: {len(overlap)} of these images were used by the run itself (e.g. {overlap[0]})")
    leaked = content_overlap(run, prepared.samples)  # the same films under other names: byte-identical copies
    if leaked:
        log.warning(f"warning: {leak_message(leaked, len(prepared.samples))}")

    scored = _score_networks(run, prepared, split_name, cache_dir=cache_dir, workers=workers)
    scored += _score_ensembles(run, split_name)
    if not scored:
        raise ArtifactError(f"{run.dir}: no model could be scored (no finished model with a best checkpoint)")
    write_evaluated(run.dir, split_name, {
        "split_name": split_name, "data_root": prepared.root, "layout": prepared.layout, "only_split": only_split,
        "data_fingerprint": data.fingerprint(prepared.samples), "n": len(prepared.samples),
        "counts": data.split_counts(prepared.samples),
        "leaked": [stored_path(p, prepared.root) for p in leaked],
        "skipped": [[stored_path(p, prepared.root), why] for p, why in prepared.skipped],
        "created": now_iso(), "command": command or ""})
    return 0


def _score_networks(run: Run, prepared: Prepared, split_name: str, *, cache_dir, workers) -> int:
    """Score every finished network of the run on the prepared images; returns how many were scored."""
    scored = 0
    for art in run.models:
        if art.is_ensemble:
            continue
        try:
            loaded = load_trained(art)
            thresholds = art.metrics("val")["thresholds"]
        except ArtifactError as e:
            log.warning(f"skip {art.name}: {e}")
            continue
        cache = build_cache(prepared, loaded.input_size, cache_dir=cache_dir, workers=workers)
        if not prepared.samples:
            raise DataError(f"{prepared.root}: no readable images ({len(prepared.skipped)} skipped)")
        probs = predict_loaded(loaded, cache.images[rows_for(prepared, cache)])
        y, strata = prepared.labels(), strata_of(prepared.samples)
        m = evaluate_split(y, probs, thresholds, split=split_name, strata=strata)
        ModelWriter(run.dir, art.name, prepared.root).scored(split_name, [s.path for s in prepared.samples], y, probs,
                                                             m, strata)
        _report(art.name, m, headline_rule(art.config))
        scored += 1
    return scored


def _score_ensembles(run: Run, split_name: str) -> int:
    """Score each ensemble from its members' predictions on the new split (run after ``_score_networks``)."""
    scored = 0
    for art in run.models:
        if not art.is_ensemble:
            continue
        try:
            thresholds = art.metrics("val")["thresholds"]
            m = ensemble.score_split(run, art.name, list(model_config(art).members), split_name, thresholds)
        except (ArtifactError, KeyError) as e:
            log.warning(f"skip {art.name}: {e}")
            continue
        _report(art.name, m, headline_rule(art.config))
        scored += 1
    return scored


def _report(name: str, m: dict, rule: str) -> None:
    print(f"{name:<24} {report.headline(m, rule)}")


def _overlap_with_run(run: Run, samples) -> list[str]:
    """Images of the new data set that the run itself split (compared as real files on this machine)."""
    try:
        table = run.split_table()
    except ArtifactError:
        return []
    used = {os.path.realpath(f) for f in map(run.locate, table["path"]) if f is not None}
    return [s.path for s in samples if os.path.realpath(s.path) in used]
