"""Grad-CAM and Errors pages (AppTest) and dashboard/explain.py, on a tiny run written by the real trainer."""

from __future__ import annotations

import io
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import store
from core.data.images import load_for_model
from core.evaluate import calibration
from core.explain.cams import CAM_METHODS
from core.models.inference import load_trained, predict_loaded
from core.models.registry import REGISTRY
from core.store import ArtifactError, list_runs
from dashboard import explain as ex
from tests.conftest import FULLRES, REPO, need, write_dicom
from tests.dashboard_app import page_app

GRADCAM = "4_Grad-CAM.py"  # files of dashboard/views/, run through the entrypoint (tests/dashboard_app.py)
ERRORS = "5_Errors.py"
TIMEOUT = 240


# --- helpers -------------------------------------------------------------------------------------------------------

def _run(root: Path, name: str = "tiny"):
    runs = {r.id: r for r in list_runs(root)}
    return runs[name]


def _copy_run(root: Path, dest: Path) -> Path:
    """A private copy of the tiny run (without resume checkpoints) that a test may damage."""
    shutil.copytree(root / "tiny", dest / "tiny", ignore=shutil.ignore_patterns("*.pt"))
    return dest


def _app(view: str, root: Path, monkeypatch):
    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    return page_app(view, timeout=TIMEOUT)


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _fullres_jpeg() -> Path:
    return sorted((need(FULLRES) / "val" / "PNEUMONIA").glob("*.jpeg"))[0]


def _huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims 400 Mpx (a decompression bomb): only the header is real."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _png16(gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 64 + 100).save(buf, format="PNG")  # 16-bit, 14 bits used
    return buf.getvalue()


def _dicom(gray: np.ndarray) -> bytes:
    """A 12-bit DICOM of ``gray`` (8-bit values scaled by 16), as bytes."""
    buf = io.BytesIO()
    write_dicom(buf, gray.astype(np.uint16) * 16, bits_stored=12)
    return buf.getvalue()


def _independent_probability(root: Path, model: str, source, run: str = "tiny") -> float:
    """P(PNEUMONIA) straight from core.models.inference, with a freshly loaded model (no dashboard code)."""
    loaded = load_trained(_run(root, run).model(model))
    return float(predict_loaded(loaded, load_for_model(source, loaded.input_size)[None])[0])


def _all_hooks(model) -> list[str]:
    found = []
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            if getattr(m, attr, None):
                found.append(f"{name or '<root>'}.{attr}")
    return found


# --- explain.py ----------------------------------------------------------------------------------------------------

def test_cached_model_is_reused_and_reloaded_when_the_checkpoint_changes(tiny_run, tmp_path):
    root = _copy_run(tiny_run, tmp_path)
    ma = _run(root).model("small_cnn")
    first = ex.cached_model(ma)
    assert ex.cached_model(_run(root).model("small_cnn")) is first  # a new reader, the same cached model
    assert first.key.name == "small_cnn" and first.loaded.input_size == 96
    ckpt = ma.best_checkpoint()
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a retrained model
    second = ex.cached_model(ma)
    assert second is not first and second.lock is not first.lock
    assert ex.cached_model(ma) is second


def test_missing_checkpoint_is_an_artifact_error(tiny_run, tmp_path):
    root = _copy_run(tiny_run, tmp_path)
    (root / "tiny" / "mobilenet_v2" / "checkpoints" / "best.safetensors").unlink()
    with pytest.raises(ArtifactError, match="best.safetensors"):
        ex.cached_model(_run(root).model("mobilenet_v2"))


