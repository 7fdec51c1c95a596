"""What each run-folder file must hold: CSV columns and JSON field checks (docs/artifacts.md).

Artifacts are untrusted input (a run folder may come from anyone): every field a page uses is type- and
range-checked when read (``core.store.io.read_json``), so a wrong type is one clear ``ArtifactError`` naming
file and field, never a crashed page.
"""

from __future__ import annotations

import re

import numpy as np

from core.data.images import FRAMINGS, MAX_INPUT_SIZE, MIN_INPUT_SIZE, PREPROCESS
from core.data.layouts import STRATA
from core.store.io import (
    BOOL,
    COUNT,
    MAPPING,
    NAME,
    NAMES,
    NUMBER_OR_NULL,
    TEXT,
    TEXT_OR_NULL,
    UNIT,
    is_integer,
    is_number,
    is_unit,
    name_problem,
)

__all__ = [
    "CONFIG_FIELDS", "COUNT_MEASURES", "FAITHFULNESS_FIELDS", "FOCUS_COLUMNS", "HISTORY_COLUMNS", "METRICS_FIELDS",
    "PREDICTION_COLUMNS", "REFERENCE_BOUNDS", "RUN_FIELDS", "SITE_FIELDS", "SKIPPED_COLUMNS", "SPLIT_COLUMNS",
    "STATES", "STATUS_FIELDS", "STRATUM_COLUMNS", "SCHEMA_VERSION",
]

SCHEMA_VERSION = 1
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]
PREDICTION_COLUMNS = ["path", "label", "probability"]  # predictions_<split>.csv, sites/<site>/predictions.csv
SPLIT_COLUMNS = ["path", "label", "patient_id", "split"]
STRATUM_COLUMNS = ["source", *STRATA]  # optional columns of split.csv and predictions_<split>.csv
SKIPPED_COLUMNS = ["path", "reason"]
# lung_focus_<split>.csv; lung_fraction: the share of the film inside the lung mask, what a uniform map would score
FOCUS_COLUMNS = ["path", "label", "method", "lung_focus", "border_mass", "lung_fraction"]
# cam_reference.json: the committed lineup's references span 8e-4 to 6.3; one far outside is no real model's
REFERENCE_BOUNDS = (1e-7, 1e5)
_SHA256 = re.compile(r"[0-9a-f]{64}")
STATES = ("running", "finished", "failed", "stopped", "pending")
RUN_FIELDS = {
    "run_id": NAME, "created": TEXT, "updated": TEXT, "data_root": TEXT, "data_root_given": TEXT,
    "data_layout": TEXT, "data_fingerprint": TEXT, "command": TEXT, "config": MAPPING, "versions": MAPPING,
    "split_rule": TEXT, "models": NAMES, "n_skipped": COUNT,
    "sources": ("a list of {name, data} with names and relative paths", lambda v: isinstance(v, list) and all(
        isinstance(s, dict) and name_problem(s.get("name")) is None and isinstance(s.get("data"), str)
        for s in v)),
    "split_counts": ("an object {split: {class: count}}", lambda v: isinstance(v, dict) and all(
        isinstance(c, dict) and all(is_integer(n) and n >= 0 for n in c.values()) for c in v.values())),
}
CONFIG_FIELDS = {
    "name": NAME, "arch": NAME, "members": NAMES, "pretrained": BOOL, "params": COUNT, "weights_source": TEXT,
    "input_size": ("an integer input size in the trainer's bounds, or null", lambda v: v is None or (
        is_integer(v) and MIN_INPUT_SIZE <= v <= MAX_INPUT_SIZE)),
    "tta": ("an integer from 1 to 64", lambda v: is_integer(v) and 1 <= v <= 64),
    "mean": ("three numbers", lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v))),
    "std": ("three positive numbers", lambda v: isinstance(v, list) and len(v) == 3
            and all(is_number(x) and x > 0 for x in v)),
    "preprocess": ("one of the trainer's preprocess names (core.data.images.PREPROCESS), or null",
                   lambda v: v is None or v in PREPROCESS),
    "framing": ("one of the trainer's framings (core.data.images.FRAMINGS), or null",
                lambda v: v is None or v in FRAMINGS),
    "lung_model_sha256": ("a sha256 (64 hex digits)", lambda v: isinstance(v, str) and _SHA256.fullmatch(v)),
}
STATUS_FIELDS = {
    "state": (f"one of {', '.join(STATES)}", lambda v: v in STATES), "heartbeat": TEXT, "message": TEXT_OR_NULL,
    "epoch": COUNT, "epochs": COUNT, "batch": COUNT, "batches": COUNT, "best_epoch": COUNT,
    "best_val_auc": NUMBER_OR_NULL, "eta_seconds": NUMBER_OR_NULL, "train_seconds": NUMBER_OR_NULL,
    "early_stopped": BOOL,
}


