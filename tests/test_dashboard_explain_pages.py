"""Faithfulness, Calibration and Grad-CAM pages on the committed run's stored figures (AppTest; no film needed)."""

from __future__ import annotations

import pytest

from core import calibration, faithfulness
from core.artifacts import Run
from tests.conftest import REPO

PAGES = REPO / "dashboard" / "pages"
RUN = REPO / "artifacts" / "kermany-lineup"


@pytest.fixture
def committed(monkeypatch):
    if not (RUN / faithfulness.FAITHFULNESS_FILE).exists():
        pytest.skip("no committed faithfulness figures")
    monkeypatch.setenv("CXR_ARTIFACTS", str(RUN.parent))
    return Run(RUN)


def _app(name: str, run: str = RUN.name):
    """The page with ``run`` chosen (the artifacts root may hold newer runs, which the selector would pick)."""
    from streamlit.testing.v1 import AppTest

    from dashboard.common import RUN_KEY

    at = AppTest.from_file(str(PAGES / name), default_timeout=120)
    at.session_state[RUN_KEY] = run
    return at


def test_faithfulness_page_shows_the_stored_figures(committed):
    at = _app("9_Faithfulness.py").run()
    assert not at.exception, [e.value for e in at.exception]
    figures = faithfulness.read(committed.dir)
    road, rho = at.dataframe[0].value, at.dataframe[1].value
    assert sorted(road.index) == sorted(figures["models"]) and list(rho.columns)[0] == "Grad-CAM"
    m = next(iter(figures["models"]))
    assert rho.loc[m, "EigenCAM"] == pytest.approx(figures["models"][m]["EigenCAM"]["sanity_rho"])
    fails = sum(not f["sanity_pass"] for v in figures["models"].values() for k, f in v.items() if k in rho.columns)
    assert {x.label: x.value for x in at.metric}["Sanity-check failures"] == str(fails)
    assert any("EigenCAM" in w.value for w in at.warning)


def test_faithfulness_page_without_figures_says_how_to_compute_them(tiny_run, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_run))
    at = _app("9_Faithfulness.py", "tiny").run()
    assert not at.exception and any("python -m trainer faithfulness" in i.value for i in at.info)


def test_calibration_page_before_after_and_calibrated_view(committed):
    at = _app("6_Calibration.py").run()
    assert not at.exception, [e.value for e in at.exception]
    ba = at.dataframe[-1].value
    row = ba[(ba["model"] == ba["model"].iloc[0]) & (ba["split"] == "test")].iloc[0]
    want = calibration.before_after(committed, ("test",))
    want = next(r for r in want if r["model"] == row["model"])
    assert row["ECE raw"] == pytest.approx(want["ece_raw"]) and row["ECE cal."] == pytest.approx(want["ece_calibrated"])
    at.radio(key="cal_which").set_value("calibrated").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.dataframe[0].value["source"].eq("recomputed from predictions").all()


def test_gradcam_page_marks_methods_that_fail_the_sanity_check(committed):
    at = _app("4_Grad-CAM.py").run()
    assert not at.exception, [e.value for e in at.exception]
    options = at.selectbox(key="cam_method").options  # as displayed
    eigen = next(o for o in options if o.startswith("EigenCAM"))
    assert "fails sanity check" in eigen  # rho 1 on every committed model
    chosen = at.multiselect(key="cam_models").value
    if all(faithfulness.failing(faithfulness.read(committed.dir), n, "Grad-CAM") is None for n in chosen):
        assert "Grad-CAM" in options  # unmarked