def test_concurrent_maps_equal_sequential_and_hooks_are_released(tiny_run, kermany224):
    cm = ex.cached_model(_run(tiny_run).model("mobilenet_v2"))
    size = cm.loaded.input_size
    files = sorted((kermany224 / "val" / "PNEUMONIA").glob("*.jpeg"))[:2] + \
        sorted((kermany224 / "val" / "NORMAL").glob("*.jpeg"))[:2]
    images = [load_for_model(f, size) for f in files]
    jobs = [(img, method) for img in images for method in ("Grad-CAM", "LayerCAM")]
    sequential = [ex.explain_one(cm, img, m, use_cache=False) for img, m in jobs]
    flags = [p.requires_grad for p in cm.loaded.model.parameters()]

    results: dict[tuple[int, int], ex.Explanation] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for rep in range(2):
                order = range(len(jobs)) if t == 0 else reversed(range(len(jobs)))
                for i in order:
                    results[(t, i, rep)] = ex.explain_one(cm, jobs[i][0], jobs[i][1], use_cache=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    assert len(results) == 2 * 2 * len(jobs)
    for (t, i, _rep), got in results.items():
        want = sequential[i]
        assert got.probability == pytest.approx(want.probability, abs=1e-6)
        np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-5, err_msg=f"thread {t} job {i}")
    assert _all_hooks(cm.loaded.model) == []
    assert [p.requires_grad for p in cm.loaded.model.parameters()] == flags
    assert not cm.loaded.model.training
    assert not cm.lock.locked()


def test_explain_one_matches_core_inference_and_caches(tiny_run, kermany224):
    cm = ex.cached_model(_run(tiny_run).model("small_cnn"))
    path = sorted((kermany224 / "val" / "NORMAL").glob("*.jpeg"))[0]
    img = load_for_model(path, cm.loaded.input_size)
    a = ex.explain_one(cm, img, "Grad-CAM")
    assert a.probability == pytest.approx(_independent_probability(tiny_run, "small_cnn", path), abs=1e-6)
    assert a.heatmap.shape == (96, 96) and a.heatmap.dtype == np.float32
    assert 0.0 <= a.heatmap.min() and a.heatmap.max() <= 1.0
    hit = ex.explain_one(cm, img, "Grad-CAM")  # served from the heatmap cache, and says so
    assert hit.cached and not a.cached and hit.seconds == a.seconds > 0
    np.testing.assert_array_equal(hit.heatmap, a.heatmap)  # st.cache_data: a copy of the stored map
    np.testing.assert_array_equal(hit.raw, a.raw)
    hit.heatmap[:] = 0  # a caller changing its copy changes no other caller's map
    assert np.array_equal(ex.explain_one(cm, img, "Grad-CAM").heatmap, a.heatmap)
    assert a.raw.shape == (96, 96) and a.raw.min() >= 0
    with pytest.raises(ValueError, match="expects a"):
        ex.explain_one(cm, img[:50], "Grad-CAM")
    with pytest.raises(ValueError, match="unknown CAM method"):
        ex.explain_one(cm, img, "Magic-CAM")


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_cam_method(tiny_run, kermany224, method):
    cm = ex.cached_model(_run(tiny_run).model("small_cnn"))
    img = load_for_model(sorted((kermany224 / "val" / "PNEUMONIA").glob("*.jpeg"))[0], cm.loaded.input_size)
    r = ex.explain_one(cm, img, method, use_cache=False)
    assert r.heatmap.shape == (96, 96) and np.isfinite(r.heatmap).all()
    assert _all_hooks(cm.loaded.model) == []


def test_errors_of_and_label_at():
    preds = pd.DataFrame({"path": list("abcdefg"), "label": [0, 0, 0, 1, 1, 1, 0],
                          "probability": [0.9, 0.6, 0.1, 0.2, 0.05, 0.8, 0.5]})
    fp, fn = ex.errors_of(preds, 0.5)
    assert list(fp["path"]) == ["a", "b", "g"]  # p >= threshold is PNEUMONIA; most confident first
    assert list(fn["path"]) == ["e", "d"]
    assert ex.label_at(0.5, 0.5) == "PNEUMONIA" and ex.label_at(0.49, 0.5) == "NORMAL"


def test_resolve_image_path_relative_to_data_root(tiny_run, tmp_path):
    run = _run(tiny_run)
    rel = str(run.model("small_cnn").predictions("test")["path"].iloc[0])  # stored relative to the data root
    assert not Path(rel).is_absolute()
    absolute = Path(run.info["data_root"]) / rel
    assert ex.resolve_image_path(rel, run) == absolute.resolve()
    assert ex.resolve_image_path(str(absolute), run) == absolute.resolve()
    assert ex.resolve_image_path(str(tmp_path / "nope.jpeg"), run) is None


