"""The population check (core/evaluate/population.py, trainer population, dashboard/population.py) on real films:
children's
films inside the committed default run's populations, adult films and pictures that are not X-rays outside, the
population.json contract (round trip, corrupt files refused), the command on a run written by the real trainer,
and the Grad-CAM and Consensus pages warning on a non-X-ray upload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.data.images import load_for_model
from core.evaluate import population as pop
from core.store import ArtifactError, Run, read_population, write_json
from tests.conftest import KERMANY224, NIH_ADULT, REPO, TINY_MODELS, missing, need

COMMITTED = REPO / "artifacts" / "kermany-robust"
MODEL = "mobilenet_v2_lungs_plain"
NOT_XRAY = REPO / "tests" / "data" / "not_xray"
NIH = NIH_ADULT  # the NIH folder beside the full data set, else the 36 committed adult films
TIMEOUT = 300


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


@pytest.fixture(scope="module")
def committed():
    """The committed model, its population.json references and a function judging image files with it."""
    from core.models.inference import load_trained

    model = Run(COMMITTED).model(MODEL)
    doc = read_population(model.dir)
    refs = [pop.from_json(n, s) for n, s in doc["sources"].items()]
    loaded = load_trained(model)

    def judge(files: list[Path]) -> list[pop.Verdict]:
        feats = pop.features(loaded, np.stack([load_for_model(f, loaded.input_size) for f in files]))
        return [pop.Verdict(v.distances, pop.image_problems(pop.thumbnail_rgb(f.read_bytes())))
                for v, f in zip(pop.judge(refs, feats), files)]

    return doc, judge


# --- the detector on real films -----------------------------------------------------------------------------------

def test_children_films_are_inside_the_default_run(committed):
    doc, judge = committed
    assert list(doc["sources"]) == ["kermany"]  # the run has no source column: named after kermany224
    films = [f for c in ("NORMAL", "PNEUMONIA") for f in sorted((need(KERMANY224) / "val" / c).glob("*.jpeg"))]
    verdicts = judge(films)
    inside = [v.inside == ["kermany"] for v in verdicts]
    assert sum(inside) >= 0.9 * len(films), [v.distances for v in verdicts]


def test_adult_films_are_outside_the_children_only_run(committed):
    if not NIH.is_dir():
        missing(f"adult films not found at {NIH}")
    _, judge = committed
    films = [sorted((NIH / c).glob("*.png"))[i] for c in ("NORMAL", "PNEUMONIA") for i in range(4)]
    outside = [not v.inside for v in judge(films)]
    assert sum(outside) >= 6, outside  # measured: about 9 adult films in 10 (docs/population.md)


def test_pictures_that_are_not_xrays_are_outside(committed):
    from core.data.images import BlankImageError

    _, judge = committed
    files = [f for f in _images(NOT_XRAY) if f.name != "blank.png"]
    assert len(files) >= 10
    with pytest.raises(BlankImageError):  # a blank page never reaches a model: the loader refuses it
        load_for_model(NOT_XRAY / "blank.png", 224)
    verdicts = judge(files)
    assert [f.name for f, v in zip(files, verdicts) if v.inside] == []
    colour = [f.name for f, v in zip(files, verdicts) if v.problems]
    assert "coffee.jpg" in colour and "retina.jpg" in colour and "camera.png" not in colour  # camera is gray


def test_measured_rates_are_recorded(committed):
    doc, _ = committed
    own = doc["measured"]["kermany test"]
    assert own["own"] and own["n"] > 500 and own["outside"] < 0.05  # false flags on its own population
    assert "nih_adult" in doc["known"]  # a measured outside population the pages can name


# --- population.json -------------------------------------------------------------------------------------------------

def _doc(rng) -> tuple[dict, pop.Reference]:
    train, val = rng.normal(size=(60, 12)) * np.linspace(3, 0.5, 12), rng.normal(size=(30, 12))
    ref = pop.with_limit(pop.fit("kermany", train, components=4), val)
    return {"schema_version": 1, "model": "m", "quantile": pop.QUANTILE, "sources": {"kermany": pop.to_json(ref)},
            "known": {}, "measured": {"kermany test": {"n": 30, "outside": 0.0, "own": True}}}, ref


def test_population_json_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    doc, ref = _doc(rng)
    write_json(tmp_path / "population.json", doc)
    back = pop.from_json("kermany", read_population(tmp_path)["sources"]["kermany"])
    x = rng.normal(size=(20, 12)) * 2
    np.testing.assert_allclose(back.distance(x), ref.distance(x), rtol=1e-4)
    assert back.limit == pytest.approx(ref.limit) and back.n_fit == 60 and back.n_limit == 30
    far = pop.judge([back], np.full((1, 12), 50.0))[0]
    assert far.inside == [] and far.nearest == "kermany"


@pytest.mark.parametrize("damage", ["truncated", "short_axis", "negative_limit", "no_sources", "nan", "rate",
                                    "mixed_sizes", "schema"])
def test_corrupt_population_json_is_refused(tmp_path, damage):
    doc, _ = _doc(np.random.default_rng(1))
    src = doc["sources"]["kermany"]
    if damage == "short_axis":
        src["axes"][1] = src["axes"][1][:-1]
    elif damage == "negative_limit":
        src["limit"] = -1.0
    elif damage == "no_sources":
        doc["sources"] = {}
    elif damage == "rate":
        doc["measured"]["kermany test"]["outside"] = 1.5
    elif damage == "mixed_sizes":
        doc["known"] = {"adults": {**src, "mean": src["mean"][:-1]}}
    elif damage == "schema":
        doc["schema_version"] = 2
    path = tmp_path / "population.json"
    text = json.dumps(doc)
    if damage == "truncated":
        text = text[: len(text) // 2]
    elif damage == "nan":
        text = text.replace(str(src["mean"][0]), "NaN", 1)
    path.write_text(text)
    with pytest.raises(ArtifactError, match="population.json"):
        read_population(tmp_path)


def test_colour_check_on_gray_and_colour_pictures():
    gray = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    assert pop.image_problems(gray) == () and pop.image_problems(None) == ()
    coffee = pop.thumbnail_rgb((NOT_XRAY / "coffee.jpg").read_bytes())
    assert coffee is not None and pop.image_problems(coffee)
    assert pop.thumbnail_rgb(b"DICM not an image") is None


# --- the command and the pages on a run written by the real trainer -----------------------------------------------

@pytest.fixture(scope="module")
def tiny_population(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with population.json fitted by ``python -m trainer population``."""
    from trainer.cli import main

    root = tmp_path_factory.mktemp("population") / "artifacts"
    shutil.copytree(tiny_run / "tiny", root / "tiny", ignore=shutil.ignore_patterns("*.pt"))
    assert main(["population", "--run", str(root / "tiny"), "--measure", f"not_xray={NOT_XRAY}"]) == 0
    return root


