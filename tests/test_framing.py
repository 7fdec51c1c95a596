"""Lung framing (core/models/framing.py, recipe key ``framing``): the model sees the film cropped to its lung fields, in
training, in evaluation and in the dashboard, and its maps are put back on the whole film."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import KERMANY224, need

from core.data.images import load_for_model
from core.models import framing, lungs
from core.models.inference import load_trained, predict_loaded
from core.store import Run
from dashboard import explain as ex
from trainer import config as cfgmod
from trainer.cli import main


def kermany_films(size: int, n: int = 4) -> np.ndarray:
    """The first ``n`` NORMAL and ``n`` PNEUMONIA training films at ``size`` px (real films, sample or full set)."""
    root = need(KERMANY224) / "train"
    files = [sorted((root / c).iterdir())[:n] for c in ("NORMAL", "PNEUMONIA")]
    return np.stack([load_for_model(f, size) for f in files[0] + files[1]])


def test_lung_framing_crops_each_film_to_a_box_that_holds_its_lungs():
    films = kermany_films(224)
    framed, boxes = framing.frame(films, "lungs")
    assert framed.shape == films.shape and framed.dtype == np.uint8
    areas = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) / films[0].size
    assert areas.min() >= framing.MIN_BOX_FRACTION and areas.mean() < 0.85  # real crops, not slivers
    for film, (top, bottom, left, right) in zip(films, boxes):
        mask = lungs.lung_mask(film)
        inside = mask[top:bottom, left:right].sum() / mask.sum()
        assert inside == pytest.approx(1.0)  # every lung pixel is kept
    assert not np.array_equal(framed, films)
    same, whole = framing.frame(films, "none")
    assert same is films or np.array_equal(same, films)
    assert (whole == [0, 224, 0, 224]).all()
    with pytest.raises(ValueError, match="framing 'ribs'"):
        framing.frame(films, "ribs")


def test_a_film_without_lungs_is_kept_whole():
    flat = np.full((2, 96, 96), 128, np.uint8)
    framed, boxes = framing.frame(flat, "lungs")
    assert (boxes == [0, 96, 0, 96]).all()
    np.testing.assert_array_equal(framed, flat)


def test_unframe_puts_each_map_back_in_its_box_and_zero_outside():
    maps = np.ones((2, 32, 32), np.float32)
    boxes = np.array([[4, 20, 8, 30], [0, 32, 0, 32]])
    out = framing.unframe(maps, boxes)
    assert out.shape == maps.shape
    assert out[0, 4:20, 8:30].min() == pytest.approx(1.0) and out[0].sum() == pytest.approx(16 * 22)
    np.testing.assert_array_equal(out[1], maps[1])
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (1, 32, 1))  # rises left to right
    moved = framing.unframe(ramp, boxes[:1])[0]
    assert moved[10, 9] < moved[10, 28]  # the map keeps its orientation inside the box


def test_framing_is_a_checked_recipe_key():
    assert cfgmod.check_value("framing", "lungs") == "lungs"
    with pytest.raises(cfgmod.ConfigError, match="framing='ribs'"):
        cfgmod.check_value("framing", "ribs")
    assert set(framing.FRAMINGS) == set(cfgmod.RULES["framing"].choices)


@pytest.mark.train
def test_a_lung_framed_model_is_framed_in_training_evaluation_and_its_maps(tmp_path):
    """The real trainer with ``framing: lungs``; its stored test predictions are reproduced from the original
    films only through the framing its config records, and its Grad-CAM lies inside the lung box."""
    conf = {"data": str(need(KERMANY224)), "run": "f", "artifacts": str(tmp_path / "a"), "subset": 20,
            "epochs": 1, "input_size": 96, "seed": 0, "cache_dir": str(tmp_path / "cache"),
            "models": [{"name": "m", "arch": "mobilenet_v2", "lr": 0.001, "framing": "lungs"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    assert list((tmp_path / "cache").glob("*/framed-lungs-*.npy"))  # framed once, stored beside the cache
    run = Run(tmp_path / "a" / "f")
    art = run.model("m")
    loaded = load_trained(art)
    assert art.config["framing"] == loaded.framing == "lungs"
    preds = art.predictions("test")
    films = np.stack([load_for_model(run.locate(p), 96) for p in preds["path"]])
    np.testing.assert_allclose(predict_loaded(loaded, films, backend="torch"), preds["probability"], atol=1e-4)
    loaded.framing = "none"
    assert np.abs(predict_loaded(loaded, films, backend="torch") - preds["probability"]).max() > 1e-4
    loaded.framing = "lungs"
    cm = ex.load_cached_model(ex.model_key(art))
    boxes = framing.lung_boxes(films[:6])
    seen = 0.0
    for film, (top, bottom, left, right) in zip(films[:6], boxes):
        result = ex.explain_one(cm, film, "Grad-CAM", use_cache=False)
        outside = np.ones((96, 96), bool)
        outside[top:bottom, left:right] = False
        assert result.raw[outside].max() == 0  # the model saw nothing there
        seen = max(seen, float(result.raw.max()))
    assert seen > 0
    assert result.heatmap.shape == (96, 96)


def test_a_cache_folder_that_cannot_be_written_keeps_the_framed_films_in_memory(tmp_path, caplog):
    from core.data.cache import ImageCache
    gone = tmp_path / "gone"  # a folder removed under the trainer (root may write anywhere, so not a chmod)
    films = kermany_films(96, 2)
    cache = ImageCache(gone, films, [f"f{i}" for i in range(4)], np.ones(4, bool), [], 96)
    with caplog.at_level("INFO", logger="core.models.framing"):
        out = framing.framed_cache(cache, "lungs")
    np.testing.assert_array_equal(out.images, framing.frame(films, "lungs")[0])
    assert any("kept in memory" in r.getMessage() for r in caplog.records) and not gone.exists()