def _explanation(raw: np.ndarray, method="Grad-CAM", target=1, p=1.0) -> ex.Explanation:
    stretched = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
    return ex.Explanation(probability=p, heatmap=stretched, method=method, target=target, raw=raw)


def test_map_view_uses_the_stored_reference_and_says_what_it_shows(tmp_path):
    from core.store import write_json

    write_json(tmp_path / "cam_reference.json", {"methods": {"Grad-CAM": {"PNEUMONIA": 2.0, "NORMAL": 1.0}}})
    weak = np.full((8, 8), 0.02, np.float32)
    weak[0, 0] = 0.05  # stretched, this film would be one bright hot spot
    view = ex.map_view(_explanation(weak), tmp_path, "m")
    assert view.shared and view.values.max() == pytest.approx(0.025) and "reference" in view.units
    assert "No colour" in view.note
    strong = np.full((8, 8), 1.0, np.float32)
    assert ex.map_view(_explanation(strong), tmp_path, "m").values.max() == pytest.approx(0.5)
    # weighted by P(target): the same evidence on a film the model calls NORMAL (p = 0.01) is nearly uncoloured
    assert ex.map_view(_explanation(strong, p=0.01), tmp_path, "m").values.max() == pytest.approx(0.005)
    # with a calibration, the calibrated probability weighs: T = 0.5 turns p = 0.2 into 1/17
    cal = ex.map_view(_explanation(strong * 2, p=0.2), tmp_path, "m", scaling=calibration.Scaling(0.5))
    assert cal.values.max() == pytest.approx(1 / 17, rel=1e-4)
    # targeting NORMAL weighs by 1 - P(PNEUMONIA)
    assert ex.map_view(_explanation(strong, target=0, p=0.25), tmp_path, "m").values.max() == pytest.approx(0.75)
    stretched = ex.map_view(_explanation(weak), tmp_path, "m", ex.STRETCHED)
    assert not stretched.shared and stretched.values.max() == pytest.approx(1.0, abs=1e-3)
    assert "contrast-stretched" in stretched.units
    empty = ex.map_view(_explanation(np.zeros((8, 8), np.float32), target=0), tmp_path, "m")
    assert "Empty map" in empty.note and "NORMAL" in empty.note
    no_ref = ex.map_view(_explanation(weak, method="EigenCAM"), tmp_path, "m")
    assert not no_ref.shared and "No validation reference" in no_ref.note


