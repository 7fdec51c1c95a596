"""Calibrated probabilities: temperature scaling fitted on validation, one temperature per model.

``p_cal = sigmoid(logit(p) / T)``. The raw probabilities stay the one stored truth (``predictions_<split>.csv``);
``<model>/calibration.json`` holds only ``T`` and how it was fitted, and calibrated values are computed on read
(``calibrate``), so the two can never disagree. The map is monotonic: every threshold maps to a calibrated
threshold and no film changes label; only what the number says changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from core.artifacts import ArtifactError, now_iso, read_json, write_json
from core.metrics import brier, ece

CALIBRATION_FILE = "calibration.json"
EPS = 1e-6  # keeps logit(0) and logit(1) finite
T_BOUNDS = (0.05, 20.0)


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(p, temperature: float) -> np.ndarray:
    """Calibrated P(PNEUMONIA) for raw probabilities ``p`` (array-like or scalar)."""
    z = logit(p) / float(temperature)
    return 1.0 / (1.0 + np.exp(-z))


def _nll(y: np.ndarray, z: np.ndarray, temperature: float) -> float:
    s = z / temperature
    return float(np.mean(np.logaddexp(0, s) - y * s))  # binary cross-entropy on logits, numerically stable


def fit_temperature(y, p) -> float:
    """The temperature that minimises the validation negative log-likelihood (bounded 1-D search)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or len(np.unique(y)) < 2:
        raise ValueError("fitting a temperature needs both classes in the validation predictions")
    z = logit(p)
    res = minimize_scalar(lambda t: _nll(y, z, t), bounds=T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def summary(y, p, temperature: float) -> dict:
    """ECE and Brier of one split, before and after calibration."""
    q = calibrate(p, temperature)
    return {"n": int(len(y)), "ece_raw": ece(y, p), "ece_calibrated": ece(y, q),
            "brier_raw": brier(y, p), "brier_calibrated": brier(y, q)}


def fit_and_write(model_artifacts) -> dict:
    """Fit on the model's validation predictions, record before/after on every split it has, write the file."""
    val = model_artifacts.predictions("val")
    t = fit_temperature(val["label"], val["probability"])
    splits = {}
    for split in model_artifacts.splits():
        pred = model_artifacts.predictions(split)
        splits[split] = summary(pred["label"].to_numpy(), pred["probability"].to_numpy(), t)
    out = {"method": "temperature scaling on logit(p), fitted on val (negative log-likelihood)",
           "temperature": t, "fitted_on": "val", "n_fit": int(len(val)), "created": now_iso(), "splits": splits}
    write_json(Path(model_artifacts.dir) / CALIBRATION_FILE, out)
    return out


def read_temperature(model_artifacts) -> float | None:
    """The model's fitted temperature, or ``None`` when it has none (probabilities are then shown raw)."""
    path = Path(model_artifacts.dir) / CALIBRATION_FILE
    if not path.exists():
        return None
    t = read_json(path).get("temperature")
    if not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        raise ArtifactError(f"{path}: 'temperature' must be a positive number, found {t!r}")
    return float(t)


def read_summary(model_artifacts) -> dict | None:
    path = Path(model_artifacts.dir) / CALIBRATION_FILE
    return read_json(path) if path.exists() else None


def before_after(run, splits=("test", "official_val")) -> list[dict]:
    """One row per model and split: temperature, ECE and Brier raw and calibrated (recomputed from predictions, so
    the stored raw probabilities stay the only source)."""
    rows = []
    for model in run.models:
        try:
            t = read_temperature(model)
        except ArtifactError:
            t = None
        if t is None:
            continue
        for split in splits:
            if split not in model.splits():
                continue
            pred = model.predictions(split)
            rows.append({"model": model.name, "temperature": t, "split": split,
                         **summary(pred["label"].to_numpy(), pred["probability"].to_numpy(), t)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | T | split | n | ECE raw | ECE calibrated | Brier raw | Brier calibrated |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['temperature']:.3f} | {r['split']} | {r['n']} | {r['ece_raw']:.4f} | "
                     f"{r['ece_calibrated']:.4f} | {r['brier_raw']:.4f} | {r['brier_calibrated']:.4f} |")
    return "\n".join(lines)
