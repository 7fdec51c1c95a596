"""Calibrated probabilities: a temperature and a bias on the logit, fitted on validation, one pair per model.

``p_cal = sigmoid(logit(p) / T + b)`` (Platt scaling on the logit). The temperature fixes over- or
under-confidence; the bias fixes a shift between the classes, which the class-weighted loss creates on purpose
(it trains as if both classes were equally common, so raw probabilities sit too low for PNEUMONIA where 74% of
films are). Temperature alone cannot move that. Files written before the bias existed read as ``b = 0``.
The raw probabilities stay the one stored truth (the predictions); the model's calibration record holds only ``T``,
``b`` and how they were fitted (``fit_record``; read and written by ``core.store``), and calibrated values are
computed on read (``Scaling``), so the two can never disagree. The map is monotonic: every threshold maps to a
calibrated threshold and no film changes label; only what the number says changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from core.evaluate.metrics import brier, ece

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


def fit_record(y_val, p_val, splits: dict, created: str) -> dict:
    """What calibration.json holds: the fit on validation (``y_val``, ``p_val``) and ECE/Brier before and after on
    every split of ``splits`` ({split: (labels, probabilities)})."""
    scaling = fit(y_val, p_val)
    return {"method": "sigmoid(logit(p) / temperature + bias), fitted on val (negative log-likelihood)",
            "temperature": scaling.temperature, "bias": scaling.bias, "fitted_on": "val", "n_fit": int(len(y_val)),
            "created": created, "splits": {s: summary(np.asarray(y), np.asarray(p), scaling)
                                           for s, (y, p) in splits.items()}}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | T | b | split | n | ECE raw | ECE calibrated | Brier raw | Brier calibrated |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['temperature']:.3f} | {r['bias']:+.2f} | {r['split']} | {r['n']} | "
                     f"{r['ece_raw']:.4f} | "
                     f"{r['ece_calibrated']:.4f} | {r['brier_raw']:.4f} | {r['brier_calibrated']:.4f} |")
    return "\n".join(lines)
