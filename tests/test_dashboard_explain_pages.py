"""Faithfulness, Calibration and Grad-CAM pages on the committed run's stored figures (AppTest; no film needed)."""

from __future__ import annotations

import pytest

from core import store
from core.explain import faithfulness
from core.report import summary
from core.store import Run
from tests.conftest import REPO

RUN = REPO / "artifacts" / "kermany-lineup"


@pytest.fixture
def committed(monkeypatch):
    if not (RUN / store.FAITHFULNESS_FILE).exists():
        pytest.skip("no committed faithfulness figures")
    monkeypatch.setenv("CXR_ARTIFACTS", str(RUN.parent))
    return Run(RUN)


def _app(name: str, run: str = RUN.name):
    """The page with ``run`` chosen (the artifacts root may hold newer runs, which the selector would pick)."""
    from dashboard.common import RUN_KEY
    from tests.dashboard_app import page_app

    return page_app(name, timeout=120, **{RUN_KEY: run})


def test_faithfulness_page_shows_the_stored_figures(committed):
    at = _app("9_Faithfulness.py").run()
    assert not at.exception, [e.value for e in at.exception]
    figures = store.read_faithfulness(committed.dir)
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
    want = summary.calibration_rows(committed, ("test",))
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
    (models,) = [w for w in at.sidebar.multiselect if w.label == "Models"]  # the sidebar's shared choice
    chosen = [n for n in models.value if not committed.model(n).is_ensemble]  # networks: they have maps
    if all(faithfulness.failing(store.read_faithfulness(committed.dir), n, "Grad-CAM") is None for n in chosen):
        assert "Grad-CAM" in options  # unmarked
