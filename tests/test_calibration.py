"""Temperature scaling: recovers a known temperature, lowers ECE, never changes a label, stored as one number."""

from __future__ import annotations

import numpy as np
import pytest

from core import calibration
from core.artifacts import ArtifactError, ModelArtifacts, write_json
from core.metrics import ece


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


def test_fit_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        calibration.fit_temperature([1, 1, 1], [0.2, 0.9, 0.7])


def test_read_temperature_rejects_nonsense(tmp_path):
    m = ModelArtifacts(tmp_path, "m")
    assert calibration.read_temperature(m) is None  # no file: shown raw
    write_json(tmp_path / "m" / "calibration.json", {"temperature": -1})
    with pytest.raises(ArtifactError, match="positive"):
        calibration.read_temperature(m)
    write_json(tmp_path / "m" / "calibration.json", {"temperature": 0.5})
    assert calibration.read_temperature(m) == 0.5