def test_overlay_and_png_always_carry_the_colour_bar(tiny_run):
    gray = np.tile(np.arange(200, dtype=np.uint8), (120, 1))
    for view in (ex.MapView(np.ones((96, 96), np.float32), "units A", True),
                 ex.MapView(np.zeros((96, 96), np.float32), "units B", False)):
        rgb = ex.overlay_image(gray, view, 0.5)
        # a small film is enlarged (longest side MIN_OVERLAY_SIDE) so the bar's text stays sharp; aspect kept
        h = round(120 * ex.MIN_OVERLAY_SIDE / 200)
        assert rgb.shape[1] == ex.MIN_OVERLAY_SIDE and rgb.shape[0] > h and rgb.dtype == np.uint8  # film + bar
        bar = rgb[h:]
        assert (bar.max(axis=2).astype(int) - bar.min(axis=2) > 60).sum() > 100  # the colour ramp is there
        assert Image.open(io.BytesIO(ex.png_bytes(rgb))).size == (ex.MIN_OVERLAY_SIDE, rgb.shape[0])
    big = np.zeros((700, 600), np.uint8)
    assert ex.overlay_image(big, ex.MapView(np.ones((8, 8), np.float32), "u", True), 0.5).shape[1] == 600


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A one-batch ViT-Tiny run from the real trainer (32 px: the smallest input the ViT takes)."""
    from tests.conftest import KERMANY224
    from trainer.cli import main

    root = tmp_path_factory.mktemp("vit-run") / "artifacts"
    code = main(["train", "--data", str(need(KERMANY224)), "--models", "vit_tiny", "--subset", "8", "--epochs", "1",
                 "--max-train-batches", "1", "--input-size", "32", "--no-pretrained", "--run", "vit",
                 "--artifacts", str(root), "--cache-dir", str(tmp_path_factory.getbasetemp() / "image-cache")])
    assert code == 0
    return root


@pytest.mark.train
def test_vit_cam_through_reshape_transform(vit_run):
    ma = _run(vit_run, "vit").model("vit_tiny")
    cm = ex.cached_model(ma)
    img = load_for_model(_fullres_jpeg(), cm.loaded.input_size)
    for method in ("Grad-CAM", "EigenCAM"):
        r = ex.explain_one(cm, img, method, use_cache=False)
        assert r.heatmap.shape == (32, 32) and np.isfinite(r.heatmap).all()
    assert r.probability == pytest.approx(_independent_probability(vit_run, "vit_tiny", _fullres_jpeg(), "vit"),
                                          abs=1e-6)
    assert _all_hooks(cm.loaded.model) == []


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.parametrize("arch", list(REGISTRY))
def test_every_registry_model(arch, tmp_path_factory):
    """Every architecture of the registry, trained one batch by the real trainer, explained by the dashboard."""
    from tests.conftest import KERMANY224
    from trainer.cli import main

    root = tmp_path_factory.mktemp(f"reg-{arch}") / "artifacts"
    assert main(["train", "--data", str(need(KERMANY224)), "--models", arch, "--subset", "8", "--epochs", "1",
                 "--max-train-batches", "1", "--input-size", "32", "--no-pretrained", "--run", "one",
                 "--artifacts", str(root), "--cache-dir",
                 str(tmp_path_factory.getbasetemp() / "image-cache")]) == 0
    cm = ex.cached_model(_run(root, "one").model(arch))
    img = load_for_model(_fullres_jpeg(), 32)
    r = ex.explain_one(cm, img, "Grad-CAM", use_cache=False)
    assert r.heatmap.shape == (32, 32) and np.isfinite(r.heatmap).all()
    assert _all_hooks(cm.loaded.model) == []


# --- page 4: Grad-CAM ----------------------------------------------------------------------------------------------

def test_gradcam_page_without_images_invites_an_upload(tiny_run, monkeypatch):
    at = _app(GRADCAM, tiny_run, monkeypatch).run()
    _no_exception(at)
    assert at.file_uploader and set(at.file_uploader[0].allowed_type) >= {".png", ".jpeg", ".jpg", ".dcm"}
    assert any("Upload" in i.value for i in at.info)
    assert any("Research use only" in w.value for w in at.sidebar.warning)


def test_gradcam_page_test_split_pick_matches_core_inference(tiny_run, monkeypatch):
    at = _app(GRADCAM, tiny_run, monkeypatch).run()
    pick = at.multiselect(key="cam_test_pick")
    run = _run(tiny_run)
    preds = run.model("small_cnn").predictions("test")
    path = str(preds["path"].iloc[0])
    pick.set_value([path]).run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert len(at.image) == 3  # the film + one overlay per model
    assert [m.label for m in at.metric] == ["P(PNEUMONIA)", "P(PNEUMONIA)"]
    for metric, model in zip(at.metric, ["small_cnn", "mobilenet_v2"]):
        want = _independent_probability(tiny_run, model, run.locate(path))
        scaling = store.read_scaling(run.model(model).dir)  # the trainer fitted one after training
        assert scaling is not None and metric.value == f"{scaling(want):.3f}"
        csv = run.model(model).predictions("test").set_index("path")["probability"][path]
        assert abs(want - csv) < 1e-3  # the trainer's own evaluation saw the same pixels
        thr = run.model(model).threshold("youden")
        shown_thr = scaling(thr)
        assert any(f"threshold {shown_thr:.3f}: **{ex.label_at(want, thr)}**" in md.value for md in at.markdown)
        assert any(f"raw {want:.3f}" in c.value for c in at.caption)
    assert sum("Research use only" in c.value for c in at.caption) == 1  # the notice once per page, not per map
    assert len(at.download_button) == 2
    at.run()  # same films again: maps come from the cache and say so (not "0.00 s")
    assert [img.captions[0].endswith("cached") for img in at.image[1:]] == [True, True]

    # Another method and the other class: still renders, nothing raised.
    at.selectbox(key="cam_method").set_value("EigenCAM")
    at.radio(key="cam_target").set_value("NORMAL")
    at.slider(key="cam_alpha").set_value(0.8).run()
    _no_exception(at)
    assert len(at.image) == 3 and "EigenCAM of NORMAL" in at.image[1].captions[0]


def test_gradcam_page_score_cam_says_its_measured_time_and_draws_every_map(tiny_run, monkeypatch):
    """Score-CAM (seconds per film: a progress bar while it runs, gone once the maps are drawn) on the example
    film, for every chosen model, with the sidebar saying what it costs."""
    at = _app(GRADCAM, tiny_run, monkeypatch)
    at.session_state["cam_method"] = "Score-CAM"
    at.run()
    _no_exception(at)
    (warning,) = [w.value for w in at.sidebar.warning if "Score-CAM" in w.value]
    assert "5 s per film" in warning and "progress bar" in warning
    maps = [img.captions[0] for img in at.image[1:]]
    assert len(maps) == 2 and all(c.startswith("Score-CAM of PNEUMONIA") for c in maps), maps
    assert not at.get("progress")


def test_gradcam_page_uploads_good_and_bad_files(tiny_run, monkeypatch):
    jpeg = _fullres_jpeg().read_bytes()
    gray = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L").resize((300, 260)))
    files = [
        ("film.jpeg", jpeg, "image/jpeg"),
        ("notes.png", b"this is a text file, not a picture\n", "image/png"),
        ("broken.jpeg", jpeg[: len(jpeg) // 3], "image/jpeg"),
        ("film16.png", _png16(gray), "image/png"),
        ("film.dcm", _dicom(gray), "application/dicom"),
        ("bomb.png", _huge_png(), "image/png"),
    ]
    at = _app(GRADCAM, tiny_run, monkeypatch).run()
    at.file_uploader[0].set_value(files).run()
    _no_exception(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 3, errors
    assert "notes.png" in errors[0] and "not a JPEG, PNG or DICOM" in errors[0]
    assert "broken.jpeg" in errors[1]
    assert "bomb.png" in errors[2] and "pixels" in errors[2]
    assert len(at.image) == 3 * 3  # three good films, each: the film + two overlays
    assert len(at.metric) == 3 * 2
    want = _independent_probability(tiny_run, "small_cnn", jpeg)
    scaling = store.read_scaling(_run(tiny_run).model("small_cnn").dir)
    assert at.metric[0].value == f"{scaling(want):.3f}"
    assert [s.value for s in at.subheader] == [f[0] for f in files]  # errors sit in each file's own spot


def test_gradcam_page_missing_checkpoint_hits_that_model_only(tiny_run, tmp_path, monkeypatch):
    root = _copy_run(tiny_run, tmp_path)
    (root / "tiny" / "mobilenet_v2" / "checkpoints" / "best.safetensors").unlink()
    at = _app(GRADCAM, root, monkeypatch).run()
    at.file_uploader[0].set_value(("film.jpeg", _fullres_jpeg().read_bytes(), "image/jpeg")).run()
    _no_exception(at)
    assert len(at.error) == 1 and "mobilenet_v2" in at.error[0].value and "best.safetensors" in at.error[0].value
    assert len(at.metric) == 1 and len(at.image) == 2  # small_cnn still shows its map


# --- page 5: Errors ------------------------------------------------------------------------------------------------

def _expected_errors(root: Path, model: str, split: str, rule: str = "youden"):
    ma = _run(root).model(model)
    p = ma.predictions(split)
    t = ma.threshold(rule)
    fp = int(((p["probability"] >= t) & (p["label"] == 0)).sum())
    fn = int(((p["probability"] < t) & (p["label"] == 1)).sum())
    return fp, fn, len(p), t


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_errors_page_counts_and_gallery(tiny_run, monkeypatch):
    at = _app(ERRORS, tiny_run, monkeypatch).run()
    _no_exception(at)
    assert "Score-CAM" not in at.selectbox(key="err_method").options  # minutes per film: not for a gallery
    fp, fn, n, t = _expected_errors(tiny_run, "small_cnn", "test")
    m = _metrics(at)
    assert m["Films (test)"] == str(n) and m["Threshold"] == f"{t:.3f}"
    assert m["False positives"] == str(fp) and m["False negatives"] == str(fn)
    per = 2
    assert len(at.image) == 2 * (min(per, fp) + min(per, fn))  # each error: the plain film beside its map
    tables = [d.value for d in at.dataframe]
    assert [len(d) for d in tables] == [x for x in (min(per, fp), min(per, fn)) if x]
    if fp:  # most confident first
        assert list(tables[0].iloc[:, 2]) == sorted(tables[0].iloc[:, 2], reverse=True)

    at.slider(key="err_n").set_value(3)
    at.selectbox(key="err_split").set_value("val").run()
    _no_exception(at)
    fp, fn, n, t = _expected_errors(tiny_run, "small_cnn", "val")
    m = _metrics(at)
    assert (m["False positives"], m["False negatives"], m["Films (val)"]) == (str(fp), str(fn), str(n))
    assert len(at.image) == 2 * (min(3, fp) + min(3, fn))

    at.selectbox(key="err_model").set_value("mobilenet_v2")
    at.selectbox(key="err_split").set_value("test")
    at.selectbox(key="err_rule").set_value("default").run()
    _no_exception(at)
    fp, fn, n, t = _expected_errors(tiny_run, "mobilenet_v2", "test", "default")
    m = _metrics(at)
    assert (m["False positives"], m["False negatives"], m["Threshold"]) == (str(fp), str(fn), "0.500")


def test_errors_page_without_data_folder_shows_tables_only(tiny_run, tmp_path, monkeypatch):
    root = _copy_run(tiny_run, tmp_path)
    csv = root / "tiny" / "small_cnn" / "predictions_test.csv"
    df = pd.read_csv(csv)
    df["path"] = [str(tmp_path / "gone" / Path(p).name) for p in df["path"]]
    df.to_csv(csv, index=False)
    at = _app(ERRORS, root, monkeypatch).run()
    _no_exception(at)
    assert any("absent" in i.value for i in at.info)
    assert len(at.image) == 0 and len(at.dataframe) >= 1
    fp, fn, _, _ = _expected_errors(root, "small_cnn", "test")
    assert _metrics(at)["False positives"] == str(fp) and _metrics(at)["False negatives"] == str(fn)


# --- example films and the warm-up -----------------------------------------------------------------------------

def test_example_films_are_test_split_films_of_every_committed_run():
    """No committed model was trained or tuned on an example film: each is a test film of every run that has its
    source, and no other film of its patient is in train or val."""
    runs = list_runs(REPO / "artifacts")
    assert runs and len(ex.EXAMPLES) == 3 and {e.truth for e in ex.EXAMPLES} == {0, 1}
    for example in ex.EXAMPLES:
        assert example.path.is_file(), example.path
        found = 0
        for run in runs:
            split = run.split_table()
            rows = split[split["path"].astype(str).str.endswith("/" + example.file)]
            if rows.empty:
                continue
            found += 1
            patients = set(rows["patient_id"])
            assert set(split[split["patient_id"].isin(patients)]["split"]) == {"test"}, (run.id, example.file)
        assert found >= 1, example.file  # the default run (children and adults) has every example


def test_warm_up_fills_the_caches_the_pages_read(tiny_run, monkeypatch):
    """``dashboard.warm`` (what the server runs in the background once its first page is drawn): afterwards the
    default models are loaded and each example film's map is served from the cache."""
    from core.data.labels import POSITIVE
    from core.store import default_run
    from dashboard import common, curves, warm

    monkeypatch.setenv("CXR_ARTIFACTS", str(tiny_run))
    assert warm.warm(tiny_run) > 0
    run = default_run(list_runs(tiny_run), tiny_run)
    nets = [run.model(n) for n in common.default_models(run.models) if not run.model(n).is_ensemble]
    assert nets
    for m in nets:
        cm = ex.cached_model(m)
        for example in ex.EXAMPLES:
            pixels = ex.decoded(example.path, example.file).for_model(cm.loaded.input_size)
            assert ex.explain_one(cm, pixels, "Grad-CAM", POSITIVE).cached, (m.name, example.file)
    # The Training curves page's first view draws the figures the warm-up built: it builds none of its own.
    built = sum(curves.BUILT.values())
    at = page_app("1_Training_curves.py")
    at.run(timeout=60)
    assert not at.exception and len(at.get("plotly_chart")) == len(curves.OVERLAID)  # the expander's: when opened
    assert sum(curves.BUILT.values()) == built > 0
