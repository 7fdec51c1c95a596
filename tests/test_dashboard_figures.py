"""Fast tests of the dashboard's data wrangling (dashboard/tables.py) and figures (dashboard/figures.py).

No browser and no Streamlit: these are plain functions. Most inputs are the artifacts the real trainer wrote for
the ``tiny_run`` fixture; a few edge cases use small hand-made values where a real run cannot produce them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.evaluate import metrics as cm
from core.report import comparison
from core.store import list_runs
from dashboard import figures, tables


@pytest.fixture(scope="module")
def run(tiny_run):
    (r,) = [r for r in list_runs(tiny_run) if r.id == "tiny"]
    return r


@pytest.fixture(scope="module")
def test_metrics(run) -> dict:
    return {m.name: m.metrics("test") for m in run.models}


@pytest.fixture(scope="module")
def test_preds(run) -> dict:
    return {m.name: m.predictions("test") for m in run.models}


# --- small pure functions ----------------------------------------------------------------------------------

def test_wilson_interval_textbook_values():
    lo, hi = tables.wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)  # Wilson 1927 / Newcombe 1998, 95%
    lo, hi = tables.wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17  # never below 0, unlike the Wald interval
    lo, hi = tables.wilson_interval(20, 20)
    assert hi == 1.0 and 0.83 < lo < 0.85
    assert all(math.isnan(v) for v in tables.wilson_interval(0, 0))


def test_ema_smooths_and_keeps_raw_at_zero():
    x = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(tables.ema(x, 0.0), x)
    smooth = tables.ema(x, 0.8)
    assert smooth.std() < x.std()
    np.testing.assert_allclose(tables.ema(np.full(5, 0.3), 0.9), 0.3)  # bias-corrected: no pull towards 0


def test_format_helpers():
    assert tables.format_ci(0.81234, 0.9) == "[0.812, 0.900]"
    assert tables.format_ci(float("nan"), 0.9) == "–"
    assert tables.format_seconds(42) == "42 s"
    assert tables.format_seconds(125) == "2 min 05 s"
    assert tables.format_seconds(3 * 3600 + 60) == "3 h 01 min"
    assert tables.sort_splits(["external", "test", "val"]) == ["val", "test", "external"]
    assert tables.default_split(["val", "external"]) == "val"


# --- the leaderboard and runs table from the real run ------------------------------------------------------

def test_runs_table_reads_split_counts(run):
    df = tables.runs_table([(run.id, run.info), ("broken", None)])
    row = df.iloc[0]
    counts = run.info["split_counts"]["test"]
    assert f"test {counts['NORMAL']} / {counts['PNEUMONIA']}" in row["images per split (NORMAL / PNEUMONIA)"]
    assert row["skipped files"] == run.info["n_skipped"]
    assert df.iloc[1]["created"] == "run.json unreadable"


def test_leaderboard_matches_metrics_files(run, test_metrics):
    entries = [{"model": m.name, "config": m.config, "status": m.status(), "history": m.history(),
                "metrics": {s: m.metrics(s) for s in ("test", "val")}} for m in run.models]
    entries.append({"model": "broken", "config": None, "status": None, "history": None, "metrics": None})
    splits = tables.board_splits(["val", "test"])
    assert splits == ["test"]  # val chose the thresholds: never a leaderboard column
    board = tables.leaderboard(entries, splits)
    assert list(board["model"])[-1] == "broken"  # unknown AUC sorts last
    assert board["AUC test"].iloc[:-1].is_monotonic_decreasing
    for m in run.models:
        row = board.set_index("model").loc[m.name]
        met = test_metrics[m.name]
        assert row["AUC test"] == pytest.approx(met["auc"])
        assert row["sens test"] == pytest.approx(met["at"]["youden"]["sensitivity"])
        assert row["init"] == ("ImageNet" if m.config["pretrained"] else "scratch")
        # two epochs: too few to have converged, and the board says so (core.report.summary.undertrained)
        assert row["epochs"] == f"{m.status()['best_epoch']}/{m.status()['epoch']} †"
        assert row["status"] == "finished"  # shown, because the broken entry is not
    details = tables.training_table(entries).set_index("model")
    m = run.model("small_cnn")
    assert details.loc["small_cnn", "params"] == m.config["params"]
    assert details.loc["small_cnn", "threshold"] == pytest.approx(m.threshold("youden"))


def test_leaderboard_puts_splits_side_by_side_and_ensembles_have_no_epochs():
    met = {"test": {"auc": 0.99, "auc_ci": [0.98, 1.0], "at": {"youden": {"sensitivity": 0.9, "specificity": 0.8}}},
           "official_val": {"auc": 0.7, "at": {"youden": {"sensitivity": 0.6, "specificity": 0.5}}}}
    entries = [{"model": "ens", "config": {"arch": "ensemble", "members": ["a", "b"]},
                "status": {"state": "finished", "epoch": 0, "epochs": 0}, "metrics": met}]
    splits = tables.board_splits(["val", "official_val", "test", "train"])
    assert splits == ["test", "official_val"]
    board = tables.leaderboard(entries, splits)
    assert list(board.columns[:7]) == ["model", "AUC test", "AUC official_val", "sens test", "sens official_val",
                                       "spec test", "spec official_val"]
    row = board.iloc[0]
    assert (row["AUC official_val"], row["spec official_val"]) == (0.7, 0.5)
    assert row["epochs"] == "–"  # not "0/0"
    assert tables.training_table(entries).iloc[0]["recipe"] == "mean of 2"
    assert tables.ensemble_members(entries) == "ens = mean of a, b"


def test_model_colours_are_colour_blind_safe_distinct_and_black_for_ensembles():
    names = [f"m{i}" for i in range(13)] + ["ensemble"]
    colors = figures.model_colors(names, ensembles=["ensemble"])
    assert colors["ensemble"] == figures.ENSEMBLE_COLOR
    assert len({colors[n] for n in names[:13]}) == 13  # a dozen models, a dozen distinct hues
    assert "#F0E442" not in colors.values()  # Okabe-Ito's yellow is unreadable on white
    assert set(colors.values()) <= set(figures.PALETTE) | {figures.ENSEMBLE_COLOR}
    assert figures.model_colors(["b", "a"]) == {"b": figures.PALETTE[0], "a": figures.PALETTE[1]}  # order decides


def test_threshold_rules_are_named_in_words():
    assert tables.preset_label("sens95") == "sensitivity ≥ 95 %"  # never the bare "Sens95"
    assert tables.preset_label("sens90") == "sensitivity ≥ 90 %"
    assert tables.preset_label("youden") == "Youden" and tables.preset_label("default") == "fixed 0.5"
    pts = {"a": {"threshold": 0.69, "sensitivity": 0.9, "specificity": 0.9, "ppv": 0.9, "npv": 0.9, "f1": 0.9,
                 "fn": 1, "fp": 2}}
    table = tables.points_table(pts, {"a": {"youden": 0.43, "sens95": 0.6902, "default": 0.5}})
    assert table.iloc[0]["set by"] == "sensitivity ≥ 95 %"
    assert tables.points_table(pts, {"a": {"youden": 0.43}}).iloc[0]["set by"] == "custom"


# --- ROC page ----------------------------------------------------------------------------------------------

def test_live_point_is_confusion_at_plus_prevalence(test_preds):
    pred = test_preds["mobilenet_v2"]
    y, p = pred["label"].to_numpy(), pred["probability"].to_numpy()
    for t in (0.0, float(np.median(p)), 0.5, 1.0):
        pt = tables.live_point(y, p, t, prevalence=0.2)
        ref = cm.confusion_at(y, p, t)
        assert {k: pt[k] for k in ("tp", "fp", "tn", "fn")} == {k: ref[k] for k in ("tp", "fp", "tn", "fn")}
        ppv, npv = cm.predictive_values(ref["sensitivity"], ref["specificity"], 0.2)
        np.testing.assert_equal([pt["ppv_at_prevalence"], pt["npv_at_prevalence"]], [ppv, npv])
    rates = tables.rates_table(tables.live_point(y, p, 0.5, prevalence=0.2))
    assert "PPV @ prev. 20.0%" in set(rates["metric"])


def test_threshold_presets_come_from_validation(run):
    m = run.model("small_cnn")
    presets = tables.threshold_presets(m.metrics("val"))
    assert presets["youden"] == m.threshold("youden")
    assert presets["sens95"] == m.threshold("sens95")
    assert presets["default"] == 0.5
    assert tables.threshold_presets(None) == {"default": 0.5}


def test_roc_figure_has_curves_points_and_kermany_marker(test_preds, test_metrics):
    curves, points, labels = {}, {}, {}
    for name, pred in test_preds.items():
        y, p = pred["label"], pred["probability"]
        curves[name] = cm.curves(y, p)["roc"]
        points[name] = tables.live_point(y, p, 0.5)
        labels[name] = tables.legend_label(name, test_metrics[name])
    fig = figures.roc_figure(curves, labels=labels, points=points)
    names = [t.name for t in fig.data]
    for name, met in test_metrics.items():
        assert f"{name} · AUC {met['auc']:.3f} [{met['auc_ci'][0]:.3f}, {met['auc_ci'][1]:.3f}]" in names
    (ref,) = [t for t in fig.data if t.name and t.name.startswith("Kermany")]
    assert ref.x[0] == pytest.approx(0.099) and ref.y[0] == pytest.approx(0.932)
    dots = [t for t in fig.data if t.mode == "markers" and t.showlegend is False]
    assert len(dots) == len(test_preds)
    pr = figures.pr_figure({n: cm.curves(p["label"], p["probability"])["pr"] for n, p in test_preds.items()},
                           points=points, prevalence=0.5)
    assert len([t for t in pr.data if t.mode == "markers"]) == len(test_preds)


def test_zoom_box_keeps_curves_points_and_the_reference_in_view(test_preds):
    curves, points = {}, {}
    for name, pred in test_preds.items():
        c = cm.curves(pred["label"], pred["probability"])
        curves[name] = {**c["pr"], **c["roc"]}
        points[name] = tables.live_point(pred["label"], pred["probability"], 0.5)
    box = figures.zoom_box(curves, points)
    k = tables.KERMANY_2018
    assert k["fpr"] < box["fpr_max"] <= 1 and box["tpr_min"] < k["sensitivity"]
    for name, c in curves.items():
        hit = np.flatnonzero(np.asarray(c["tpr"]) >= 0.99)
        assert c["fpr"][hit[0]] <= box["fpr_max"]  # each curve reaches 99% sensitivity inside the view
        assert points[name]["fpr"] <= box["fpr_max"] and points[name]["sensitivity"] >= box["tpr_min"]
        assert points[name]["ppv"] >= box["precision_min"]
    fig = figures.roc_figure(curves, points=points, zoom=box)
    assert tuple(fig.layout.xaxis.range)[1] == box["fpr_max"]
    assert tuple(figures.roc_figure(curves).layout.xaxis.range) == (-0.01, 1.01)
    # Near-perfect curves: a real zoom into the corner, not the full square.
    perfect = {"a": {"fpr": [0, 0, 0.02, 1], "tpr": [0, 0.95, 1, 1], "recall": [1, 0.95, 0], "precision":
                     [0.97, 1, 1]}}
    box = figures.zoom_box(perfect)
    assert box["fpr_max"] <= 0.15 and box["tpr_min"] >= 0.85 and box["precision_min"] >= 0.9


def test_history_grid_has_one_panel_per_model(run):
    histories = {m.name: m.history() for m in run.models} | {"third": run.model("small_cnn").history()}
    fig = figures.history_grid(histories, [("train_loss", "train"), ("val_loss", "val")], title="Loss",
                               y_title="loss", columns=2)
    assert [a.text for a in fig.layout.annotations] == list(histories)
    assert {t.xaxis for t in fig.data} == {"x", "x2", "x3"}  # three panels
    assert {t.meta for t in fig.data} >= {"train", "val", "best"}


def test_legend_label_falls_back_to_predictions(test_preds):
    pred = test_preds["small_cnn"]
    label = tables.legend_label("small_cnn", None, pred["label"], pred["probability"])
    assert f"AUC {cm.auc(pred['label'], pred['probability']):.3f}" in label


def test_confusion_figure_shows_the_counts(test_preds):
    pred = test_preds["small_cnn"]
    pt = cm.confusion_at(pred["label"], pred["probability"], 0.5)
    fig = figures.confusion_figure(pt)
    z = np.asarray(fig.data[0].z)
    np.testing.assert_array_equal(z, [[pt["tn"], pt["fp"]], [pt["fn"], pt["tp"]]])
    assert list(fig.data[0].y) == ["NORMAL", "PNEUMONIA"]


# --- comparison --------------------------------------------------------------------------------------------

def test_comparison_intervals_and_delong(test_metrics, test_preds):
    long = tables.comparison_long(test_metrics)
    assert set(long["metric"]) == {"AUC", "accuracy", "sensitivity", "specificity", "F1"}
    for name, met in test_metrics.items():
        g = long[long["model"] == name].set_index("metric")
        assert g.loc["AUC", "lo"] == pytest.approx(met["auc_ci"][0])
        at = met["at"]["youden"]
        assert (g.loc["sensitivity", "lo"], g.loc["sensitivity", "hi"]) == \
            pytest.approx(tables.wilson_interval(at["tp"], at["tp"] + at["fn"]))
        assert g.loc["sensitivity", "lo"] <= at["sensitivity"] <= g.loc["sensitivity", "hi"]
        assert math.isnan(g.loc["F1", "lo"])

    aucs = {n: m["auc"] for n, m in test_metrics.items()}
    best = max(aucs, key=aucs.get)
    other = next(n for n in aucs if n != best)
    # Rows in another order must still be matched by path.
    shuffled = {best: test_preds[best], other: test_preds[other].sample(frac=1.0, random_state=0)}
    d = comparison.delong_vs_best(shuffled, aucs)
    assert list(d["model"]) == [other] and d["vs"].iloc[0] == best
    a, b = test_preds[best], test_preds[other]
    ref = cm.delong_test(a["label"], a["probability"], b["probability"])
    assert d["p-value"].iloc[0] == pytest.approx(ref["p_value"])
    assert d["ΔAUC"].iloc[0] == pytest.approx(aucs[other] - aucs[best], abs=1e-9)
    assert d["n paired"].iloc[0] == len(a)
    assert bool(d["p < 0.05"].iloc[0]) == (ref["p_value"] < 0.05)

    table = tables.comparison_table(long, d)
    assert list(table["model"]) == [best, other]
    assert table.set_index("model").loc[best, "differs?"] == "best"
    assert table.set_index("model").loc[other, "DeLong p"] == pytest.approx(ref["p_value"])

    pairs = comparison.delong_all_pairs(test_preds)
    assert pairs.loc[best, other] == pytest.approx(ref["p_value"]) and math.isnan(pairs.loc[best, best])

    fig = figures.comparison_bars(long)
    assert len(fig.data) == len(test_metrics)
    f1 = list(fig.data[0].x).index("F1")
    assert math.isnan(fig.data[0].error_y.array[f1])  # no interval drawn for F1
    figures.pvalue_heatmap(pairs)


def test_paired_drops_rows_without_a_partner(test_preds):
    a = test_preds["small_cnn"]
    b = test_preds["mobilenet_v2"].iloc[5:]
    assert len(comparison.paired(a, b)) == len(a) - 5


# --- training curves ---------------------------------------------------------------------------------------

def test_history_figure_styles_and_best_epoch(run):
    hist = {m.name: m.history() for m in run.models}
    fig = figures.history_figure(hist, [("train_loss", "train"), ("val_loss", "val")], title="Loss",
                                 y_title="loss", smoothing=0.5)
    lines = [t for t in fig.data if t.meta in ("train", "val")]
    assert sorted((t.name, t.meta) for t in lines) == sorted((n, k) for n in hist for k in ("train", "val"))
    assert {t.line.dash for t in lines if t.meta == "train"} == {"solid"}
    assert {t.line.dash for t in lines if t.meta == "val"} == {"dash"}
    assert [t.name for t in fig.data if t.showlegend is not False and t.meta != "key"] == list(hist)  # one each
    assert len([t for t in fig.data if t.meta == "train raw"]) == len(hist)  # faint raw line when smoothed
    stars = [t for t in fig.data if t.marker and t.marker.symbol == "star"]
    assert len(stars) == len(hist)
    for h in hist.values():
        best = tables.best_epoch(h)
        assert best == int(h.loc[h["val_auc"].idxmax(), "epoch"])
    gap = figures.gap_figure(hist)
    for t in gap.data:
        h = hist[t.name]
        np.testing.assert_allclose(t.y, h["val_loss"] - h["train_loss"])


def test_progress_line_for_a_running_model():
    line = tables.progress_line("vit", {"state": "running", "stale": False, "epoch": 3, "epochs": 10,
                                        "eta_seconds": 420, "best_val_auc": 0.97, "best_epoch": 2,
                                        "heartbeat": "2026-01-01T00:00:00+00:00"})
    assert "epoch 3/10" in line and "ETA 7 min 00 s" in line


# --- calibration -------------------------------------------------------------------------------------------

def test_calibration_from_file_and_recomputed(test_metrics, test_preds):
    for name, met in test_metrics.items():
        row = tables.calibration_row(name, met, test_preds[name])
        assert (row["ECE"], row["Brier"], row["source"]) == (met["ece"], met["brier"], "metrics file")
        again = tables.calibration_row(name, None, test_preds[name])
        # predictions_<split>.csv holds probabilities to 6 decimals, the metrics file used full precision
        assert again["ECE"] == pytest.approx(met["ece"], abs=1e-5)
        assert again["Brier"] == pytest.approx(met["brier"], abs=1e-5)
        assert again["source"] == "recomputed from predictions"
        bins, src = tables.calibration_from(None, test_preds[name])
        assert bins["count"] == met["calibration"]["count"] and src == "recomputed from predictions"
    bins = {n: tables.calibration_from(m, None)[0] for n, m in test_metrics.items()}
    fig = figures.reliability_figure(bins)
    assert len(fig.data) == 1 + len(bins)  # the diagonal + one per model
    assert len(figures.probability_histogram(test_preds).data) == len(test_preds)
