"""Calibration (temperature and bias on the logit): recovers a known temperature and a known class shift, lowers
ECE, never changes a label, stored as two numbers (old files with a temperature alone still read)."""

from __future__ import annotations

import numpy as np
import pytest

from core import store
from core.evaluate import calibration
from core.evaluate.metrics import ece
from core.store import ArtifactError, ModelArtifacts, write_json


def _overconfident(n=4000, true_t=3.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-z * true_t))  # the model's logits are 3x too large


def test_fit_recovers_the_temperature_and_lowers_ece():
    y, p = _overconfident()
    t = calibration.fit_temperature(y, p)
    assert t == pytest.approx(3.0, rel=0.1)
    assert ece(y, calibration.calibrate(p, t)) < 0.5 * ece(y, p)


def test_calibration_is_monotonic_so_no_label_changes():
    y, p = _overconfident(500)
    q = calibration.calibrate(p, 2.5)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(q[order]) >= 0)
    thr = 0.37
    assert np.array_equal(p >= thr, q >= calibration.calibrate(thr, 2.5))
    assert calibration.calibrate(0.5, 7.0) == pytest.approx(0.5)


def test_fit_recovers_a_shift_between_the_classes_that_temperature_alone_cannot():
    """A class-weighted model trained as if both classes were equally common: its logits sit log(74/26) too low."""
    rng = np.random.default_rng(1)
    z = rng.normal(1.0, 2.0, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-(z - 1.05)))
    scaling = calibration.fit(y, p)
    assert scaling.temperature == pytest.approx(1.0, rel=0.15) and scaling.bias == pytest.approx(1.05, abs=0.2)
    t_only = calibration.calibrate(p, calibration.fit_temperature(y, p))
    assert ece(y, scaling(p)) < 0.5 * ece(y, t_only)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(scaling(p)[order]) >= 0)  # still monotonic: no label changes


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit_temperature([1, 1, 1], [0.2, 0.9, 0.7])
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit([0, 0], [0.2, 0.9])


def test_read_scaling_rejects_nonsense_and_reads_old_files(tmp_path):
    m = ModelArtifacts(tmp_path, "m")
    assert store.read_scaling(m.dir) is None  # no file: shown raw
    for bad, message in (({"temperature": -1}, "positive"), ({"temperature": True}, "positive"),
                         ({"temperature": 1.0, "bias": "x"}, "bias"), ({"temperature": 1.0, "bias": None}, "bias")):
        write_json(tmp_path / "m" / "calibration.json", bad)
        with pytest.raises(ArtifactError, match=message):
            store.read_scaling(m.dir)
    write_json(tmp_path / "m" / "calibration.json", {"temperature": 0.5})  # written before the bias existed
    assert store.read_scaling(m.dir) == calibration.Scaling(0.5, 0.0)
    write_json(tmp_path / "m" / "calibration.json", {"temperature": 0.5, "bias": 1.2})
    assert store.read_scaling(m.dir)(0.5) == pytest.approx(calibration.calibrate(0.5, 0.5, 1.2))
