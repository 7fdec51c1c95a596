"""A site's own operating point, calibration, prevalence and figures, from a handful of its films (issue 18).

A threshold chosen on our validation split does not carry over to another hospital, and calibration fitted on a
validation batch at 74 % PNEUMONIA says little to a clinic at 10 %. Everything here is a pure function of arrays
(labels, raw probabilities, the model's config and its validation fit): ``trainer/site.py`` reads and writes the
files, ``docs/site-curve.md`` measures how many films each step needs (``learning_curve``).

Rules, each with a fallback that the profile states (``reason``):

* **threshold**: the model's own rule (``core.evaluate.metrics.headline_rule``) re-chosen on the site's films, when each
  class has at least ``MIN_PER_CLASS`` films; else the validation threshold.
* **calibration**: temperature and bias refitted on the site's films from ``MIN_FULL_FIT`` films (and
  ``MIN_FULL_PER_CLASS`` of each class); below that the validation temperature is kept and only the bias is refitted
  (one number needs fewer films); below ``MIN_PER_CLASS`` a class, the validation calibration, its bias moved
  to the site's prevalence when that is known (a prior shift: ``prior_shifted``).
* **prevalence**: given, else the share of PNEUMONIA among labelled films, else estimated from unlabelled films by
  EM prior adjustment (Saerens, Latinne & Decaestecker, Neural Computation 14(1), 2002), with a bootstrap interval.
  The estimate assumes only the share of the classes changed (label shift): on films unlike the training films
  (another age group, another scanner) it is biased; the learning curve measures by how much.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from core.evaluate.calibration import B_BOUNDS, Scaling, fit, logit
from core.evaluate.metrics import (
    auc,
    bootstrap_auc_ci,
    choose_thresholds,
    confusion_at,
    ece,
    headline_rule,
    predictive_values,
)

MIN_PER_CLASS = 3  # films of each class below which no threshold or bias is fitted on the site
MIN_FULL_FIT = 50  # films from which temperature and bias are both refitted
MIN_FULL_PER_CLASS = 10
# Labelled films from which the learning curve (docs/site-curve.md, the run's held-out test split) puts the
# site threshold of the recommended model within 3 points of sensitivity of the oracle in 90 % of draws; ``trainer
# site`` warns below it.
SUPPORTED_N = 300
LEVEL = 0.95


def _arrays(y, p) -> tuple[np.ndarray | None, np.ndarray]:
    p = np.asarray(p, dtype=np.float64).ravel()
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must be finite and in [0, 1]")
    if y is None:
        return None, p
    y = np.asarray(y, dtype=int).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.size} vs {p.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    return y, p


def class_counts(y) -> tuple[int, int]:
    """(NORMAL films, PNEUMONIA films)."""
    y = np.asarray(y, dtype=int)
    return int((y == 0).sum()), int((y == 1).sum())


# --- threshold ----------------------------------------------------------------------------------------------

def site_threshold(y, p, config: dict | None, val_thresholds: dict) -> dict:
    """The model's own rule chosen on the site's films (raw probabilities), or the validation threshold when a
    class has fewer than ``MIN_PER_CLASS`` films. ``val_thresholds`` is metrics_val.json's ``thresholds``."""
    y, p = _arrays(y, p)
    rule = headline_rule(config)
    val_value = float(val_thresholds[rule]["value"])
    neg, pos = class_counts(y)
    if min(neg, pos) < MIN_PER_CLASS:
        return {"rule": rule, "value": val_value, "source": "val", "val_value": val_value,
                "reason": f"{neg} NORMAL and {pos} PNEUMONIA films: a site threshold needs at least "
                          f"{MIN_PER_CLASS} of each class, so the validation threshold is kept"}
    target = float((config or {}).get("target_sensitivity") or 0.95)
    chosen = choose_thresholds(y, p, target_sensitivity=target)
    if rule not in chosen:
        raise ValueError(f"threshold rule {rule!r} is not one choose_thresholds knows ({', '.join(chosen)})")
    return {"rule": rule, "value": float(chosen[rule]["value"]), "source": "site", "val_value": val_value,
            "reason": f"{chosen[rule]['rule'].replace('validation', 'the site films')} ({neg} NORMAL, {pos} PNEUMONIA)"}


# --- calibration ----------------------------------------------------------------------------------------------

