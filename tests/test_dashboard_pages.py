"""The dashboard pages, run headless with ``streamlit.testing.v1.AppTest`` on artifacts the real trainer wrote.

Checks behaviour, not just "no exception": the leaderboard's AUCs are the metrics files', moving a threshold
slider gives exactly ``core.evaluate.metrics.confusion_at`` on that model's predictions, the comparison page's p-values
are ``core.evaluate.metrics.delong_test``'s, the calibration page's ECE is the metrics file's; a corrupt file shows an
error on its spot while the other model still renders; an empty artifacts folder shows the trainer command.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.evaluate import metrics as cm
from core.store import DEFAULT_RUN_FILE, ModelWriter, list_runs, write_json
from tests.dashboard_app import page_app

PAGES = {"home": None, "curves": "1_Training_curves.py", "roc": "2_ROC_PR_confusion.py",
         "compare": "3_Model_comparison.py", "calibration": "6_Calibration.py"}  # files of dashboard/views/
COUNTS = re.compile(r"\*\*(?P<name>[\w.-]+)\*\* at threshold (?P<t>[\d.]+): TP (?P<tp>\d+) · FP (?P<fp>\d+) · "
                    r"TN (?P<tn>\d+) · FN (?P<fn>\d+)")


@pytest.fixture(scope="module")
def run(tiny_run):
    (r,) = [r for r in list_runs(tiny_run) if r.id == "tiny"]
    return r


def open_page(name: str, root: Path, monkeypatch, run_id: str | None = None) -> AppTest:
    """The page over the artifacts in ``root``, with run ``run_id`` chosen (default: the page's own choice)."""
    from dashboard.common import RUN_KEY

    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    at = page_app(PAGES[name], **({RUN_KEY: run_id} if run_id is not None else {}))
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_counts(at: AppTest) -> dict[str, dict]:
    out = {}
    for md in at.markdown:
        if m := COUNTS.search(md.value):
            out[m["name"]] = {k: int(m[k]) for k in ("tp", "fp", "tn", "fn")} | {"threshold": float(m["t"])}
    return out


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure a chart with this key shows (its JSON spec)."""
    (el,) = [e for e in at.get("plotly_chart") if e.proto.id.endswith(f"-{key}")]
    return json.loads(el.proto.spec)


def arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ({"dtype", "bdata"} base64, as plotly >= 6 writes numpy)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape(v["shape"]) if "shape" in v and isinstance(v["shape"], (list, tuple)) else a
    return np.asarray(v, dtype=float)


def shown_table(at: AppTest, key: str):
    """The DataFrame shown in the container with this key (st.dataframe without selections has no key)."""
    return at.get_by_key(key).dataframe[0].value


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.fixture
def broken_root(tiny_run, tmp_path) -> Path:
    """A copy of the real run with small_cnn's metrics_test.json and history.csv torn (cut mid-way)."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_run / "tiny", root / "tiny", ignore=shutil.ignore_patterns("*.pt", "*.safetensors"))
    model = root / "tiny" / "small_cnn"
    data = (model / "metrics_test.json").read_bytes()
    (model / "metrics_test.json").write_bytes(data[: len(data) // 2])
    data = (model / "history.csv").read_bytes()
    (model / "history.csv").write_bytes(data[: data.index(b"\n") + 12])  # the header and a part of epoch 1
    return root


# --- Home ----------------------------------------------------------------------------------------------------

def test_home_leaderboard_lists_models_with_their_auc(run, tiny_run, monkeypatch):
    at = open_page("home", tiny_run, monkeypatch)
    assert not errors(at)
    assert any("Research use only" in w.value for w in at.main.warning)  # in the body, not only the sidebar
    assert any("Kermany" in c.value and "doi:10.17632/rscbjbr9sj.2" in c.value for c in at.caption)
    board = shown_table(at, "home_leaderboard").set_index("model")
    assert set(board.index) == {m.name for m in run.models}
    for m in run.models:
        met = m.metrics("test")
        assert board.loc[m.name, "AUC test"] == pytest.approx(met["auc"])
        assert board.loc[m.name, "spec test"] == pytest.approx(met["at"]["youden"]["specificity"])
        assert board.loc[m.name, "95% CI"] == f"[{met['auc_ci'][0]:.3f}, {met['auc_ci'][1]:.3f}]"
    assert "status" not in board  # every model finished: the column would say nothing
    assert board.loc["small_cnn", "init"] == "scratch"
    trained = shown_table(at, "home_training").set_index("model")
    assert trained.loc["small_cnn", "threshold"] == pytest.approx(run.model("small_cnn").threshold("youden"))
    runs = shown_table(at, "home_runs")
    assert list(runs["run"]) == ["tiny"] and runs["skipped files"].iloc[0] == run.info["n_skipped"]
    assert any("Kermany" in c.value for c in at.caption[-1:])  # the citation closes the page
    assert any("skipped" in c.value for c in at.caption)


def test_home_without_runs_shows_the_trainer_command(tmp_path, monkeypatch):
    at = open_page("home", tmp_path / "empty", monkeypatch)
    assert any("python -m trainer train" in i.value for i in at.info)
    assert any("Research use only" in w.value for w in at.main.warning)
    assert any("doi:10.17632/rscbjbr9sj.2" in c.value for c in at.caption)  # the footer, even on the way out


def test_home_with_a_torn_metrics_file(broken_root, monkeypatch):
    at = open_page("home", broken_root, monkeypatch)
    assert any("small_cnn" in e and "metrics_test.json" in e for e in errors(at))
    board = shown_table(at, "home_leaderboard").set_index("model")
    assert board.loc["mobilenet_v2", "AUC test"] == pytest.approx(
        json.loads((broken_root / "tiny" / "mobilenet_v2" / "metrics_test.json").read_text())["auc"])
    assert np.isnan(board.loc["small_cnn", "AUC test"])  # still listed, without a made-up number


# --- Training curves -----------------------------------------------------------------------------------------

def test_training_curves(run, tiny_run, monkeypatch):
    at = open_page("curves", tiny_run, monkeypatch)
    assert not errors(at)
    loss = chart(at, "curves_loss")
    curves = {(t.get("name"), t.get("meta")) for t in loss["data"]}
    assert {(m.name, k) for m in run.models for k in ("train", "val")} <= curves
    gap = chart(at, "curves_gap")
    for t in gap["data"]:
        if t.get("name") in {m.name for m in run.models}:
            h = run.model(t["name"]).history()
            np.testing.assert_allclose(arr(t["y"]), h["val_loss"] - h["train_loss"])
    at.slider(key="curves_smoothing").set_value(0.6).run()
    assert not at.exception
    # Smoothed: a faint raw line joins every smoothed one.
    assert len(chart(at, "curves_loss")["data"]) > len(loss["data"])


def test_training_curves_with_a_torn_history(broken_root, monkeypatch):
    at = open_page("curves", broken_root, monkeypatch)
    assert any("small_cnn" in e and "history.csv" in e for e in errors(at))
    names = {t.get("name") for t in chart(at, "curves_loss")["data"]}
    assert "mobilenet_v2" in names and "small_cnn" not in names


def test_training_curves_show_progress_of_running_and_stale_models(tiny_run, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_run / "tiny", root / "tiny", ignore=shutil.ignore_patterns("*.pt", "*.safetensors"))
    ModelWriter(root / "tiny", "mobilenet_v2").status("running", epoch=1, epochs=2, eta_seconds=120.0,
                                                      best_epoch=1, best_val_auc=0.9, message="")
    write_json(root / "tiny" / "small_cnn" / "status.json",
               {"state": "running", "epoch": 1, "epochs": 2, "heartbeat": "2020-01-01T00:00:00+00:00"})
    at = open_page("curves", root, monkeypatch)
    infos = [i.value for i in at.info]
    assert any("mobilenet_v2" in i and "is running" in i and "ETA 2 min 00 s" in i for i in infos)
    assert any("small_cnn" in i and "is stale" in i for i in infos)
    assert any("refreshing every" in c.value for c in at.caption)
    home = open_page("home", root, monkeypatch)
    board = shown_table(home, "home_leaderboard").set_index("model")
    assert board.loc["mobilenet_v2", "status"] == "running" and board.loc["small_cnn", "status"] == "stale"
    assert any("small_cnn" in w.value and "heartbeat" in w.value for w in home.main.warning)


# --- ROC, PR and confusion -----------------------------------------------------------------------------------

def points(at: AppTest):
    return shown_table(at, "roc_points").set_index("model")


def test_roc_threshold_slider_gives_exact_confusion_counts(run, tiny_run, monkeypatch):
    at = open_page("roc", tiny_run, monkeypatch)
    assert not errors(at)
    table = points(at)
    assert set(table.index) == {m.name for m in run.models}
    for m in run.models:  # every model opens at the validation-chosen threshold: the metrics file's counts on test
        at_file = m.metrics("test")["at"]["youden"]
        assert table.loc[m.name, "threshold"] == pytest.approx(m.threshold("youden"))
        assert table.loc[m.name, "set by"].startswith("Youden")
        assert (table.loc[m.name, "missed (FN)"], table.loc[m.name, "false alarms (FP)"]) == (at_file["fn"],
                                                                                           at_file["fp"])
    # One operating-point panel, for the model picked in it.
    assert len(at.get("plotly_chart")) == 3  # ROC, PR and one confusion matrix (not one per model)
    at.selectbox(key="roc_focus").set_value("mobilenet_v2").run()
    shown = shown_counts(at)
    assert set(shown) == {"mobilenet_v2"}
    m = run.model("mobilenet_v2")
    pred = m.predictions("test")
    y, p = pred["label"].to_numpy(), pred["probability"].to_numpy()
    for t in (float(np.quantile(p, 0.3)), 0.9):
        at.slider(key="thr_mobilenet_v2").set_value(t).run()
        assert not at.exception
        ref = cm.confusion_at(y, p, t)
        got = shown_counts(at)["mobilenet_v2"]
        assert {k: got[k] for k in ("tp", "fp", "tn", "fn")} == {k: ref[k] for k in ("tp", "fp", "tn", "fn")}
        heat = arr(chart(at, "cm_focus")["data"][0]["z"])
        np.testing.assert_array_equal(heat, [[ref["tn"], ref["fp"]], [ref["fn"], ref["tp"]]])
        roc = chart(at, "roc")
        (dot,) = [tr for tr in roc["data"] if tr.get("legendgroup") == "mobilenet_v2" and tr["mode"] == "markers"]
        assert arr(dot["x"])[0] == pytest.approx(1 - ref["specificity"])
        assert arr(dot["y"])[0] == pytest.approx(ref["sensitivity"])
        rates = shown_table(at, "rates_focus").set_index("metric")["value"]
        assert rates["sensitivity"] == pytest.approx(ref["sensitivity"])
        assert rates["F1"] == pytest.approx(ref["f1"])
        row = points(at).loc["mobilenet_v2"]
        assert row["set by"] == "custom" and row["missed (FN)"] == ref["fn"]
    # The other model did not move, and this one keeps its threshold when the panel shows the other.
    assert points(at).loc["small_cnn", "threshold"] == pytest.approx(run.model("small_cnn").threshold(), abs=5e-5)
    at.selectbox(key="roc_focus").set_value("small_cnn").run()
    assert points(at).loc["mobilenet_v2", "threshold"] == pytest.approx(0.9)
    at.selectbox(key="roc_focus").set_value("mobilenet_v2").run()
    assert at.slider(key="thr_mobilenet_v2").value == pytest.approx(0.9)

    at.button(key="preset_default_mobilenet_v2").click().run()
    assert at.slider(key="thr_mobilenet_v2").value == 0.5
    ref = cm.confusion_at(y, p, 0.5)
    assert shown_counts(at)["mobilenet_v2"]["tp"] == ref["tp"]
    assert at.button(key="preset_sens95_mobilenet_v2").label == "sensitivity ≥ 95 %"  # in words, not "Sens95"
    at.button(key="preset_sens95_mobilenet_v2").click().run()
    assert at.slider(key="thr_mobilenet_v2").value == pytest.approx(m.threshold("sens95"))
    assert points(at).loc["mobilenet_v2", "set by"] == "sensitivity ≥ 95 %"

    # PPV/NPV at another prevalence: Bayes' rule from core.evaluate.metrics.
    at.number_input(key="roc_prevalence_test_training data").set_value(0.05).run()  # per split and site profile
    ref = cm.confusion_at(y, p, m.threshold("sens95"))
    ppv, _ = cm.predictive_values(ref["sensitivity"], ref["specificity"], 0.05)
    rates = shown_table(at, "rates_focus").set_index("metric")["value"]
    assert rates["PPV @ prev. 5.0%"] == pytest.approx(ppv)

    roc = chart(at, "roc")
    names = [tr.get("name", "") for tr in roc["data"]]
    met = m.metrics("test")
    assert f"mobilenet_v2 · AUC {met['auc']:.3f} [{met['auc_ci'][0]:.3f}, {met['auc_ci'][1]:.3f}]" in names
    (ref_pt,) = [tr for tr in roc["data"] if tr.get("name", "").startswith("Kermany")]
    assert (arr(ref_pt["x"])[0], arr(ref_pt["y"])[0]) == (pytest.approx(0.099), pytest.approx(0.932))


def test_roc_other_split_warns_on_val(run, tiny_run, monkeypatch):
    at = open_page("roc", tiny_run, monkeypatch)
    splits = at.selectbox(key="roc_split").options
    assert "test" in splits and "val" in splits
    assert at.selectbox(key="roc_split").value == "test"
    assert not any("thresholds and each model's kept epoch were chosen on it" in w.value for w in at.warning)
    at.selectbox(key="roc_split").set_value("val").run()
    assert not at.exception
    assert any("thresholds and each model's kept epoch were chosen on it" in w.value for w in at.warning)
    at.selectbox(key="roc_focus").set_value("small_cnn").run()
    m = run.model("small_cnn")
    pred = m.predictions("val")
    ref = cm.confusion_at(pred["label"], pred["probability"], at.slider(key="thr_small_cnn").value)
    got = shown_counts(at)["small_cnn"]
    assert {k: got[k] for k in ("tp", "fp", "tn", "fn")} == {k: ref[k] for k in ("tp", "fp", "tn", "fn")}


def test_roc_with_a_torn_metrics_file(broken_root, monkeypatch):
    at = open_page("roc", broken_root, monkeypatch)
    assert any("small_cnn" in e and "metrics_test.json" in e for e in errors(at))
    # Both models still drawn: the small_cnn legend falls back to an AUC computed from its predictions.
    assert set(points(at).index) == {"small_cnn", "mobilenet_v2"}
    names = [tr.get("name", "") for tr in chart(at, "roc")["data"]]
    assert any(n.startswith("small_cnn · AUC") for n in names)


# --- Model comparison ----------------------------------------------------------------------------------------

def test_comparison_shows_delong_p_values(run, tiny_run, monkeypatch):
    at = open_page("compare", tiny_run, monkeypatch)
    assert not errors(at)
    aucs = {m.name: m.metrics("test")["auc"] for m in run.models}
    best = max(aucs, key=aucs.get)
    other = next(n for n in aucs if n != best)
    a, b = run.model(best).predictions("test"), run.model(other).predictions("test")
    merged = a.merge(b, on="path")
    ref = cm.delong_test(merged["label_x"], merged["probability_x"], merged["probability_y"])
    delong = shown_table(at, "cmp_delong")
    assert list(delong["model"]) == [other] and delong["vs"].iloc[0] == best
    assert delong["p-value"].iloc[0] == pytest.approx(ref["p_value"])
    assert bool(delong["p < 0.05"].iloc[0]) == (ref["p_value"] < 0.05)
    table = shown_table(at, "cmp_table").set_index("model")
    assert table.loc[other, "DeLong p"] == pytest.approx(ref["p_value"])
    assert table.loc[best, "AUC"] == pytest.approx(aucs[best])
    bars = chart(at, "cmp_bars")
    assert {t["name"] for t in bars["data"]} == set(aucs)
    assert any(best in md.value for md in at.markdown)


def test_comparison_with_a_torn_metrics_file(broken_root, monkeypatch):
    at = open_page("compare", broken_root, monkeypatch)
    assert any("small_cnn" in e and "metrics_test.json" in e for e in errors(at))
    table = shown_table(at, "cmp_table")
    assert list(table["model"]) == ["mobilenet_v2"]


# --- Calibration ---------------------------------------------------------------------------------------------

def test_calibration_ece_equals_the_metrics_file(run, tiny_run, monkeypatch):
    at = open_page("calibration", tiny_run, monkeypatch)
    assert not errors(at)
    table = shown_table(at, "cal_table").set_index("model")
    for m in run.models:
        met = m.metrics("test")
        assert table.loc[m.name, "ECE"] == met["ece"] and table.loc[m.name, "Brier"] == met["brier"]
    rel = chart(at, "cal_reliability")
    assert {t["name"].split(" · ")[0] for t in rel["data"][1:]} == {m.name for m in run.models}

    at.selectbox(key="cal_split").set_value("val").run()
    table = shown_table(at, "cal_table").set_index("model")
    for m in run.models:
        assert table.loc[m.name, "ECE"] == m.metrics("val")["ece"]


def test_calibration_with_a_torn_metrics_file(run, broken_root, monkeypatch):
    at = open_page("calibration", broken_root, monkeypatch)
    assert any("small_cnn" in e and "metrics_test.json" in e for e in errors(at))
    table = shown_table(at, "cal_table").set_index("model")
    assert table.loc["mobilenet_v2", "ECE"] == run.model("mobilenet_v2").metrics("test")["ece"]
    assert table.loc["small_cnn", "source"] == "recomputed from predictions"


# --- the committed 12-entry run: defaults, the choice across pages, run against run --------------------------

COMMITTED = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture
def committed(monkeypatch) -> Path:
    if not (COMMITTED / "kermany-lineup" / "run.json").exists():
        pytest.fail("the committed run artifacts/kermany-lineup is missing")
    return COMMITTED


def sidebar_models(at: AppTest) -> list[str]:
    (ms,) = [w for w in at.sidebar.multiselect if w.label == "Models"]
    return list(ms.value)


def test_defaults_are_the_best_three_by_validation_auc_plus_the_ensemble(committed, monkeypatch):
    (run,) = [r for r in list_runs(committed) if r.id == "kermany-lineup"]
    val = {m.name: m.metrics("val")["auc"] for m in run.models if m.name != "ensemble"}
    best3 = sorted(val, key=val.get, reverse=True)[:3]
    at = open_page("home", committed, monkeypatch, "kermany-lineup")
    assert not errors(at)
    assert sorted(sidebar_models(at)) == sorted(best3 + ["ensemble"])
    board = shown_table(at, "home_leaderboard").set_index("model")
    assert len(board) == 12  # every model on the leaderboard, whatever is chosen
    assert board.loc["ensemble", "epochs"] == "–"
    off = run.model("resnet18").metrics("official_val")
    assert board.loc["resnet18", "AUC official_val"] == pytest.approx(off["auc"])
    assert board.loc["resnet18", "spec official_val"] == pytest.approx(off["at"]["youden"]["specificity"])
    assert any("official_val" in i.value and "easy" in i.value for i in at.info)  # the shift caveat

    # The choice follows the user from page to page.
    chosen = best3[:1] + ["vit_tiny"]
    at.sidebar.multiselect[0].set_value(chosen).run()
    at.switch_page("views/2_ROC_PR_confusion.py").run()
    assert not at.exception and sidebar_models(at) == chosen
    assert set(points(at).index) == set(chosen)
    roc = chart(at, "roc")
    colors = {t["legendgroup"]: t["line"]["color"] for t in roc["data"] if t.get("legendgroup") and "line" in t}
    at.switch_page("views/1_Training_curves.py").run()
    assert not at.exception and sidebar_models(at) == chosen
    loss = chart(at, "curves_loss")
    assert {t["name"]: t["line"]["color"] for t in loss["data"] if t.get("meta") == "train"} == colors


def test_training_curves_say_why_an_ensemble_has_none(committed, monkeypatch):
    at = open_page("curves", committed, monkeypatch)
    assert not errors(at)
    assert not any("no finished epoch" in i.value for i in at.info)
    assert any("ensemble" in c.value and "trains nothing" in c.value for c in at.caption)
    assert at.sidebar.selectbox[0].value == (committed / DEFAULT_RUN_FILE).read_text().strip()  # shown first
    (lineup,) = [r for r in list_runs(committed) if r.id == "kermany-lineup"]
    at.sidebar.selectbox[0].set_value("kermany-lineup").run()
    at.sidebar.multiselect[0].set_value([m.name for m in lineup.models]).run()
    assert at.get("segmented_control")[0].value == "one chart per model"  # 11 trained models: small multiples
    grid = chart(at, "curves_grid")
    assert len(grid["layout"]["annotations"]) == 11


def test_run_against_run(committed, tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    for name in ("kermany-lineup", "second"):
        shutil.copytree(committed / "kermany-lineup", root / name, ignore=shutil.ignore_patterns("checkpoints"))
    at = open_page("home", root, monkeypatch)
    runs = {w.label: w for w in at.sidebar.selectbox}
    assert runs["Compare with run"].value == "(none)"
    other = next(o for o in runs["Compare with run"].options if o != "(none)")
    runs["Compare with run"].set_value(other).run()
    assert not at.exception
    board = shown_table(at, "home_leaderboard")
    assert len(board) == 24 and f"{other}/ensemble" in set(board["model"])
    at.switch_page("views/2_ROC_PR_confusion.py").run()
    assert not at.exception
    roc = chart(at, "roc")
    lines = {t["legendgroup"]: t["line"] for t in roc["data"] if t.get("legendgroup") and "line" in t}
    assert lines[f"{other}/ensemble"]["dash"] == "dash" and lines["ensemble"]["dash"] == "solid"
    assert lines[f"{other}/ensemble"]["color"] == lines["ensemble"]["color"]
    assert f"{other}/ensemble" in set(points(at).index)
