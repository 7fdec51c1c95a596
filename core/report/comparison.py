"""Which models of a run differ by more than chance: DeLong's paired test of AUCs on the films every model scored.

Used by the Model comparison page (against the best model, and every pair) and by the README's comparison table
(``python -m trainer report``): the difference to the best model with its 95 % interval from DeLong's standard
error, and the p-value Holm-adjusted over the models compared, since with nine rows one of eight unadjusted tests
would pass at 0.05 by chance a third of the time.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from core.evaluate import metrics as cm

__all__ = ["ALPHA", "best_model", "delong_all_pairs", "delong_vs_best", "holm", "paired", "versus_best"]

ALPHA = 0.05
Z95 = 1.959963984540054


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def paired(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """The images both prediction files scored, matched by path, with labels that agree."""
    m = pred_a[["path", "label", "probability"]].merge(pred_b[["path", "label", "probability"]], on="path",
                                                       suffixes=("_a", "_b"))
    return m[m["label_a"] == m["label_b"]]


def best_model(aucs: dict[str, float]) -> str | None:
    finite = {k: v for k, v in aucs.items() if math.isfinite(_num(v))}
    return max(finite, key=lambda k: finite[k]) if finite else None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error ≤ alpha); NaN stays NaN and is not counted."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(_num(p))]
    out, running = [math.nan] * len(pvalues), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        out[i] = running
    return out


def _delong(a: pd.DataFrame, b: pd.DataFrame) -> tuple[int, dict]:
    pair = paired(a, b)
    if not len(pair):
        return 0, {k: math.nan for k in ("auc_a", "auc_b", "diff", "se", "z", "p_value")}
    return len(pair), cm.delong_test(pair["label_a"], pair["probability_a"], pair["probability_b"])


def versus_best(preds: dict[str, pd.DataFrame]) -> list[dict]:
    """One row per model against the best AUC on the films both scored: ``delta`` = model − best with its 95 %
    interval, DeLong's p and Holm's adjusted p; ``differs`` when the adjusted p is below ``ALPHA`` (the interval
    is unadjusted, so it can exclude 0 while the adjusted test does not reject)."""
    aucs = {name: cm.auc(df["label"], df["probability"]) for name, df in preds.items()}
    best = best_model(aucs)
    if best is None:
        return []
    rows = []
    for name, df in preds.items():
        n, r = (len(df), {"auc_a": aucs[name], "auc_b": aucs[name], "diff": 0.0, "se": 0.0, "p_value": math.nan}) \
            if name == best else _delong(preds[best], df)
        delta, half = -_num(r["diff"]), Z95 * _num(r["se"])
        rows.append({"model": name, "vs": best, "n": n, "auc": _num(r["auc_b"]), "delta": delta,
                     "delta_ci": (delta - half, delta + half), "p": _num(r["p_value"])})
    for row, p_adj in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = p_adj
        row["differs"] = bool(math.isfinite(p_adj) and p_adj < ALPHA)
    return rows


def delong_vs_best(preds: dict[str, pd.DataFrame], aucs: dict[str, float]) -> pd.DataFrame:
    """DeLong's paired test of each model's AUC against the best model's, on the images both scored.

    ``ΔAUC`` is model minus best (so zero or negative); ``p < 0.05`` flags a difference unlikely to be chance.
    """
    cols = ["model", "vs", "n paired", "AUC", "AUC best", "ΔAUC", "z", "p-value", "p < 0.05"]
    best = best_model({k: v for k, v in aucs.items() if k in preds})
    if best is None:
        return pd.DataFrame(columns=cols)
    rows = []
    for name, df in preds.items():
        if name == best:
            continue
        n, r = _delong(preds[best], df)
        rows.append({"model": name, "vs": best, "n paired": n, "AUC": r["auc_b"], "AUC best": r["auc_a"],
                     "ΔAUC": r["auc_b"] - r["auc_a"], "z": r["z"], "p-value": r["p_value"],
                     "p < 0.05": bool(math.isfinite(r["p_value"]) and r["p_value"] < ALPHA)})
    return pd.DataFrame(rows, columns=cols)


def delong_all_pairs(preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """A symmetric matrix of DeLong p-values for every pair of models (NaN on the diagonal)."""
    names = list(preds)
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b in combinations(names, 2):
        n, r = _delong(preds[a], preds[b])
        if n:
            mat.loc[a, b] = mat.loc[b, a] = r["p_value"]
    return mat
