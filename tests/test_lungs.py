"""Lung fields and lung focus: the committed lung model, the focus measure, the trainer's focus command, the page.

The committed weights must reach the held-out Dice/IoU stated in lungmodel/metrics.json (and the README): on the
whole held-out part when ../shared/data/lungmasks is here, and always on the small CC BY sample committed under
tests/data/lungs/ (its per-film Dice is the one lungmodel/heldout.csv records).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.explain.focus import BORDER_BAND, body_mask, map_focus, ranking
from core.models import lungs
from core.store import read_focus, read_json
from tests.conftest import KERMANY224, SHARED_DATA, missing, need

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "lungs"
LUNGMASKS = SHARED_DATA / "lungmasks"


# --- lung focus on constructed maps ------------------------------------------------------------------------------

def two_lungs(size: int = 100) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[20:80, 15:45] = True
    m[20:80, 55:85] = True
    return m


def test_all_mass_in_the_lungs_is_full_focus_at_any_map_size():
    lungs_ = two_lungs()
    heat = lungs_.astype(np.float32)
    f = map_focus(heat, lungs_)
    assert f.lung_focus == pytest.approx(1.0) and f.border_mass == pytest.approx(0.0) and not f.flagged
    coarse = np.zeros((10, 10), np.float32)  # a 10x10 CAM, well inside the left lung once resized to 100x100
    coarse[4:6, 2:4] = 1.0
    f = map_focus(coarse, lungs_)
    assert f.lung_focus > 0.99 and "inside the lung fields" in f.flag_text()


def test_all_mass_on_the_border_is_flagged():
    lungs_ = two_lungs()
    heat = np.zeros((100, 100), np.float32)
    heat[:4, :4] = 1.0  # the corner where the "R" marker sits
    f = map_focus(heat, lungs_)
    assert f.lung_focus == 0.0 and f.border_mass == pytest.approx(1.0) and f.flagged
    assert "outside the lung fields" in f.flag_text() and "border" in f.flag_text()
    assert "Lung focus 0%" in f.caption() and "border/outside-body mass 100%" in f.caption()


def test_outside_the_body_counts_as_border_mass_and_negatives_are_ignored():
    lungs_ = two_lungs()
    body = np.zeros((100, 100), bool)
    body[10:90, 10:90] = True
    heat = np.full((100, 100), -5.0, np.float32)  # negative evidence carries no mass
    heat[50, 50] = 1.0  # mediastinum, inside the body: neither lung nor border
    heat[50, 95] = 1.0  # in the border band along the right edge
    f = map_focus(heat, lungs_, body)
    assert f.lung_focus == 0.0 and f.border_mass == pytest.approx(0.5)
    band = round(BORDER_BAND * 100)
    assert band < 10  # the point below is outside the body but not in the band
    heat2 = np.zeros((100, 100), np.float32)
    heat2[50, band + 1] = 1.0
    assert map_focus(heat2, lungs_).border_mass == 0.0
    assert map_focus(heat2, lungs_, body).border_mass == pytest.approx(1.0)


def test_empty_map_has_no_focus_and_says_so():
    f = map_focus(np.zeros((7, 7)), two_lungs())
    assert f.empty and not f.flagged and np.isnan(f.lung_focus)
    assert "no evidence" in f.caption()
    with pytest.raises(ValueError):
        map_focus(np.zeros((2, 7, 7)), two_lungs())


def test_body_mask_holds_the_dark_lungs_inside_a_bright_body():
    film = np.full((200, 200), 10, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    film[((yy - 100) / 90) ** 2 + ((xx - 100) / 70) ** 2 < 1] = 170  # the body
    film[60:140, 50:90] = 40  # a dark lung, enclosed by the body
    body = body_mask(film)
    assert body[100, 70] and body[100, 100] and not body[5, 5] and not body[100, 5]


# --- mask helpers ------------------------------------------------------------------------------------------------

def test_postprocess_keeps_the_two_largest_components_and_fills_holes():
    m = two_lungs()
    m[2:5, 2:5] = True  # a speck
    m[40:45, 25:30] = False  # a hole in the left lung
    out = lungs.postprocess(m)
    assert not out[3, 3] and out[42, 27] and out[50, 70]
    assert out.sum() == two_lungs().sum()


def test_lung_box_margin_clipping_and_empty_mask():
    m = two_lungs()
    assert lungs.lung_box(m, 0.0) == (20, 80, 15, 85)
    assert lungs.lung_box(m, 0.1) == (14, 86, 8, 92)
    assert lungs.lung_box(m, 1.0) == (0, 100, 0, 100)
    assert lungs.lung_box(np.zeros((30, 40), bool)) == (0, 30, 0, 40)
    with pytest.raises(ValueError):
        lungs.lung_box(m, -0.1)


def test_dice_and_iou():
    a, b = two_lungs(), two_lungs()
    assert lungs.dice(a, b) == 1.0 and lungs.iou(a, b) == 1.0
    b[:, 50:] = False  # half of the mask
    assert lungs.dice(a, b) == pytest.approx(2 / 3) and lungs.iou(a, b) == pytest.approx(0.5)


# --- the committed lung model ------------------------------------------------------------------------------------

def committed_metrics() -> dict:
    return read_json(lungs.METRICS)


def test_committed_sample_reaches_the_recorded_per_film_dice():
    """Runs on a fresh clone: the committed held-out films give the Dice that heldout.csv recorded for them."""
    pairs = pd.read_csv(SAMPLE / "pairs.csv", dtype=str)
    recorded = pd.read_csv(lungs.MODEL_DIR / "heldout.csv", dtype={"stem": str}).set_index(["source", "stem"])
    held = set(committed_metrics()["heldout_groups"])
    assert len(pairs) >= 3
    from trainer.lungs import load_pair
    for _, row in pairs.iterrows():
        assert row["group"] in held, f"{row['stem']} is not a held-out film"
        gray, truth = load_pair(SAMPLE, row)
        pred = lungs.lung_mask(gray)
        assert pred.shape == gray.shape and pred.dtype == bool
        assert lungs.dice(pred, truth) == pytest.approx(recorded.loc[(row["source"], row["stem"]), "dice"], abs=0.01)


@pytest.mark.integration
def test_committed_weights_reach_the_reported_heldout_dice():
    if not LUNGMASKS.is_dir():  # a user's clone: the committed sample's held-out films are checked above
        missing(f"the full lung-mask set is not at {LUNGMASKS}: only the committed sample's 4 held-out films ran")
    data = LUNGMASKS
    from trainer.lungs import evaluate, read_pairs, split_groups
    m = committed_metrics()
    df = read_pairs(data)
    held = df[split_groups(df, m["seed"], m["heldout_fraction"]) == "heldout"]
    assert sorted(held["group"].unique()) == m["heldout_groups"]  # the same seed gives the same held-out films
    assert not set(held["group"]) & set(df.loc[~df.index.isin(held.index), "group"])  # groups never straddle
    _, summary = evaluate(lungs.load_model(), data, held)
    for name, s in m["heldout"].items():
        assert summary[name]["n"] == s["n"]
        assert summary[name]["dice"] == pytest.approx(s["dice"], abs=0.002), name
        assert summary[name]["iou"] == pytest.approx(s["iou"], abs=0.002), name


def test_lung_mask_on_a_kermany_film_is_two_plausible_lungs_and_cached():
    from core.data.images import load_for_model
    films = sorted((need(KERMANY224) / "train" / "NORMAL").glob("*.jpeg"))[:1]
    gray = load_for_model(films[0], 224)
    mask = lungs.lung_mask(gray)
    assert mask.shape == (224, 224) and 0.1 < mask.mean() < 0.5
    import cv2
    assert cv2.connectedComponents(mask.astype(np.uint8))[0] - 1 <= 2
    mask[:] = False  # callers get a copy: the cache is not touched
    assert lungs.lung_mask(gray).mean() > 0.1


def test_lung_mask_rejects_bad_input():
    with pytest.raises(ValueError):
        lungs.lung_mask(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError):
        lungs.lung_mask(np.zeros((32, 32), np.float32))


# --- the focus command and the page ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def focus_run(tmp_path_factory) -> Path:
    """Two models of the committed run (and its ensemble), with lung focus computed by the real command."""
    data = need(KERMANY224)
    src = REPO / "artifacts" / "kermany-lineup"
    root = tmp_path_factory.mktemp("focus") / "artifacts"
    dst = root / "kermany-lineup"
    dst.mkdir(parents=True)
    for f in ("run.json", "split.csv"):
        shutil.copy(src / f, dst / f)
    for name in ("small_cnn", "deep_cnn", "ensemble"):
        shutil.copytree(src / name, dst / name)
    from trainer.cli import main
    code = main(["focus", "--run", str(dst), "--split", "test", "--n", "3", "--data-root", str(data),
                 "--methods", "Grad-CAM,EigenCAM"])
    assert code == 0
    return root


@pytest.mark.integration
def test_focus_command_writes_figures_for_every_model(focus_run):
    run_dir = focus_run / "kermany-lineup"
    assert not (run_dir / "ensemble" / "lung_focus_test.csv").exists()  # no network of its own
    for name in ("small_cnn", "deep_cnn"):
        t = pd.read_csv(run_dir / name / "lung_focus_test.csv")
        assert len(t) == 6 and set(t["method"]) == {"Grad-CAM", "EigenCAM"}
        assert t["lung_focus"].between(0, 1).all() and t["border_mass"].between(0, 1).all()
        assert t["lung_fraction"].between(0.05, 0.6).all()  # the lung model found lungs on every film
        s = json.loads((run_dir / name / "lung_focus_test.json").read_text())
        assert s["n_films"] == 3 and s["methods"]["Grad-CAM"]["n"] == 3
        assert s["methods"]["Grad-CAM"]["lung_focus_median"] == pytest.approx(
            t[t["method"] == "Grad-CAM"]["lung_focus"].median(), abs=1e-4)
        assert s["lung_model"]["dice"] == committed_metrics()["heldout"]["overall"]["dice"]


@pytest.mark.integration
def test_where_models_look_page_ranks_models_by_median_lung_focus(focus_run, monkeypatch):
    from core.store import Run
    from tests.dashboard_app import page_app
    monkeypatch.setenv("CXR_ARTIFACTS", str(focus_run))
    at = page_app("7_Where_models_look.py")
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    df, _ = read_focus(Run(focus_run / "kermany-lineup"), "test")
    expected = ranking(df, "Grad-CAM")
    shown = at.dataframe[0].value
    assert list(shown["model"]) == list(expected["model"])
    assert (shown["median lung focus"] / 100).tolist() == pytest.approx(expected["median lung focus"].tolist())
    assert any("held-out Dice" in c.value for c in at.caption)
