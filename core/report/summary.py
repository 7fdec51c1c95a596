"""One row of results per model: the README's results table and the dashboard's leaderboard both use it.

A row holds a model's facts (architecture, weights, size, epochs, training time) and its figures on one split at
one operating point chosen on validation (the model's own ``threshold_rule`` unless asked otherwise).
Missing or unreadable files give ``None`` / NaN fields, never an exception, so a broken model still gets its row.
A model's config is read typed (``core.models.recipe.ModelConfig``); one breaking its schema counts as unreadable.
"""

from __future__ import annotations

import math

import pandas as pd

from core.evaluate import calibration
from core.evaluate.metrics import HEADLINE_RULE
from core.models.recipe import ModelConfig, model_config
from core.store import ArtifactError, ModelArtifacts, Run, read_scaling


def _num(x) -> float:
    """A JSON number, or NaN for null / missing / junk."""
    try:
        return float(x) if x is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def state_of(status: dict | None) -> str:
    """``finished``, ``running``, ``stale`` (running, but the heartbeat stopped), ``failed``... or ``unknown``."""
    if not status:
        return "unknown"
    state = str(status.get("state", "unknown"))
    return "stale" if state == "running" and status.get("stale") else state


def _typed(config: ModelConfig | dict | None) -> ModelConfig | None:
    """``config`` as a ``ModelConfig``: read typed already, or a parsed config.json (the dashboard's tables hold
    those); None when absent, empty or breaking the schema."""
    if isinstance(config, ModelConfig):
        return config
    if not config:
        return None
    try:
        return ModelConfig.from_dict(config)
    except ArtifactError:
        return None


def weights_label(config: ModelConfig | dict | None) -> str:
    """``ImageNet`` when the network started from pretrained weights, else ``scratch`` (``–`` when unknown)."""
    cfg = _typed(config)
    if cfg is None:
        return "–"
    return "ImageNet" if cfg.pretrained else "scratch"


def recipe_label(config: ModelConfig | dict | None) -> str:
    """The recipe that made a model, in a few words (docs/recipes.md): ``lung crop`` (framing), ``CLAHE`` or
    ``equalize`` (intensity standardisation), ``strong aug`` (random-resized crops, wider photometric ranges or
    noise), ``EMA``, ``mixup``, ``no aug``; ``standard`` for the plain recipe, ``mean of N`` for an ensemble."""
    cfg = _typed(config)
    if cfg is None:
        return "–"
    if cfg.is_ensemble:
        return f"mean of {len(cfg.members)}"
    tags = ["lung crop" if cfg.framing == "lungs" else "",
            {"clahe": "CLAHE", "equalize": "equalize"}.get(cfg.preprocess, ""),
            "strong aug" if cfg.crop_area_min < 1 or cfg.photometric_scale > 1 or cfg.noise_std > 0 else "",
            "EMA" if cfg.ema_decay > 0 else "", "mixup" if cfg.mixup_alpha > 0 else "",
            "no aug" if not cfg.augment else ""]
    return ", ".join(t for t in tags if t) or "standard"


def train_seconds(status: dict | None, history: pd.DataFrame | None = None) -> float:
    """``train_seconds`` from status.json when the trainer recorded it, else the sum of per-epoch seconds."""
    if status and status.get("train_seconds") is not None:
        return _num(status["train_seconds"])
    if history is not None and "seconds" in history and len(history):
        return float(pd.to_numeric(history["seconds"], errors="coerce").sum())
    return math.nan


MIN_EPOCHS = 3  # fewer epochs than this: no evidence that training converged
STILL_FALLING = 0.05  # last epoch's validation loss this far (relative) below every earlier one: still learning
UNDERTRAINED_NOTE = (f"† under-trained: fewer than {MIN_EPOCHS} epochs, or validation loss still falling in the last "
                     "epoch; the row compares a training budget, not an architecture.")  # README table, leaderboard


