"""Calibrated probabilities: a temperature and a bias on the logit, fitted on validation, one pair per model.

``p_cal = sigmoid(logit(p) / T + b)`` (Platt scaling on the logit). The temperature fixes over- or
under-confidence; the bias fixes a shift between the classes, which the class-weighted loss creates on purpose
(it trains as if both classes were equally common, so raw probabilities sit too low for PNEUMONIA where 74% of
films are). Temperature alone cannot move that. Files written before the bias existed read as ``b = 0``.
The raw probabilities stay the one stored truth (``predictions_<split>.csv``); ``<model>/calibration.json`` holds
only ``T``, ``b`` and how they were fitted, and calibrated values are computed on read (``Scaling``), so the two can
never disagree. The map is monotonic: every threshold maps to a calibrated threshold and no film changes label;
only what the number says changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from core.artifacts import ArtifactError, now_iso, read_json, write_json
from core.metrics import brier, ece

CALIBRATION_FILE = "calibration.json"
EPS = 1e-6  # keeps logit(0) and logit(1) finite
T_BOUNDS = (0.05, 20.0)
B_BOUNDS = (-10.0, 10.0)


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(p, temperature: float, bias: float = 0.0) -> np.ndarray:
    """Calibrated P(PNEUMONIA) for raw probabilities ``p`` (array-like or scalar)."""
    z = logit(p) / float(temperature) + float(bias)
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class Scaling:
    """One model's calibration map; ``scaling(p)`` gives calibrated probabilities."""

    temperature: float
    bias: float = 0.0

    def __call__(self, p) -> np.ndarray:
        return calibrate(p, self.temperature, self.bias)


def _nll(y: np.ndarray, z: np.ndarray, temperature: float, bias: float = 0.0) -> float:
    s = z / temperature + bias
    return float(np.mean(np.logaddexp(0, s) - y * s))  # binary cross-entropy on logits, numerically stable


def _both_classes(y) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise ValueError("fitting a calibration needs both classes in the validation predictions")
    return y


def fit_temperature(y, p) -> float:
    """The temperature alone that minimises the validation negative log-likelihood (bounded 1-D search)."""
    y, z = _both_classes(y), logit(p)
    res = minimize_scalar(lambda t: _nll(y, z, t), bounds=T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def fit(y, p) -> Scaling:
    """Temperature and bias that minimise the validation negative log-likelihood (bounded, from the best
    temperature alone, so the result is never worse than temperature scaling)."""
    y, z = _both_classes(y), logit(p)
    t0 = fit_temperature(y, p)
    res = minimize(lambda v: _nll(y, z, v[0], v[1]), x0=[t0, 0.0], bounds=[T_BOUNDS, B_BOUNDS], method="L-BFGS-B")
    t, b = (float(res.x[0]), float(res.x[1])) if res.fun <= _nll(y, z, t0) else (t0, 0.0)
    return Scaling(t, b)


def summary(y, p, scaling: Scaling) -> dict:
    """ECE and Brier of one split, before and after calibration."""
    q = scaling(p)
    return {"n": int(len(y)), "ece_raw": ece(y, p), "ece_calibrated": ece(y, q),
            "brier_raw": brier(y, p), "brier_calibrated": brier(y, q)}


def fit_and_write(model_artifacts) -> dict:
    """Fit on the model's validation predictions, record before/after on every split it has, write the file."""
    val = model_artifacts.predictions("val")
    scaling = fit(val["label"], val["probability"])
    splits = {}
    for split in model_artifacts.splits():
        pred = model_artifacts.predictions(split)
        splits[split] = summary(pred["label"].to_numpy(), pred["probability"].to_numpy(), scaling)
    out = {"method": "sigmoid(logit(p) / temperature + bias), fitted on val (negative log-likelihood)",
           "temperature": scaling.temperature, "bias": scaling.bias, "fitted_on": "val", "n_fit": int(len(val)),
           "created": now_iso(), "splits": splits}
    write_json(Path(model_artifacts.dir) / CALIBRATION_FILE, out)
    return out


def read_scaling(model_artifacts) -> Scaling | None:
    """The model's fitted calibration, or ``None`` when it has none (probabilities are then shown raw)."""
    path = Path(model_artifacts.dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    stored = read_json(path)
    t, b = stored.get("temperature"), stored.get("bias", 0.0)
    # the bounds the fit searches in: a value outside them was not fitted here, and would push every probability
    # to 0 or 1 (T = 1e-9) or to 0.5 (T = 1e9)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        raise ArtifactError(f"{path}: 'temperature' must be a positive number, found {_shown(t)}")
    if not T_BOUNDS[0] <= t <= T_BOUNDS[1]:
        raise ArtifactError(f"{path}: 'temperature' {t:g} is outside the fitted range {T_BOUNDS[0]:g} to "
                            f"{T_BOUNDS[1]:g}; it would make every calibrated probability meaningless")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not np.isfinite(b):
        raise ArtifactError(f"{path}: 'bias' must be a finite number, found {_shown(b)}")
    if not B_BOUNDS[0] <= b <= B_BOUNDS[1]:
        raise ArtifactError(f"{path}: 'bias' {b:g} is outside the fitted range {B_BOUNDS[0]:g} to {B_BOUNDS[1]:g}; "
                            "it would make every calibrated probability meaningless")
    return Scaling(float(t), float(b))


def _shown(value) -> str:
    """A found value for a message: a number as it is, anything else by type (no file text reaches a page)."""
    return repr(value) if value is None or isinstance(value, (bool, int, float)) else type(value).__name__


def read_summary(model_artifacts) -> dict | None:
    path = Path(model_artifacts.dir) / CALIBRATION_FILE
    return read_json(path) if path.exists() else None


def before_after(run, splits=("test", "official_val")) -> list[dict]:
    """One row per model and split: temperature, ECE and Brier raw and calibrated (recomputed from predictions, so
    the stored raw probabilities stay the only source)."""
    rows = []
    for model in run.models:
        try:
            scaling = read_scaling(model)
        except ArtifactError:
            scaling = None
        if scaling is None:
            continue
        for split in splits:
            if split not in model.splits():
                continue
            pred = model.predictions(split)
            rows.append({"model": model.name, "temperature": scaling.temperature, "bias": scaling.bias,
                         "split": split, **summary(pred["label"].to_numpy(), pred["probability"].to_numpy(), scaling)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | T | b | split | n | ECE raw | ECE calibrated | Brier raw | Brier calibrated |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['temperature']:.3f} | {r['bias']:+.2f} | {r['split']} | {r['n']} | "
                     f"{r['ece_raw']:.4f} | "
                     f"{r['ece_calibrated']:.4f} | {r['brier_raw']:.4f} | {r['brier_calibrated']:.4f} |")
    return "\n".join(lines)