@pytest.mark.integration
def test_population_command_writes_every_model(tiny_population):
    for name in TINY_MODELS:
        doc = read_population(tiny_population / "tiny" / name)
        assert list(doc["sources"]) == ["kermany"] and doc["model"] == name
        files = _images(NOT_XRAY)
        colour = sum(bool(pop.image_problems(pop.thumbnail_rgb(f.read_bytes()))) for f in files)
        assert doc["measured"]["not_xray"]["n"] == len(files) - 1  # blank.png: refused by the loader itself
        assert doc["measured"]["not_xray"]["outside"] >= colour / (len(files) - 1) > 0.3
        assert "python -m trainer population" in doc["command"]


def _app(page: str, root: Path, monkeypatch):
    from tests.dashboard_app import page_app

    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    return page_app(page, timeout=TIMEOUT)


@pytest.mark.integration
@pytest.mark.parametrize("page", ["4_Grad-CAM.py", "8_Consensus.py"])
def test_pages_warn_on_a_picture_that_is_not_an_xray(tiny_population, monkeypatch, page):
    at = _app(page, tiny_population, monkeypatch)
    at.run()
    photo = (NOT_XRAY / "coffee.jpg").read_bytes()
    at.file_uploader[0].set_value(("coffee.jpg", photo, "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning if "Outside the populations" in w.value]
    assert len(warnings) == len(TINY_MODELS), [w.value for w in at.warning]
    assert all("colour picture" in w and "No measured figures for this population" in w for w in warnings)


@pytest.mark.integration
def test_pages_say_a_child_film_is_inside(tiny_population, monkeypatch):
    at = _app("4_Grad-CAM.py", tiny_population, monkeypatch)
    at.run()
    film = sorted((need(KERMANY224) / "train" / "NORMAL").glob("*.jpeg"))[0]
    at.file_uploader[0].set_value((film.name, film.read_bytes(), "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    said = [x.value for x in [*at.caption, *at.warning] if "was trained on" in x.value]
    assert len(said) == len(TINY_MODELS), said
    assert all(x.startswith("Inside the populations") for x in said), said


def test_consensus_report_carries_the_population_verdict():
    from dashboard import consensus as cs

    note = "**Outside the populations m was trained on** (a colour picture). No measured figures for this population."
    outside = cs.Verdict(model="m", p_raw=0.9, p_shown=0.95, calibrated=True, threshold_raw=0.5, threshold_shown=0.5,
                         label="PNEUMONIA", population="OUTSIDE", population_note=note, outside=True)
    inside = cs.Verdict(model="n", p_raw=0.1, p_shown=0.1, calibrated=True, threshold_raw=0.5, threshold_shown=0.5,
                        label="NORMAL", population="inside (kermany)", population_note="Inside …")
    assert cs.outside_notes([outside, inside]) == [note]
    assert list(cs.table([outside, inside])["population"]) == ["OUTSIDE", "inside (kermany)"]
    html = cs.report_html(film_name="f.png", film_png=b"", verdicts=[outside, inside], run_id="r", method="Grad-CAM",
                          notice="n", citation="c", scale_note="s")
    assert '<p class="outside">Outside the populations m was trained on' in html
    assert "No measured figures for this population" in html and "inside (kermany)" in html
