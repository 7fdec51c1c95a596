"""Reliability corpus, round two (issue 22): special files, values checked for meaning, derived files tied to what
they derive from, films that decode to nothing, leakage by content, and one-line CLI errors. Table-driven like
test_reliability.py: each case builds its bad input on the fly, runs the real code and checks the clean outcome.
Nothing here trains a model; the one ONNX case exports a 64 px small_cnn.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from conftest import KERMANY224, need, write_dicom
from PIL import Image

from core import store
from core.data import images
from core.store import ArtifactError, Run

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "artifacts" / "kermany-lineup"
EXIT_DATA, EXIT_CONFIG = 2, 3


def _within(seconds: float, fn):
    """``fn()``'s result or exception, failing the test when it has not returned in ``seconds`` (a hang)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds}s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def run_copy(tmp_path) -> Path:
    """The committed run's run.json, split.csv and one model's small files (no checkpoints), to damage."""
    if not (COMMITTED / "run.json").is_file():
        pytest.skip("committed run not present")
    dst = tmp_path / "artifacts" / "run"
    dst.mkdir(parents=True)
    for name in ("run.json", "split.csv"):
        shutil.copy(COMMITTED / name, dst / name)
    shutil.copytree(COMMITTED / "small_cnn", dst / "small_cnn", ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def _edit(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


# ------------------------------------------------------------------------------------------------ special files

READERS = [
    ("run.json", lambda r: r.info), ("split.csv", lambda r: r.split_table()),
    ("small_cnn/config.json", lambda r: r.model("small_cnn").config),
    ("small_cnn/status.json", lambda r: r.model("small_cnn").status()),
    ("small_cnn/metrics_test.json", lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/predictions_test.csv", lambda r: r.model("small_cnn").predictions("test")),
    ("small_cnn/history.csv", lambda r: r.model("small_cnn").history()),
]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
@pytest.mark.parametrize("file, read", READERS, ids=[f for f, _ in READERS])
def test_special_file_in_place_of_an_artifact_is_refused_without_opening_it(run_copy, file, read, kind):
    path = run_copy / file
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless
    else:
        path.mkdir()
    with pytest.raises(ArtifactError, match=f"{path.name}: is a"):
        _within(10, lambda: read(Run(run_copy)))


@pytest.mark.parametrize("name", ["best.safetensors", "last.pt"])
def test_a_checkpoint_that_is_a_pipe_is_refused(tmp_path, name):
    from core.models.checkpoints import load_best, load_resume

    os.mkfifo(tmp_path / name)
    load = (lambda: load_resume(tmp_path / name)) if name.endswith(".pt") else \
        (lambda: load_best(__import__("torch").nn.Linear(1, 1), tmp_path / name))
    with pytest.raises(ArtifactError, match="not a file"):
        _within(10, load)


def test_home_listing_and_default_run_do_not_hang_on_pipes(run_copy):
    root = run_copy.parent
    os.mkfifo(root / store.DEFAULT_RUN_FILE)
    (run_copy / "small_cnn" / "status.json").unlink()
    os.mkfifo(run_copy / "small_cnn" / "status.json")
    runs = _within(10, lambda: store.list_runs(root))
    assert _within(10, lambda: store.default_run(runs, root)).id == "run"
    (root / "dangling").mkdir()
    (root / "dangling" / "run.json").symlink_to(root / "nowhere.json")  # listed, not a crash
    assert "run" in [r.id for r in _within(10, lambda: store.list_runs(root))]


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_lock_file_that_is_a_pipe_or_link_is_refused(tmp_path, kind):
    from trainer.locks import run_lock

    run_dir, victim = tmp_path / "r", tmp_path / "precious.txt"
    run_dir.mkdir()
    victim.write_text("keep me")
    if kind == "fifo":
        os.mkfifo(run_dir / ".lock")
    else:
        (run_dir / ".lock").symlink_to(victim)  # truncating through it would empty another file

    def take():
        with run_lock(run_dir):
            pass

    with pytest.raises(ArtifactError, match=".lock"):
        _within(10, take)
    assert victim.read_text() == "keep me"


def test_image_loader_refuses_a_pipe(tmp_path):
    os.mkfifo(tmp_path / "film.png")
    with pytest.raises(images.ImageError, match="not a regular file"):
        _within(10, lambda: images.load_xray(tmp_path / "film.png"))


# --------------------------------------------------------------------------------------- values checked for meaning

METRICS = "small_cnn/metrics_test.json"
CONFIG = "small_cnn/config.json"
VALUE_CASES = [
    (METRICS, "auc", 7.5), (METRICS, "auc", -0.1), (METRICS, "auc_ci", [0.99, 0.9]), (METRICS, "auc_ci", [0.5, 3]),
    (METRICS, "brier", 2.0), (METRICS, "ece", 1.5), (METRICS, "prevalence", 3),
    (METRICS, "thresholds", {"youden": {"value": 1.5}}), (METRICS, "thresholds", {"youden": {"value": None}}),
    (METRICS, "at", {"youden": {"threshold": 0.5, "sensitivity": 1.2}}), (METRICS, "at", {"youden": {"tp": -1}}),
    (METRICS, "roc", {"fpr": [0, 2], "tpr": [0, 1]}), (METRICS, "calibration", {"count": [-5]}),
    (CONFIG, "preprocess", "sharpen"), (CONFIG, "framing", "heart"), (CONFIG, "lung_model_sha256", "abc"),
]


def _read(run_dir: Path, file: str):
    m = Run(run_dir).model("small_cnn")
    return m.metrics("test") if "metrics" in file else m.config


@pytest.mark.parametrize("file, key, value", VALUE_CASES, ids=[f"{f.split('/')[-1]}:{k}={v!r}"
                                                              for f, k, v in VALUE_CASES])
def test_value_out_of_its_meaningful_range_is_one_clear_error(run_copy, file, key, value):
    _edit(run_copy / file, **{key: value})
    with pytest.raises(ArtifactError, match=f"{file.split('/')[-1]}: field '{key}'"):
        _read(run_copy, file)


def test_counts_that_do_not_add_up_are_refused(run_copy):
    _edit(run_copy / METRICS, n=5)
    with pytest.raises(ArtifactError, match="do not add up"):
        _read(run_copy, METRICS)


def test_the_committed_runs_pass_every_value_check():
    for run in store.list_runs(REPO / "artifacts"):
        for m in run.models:
            _ = m.config
            for split in m.splits():
                m.metrics(split)
            store.read_scaling(m.dir)


def _iso(delta: timedelta) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat(timespec="seconds")


@pytest.mark.parametrize("heartbeat, stale", [(timedelta(0), False), (timedelta(days=3650), True),
                                              (timedelta(hours=-2), True), ("9999-12-31T23:59:59+00:00", True),
                                              ("2026-01-01T00:00:00", True), ("soon", True)])
def test_a_heartbeat_in_the_future_or_absurd_reads_as_stale(run_copy, heartbeat, stale):
    """Offsets from now are turned into timestamps when the test runs, not when it is collected."""
    heartbeat = _iso(heartbeat) if isinstance(heartbeat, timedelta) else heartbeat
    _edit(run_copy / "small_cnn" / "status.json", state="running", heartbeat=heartbeat)
    assert Run(run_copy).model("small_cnn").status()["stale"] is stale


@pytest.mark.parametrize("stored, message", [({"temperature": 1e-9}, "temperature"),
                                             ({"temperature": 1e9}, "temperature"),
                                             ({"temperature": 1.0, "bias": 1e6}, "bias"),
                                             ({"temperature": "1"}, "temperature")])
def test_calibration_outside_the_fitted_range_is_refused(run_copy, stored, message):
    store.write_json(run_copy / "small_cnn" / "calibration.json", stored)
    with pytest.raises(ArtifactError, match=message):
        store.read_scaling(Run(run_copy).model("small_cnn").dir)


@pytest.mark.parametrize("value", [1e-30, 1e30, "2.0", True, -1])
def test_cam_reference_outside_meaningful_bounds_is_refused(tmp_path, value):
    store.write_json(tmp_path / store.CAM_REFERENCE_FILE, {"methods": {"Grad-CAM": {"PNEUMONIA": value}}})
    with pytest.raises(ArtifactError, match="reference"):
        store.read_cam_reference(tmp_path, "Grad-CAM", "PNEUMONIA")
    store.write_json(tmp_path / store.CAM_REFERENCE_FILE, {"methods": {"Grad-CAM": {"PNEUMONIA": 0.02}}})
    assert store.read_cam_reference(tmp_path, "Grad-CAM", "PNEUMONIA") == 0.02


@pytest.mark.parametrize("models", [{"m": {"Grad-CAM": {"road": "x", "sanity_rho": 0.1, "sanity_pass": True}}},
                                    {"m": {"Grad-CAM": {"road": 0.1, "sanity_rho": 7, "sanity_pass": True}}},
                                    {"m": {"Grad-CAM": {"road": 0.1, "sanity_rho": 0.1, "sanity_pass": "no"}}},
                                    {"m": [1, 2]}, [1]])
def test_malformed_faithfulness_figures_are_one_clear_error(tmp_path, models):

    store.write_json(tmp_path / store.FAITHFULNESS_FILE, {"models": models})
    with pytest.raises(ArtifactError, match="field 'models'"):
        store.read_faithfulness(tmp_path)


# ------------------------------------------------------------------------------------- films that show nothing

def _ramp(h: int = 400, w: int = 300) -> np.ndarray:
    return np.clip(np.add.outer(np.arange(h), np.arange(w)) // 3, 0, 255).astype(np.uint8)


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    """A JPEG whose data stops a third of the way in, closed with an end marker: decodes without error, to grey."""
    data = _encoded(_ramp(), "JPEG")
    return data[: len(data) // 3] + b"\xff\xd9"


def _wide_png() -> bytes:
    return _encoded(np.tile(np.arange(250, dtype=np.uint8), 200)[None, :], "PNG")  # 50000 x 1


FILMS = [("truncated-jpeg", _truncated_jpeg, images.BlankImageError, "truncated"),
         ("flat-grey-jpeg", lambda: _encoded(np.full((300, 300), 128, np.uint8), "JPEG"), images.BlankImageError,
          "one value"),
         ("nearly-flat-png", lambda: _encoded(np.pad(np.full((5, 5), 9, np.uint8), ((0, 295), (0, 295))), "PNG"),
          images.BlankImageError, "one value"),
         ("50000x1-png", _wide_png, images.UnsupportedImageError, "50000x1")]


@pytest.mark.parametrize("make, error, message", [f[1:] for f in FILMS], ids=[f[0] for f in FILMS])
def test_a_film_that_shows_nothing_is_refused_with_a_reason(make, error, message):
    data = make()
    for load in (lambda: images.load_xray(data, name="up.jpg"), lambda: images.load_for_model(data, 224, name="up")):
        with pytest.raises(error, match=message):
            load()


@pytest.mark.parametrize("make, error, message", [f[1:] for f in FILMS], ids=[f[0] for f in FILMS])
def test_an_upload_that_shows_nothing_is_an_image_error_on_the_page(make, error, message):
    from dashboard import explain as ex

    image = ex.decoded(make(), "upload.jpg")
    for use in (image.display, lambda: image.for_model(224)):  # what the Grad-CAM page catches as ImageError
        with pytest.raises(error, match=message):
            use()


def test_dicom_whose_window_gives_an_all_black_film_is_refused(tmp_path):
    pixels = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128)
    path = write_dicom(tmp_path / "f.dcm", pixels, raw_tags={"WindowCenter": "900000", "WindowWidth": "10"})
    with pytest.raises(images.BlankImageError, match="one value 0"):
        images.load_xray(path)
    ok = write_dicom(tmp_path / "g.dcm", pixels, raw_tags={"WindowCenter": "8000", "WindowWidth": "16384"})
    assert images.load_xray(ok).std() > 10


def test_real_films_are_not_refused():
    for path in sorted(need(KERMANY224).glob("train/*/*.jpeg"))[:40]:
        assert images.load_for_model(path, 224).std() > 5


def test_cache_build_skips_and_lists_films_that_show_nothing(tmp_path):
    from core.data import cache
    from core.data.layouts import Sample

    good = [Sample(str(p), i % 2, f"p{i}", "train") for i, p in enumerate(sorted(need(KERMANY224).glob(
        "train/*/*.jpeg"))[:3])]
    blank = tmp_path / "blank.jpeg"
    blank.write_bytes(_truncated_jpeg())
    built = cache.load_or_build([*good, Sample(str(blank), 1, "px", "train")], 64, root=tmp_path / "c", workers=1)
    assert built.ok.tolist() == [True, True, True, False]
    assert [p for p, _ in built.failures] == [str(blank)] and "truncated" in built.failures[0][1]


# ----------------------------------------------------------------------------------------------- leakage by content

def test_copies_of_training_films_under_new_names_are_found(tmp_path):
    from trainer.overlap import content_overlap, leak_message

    data = tmp_path / "data"
    films = sorted(need(KERMANY224).glob("train/*/*.jpeg"))[:6]
    rows = []
    for i, f in enumerate(films):
        dst = data / "train" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
        rows.append({"path": f"train/{f.parent.name}/{f.name}", "label": 0, "patient_id": f"p{i}",
                     "split": ("train", "val", "test")[i % 3]})
    run_dir = tmp_path / "artifacts" / "r"
    store.write_csv(run_dir / "split.csv", rows, store.SPLIT_COLUMNS)
    store.write_json(run_dir / "run.json", {"data_root": str(data)})
    external = tmp_path / "external"
    external.mkdir()
    leaked = [shutil.copy(films[0], external / "renamed.jpeg"), shutil.copy(films[1], external / "other.jpeg")]
    shutil.copy(films[2], external / "test-film.jpeg")  # the run's test film: not train/val, not a leak
    same_size = bytearray(films[3].read_bytes())
    same_size[-3] ^= 1
    (external / "same-size.jpeg").write_bytes(bytes(same_size))

    class S:  # what evaluate holds: anything with .path
        def __init__(self, path):
            self.path = path

    samples = [S(p) for p in sorted(external.iterdir())]
    found = content_overlap(Run(run_dir), samples)
    assert sorted(found) == sorted(map(str, leaked))
    assert "2 of 4 films" in leak_message(found, len(samples))


# ------------------------------------------------------------------------------------------------ derived files

def _model_folder(tmp_path: Path, **config) -> tuple[Run, object]:
    """A run with one small_cnn (random weights, 64 px): config.json and best.safetensors."""
    from core.models.checkpoints import save_best
    from core.models.registry import create_model

    run_dir = tmp_path / "run"
    model, _ = create_model("small_cnn", pretrained=False, input_size=64)
    store.ModelWriter(run_dir, "m").config({"name": "m", "arch": "small_cnn", "input_size": 64, **config})
    save_best(model, run_dir / "m" / "checkpoints" / "best.safetensors")
    return Run(run_dir), model


def test_a_lung_framed_model_refuses_another_lung_model(tmp_path):
    from core.models import lungs
    from core.models.inference import load_trained

    run, _ = _model_folder(tmp_path, framing="lungs", lung_model_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="lung model"):
        load_trained(run.model("m"))
    run2, _ = _model_folder(tmp_path / "ok", framing="lungs", lung_model_sha256=lungs.lung_model_sha256())
    assert load_trained(run2.model("m")).framing == "lungs"


def test_an_onnx_graph_of_other_weights_claiming_the_checkpoint_is_not_used(tmp_path, caplog):
    import torch

    from core.models import onnx_backend
    from core.models.inference import load_trained, predict_loaded
    from core.models.registry import create_model
    from core.models.weights import sha256_of

    run, _ = _model_folder(tmp_path)
    art = run.model("m")
    loaded = load_trained(art)
    ckpt = art.best_checkpoint()
    torch.manual_seed(1)
    other, _ = create_model("small_cnn", pretrained=False, input_size=64)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05)
    onnx_backend.write_export(other.eval(), 64, store.onnx_beside(ckpt),
                              {"checkpoint_sha256": sha256_of(ckpt), "arch": "small_cnn"})  # a lie
    films = np.random.default_rng(0).integers(0, 256, (4, 64, 64), np.uint8)
    got = predict_loaded(loaded, films, backend="onnx")
    assert np.abs(got - predict_loaded(loaded, films, backend="torch")).max() <= 1e-4
    assert "weights differ" in caplog.text  # a logged warning
    assert loaded.forward("onnx").session._model_path != str(store.onnx_beside(ckpt))


# ---------------------------------------------------------------------------------------------------- the CLI

def _cli(*argv: str, env: dict | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    import resource
    import signal

    def limits():
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "trainer", *argv], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=300, preexec_fn=limits, check=False)


def _one_line(code: int, err: str, want: int, *words: str) -> None:
    assert code == want, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = next(ln for ln in err.splitlines() if ln.startswith("error: "))
    for w in words:
        assert w in line, line


def _main(capsys, *argv: str) -> tuple[int, str]:
    """The CLI in this process (subprocesses cost a torch import each): exit code and stderr."""
    from trainer.cli import main

    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_backend_is_one_line_before_any_work(run_copy, capsys, monkeypatch):
    monkeypatch.setenv("CXR_BACKEND", "tensorrt")
    _one_line(*_main(capsys, "report", "--run", str(run_copy)), EXIT_CONFIG, "tensorrt")


def test_report_update_into_a_missing_folder_is_one_line(run_copy, tmp_path, capsys):
    _one_line(*_main(capsys, "report", "--run", str(run_copy), "--update", str(tmp_path / "no" / "README.md")),
              EXIT_DATA, "README.md", "missing")


def test_cuda_without_a_gpu_is_one_config_error_before_any_model(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = _main(capsys, "train", "--data", str(need(KERMANY224)), "--models", "small_cnn,mobilenet_v2", "--device",
                "cuda", "--run", "r", "--artifacts", str(tmp_path / "a"), "--cache-dir", str(tmp_path / "c"))
    _one_line(*out, EXIT_CONFIG, "cuda", "no CUDA GPU")
    assert not (tmp_path / "a" / "r" / "small_cnn").exists()


def test_export_with_every_model_skipped_is_a_failure(run_copy, capsys):
    code, err = _main(capsys, "export", "--run", str(run_copy))  # small_cnn has no checkpoint here
    assert code == 1 and "nothing exported" in err, err[-2000:]


@pytest.mark.integration
def test_full_disk_while_writing_a_run_file_is_one_line_naming_it(run_copy):
    shutil.copytree(COMMITTED / "deep_cnn", run_copy / "deep_cnn", ignore=shutil.ignore_patterns("checkpoints"))
    out = _cli("ensemble", "--run", str(run_copy), "--members", "small_cnn,deep_cnn", "--name", "e", fsize=20_000)
    _one_line(out.returncode, out.stderr, EXIT_DATA, str(run_copy / "e"), "disk is full")
    assert not list(run_copy.rglob(".*.tmp"))  # nothing half-written left
