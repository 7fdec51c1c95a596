"""Metrics against scikit-learn and hand-checked cases."""

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, confusion_matrix, f1_score, roc_auc_score

from core.evaluate import metrics


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, 400), 0, 1)
    return y, p


def test_auc_matches_sklearn(case):
    y, p = case
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_auc_undefined_with_one_class():
    assert np.isnan(metrics.auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_confusion_matches_sklearn(case):
    y, p = case
    m = metrics.confusion_at(y, p, 0.5)
    tn, fp, fn, tp = confusion_matrix(y, p >= 0.5).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["f1"] == pytest.approx(f1_score(y, p >= 0.5))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y))


def test_rates_with_empty_denominator_are_nan():
    r = metrics.rates(tp=0, fp=0, tn=5, fn=0)
    assert np.isnan(r["sensitivity"]) and np.isnan(r["ppv"]) and r["specificity"] == 1.0


def test_youden_threshold_maximises_j(case):
    y, p = case
    t = metrics.youden_threshold(y, p)
    def j(th):
        return metrics.confusion_at(y, p, th)["sensitivity"] + metrics.confusion_at(y, p, th)["specificity"]
    assert all(j(t) >= j(other) - 1e-12 for other in np.unique(p))


def test_threshold_for_sensitivity(case):
    y, p = case
    t = metrics.threshold_for_sensitivity(y, p, 0.9)
    assert metrics.confusion_at(y, p, t)["sensitivity"] >= 0.9
    higher = np.min(p[p > t])  # the next threshold up loses the target
    assert metrics.confusion_at(y, p, higher)["sensitivity"] < 0.9


def test_bootstrap_ci_brackets_auc_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    def ci(n):
        y = np.r_[np.zeros(n), np.ones(n)].astype(int)
        p = np.r_[rng.normal(0, 1, n), rng.normal(1.2, 1, n)]
        lo, hi = metrics.bootstrap_auc_ci(y, p, n_boot=1000)
        assert lo < metrics.auc(y, p) < hi
        return hi - lo
    assert ci(1000) < ci(50) / 2


def test_brier_and_calibration(case):
    y, p = case
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p))
    bins = metrics.calibration_bins(y, p, 10)
    assert sum(bins["count"]) == len(y)
    # perfectly calibrated synthetic data has a small ECE, a miscalibrated one a large ECE
    rng = np.random.default_rng(1)
    q = rng.uniform(0, 1, 20000)
    yy = (rng.uniform(0, 1, 20000) < q).astype(int)
    assert metrics.ece(yy, q) < 0.02
    assert metrics.ece(yy, q ** 4) > 0.1


def test_predictive_values_at_other_prevalence():
    ppv, npv = metrics.predictive_values(0.9, 0.8, 0.5)
    assert ppv == pytest.approx(0.45 / (0.45 + 0.1))
    assert npv == pytest.approx(0.4 / (0.4 + 0.05))


def test_delong_identical_models_and_clear_difference():
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(150), np.ones(150)].astype(int)
    good = np.r_[rng.normal(0, 1, 150), rng.normal(2, 1, 150)]
    bad = good + rng.normal(0, 3, 300)
    assert metrics.delong_test(y, good, good)["p_value"] == 1.0
    r = metrics.delong_test(y, good, bad)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, good))
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, bad))
    assert r["p_value"] < 0.001


def test_delong_variance_matches_bootstrap():
    """DeLong's standard error of the difference agrees with a paired bootstrap to within ~20%."""
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(120), np.ones(120)].astype(int)
    a = np.r_[rng.normal(0, 1, 120), rng.normal(1.5, 1, 120)]
    b = a + rng.normal(0, 1, 240)
    r = metrics.delong_test(y, a, b)
    diffs = []
    for _ in range(1000):
        i = np.r_[rng.integers(0, 120, 120), rng.integers(120, 240, 120)]
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    se_boot = np.std(diffs)
    assert abs(r["diff"] / r["z"]) == pytest.approx(se_boot, rel=0.2)


def test_evaluate_split_is_complete(case):
    y, p = case
    th = metrics.choose_thresholds(y, p)
    m = metrics.evaluate_split(y, p, th, split="val", n_boot=200)
    assert set(m["at"]) == {"youden", "sens95", "default"}
    assert m["roc"]["fpr"][0] == 0 and m["roc"]["tpr"][-1] == 1
    assert len(m["roc"]["fpr"]) <= 400
    assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
