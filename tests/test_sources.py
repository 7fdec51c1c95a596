"""Multi-source runs (issue 23): sources split on their own, every film's source and stratum carried into the
artifacts, per-source thresholds and sampling, per-stratum figures, on real children's and adults' films."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import FULL_DATA, KERMANY224, NIH_ADULT, REPO

from core.data import layouts as data
from core.evaluate import metrics
from core.store import Run
from trainer.prepare import Source, common_root, prepare, prepare_sources
from trainer.train import source_weights

SOURCES = [Source("kermany", str(KERMANY224)), Source("nih_adult", str(NIH_ADULT / "manifest.tsv"))]
SPLITS = {"val_fraction": 0.3, "test_fraction": 0.3}


def test_tsv_manifest_reads_aliases_and_strata():
    scan = data.scan(NIH_ADULT / "manifest.tsv")
    assert scan.layout == "manifest" and len(scan.samples) >= 30
    s = scan.samples[0]
    assert s.patient_id.startswith("nih_") and s.stratum("view") in ("AP", "PA") and s.stratum("sex") in ("M", "F")
    assert s.stratum("age") in ("18-39", "40-59", "60+")
    assert Counter(s.label for s in scan.samples).keys() == {0, 1}


@pytest.mark.parametrize("age,band", [("3", "<18"), ("18", "18-39"), ("59.5", "40-59"), ("87", "60+"),
                                      ("", ""), ("-1", ""), ("abc", ""), ("400", "")])
def test_age_band(age, band):
    assert data.age_band(age) == band


def test_sources_split_on_their_own_without_sharing_a_patient():
    prepared = prepare_sources(SOURCES, seed=0, **SPLITS)
    data.check_no_patient_overlap(prepared.samples)
    by = Counter((s.source, s.split) for s in prepared.samples)
    for src in ("kermany", "nih_adult"):
        assert all(by[(src, split)] > 0 for split in ("train", "val", "test")), by
    assert all(s.patient_id.startswith(f"{s.source}:") for s in prepared.samples)
    # each source lands in the split it gets alone: adding a source moves no child between splits
    alone = {s.path: s.split for s in prepare(str(KERMANY224), seed=0, **SPLITS).samples}
    assert all(alone[s.path] == s.split for s in prepared.samples if s.source == "kermany")
    assert common_root(SOURCES) == str(KERMANY224.parent) or NIH_ADULT.parent != KERMANY224.parent


def test_adult_splits_keep_the_class_by_view_mix():
    prepared = prepare_sources(SOURCES, seed=0, **SPLITS)
    adults = [s for s in prepared.samples if s.source == "nih_adult"]
    for split in ("train", "val", "test"):
        cells = Counter((s.label, s.stratum("view")) for s in adults if s.split == split)
        assert len(cells) == 4, (split, cells)  # every class-by-view cell is represented in every split


def test_source_weights_give_each_source_its_share_and_balance_classes_and_views():
    labels = np.array([0] * 100 + [1] * 300 + [0] * 10 + [1] * 30)
    sources = ["k"] * 400 + ["a"] * 40
    views = [""] * 400 + ["AP"] * 8 + ["PA"] * 2 + ["AP"] * 10 + ["PA"] * 20
    w = source_weights(labels, sources, 0.5, views)
    adult = np.array(sources) == "a"
    assert w[adult].sum() == pytest.approx(40 ** 0.5 / (40 ** 0.5 + 400 ** 0.5))
    assert w[~adult & (labels == 0)].sum() == pytest.approx(w[~adult & (labels == 1)].sum())
    v = np.array(views)
    for label in (0, 1):  # within an adult class, AP and PA films are drawn equally often
        assert w[adult & (labels == label) & (v == "AP")].sum() == pytest.approx(
            w[adult & (labels == label) & (v == "PA")].sum())
    assert source_weights(labels, ["k"] * 440, 0.5) is None
    assert source_weights(labels, sources, 0.0, views)[adult].sum() == pytest.approx(40 / 440)


def test_grouped_thresholds_hold_the_rule_in_every_source():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(400), np.zeros(40), np.ones(40)].astype(int)
    p = np.r_[rng.beta(2, 5, 200), rng.beta(5, 2, 400), rng.beta(3, 3, 40), rng.beta(3.5, 3, 40)]
    groups = np.array(["big"] * 600 + ["small"] * 80)
    t = metrics.choose_thresholds(y, p, groups=groups)
    value = t["sens95"]["value"]
    for g in ("big", "small"):
        m = groups == g
        assert metrics.confusion_at(y[m], p[m], value)["sensitivity"] >= 0.95
    pooled = metrics.choose_thresholds(y, p)["sens95"]["value"]
    assert value < pooled  # the small, harder source needs a lower threshold than the pooled rule gives
    assert metrics.macro_auc(y, p, groups) == pytest.approx(
        (metrics.auc(y[groups == "big"], p[groups == "big"]) + metrics.auc(y[groups == "small"],
                                                                         p[groups == "small"])) / 2)


def test_strata_metrics_count_every_film_once_with_intervals():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    p = np.clip(y * 0.3 + rng.random(120) * 0.7, 0, 1)
    views = np.array(["AP", "PA", ""])[rng.integers(0, 3, 120)]
    by = metrics.strata_metrics(y, p, metrics.choose_thresholds(y, p), {"view": views})["view"]
    assert set(by) == {"AP", "PA"}  # unknown ("") is not a stratum
    assert sum(g["n"] for g in by.values()) == int((views != "").sum())
    for g in by.values():
        lo, hi = g["at_ci"]["sens95"]["sensitivity"]
        assert 0 <= lo <= g["at"]["sens95"]["sensitivity"] <= hi <= 1
    assert metrics.wilson_interval(0, 0) == [None, None]
    assert metrics.wilson_interval(10, 10)[1] == pytest.approx(1.0) and metrics.wilson_interval(10, 10)[0] < 1


@pytest.fixture(scope="module")
def two_source_run(tmp_path_factory):
    """A tiny real run over children and adults: small_cnn, one short epoch."""
    root = tmp_path_factory.mktemp("multi")
    config = root / "cfg.json"
    config.write_text(json.dumps({
        "sources": [{"name": s.name, "data": s.data} for s in SOURCES], "run": "two", "artifacts": str(root / "a"),
        "cache_dir": str(root / "cache"), "epochs": 1, "max_train_batches": 2, "threshold_rule": "sens95",
        "models": ["small_cnn"], "subset": 20 if FULL_DATA else None, **SPLITS}))
    done = subprocess.run([sys.executable, "-m", "trainer", "train", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "a" / "two"


@pytest.mark.train
def test_two_source_run_records_sources_and_reports_each(two_source_run):
    run = Run(two_source_run)
    assert [s["name"] for s in run.info["sources"]] == ["kermany", "nih_adult"]
    split = run.split_table()
    assert {"source", "view"} <= set(split.columns)
    assert run.locate(split[split["source"] == "nih_adult"]["path"].iloc[0]) is not None
    model = run.model("small_cnn")
    test = model.metrics("test")
    assert set(test["by"]["source"]) == {"kermany", "nih_adult"}
    assert set(test["by"]["view"]) == {"AP", "PA"}
    assert sum(g["n"] for g in test["by"]["source"].values()) == test["n"]
    preds = model.predictions("test")
    assert set(preds["source"]) == {"kermany", "nih_adult"}
    assert "every source" in model.metrics("val")["thresholds"]["sens95"]["rule"]
    report = subprocess.run([sys.executable, "-m", "trainer", "report", "--run", str(two_source_run),
                             "--splits", "test"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0 and "nih_adult" in report.stdout, report.stdout + report.stderr


@pytest.mark.train
def test_evaluate_reports_per_view_of_a_manifest(two_source_run, tmp_path):
    done = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--run", str(two_source_run), "--data",
                           str(NIH_ADULT / "manifest.tsv"), "--split-name", "adults", "--cache-dir",
                           str(tmp_path / "c")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = Run(two_source_run).model("small_cnn").metrics("adults")
    assert set(m["by"]["view"]) == {"AP", "PA"} and set(m["by"]["sex"]) <= {"M", "F"}
    preds = pd.read_csv(two_source_run / "small_cnn" / "predictions_adults.csv")
    assert set(preds["view"]) == {"AP", "PA"}


@pytest.mark.train
def test_dashboard_shows_each_population(two_source_run, monkeypatch):
    """Home's leaderboard has a column per source, and the Populations page a row per source with the AUC of the
    metrics file, in a real Streamlit script run (AppTest)."""
    from dashboard.common import RUN_KEY
    from tests.dashboard_app import page_app

    monkeypatch.setenv("CXR_ARTIFACTS", str(two_source_run.parent))
    expected = Run(two_source_run).model("small_cnn").metrics("test:nih_adult")["auc"]
    home = page_app(timeout=120, **{RUN_KEY: "two"})
    home.run(timeout=120)
    assert not home.exception, [e.value for e in home.exception]
    board = next(d.value for d in home.dataframe if "AUC nih_adult" in d.value.columns)
    assert "AUC test" not in board.columns  # pooled over two populations it would hide the small one
    assert board["AUC nih_adult"].iloc[0] == pytest.approx(expected)
    page = page_app("11_Populations.py", timeout=120, **{RUN_KEY: "two"})
    page.run(timeout=120)
    assert not page.exception, [e.value for e in page.exception]
    table = next(d.value for d in page.dataframe if "population" in d.value.columns)
    row = table[table["population"] == "test · nih_adult"]
    assert len(row) == 1 and row["AUC"].iloc[0] == pytest.approx(expected)
    page.radio(key="pop_column").set_value("view").run(timeout=120)
    table = next(d.value for d in page.dataframe if "population" in d.value.columns)
    assert {"test · view AP", "test · view PA"} <= set(table["population"])


def test_named_pipes_as_config_or_film_are_refused_not_waited_on(tmp_path):
    """A tar can carry a named pipe: as --config or inside a class folder it must be refused, never opened."""
    import os

    from trainer import config as cfgmod

    fifo = tmp_path / "cfg.yaml"
    os.mkfifo(fifo)
    with pytest.raises(cfgmod.ConfigError, match="named pipe"):
        cfgmod.load_file(fifo)
    folder = tmp_path / "data" / "NORMAL"
    folder.mkdir(parents=True)
    (tmp_path / "data" / "PNEUMONIA").mkdir()
    os.mkfifo(folder / "film.png")
    with pytest.raises(data.DataError, match="no supported images"):
        data.scan(tmp_path / "data")
    assert "not a regular file" in data._skip_reason(folder / "film.png")
