"""Ensembles: the mean probability of several finished models of a run, scored like any model.

Averaging models that were trained differently cancels part of each one's idiosyncratic errors, which tends
to matter most on films unlike the training set. An ensemble has no network of its own: its folder holds a
config (``"arch": "ensemble"`` and its ``members``), predictions and metrics. Its thresholds are chosen on
its own validation predictions, like any model's, and ``trainer evaluate`` scores it from its members'
predictions on the new data set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.evaluate import metrics
from core.models.recipe import ModelConfig, model_config
from core.store import ENSEMBLE_ARCH, STRATUM_COLUMNS, ArtifactError, ModelArtifacts, ModelWriter, Run


def mean_predictions(run: Run, members: list[str], split: str) -> pd.DataFrame:
    """path, label, probability (and the stratum columns the first member has): the members' mean, on the images
    that every member scored."""
    frames = [run.model(m).predictions(split).set_index("path") for m in members]
    paths = frames[0].index
    for name, f in zip(members[1:], frames[1:]):
        if set(f.index) != set(paths):
            raise ArtifactError(f"ensemble: {name} and {members[0]} scored different images on split {split!r}")
    probs = np.mean([f.loc[paths, "probability"].to_numpy() for f in frames], axis=0)
    strata = {c: frames[0].loc[paths, c].fillna("").astype(str).to_numpy()
              for c in STRATUM_COLUMNS if c in frames[0].columns}
    return pd.DataFrame({"path": paths, "label": frames[0].loc[paths, "label"].to_numpy(), "probability": probs,
                         **strata})


def _strata(df: pd.DataFrame) -> dict:
    return {c: df[c].tolist() for c in STRATUM_COLUMNS if c in df.columns}


def build(run: Run, name: str, members: list[str], *, target_sensitivity: float = 0.95) -> dict:
    """Write the ensemble's folder for every split its members share; returns its validation metrics."""
    if len(members) < 2:
        raise ArtifactError(f"ensemble {name!r}: needs at least two members, got {members}")
    configs = [model_config(run.model(m)) for m in members]
    states = [run.model(m).status().get("state") for m in members]
    if any(s != "finished" for s in states):
        raise ArtifactError(f"ensemble {name!r}: members not all finished ({dict(zip(members, states))})")
    splits = [s for s in run.model(members[0]).splits() if all(s in run.model(m).splits() for m in members)]
    if "val" not in splits:
        raise ArtifactError(f"ensemble {name!r}: members have no shared validation predictions")
    writer = ModelWriter(run.dir, name)
    writer.config({"name": name, "arch": ENSEMBLE_ARCH, "members": members, "input_size": None,
                   "pretrained": all(c.pretrained for c in configs),
                   "params": int(sum(c.params or 0 for c in configs)),
                   "target_sensitivity": target_sensitivity, "threshold_rule": _shared_rule(configs)})
    val = mean_predictions(run, members, "val")
    groups = val["source"].tolist() if "source" in val.columns else None
    thresholds = metrics.choose_thresholds(val["label"], val["probability"], target_sensitivity=target_sensitivity,
                                           groups=groups)
    for split in splits:
        score_split(run, name, members, split, thresholds)
    writer.history([])
    seconds = 0.0
    for m in members:
        seconds += float(run.model(m).status().get("train_seconds") or 0.0)
    writer.status("finished", epoch=0, epochs=0, eta_seconds=0.0, train_seconds=seconds,
                  message=f"mean of {', '.join(members)}")
    return ModelArtifacts(run.dir, name).metrics("val")


def _shared_rule(configs: list[ModelConfig]) -> str:
    """The members' headline threshold rule when they all share it (the robust run's sens95), else the default."""
    rules = {c.threshold_rule for c in configs}
    return rules.pop() if len(rules) == 1 else metrics.HEADLINE_RULE


def score_split(run: Run, name: str, members: list[str], split: str, thresholds: dict) -> dict:
    """Write the ensemble's predictions and metrics on one split its members have scored."""
    df = mean_predictions(run, members, split)
    m = metrics.evaluate_split(df["label"], df["probability"], thresholds, split=split, strata=_strata(df))
    ModelWriter(run.dir, name).scored(split, df["path"], df["label"], df["probability"], m, _strata(df))
    return m