def prior_shifted(scaling: Scaling, from_prevalence: float, to_prevalence: float) -> Scaling:
    """The calibration moved from one prevalence to another by Bayes' rule: the log prior odds are added to the
    bias (exact when only the share of the classes differs)."""
    shift = float(logit(to_prevalence) - logit(from_prevalence))
    return Scaling(scaling.temperature, float(np.clip(scaling.bias + shift, *B_BOUNDS)))


def fit_bias(y, p, temperature: float) -> float:
    """The bias alone that minimises the site's negative log-likelihood at a fixed temperature."""
    y, p = _arrays(y, p)
    z = logit(p) / temperature

    def nll(b):
        s = z + b
        return float(np.mean(np.logaddexp(0, s) - y * s))

    return float(minimize_scalar(nll, bounds=B_BOUNDS, method="bounded", options={"xatol": 1e-5}).x)


def site_calibration(y, p, val_scaling: Scaling | None, *, val_prevalence: float | None = None,
                     prevalence: float | None = None) -> tuple[Scaling, dict]:
    """Calibration for the site and how it was fitted (``method``, ``n_fit``, ``reason``); see the module doc."""
    y, p = _arrays(y, p)
    base = val_scaling or Scaling(1.0, 0.0)
    neg, pos = class_counts(y) if y is not None else (0, 0)
    n = neg + pos
    if n >= MIN_FULL_FIT and min(neg, pos) >= MIN_FULL_PER_CLASS:
        s = fit(y, p)
        return s, {"method": "temperature and bias refitted on the site films", "source": "site", "n_fit": n,
                   "reason": f"{n} labelled films ({neg} NORMAL, {pos} PNEUMONIA)"}
    if min(neg, pos) >= MIN_PER_CLASS:
        s = Scaling(base.temperature, fit_bias(y, p, base.temperature))
        return s, {"method": "bias refitted on the site films, temperature from validation", "source": "site-bias",
                   "n_fit": n, "reason": f"{n} labelled films ({neg} NORMAL, {pos} PNEUMONIA): fewer than "
                                         f"{MIN_FULL_FIT} (or {MIN_FULL_PER_CLASS} of a class) to refit both"}
    why = (f"{neg} NORMAL and {pos} PNEUMONIA labelled films: fewer than {MIN_PER_CLASS} of a class"
           if y is not None else "no labelled films")
    if prevalence is not None and val_prevalence is not None and 0 < prevalence < 1 and 0 < val_prevalence < 1:
        return prior_shifted(base, val_prevalence, prevalence), {
            "method": "validation calibration, bias moved to the site prevalence (prior shift)", "source": "val+prior",
            "n_fit": 0, "reason": f"{why}; prevalence {prevalence:.3f} instead of validation's {val_prevalence:.3f}"}
    return base, {"method": "validation calibration (fallback)", "source": "val", "n_fit": 0, "reason": why}


# --- prevalence -------------------------------------------------------------------------------------------------

def em_prevalence(q, train_prevalence: float, *, tol: float = 1e-6, max_iter: int = 1000) -> float:
    """The site's share of PNEUMONIA from posteriors ``q`` calibrated at ``train_prevalence`` (Saerens et al.
    2002): reweight each posterior by the ratio of priors, average, repeat until the prior stops moving."""
    q = np.clip(np.asarray(q, dtype=np.float64), 1e-9, 1 - 1e-9)
    if q.size == 0:
        raise ValueError("no films to estimate a prevalence from")
    t = float(train_prevalence)
    pi = float(q.mean())
    for _ in range(max_iter):
        a, b = q * pi / t, (1 - q) * (1 - pi) / (1 - t)
        new = float(np.mean(a / (a + b)))
        if abs(new - pi) < tol:
            return new
        pi = new
    return pi


