"""Small metric functions for a binary classifier that outputs P(PNEUMONIA).

Every function takes plain arrays: ``y`` holds labels (1 = PNEUMONIA, the positive class) and ``p`` holds
probabilities. Thresholds are *chosen* on validation data (``choose_thresholds``) and only *applied* elsewhere.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(auc(y, p), 3)
0.75
>>> confusion_at(y, p, 0.5)["sensitivity"]
0.5
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def _as_arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or infinity")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def auc(y, p) -> float:
    """ROC AUC; NaN when only one class is present (it is undefined then, not 0.5)."""
    y, p = _as_arrays(y, p)
    return float(roc_auc_score(y, p)) if _both_classes(y) else float("nan")


def bootstrap_auc_ci(y, p, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling positives and negatives separately.

    Stratified resampling keeps both classes in every resample, so small or imbalanced sets still get an
    interval. Vectorised through the rank formula of the AUC (Mann-Whitney U), so 2000 resamples take well
    under a second for a few thousand images.
    """
    y, p = _as_arrays(y, p)
    if not _both_classes(y):
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1], p[y == 0]
    aucs = np.empty(n_boot)
    for start in range(0, n_boot, 250):
        k = min(250, n_boot - start)
        bp = pos[rng.integers(0, pos.size, size=(k, pos.size))]
        bn = neg[rng.integers(0, neg.size, size=(k, neg.size))]
        both = np.concatenate([bp, bn], axis=1)
        ranks = stats.rankdata(both, axis=1)
        u = ranks[:, : pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2
        aucs[start : start + k] = u / (pos.size * neg.size)
    alpha = (1 - level) / 2
    return (float(np.quantile(aucs, alpha)), float(np.quantile(aucs, 1 - alpha)))


def confusion_at(y, p, threshold: float) -> dict:
    """Confusion counts and the usual rates when ``p >= threshold`` means PNEUMONIA.

    Rates with an empty denominator are NaN (JSON writes them as null), never a made-up 0 or 1.
    """
    y, p = _as_arrays(y, p)
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, **rates(tp, fp, tn, fn)}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rates(tp: float, fp: float, tn: float, fn: float) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV and F1 from confusion counts."""
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"accuracy": _ratio(tp + tn, tp + fp + tn + fn), "sensitivity": sens, "specificity": spec,
            "ppv": ppv, "npv": npv, "f1": f1}


def predictive_values(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV at another prevalence (Bayes' rule), e.g. a clinic's rather than the test set's."""
    tp = sensitivity * prevalence
    fp = (1 - specificity) * (1 - prevalence)
    tn = specificity * (1 - prevalence)
    fn = (1 - sensitivity) * prevalence
    return _ratio(tp, tp + fp), _ratio(tn, tn + fn)