def undertrained(status: dict | None, history: pd.DataFrame | None) -> bool | None:
    """True when a network's training ended before it converged: fewer than ``MIN_EPOCHS`` epochs, or validation
    loss still clearly falling in the last epoch without an early stop. Its row then compares budgets, not
    architectures. None when unknown (no history)."""
    if history is None or "val_loss" not in history or not len(history):
        return None
    if (status or {}).get("early_stopped"):
        return False
    loss = pd.to_numeric(history["val_loss"], errors="coerce").to_numpy()
    if len(loss) < MIN_EPOCHS:
        return True
    return bool(loss[-1] < (1 - STILL_FALLING) * loss[:-1].min())


def model_row(name: str, config: ModelConfig | dict | None, status: dict | None, metrics: dict | None,
              history: pd.DataFrame | None = None, rule: str | None = None) -> dict:
    """The results row of one model from its parsed files (each ``None`` when unreadable), at ``rule`` or else
    the model's own headline rule (its ``threshold_rule``; ``HEADLINE_RULE`` when its config is unreadable)."""
    cfg, st, m = _typed(config), status or {}, metrics or {}
    ensemble = cfg is not None and cfg.is_ensemble
    rule = rule or (cfg.threshold_rule if cfg is not None else HEADLINE_RULE)
    at = (m.get("at") or {}).get(rule) or {}
    ci = list(m.get("auc_ci") or [None, None]) + [None, None]
    return {
        "model": name, "arch": cfg and cfg.arch, "state": state_of(status), "ensemble": ensemble,
        "recipe": recipe_label(cfg), "weights": weights_label(cfg),
        "weights_source": (cfg and cfg.weights_source) or "",
        "input_size": cfg and cfg.input_size, "params": _num(cfg and cfg.params),
        "best_epoch": st.get("best_epoch"), "epoch": st.get("epoch"), "epochs": st.get("epochs"),
        "train_seconds": train_seconds(status, history),
        "undertrained": None if ensemble else undertrained(status, history),
        "split": m.get("split"), "n": m.get("n"), "rule": rule,
        "auc": _num(m.get("auc")), "auc_ci": (_num(ci[0]), _num(ci[1])), "threshold": _num(at.get("threshold")),
        "accuracy": _num(at.get("accuracy")), "sensitivity": _num(at.get("sensitivity")),
        "specificity": _num(at.get("specificity")), "f1": _num(at.get("f1")),
    }


def _read(read):
    try:
        return read()
    except ArtifactError:
        return None


def read_row(art: ModelArtifacts, split: str, rule: str | None = None) -> dict:
    """``model_row`` of one model of a run, read from its folder (history for networks, never for ensembles)."""
    status = _read(art.status)
    history = None if art.is_ensemble else _read(art.history)
    return model_row(art.name, _read(lambda: model_config(art)), status, _read(lambda: art.metrics(split)), history,
                     rule)


def run_rows(run: Run, split: str, *, finished_only: bool = False, rule: str | None = None) -> list[dict]:
    """One row per model of ``run`` in the run's order; ``finished_only`` keeps finished models with figures."""
    rows = [read_row(art, split, rule) for art in run.models]
    if finished_only:
        rows = [r for r in rows if r["state"] == "finished" and r["n"] is not None]
    return rows


def calibration_rows(run: Run, splits=("test", "official_val")) -> list[dict]:
    """One row per calibrated model and split: temperature, bias, ECE and Brier raw and calibrated (recomputed from
    the predictions, so the stored raw probabilities stay the only source)."""
    rows = []
    for model in run.models:
        scaling = _read(lambda model=model: read_scaling(model.dir))
        for split in splits if scaling is not None else ():
            if split not in model.splits():
                continue
            pred = model.predictions(split)
            rows.append({"model": model.name, "temperature": scaling.temperature, "bias": scaling.bias,
                         "split": split, **calibration.summary(pred["label"].to_numpy(),
                                                               pred["probability"].to_numpy(), scaling)})
    return rows
