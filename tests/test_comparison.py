"""Which models differ by more than chance (core/report/comparison.py): Holm's adjustment, DeLong against the best
with its interval, and the README's comparison table built from the committed run."""

import math

import numpy as np
import pandas as pd
import pytest

from core.evaluate import metrics as cm
from core.report import comparison
from core.store import Run
from tests.conftest import REPO
from trainer import report


def test_holm_matches_the_step_down_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(0.03, 2*0.02), max(0.04, 1*0.04); NaN stays out of the count
    assert comparison.holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx([0.04, 0.03, math.nan, 0.04],
                                                                          nan_ok=True)
    assert comparison.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1


def _preds(y, p, paths=None):
    return pd.DataFrame({"path": paths or [f"f{i}.png" for i in range(len(y))], "label": y, "probability": p})


def test_versus_best_separates_a_weak_model_from_a_near_copy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.15, 400), 0, 1)
    near = np.clip(good + rng.normal(0, 0.01, 400), 0, 1)
    weak = np.clip(y * 0.15 + rng.normal(0.4, 0.2, 400), 0, 1)
    rows = {r["model"]: r for r in comparison.versus_best({"good": _preds(y, good), "near": _preds(y, near),
                                                          "weak": _preds(y, weak)})}
    best = rows["good"]["vs"]
    assert rows[best]["delta"] == 0.0 and not rows[best]["differs"]
    assert rows["weak"]["differs"] and rows["weak"]["delta_ci"][1] < 0 and rows["weak"]["p_holm"] < 0.001
    other = "near" if best == "good" else "good"
    assert not rows[other]["differs"] and rows[other]["delta_ci"][0] < 0 < rows[other]["delta_ci"][1] + 1e-9
    # the interval is DeLong's: delta ± 1.96 se, the same delta as the test itself
    r = cm.delong_test(y, {"good": good, "near": near}[best], weak)
    lo, hi = rows["weak"]["delta_ci"]
    assert (lo + hi) / 2 == pytest.approx(-r["diff"]) and (hi - lo) / 2 == pytest.approx(1.96 * r["se"], rel=1e-3)


def test_only_films_both_models_scored_are_compared():
    y = np.array([0, 1] * 50)
    p = np.linspace(0.1, 0.9, 100)
    a, b = _preds(y, p), _preds(y[:60], p[:60])
    rows = comparison.versus_best({"a": a, "b": b})
    (other,) = [r for r in rows if r["model"] != r["vs"]]
    assert other["n"] == 60


def test_the_readme_comparison_names_the_best_model_and_every_other():
    run = Run(REPO / "artifacts" / "kermany-lineup")
    if not (run.dir / "run.json").exists():
        pytest.skip("no committed kermany-lineup run")
    names = [m.name for m in run.models if m.has_metrics("test")]
    text = report.compare(run, "test", names)
    body = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| test ")]
    assert sorted(line.split(" | ")[0][2:] for line in body) == sorted(names)
    assert sum(" | best | " in line for line in body) == 1