def youden_threshold(y, p) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (Youden's J)."""
    y, p = _as_arrays(y, p)
    if not _both_classes(y):
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def threshold_for_sensitivity(y, p, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (so specificity is as high as it can be)."""
    y, p = _as_arrays(y, p)
    pos = np.sort(p[y == 1])
    if pos.size == 0:
        return 0.5
    # Predicting p >= t catches every positive with p >= t; keep at least ceil(target * n) of them.
    k = int(math.ceil(target * pos.size))
    return float(pos[pos.size - k])


# Names of the operating points in metrics_<split>.json. The sensitivity rule's name carries its target
# (``sens95`` for 0.95), so read it with ``sensitivity_rule`` or list ``thresholds`` keys, never type "sens95".
YOUDEN = "youden"
DEFAULT_RULE = "default"
HEADLINE_RULE = YOUDEN  # the operating point every headline figure is quoted at


def sensitivity_rule(target: float) -> str:
    """Name of the operating point that keeps validation sensitivity >= ``target`` (0.95 -> ``sens95``)."""
    return f"sens{round(target * 100)}"


def rule_label(rule: str) -> str:
    """A short human label of a threshold rule name, for tables and page controls."""
    if rule == YOUDEN:
        return "Youden (max sensitivity + specificity)"
    if rule == DEFAULT_RULE:
        return "fixed 0.5"
    if rule.startswith("sens") and rule[4:].isdigit():
        return f"sensitivity ≥ {rule[4:]} %"
    return rule


def choose_thresholds(y_val, p_val, *, target_sensitivity: float = 0.95, groups=None) -> dict:
    """The operating points that other splits are scored at, all chosen on validation data.

    With ``groups`` (each validation image's source, in a multi-source run) one threshold still serves every
    film, since a new film's source is not known, but the rules hold per source so that the big source cannot
    hide the small one: the sensitivity rule keeps every source's sensitivity at the target, Youden's J is the
    mean of the sources' J."""
    if groups is not None and len(set(groups)) > 1:
        return _grouped_thresholds(y_val, p_val, np.asarray(groups, dtype=str), target_sensitivity)
    return {
        YOUDEN: {"value": youden_threshold(y_val, p_val), "source": "val",
                 "rule": "max Youden J (sensitivity + specificity - 1) on validation"},
        sensitivity_rule(target_sensitivity): {
            "value": threshold_for_sensitivity(y_val, p_val, target_sensitivity), "source": "val",
            "rule": f"highest threshold with validation sensitivity >= {target_sensitivity:.2f}"},
        DEFAULT_RULE: {"value": 0.5, "source": "fixed", "rule": "0.5"},
    }


def _grouped_thresholds(y, p, groups: np.ndarray, target: float) -> dict:
    y, p = _as_arrays(y, p)
    names = sorted(set(groups))
    sens_t = min(threshold_for_sensitivity(y[groups == g], p[groups == g], target) for g in names)
    candidates = np.unique(np.concatenate([p, [0.5]]))
    j = np.zeros(candidates.size)
    for g in names:
        yg, pg = y[groups == g], p[groups == g]
        if _both_classes(yg):
            pos, neg = np.sort(pg[yg == 1]), np.sort(pg[yg == 0])
            sens = 1 - np.searchsorted(pos, candidates, "left") / pos.size  # share of positives with p >= t
            spec = np.searchsorted(neg, candidates, "left") / neg.size  # share of negatives with p < t
            j += (sens + spec - 1) / len(names)
    each = ", ".join(names)
    return {
        YOUDEN: {"value": float(candidates[int(np.argmax(j))]), "source": "val",
                 "rule": f"max mean Youden J over the validation sources ({each})"},
        sensitivity_rule(target): {
            "value": sens_t, "source": "val",
            "rule": f"highest threshold with validation sensitivity >= {target:.2f} in every source ({each})"},
        DEFAULT_RULE: {"value": 0.5, "source": "fixed", "rule": "0.5"},
    }


def macro_auc(y, p, groups=None) -> float:
    """AUC, or with ``groups`` the mean of the groups' AUCs: what a multi-source run selects epochs by, so that a
    model cannot win on the big source while at chance on the small one."""
    if groups is None or len(set(groups)) < 2:
        return auc(y, p)
    y, p = _as_arrays(y, p)
    groups = np.asarray(groups, dtype=str)
    values = [auc(y[groups == g], p[groups == g]) for g in sorted(set(groups))]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def wilson_interval(k: int, n: int, level: float = 0.95) -> list[float | None]:
    """Wilson score interval of a proportion k/n (sensitivity, specificity): sound at 0/n and n/n and for the
    small strata that per-population figures produce. [None, None] when n is 0."""
    if n <= 0:
        return [None, None]
    z = float(stats.norm.ppf(0.5 + level / 2))
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def stratum_figures(y, p, thresholds: dict, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """One population's figures: counts, AUC with a bootstrap interval, and at each threshold the confusion
    rates with Wilson intervals of sensitivity and specificity."""
    y, p = _as_arrays(y, p)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
    at, ci = {}, {}
    for name, t in thresholds.items():
        c = confusion_at(y, p, t["value"])
        at[name] = c
        ci[name] = {"sensitivity": wilson_interval(c["tp"], c["tp"] + c["fn"]),
                    "specificity": wilson_interval(c["tn"], c["tn"] + c["fp"])}
    return {"n": int(y.size), "n_pos": int(y.sum()), "n_neg": int(y.size - y.sum()), "auc": auc(y, p),
            "auc_ci": [lo, hi], "at": at, "at_ci": ci}


def strata_metrics(y, p, thresholds: dict, strata: dict) -> dict:
    """``{column: {value: stratum_figures}}`` for each stratum column ({column: value per image}, "" = unknown):
    the per-source and per-view (sex, age band) figures that metrics_<split>.json keeps under ``by``."""
    y, p = _as_arrays(y, p)
    out = {}
    for column, values in strata.items():
        values = np.asarray(values, dtype=str)
        groups = {v: stratum_figures(y[values == v], p[values == v], thresholds) for v in sorted(set(values) - {""})}
        if groups:
            out[column] = groups
    return out


def headline_rule(config: dict | None) -> str:
    """The operating point a model's figures are quoted at: its recipe's ``threshold_rule`` (docs/recipes.md
    explains why the robust recipes use ``sens95``); ``HEADLINE_RULE`` for runs that predate the key."""
    return str((config or {}).get("threshold_rule") or HEADLINE_RULE)


def brier(y, p) -> float:
    """Mean squared error of the probability: lower is better, 0.25 is a coin toss at 50% prevalence."""
    y, p = _as_arrays(y, p)
    return float(np.mean((p - y) ** 2))


def calibration_bins(y, p, n_bins: int = 10) -> dict:
    """Equal-width reliability bins: mean predicted probability vs observed fraction of PNEUMONIA."""
    y, p = _as_arrays(y, p)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac_pos = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    return {"bin_mid": ((edges[:-1] + edges[1:]) / 2).tolist(), "mean_pred": mean_pred.tolist(),
            "frac_pos": frac_pos.tolist(), "count": count.astype(int).tolist()}


def ece(y, p, n_bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean gap between confidence and frequency per bin."""
    bins = calibration_bins(y, p, n_bins)
    count = np.asarray(bins["count"], dtype=float)
    gap = np.abs(np.nan_to_num(np.asarray(bins["mean_pred"])) - np.nan_to_num(np.asarray(bins["frac_pos"])))
    return float(np.sum(count * gap) / max(count.sum(), 1))


def _downsample(*arrays: np.ndarray, keep: int = 400) -> list[list[float]]:
    """Thin long curves to about ``keep`` points (first and last kept) so JSON stays small."""
    n = len(arrays[0])
    idx = np.unique(np.linspace(0, n - 1, min(n, keep)).round().astype(int)) if n else np.array([], int)
    return [np.asarray(a)[idx].tolist() for a in arrays]


def curves(y, p) -> dict:
    """ROC and precision-recall points (thinned) for plotting."""
    y, p = _as_arrays(y, p)
    if not _both_classes(y):
        return {"roc": {"fpr": [], "tpr": [], "thresholds": []},
                "pr": {"precision": [], "recall": [], "thresholds": []}}
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.minimum(thr, 1.0)  # sklearn puts +inf first
    prec, rec, pthr = precision_recall_curve(y, p)
    pthr = np.append(pthr, 1.0)  # sklearn's last PR point has no threshold
    fpr, tpr, thr = _downsample(fpr, tpr, thr)
    prec, rec, pthr = _downsample(prec, rec, pthr)
    return {"roc": {"fpr": fpr, "tpr": tpr, "thresholds": thr},
            "pr": {"precision": prec, "recall": rec, "thresholds": pthr}}


def evaluate_split(y, p, thresholds: dict, *, split: str, strata: dict | None = None, n_boot: int = 2000,
                   seed: int = 0) -> dict:
    """Everything ``metrics_<split>.json`` holds (see docs/artifacts.md), at thresholds chosen on validation;
    ``strata`` ({column: value per image}: source, view, sex, age band) adds per-stratum figures under ``by``."""
    y, p = _as_arrays(y, p)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
    m = {
        "split": split, "n": int(y.size), "n_pos": int(y.sum()), "n_neg": int(y.size - y.sum()),
        "prevalence": float(y.mean()) if y.size else float("nan"),
        "auc": auc(y, p), "auc_ci": [lo, hi],
        "auc_ci_method": f"percentile bootstrap, {n_boot} stratified resamples, 95%",
        "brier": brier(y, p), "ece": ece(y, p), "ece_bins": 10,
        "thresholds": thresholds,
        "at": {name: confusion_at(y, p, t["value"]) for name, t in thresholds.items()},
        **curves(y, p),
        "calibration": calibration_bins(y, p),
    }
    if strata:
        m["by"] = strata_metrics(y, p, thresholds, strata)
    return m


# --- comparing two models on the same images -------------------------------------------------------------

def _midrank_placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per-positive and per-negative placement values."""
    sneg, spos = np.sort(neg), np.sort(pos)
    v10 = (np.searchsorted(sneg, pos, "left") + np.searchsorted(sneg, pos, "right")) / (2 * neg.size)
    v01 = 1 - (np.searchsorted(spos, neg, "left") + np.searchsorted(spos, neg, "right")) / (2 * pos.size)
    return v10, v01


def delong_test(y, p_a, p_b) -> dict:
    """DeLong's test for two correlated ROC AUCs (same images, two models). Two-sided p-value; ``se`` is the
    standard error of ``diff`` (``auc_a - auc_b``), for its interval.

    >>> import numpy as np
    >>> y = np.array([0, 0, 0, 1, 1, 1]); a = np.array([.1, .2, .3, .7, .8, .9]); b = np.array([.4, .2, .6, .3, .8, .9])
    >>> r = delong_test(y, a, a); r["p_value"]
    1.0
    """
    y, p_a = _as_arrays(y, p_a)
    _, p_b = _as_arrays(y, p_b)
    if not _both_classes(y):
        return {"auc_a": float("nan"), "auc_b": float("nan"), "diff": float("nan"), "se": float("nan"),
                "z": float("nan"), "p_value": float("nan")}
    comps = [_midrank_placements(p[y == 1], p[y == 0]) for p in (p_a, p_b)]
    aucs = np.array([c[0].mean() for c in comps])
    v10 = np.vstack([c[0] for c in comps])
    v01 = np.vstack([c[1] for c in comps])
    s10, s01 = np.cov(v10), np.cov(v01)
    n1, n0 = v10.shape[1], v01.shape[1]
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / n1 + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n0
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z, pval = 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    else:
        z = diff / math.sqrt(var)
        pval = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": math.sqrt(max(var, 0.0)),
            "z": float(z), "p_value": pval}