def _curves(v) -> bool:
    """{name: list}: every value in [0, 1] but bin counts (non-negative); the curves are plotted as they are."""
    return isinstance(v, dict) and all(isinstance(xs, list) and all(
        (x is None or (is_number(x) and x >= 0)) if k == "count" else is_unit(x) for x in xs) for k, xs in v.items())


COUNT_MEASURES = ("tp", "fp", "tn", "fn")  # in metrics "at": counts; every other measure is a rate in [0, 1]
METRICS_FIELDS = {
    "split": TEXT, "n": COUNT, "n_pos": COUNT, "n_neg": COUNT, "auc": UNIT, "brier": UNIT, "ece": UNIT,
    "prevalence": UNIT,
    "auc_ci": ("two numbers in [0, 1] (or nulls), low first", lambda v: isinstance(v, list) and len(v) == 2
               and all(map(is_unit, v)) and (None in v or v[0] <= v[1])),
    "thresholds": ("an object {rule: {value: number in [0, 1]}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and t.get("value") is not None and is_unit(t.get("value")) for t in v.values())),
    "at": ("an object {rule: {measure: rate in [0, 1] or count}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and all((x is None or (is_number(x) and x >= 0)) if k in COUNT_MEASURES else is_unit(x)
                                    for k, x in t.items()) for t in v.values())),
    **{k: ("an object of lists of numbers in [0, 1]", _curves) for k in ("roc", "pr", "calibration")},
}


def _scaling_ok(v) -> bool:
    return (isinstance(v, dict) and is_number(v.get("temperature")) and v["temperature"] > 0
            and is_number(v.get("bias", 0.0)))


SITE_FIELDS = {
    "site": NAME, "model": NAME, "labelled": BOOL, "n": COUNT, "n_pos": COUNT, "n_neg": COUNT, "created": TEXT,
    "command": TEXT, "data_root": TEXT, "overlap": MAPPING, "figures": MAPPING, "val_prevalence": NUMBER_OR_NULL,
    "threshold": ("an object {rule, value: number in [0, 1], source, val_value}", lambda v: isinstance(v, dict)
                  and name_problem(v.get("rule")) is None and is_number(v.get("value")) and 0 <= v["value"] <= 1
                  and isinstance(v.get("source"), str) and is_number(v.get("val_value"))),
    "calibration": ("an object {temperature > 0, bias, source}", lambda v: _scaling_ok(v)
                    and isinstance(v.get("source"), str)),
    "val_calibration": ("null or an object {temperature > 0, bias}", lambda v: v is None or _scaling_ok(v)),
    "prevalence": ("an object {value strictly between 0 and 1, source}", lambda v: isinstance(v, dict)
                   and is_number(v.get("value")) and 0 < v["value"] < 1 and isinstance(v.get("source"), str)),
    "warnings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def _faith_entry_ok(f) -> bool:
    """One model x method entry: ROAD a probability difference in [-1, 1], rho a correlation in [-1, 1], a verdict."""
    def number(v, lo=-1.0, hi=1.0):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and lo <= v <= hi
    return (isinstance(f, dict) and number(f.get("road")) and number(f.get("sanity_rho"))
            and isinstance(f.get("sanity_pass"), bool) and (f.get("road_sd") is None or number(f["road_sd"], 0, 1)))


FAITHFULNESS_FIELDS = {
    "models": ("an object {model: {method: {road, sanity_rho in [-1, 1], sanity_pass}}}", lambda v: isinstance(v, dict)
               and all(isinstance(ms, dict) and all(_faith_entry_ok(f) for f in ms.values() if isinstance(f, dict))
                       for ms in v.values())),
    "n": ("a non-negative integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "sanity_max_rho": ("a number in [-1, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                       and -1 <= v <= 1),
    "road_percentiles": ("a list of numbers in [0, 100]", lambda v: isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 100 for x in v)),
    "sanity": ("a string", lambda v: isinstance(v, str)), "road": ("a string", lambda v: isinstance(v, str)),
}