def estimate_prevalence(q, train_prevalence: float, *, n_boot: int = 500, seed: int = 0) -> dict:
    """EM prevalence of unlabelled films with a percentile bootstrap interval over the films."""
    q = np.asarray(q, dtype=np.float64)
    value = em_prevalence(q, train_prevalence)
    rng = np.random.default_rng(seed)
    boots = [em_prevalence(q[rng.integers(0, q.size, q.size)], train_prevalence, tol=1e-5) for _ in range(n_boot)]
    lo, hi = np.quantile(boots, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return {"value": value, "ci": [float(lo), float(hi)], "source": "estimated",
            "method": f"EM prior adjustment (Saerens et al. 2002) on calibrated probabilities, {n_boot} bootstrap "
                      "resamples of the films, 95%; assumes only the share of the classes changed",
            "n": int(q.size), "mean_probability": float(q.mean())}


def labelled_prevalence(y, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """The share of PNEUMONIA among labelled films, with a bootstrap interval."""
    y = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return {"value": float(y.mean()), "ci": [float(lo), float(hi)], "source": "labelled films",
            "method": f"share of PNEUMONIA among the labelled films, {n_boot} bootstrap resamples, 95%",
            "n": int(y.size)}


# --- figures ----------------------------------------------------------------------------------------------------

def _ci(values) -> list[float | None]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [None, None]
    return [float(np.quantile(v, (1 - LEVEL) / 2)), float(np.quantile(v, 1 - (1 - LEVEL) / 2))]


def site_figures(y, p, threshold: float, *, prevalence: float, scaling: Scaling | None = None,
                 n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC, sensitivity, specificity, accuracy and PPV/NPV at the site prevalence at ``threshold`` (raw scale),
    each with a stratified percentile bootstrap interval; ECE of the ``scaling`` given (raw when None)."""
    y, p = _arrays(y, p)
    at = confusion_at(y, p, threshold)
    ppv, npv = predictive_values(at["sensitivity"], at["specificity"], prevalence)
    rng = np.random.default_rng(seed)
    pos, neg = p[y == 1] >= threshold, p[y == 0] >= threshold
    sens = pos[rng.integers(0, pos.size, (n_boot, pos.size))].mean(1) if pos.size else np.full(n_boot, np.nan)
    spec = 1 - neg[rng.integers(0, neg.size, (n_boot, neg.size))].mean(1) if neg.size else np.full(n_boot, np.nan)
    acc = (sens * pos.size + spec * neg.size) / max(y.size, 1)
    pv = np.array([predictive_values(a, b, prevalence) for a, b in zip(sens, spec)])
    q = p if scaling is None else scaling(p)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)
    return {"n": int(y.size), "n_pos": int(y.sum()), "n_neg": int(y.size - y.sum()), "threshold": float(threshold),
            "tp": at["tp"], "fp": at["fp"], "tn": at["tn"], "fn": at["fn"],
            "auc": auc(y, p), "auc_ci": [lo, hi],
            "sensitivity": at["sensitivity"], "sensitivity_ci": _ci(sens),
            "specificity": at["specificity"], "specificity_ci": _ci(spec),
            "accuracy": at["accuracy"], "accuracy_ci": _ci(acc),
            "prevalence": float(prevalence), "ppv": ppv, "ppv_ci": _ci(pv[:, 0]), "npv": npv, "npv_ci": _ci(pv[:, 1]),
            "ece": ece(y, q), "ci_method": f"percentile bootstrap, {n_boot} stratified resamples, 95%"}


def profile(y, p, *, config: dict, val_thresholds: dict, val_scaling: Scaling | None, val_prevalence: float,
            prevalence: float | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Everything a site profile holds except names and files: threshold, calibration, prevalence, figures (at the
    site threshold and at the validation one, both in-sample for the site) and warnings. ``y`` None: unlabelled."""
    y, p = _arrays(y, p)
    warnings: list[str] = []
    if y is None:
        prev = ({"value": float(prevalence), "ci": None, "source": "given", "method": "given by the user"}
                if prevalence is not None else
                estimate_prevalence((val_scaling or Scaling(1.0))(p), val_prevalence, seed=seed))
        scaling, cal = site_calibration(None, p, val_scaling, val_prevalence=val_prevalence, prevalence=prev["value"])
        rule = headline_rule(config)
        thr = {"rule": rule, "value": float(val_thresholds[rule]["value"]), "source": "val",
               "val_value": float(val_thresholds[rule]["value"]), "reason": "unlabelled films: validation threshold"}
        warnings.append("unlabelled films: no site threshold and no site figures; the prevalence is an estimate")
        return {"labelled": False, "n": int(p.size), "threshold": thr, "calibration": _cal(scaling, cal),
                "prevalence": prev, "predicted_positive": float(np.mean(p >= thr["value"])), "warnings": warnings}
    neg, pos = class_counts(y)
    if min(neg, pos) == 0:
        warnings.append(f"one class only ({neg} NORMAL, {pos} PNEUMONIA): no site threshold, no AUC, and only "
                        f"{'specificity' if pos == 0 else 'sensitivity'} can be measured")
    if y.size < SUPPORTED_N:
        warnings.append(f"{y.size} labelled films: the learning curve (docs/site-curve.md) supports a site threshold "
                        f"from about {SUPPORTED_N}; below that it can miss the oracle's sensitivity by more than 3 "
                        "points")
    prev = ({"value": float(prevalence), "ci": None, "source": "given", "method": "given by the user"}
            if prevalence is not None else labelled_prevalence(y, seed=seed))
    if prevalence is None and min(neg, pos) == 0:
        prev = {**estimate_prevalence((val_scaling or Scaling(1.0))(p), val_prevalence, seed=seed),
                "note": "one class only: the labelled share (0 or 1) says nothing about the site"}
    thr = site_threshold(y, p, config, val_thresholds)
    scaling, cal = site_calibration(y, p, val_scaling, val_prevalence=val_prevalence, prevalence=prev["value"])
    figures = {"site_threshold": site_figures(y, p, thr["value"], prevalence=prev["value"], scaling=scaling,
                                              n_boot=n_boot, seed=seed),
               "val_threshold": site_figures(y, p, thr["val_value"], prevalence=prev["value"], scaling=val_scaling,
                                             n_boot=n_boot, seed=seed)}
    if thr["source"] == "site":
        figures["note"] = ("site_threshold figures are in-sample (the threshold was chosen on these films): "
                           "optimistic; docs/site-curve.md measures by how much")
    return {"labelled": True, "n": int(y.size), "n_pos": pos, "n_neg": neg, "threshold": thr,
            "calibration": _cal(scaling, cal), "prevalence": prev, "figures": figures, "warnings": warnings}


def _cal(scaling: Scaling, info: dict) -> dict:
    return {"temperature": scaling.temperature, "bias": scaling.bias, **info}


# --- how many films a site needs --------------------------------------------------------------------------------

def _oracle(y, p, config) -> float:
    target = float((config or {}).get("target_sensitivity") or 0.95)
    return float(choose_thresholds(y, p, target_sensitivity=target)[headline_rule(config)]["value"])


def learning_curve(y, p, *, config: dict, val_thresholds: dict, val_scaling: Scaling | None, val_prevalence: float,
                   sizes=(10, 20, 50, 100), draws: int = 500, seed: int = 0) -> list[dict]:
    """For each N: ``draws`` random sets of N films; the site threshold and calibration fitted on them exactly as
    ``profile`` does, scored on the other films against the oracle (the model's rule chosen on those other films).
    One row per N (N = 0: the validation threshold and calibration, no site films), errors in points (x100)."""
    y, p = _arrays(y, p)
    rng = np.random.default_rng(seed)
    rows = []
    for n in [0, *[s for s in sizes if s < y.size]]:
        sens_err, spec_err, eces = [], [], []
        for _ in range(draws if n else 1):
            pick = np.zeros(y.size, bool)
            pick[rng.choice(y.size, n, replace=False)] = True
            yt, pt, yr, pr = y[pick], p[pick], y[~pick], p[~pick]
            if min(class_counts(yr)) == 0:
                continue
            thr = site_threshold(yt, pt, config, val_thresholds)["value"]
            scaling, _ = site_calibration(yt, pt, val_scaling, val_prevalence=val_prevalence)
            got, best = confusion_at(yr, pr, thr), confusion_at(yr, pr, _oracle(yr, pr, config))
            sens_err.append(100 * (got["sensitivity"] - best["sensitivity"]))
            spec_err.append(100 * (got["specificity"] - best["specificity"]))
            eces.append(ece(yr, scaling(pr)))
        rows.append(_curve_row(n, np.array(sens_err), np.array(spec_err), np.array(eces), y.size))
    return rows


def _curve_row(n: int, sens: np.ndarray, spec: np.ndarray, eces: np.ndarray, total: int) -> dict:
    def q(v, k):
        return float(np.quantile(v, k)) if v.size else math.nan

    a = np.abs(sens)
    return {"n": n, "draws": int(sens.size), "rest": total - n,
            "sens_err_median": q(sens, 0.5), "sens_abs_median": q(a, 0.5), "sens_abs_p90": q(a, 0.9),
            "within_3_points": float(np.mean(a <= 3.0)) if a.size else math.nan,
            "spec_err_median": q(spec, 0.5), "spec_abs_median": q(np.abs(spec), 0.5),
            "spec_abs_p90": q(np.abs(spec), 0.9), "ece_median": q(eces, 0.5), "ece_p90": q(eces, 0.9)}


def films_needed(rows: list[dict], *, share: float = 0.9) -> int | None:
    """The smallest N of a learning curve whose site threshold is within 3 points of the oracle's sensitivity in
    at least ``share`` of the draws (None: no N measured reaches it)."""
    return next((r["n"] for r in rows if r["n"] and r["within_3_points"] >= share), None)
