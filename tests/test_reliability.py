"""Reliability corpus, library side (issue 14): each case builds its bad input on the fly, feeds it to the real
code and asserts the clean outcome: a clear error naming the problem, nothing lost, nothing read outside the data
root, no traceback. Cases that could eat the host's memory or disk run in a subprocess under ``setrlimit``, so a
regression fails the test instead of taking the machine down. The command-line side is in
test_reliability_cli.py.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dicom
from PIL import Image

from core import store
from core.data import cache, images
from core.data import layouts as data
from core.data.layouts import DataError, Sample
from core.store import ArtifactError, Run
from trainer import config

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "artifacts" / "kermany-lineup"
GiB = 2**30


def run_capped(code: str, *, mem: int = 1 * GiB, fsize: int | None = None, timeout: int = 120, prefix=()):
    """Run ``code`` in a fresh interpreter with its address space (and file size) capped."""

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the cap a write fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*prefix, sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=limits, check=False)


def _png(path: Path, value: int = 0, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path, format="PNG")
    return path


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that costs no disk (holes), starting with ``head``."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


# ---------------------------------------------------------------------------------------------------- config

BAD_VALUES = [
    ("input_size", 0, "input_size"), ("input_size", 100000, "input_size"), ("input_size", "big", "input_size"),
    ("epochs", 0, "epochs"), ("epochs", 3.5, "epochs"), ("batch_size", 0, "batch_size"),
    ("lr", float("nan"), "lr"), ("lr", float("inf"), "lr"), ("lr", -0.1, "lr"), ("lr", 0, "lr"),
    ("threads", -1, "threads"), ("workers", 0, "workers"), ("device", "bogus", "device"),
    ("device", "cuda:x", "device"), ("seed", "abc", "seed"), ("seed", -1, "seed"), ("seed", True, "seed"),
    ("val_fraction", 1.5, "val_fraction"), ("test_fraction", -0.1, "test_fraction"),
    ("label_smoothing", 1.0, "label_smoothing"), ("blur_prob", 2, "blur_prob"), ("tta", 0, "tta"),
    ("optimizer", "sgd", "optimizer"), ("augment", "maybe", "augment"), ("patience", 0, "patience"),
    ("subset", 0, "subset"), ("max_train_batches", 0, "max_train_batches"), ("run", "../../x", "run"),
    ("run", "a/b", "run"), ("run", "..", "run"), ("run", ["x"], "run"), ("models", 5, "models"),
    ("models", [], "models"), ("models", [{"arch": "small_cnn", "name": "../up"}], "name"),
    ("models", [{"arch": "small_cnn", "epochs": "many"}], "epochs"),
    ("ensembles", [{"name": "e", "members": "a"}], "ensembles"), ("ensembles", 5, "ensembles"),
    ("duplicates", "ignore", "duplicates"), ("target_sensitivity", 1, "target_sensitivity"),
]


@pytest.mark.parametrize("key, value, named", BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_config_value_out_of_bounds_is_a_clear_error(key, value, named):
    with pytest.raises(config.ConfigError, match=named):
        config.entries(config.build({"data": "d", key: value}, {}))


def test_config_file_with_wrong_types_fails_at_load_not_later(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: d\nseed: abc\nmodels: 5\n")
    with pytest.raises(config.ConfigError, match="seed"):
        config.build(config.load_file(cfg), {})


def test_config_accepts_sensible_values_and_converts_text():
    cfg = config.build({"data": "d", "lr": "3e-4", "epochs": 2.0, "augment": "no", "device": "CPU"}, {})
    assert (cfg.recipe.lr, cfg.recipe.epochs, cfg.recipe.augment, cfg.device) == (3e-4, 2, False, "CPU")
    assert config.entries(config.build(config.load_file(REPO / "configs" / "lineup.yaml"), {}))


def test_every_recipe_key_is_checked_even_without_an_explicit_rule(monkeypatch):
    monkeypatch.delitem(config.RULES, "patience")
    with pytest.raises(config.ConfigError, match="patience"):
        config.build({"data": "d", "patience": "soon"}, {})


# ---------------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("head, error", [(b"just text, nothing else", "UnsupportedImageError"),
                                         (b"\x89PNG\r\n\x1a\n", "ImageTooLargeError")])
@pytest.mark.subprocess
def test_huge_file_is_refused_without_being_read(tmp_path, head, error):
    path = _sparse(tmp_path / "huge.png", 3 * GiB, head)
    out = run_capped(f"""
        from core.data import images
        try:
            images.load_xray({str(path)!r})
        except images.ImageError as e:
            print(type(e).__name__, e)
    """, mem=1 * GiB)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(error), out.stdout


def test_non_image_upload_is_refused_after_its_first_bytes():
    class Upload(io.BytesIO):
        read_total = 0

        def read(self, n=-1):
            chunk = super().read(n)
            Upload.read_total += len(chunk)
            return chunk

    upload = Upload(b"%PDF-1.7 " + b"x" * 5_000_000)
    with pytest.raises(images.UnsupportedImageError):
        images.load_xray(upload, name="report.pdf")
    assert Upload.read_total <= 132


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid grayscale PNG of width x height black pixels, streamed (a few hundred KB for 144 Mpx)."""
    def chunk(kind, body):
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    comp, row, idat = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        idat.append(comp.compress(row))
    idat.append(comp.flush())
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.subprocess
def test_144_megapixel_png_is_refused_before_decoding(tmp_path):
    path = _png_bomb(tmp_path / "bomb.png", 12000, 12000)
    assert path.stat().st_size < 1_000_000
    out = run_capped(f"""
        import time
        from core.data import images
        t = time.perf_counter()
        try:
            images.load_xray({str(path)!r})
        except images.ImageTooLargeError as e:
            print("refused", round(time.perf_counter() - t, 3), e)
    """, mem=1 * GiB)
    assert out.stdout.startswith("refused"), out.stdout + out.stderr[-2000:]
    assert float(out.stdout.split()[1]) < 1.0


def test_model_input_size_is_bounded_before_allocation():
    with pytest.raises(ValueError, match="size"):
        images.resize_square(np.zeros((8, 8), np.uint8), 30000)


def _film_dicom(path: Path, **tags) -> Path:
    """A 16x16 16-bit ramp with the given DS tags written as text, unvalidated."""
    return write_dicom(path, np.arange(256, dtype=np.uint16).reshape(16, 16), raw_tags=tags)


@pytest.mark.parametrize("tags", [{"WindowCenter": "nan", "WindowWidth": "400"},
                                  {"WindowCenter": "40", "WindowWidth": "inf"},
                                  {"RescaleSlope": "inf", "RescaleIntercept": "0"},
                                  {"RescaleSlope": "1", "RescaleIntercept": "nan"}],
                         ids=["center-nan", "width-inf", "slope-inf", "intercept-nan"])
def test_dicom_with_non_finite_window_or_rescale_is_refused(tmp_path, tags):
    path = _film_dicom(tmp_path / "f.dcm", **tags)
    bad = next(k for k, v in tags.items() if v in ("nan", "inf"))
    with pytest.raises(images.CorruptImageError, match=f"{bad} is {tags[bad]}"):
        images.load_xray(path)


def test_dicom_with_finite_window_still_decodes(tmp_path):
    out = images.load_xray(_film_dicom(tmp_path / "f.dcm", WindowCenter="128", WindowWidth="256"))
    assert out.shape == (16, 16) and out.max() >= 250 and out.min() == 0


# ----------------------------------------------------------------------------------------------------- cache


def _samples(folder: Path, n: int = 12, size=(40, 40)) -> list[Sample]:
    return [Sample(str(_png(folder / f"im{i}.png", 10 * i, size)), i % 2, f"p{i}", "train") for i in range(n)]


@pytest.mark.subprocess
def test_disk_full_during_cache_build_is_a_clear_error_and_leaves_nothing(tmp_path):
    samples = _samples(tmp_path / "imgs")
    root = tmp_path / "cache"
    out = run_capped(f"""
        from core.data import cache
        from core.data.layouts import Sample
        samples = [Sample(*s) for s in {[tuple(vars(s).values()) for s in samples]!r}]
        try:
            cache.load_or_build(samples, 512, root={str(root)!r}, workers=1)
        except cache.CacheError as e:
            print("CacheError:", e)
    """, fsize=1_000_000)  # 12 x 512 x 512 = 3 MB do not fit under a 1 MB file size cap
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CacheError:" in out.stdout and "disk is full" in out.stdout and "--cache-dir" in out.stdout
    assert list(root.iterdir()) == []  # no .building-* folder left


def test_stale_build_folders_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f".building-{dead.pid}-abc").mkdir(parents=True)
    (root / f".building-{dead.pid}-abc" / "images.npy").write_bytes(b"x" * 1000)
    (root / f".building-{os.getpid()}-live").mkdir()
    c = cache.load_or_build(_samples(tmp_path / "imgs"), 32, root=root, workers=1)
    assert c.ok.all()
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted([f".building-{os.getpid()}-live", c.dir.name])


@pytest.mark.parametrize("damage", ["truncate-images", "garbage-index", "wrong-shape"])
def test_damaged_cache_names_the_folder_to_delete(tmp_path, damage):
    samples, root = _samples(tmp_path / "imgs"), tmp_path / "cache"
    c = cache.load_or_build(samples, 32, root=root, workers=1)
    folder = c.dir
    del c
    if damage == "truncate-images":
        with open(folder / "images.npy", "r+b") as f:
            f.truncate(500)
    elif damage == "garbage-index":
        (folder / "index.json").write_text("{not json")
    else:
        index = json.loads((folder / "index.json").read_text())
        (folder / "index.json").write_text(json.dumps({**index, "size": 64}))
    with pytest.raises(cache.CacheError, match=str(folder)) as err:
        cache.load_or_build(samples, 32, root=root, workers=1)
    assert "delete that folder" in str(err.value)
    shutil.rmtree(folder)
    assert cache.load_or_build(samples, 32, root=root, workers=1).ok.all()


# ------------------------------------------------------------------------------------------------------ data


def _kermany(root: Path, n: int = 4) -> Path:
    for split in ("train", "test"):
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for i in range(n):
                value = 40 * i + 7 * label + (split == "test")
                _png(root / split / cls / f"person{i}{split}{cls}_{i}.png", value=value)
    return root


def test_byte_identical_copies_across_splits_are_detected(tmp_path):
    root = _kermany(tmp_path / "d")
    train = sorted((root / "train" / "PNEUMONIA").iterdir())
    for i, f in enumerate(train[:3]):
        shutil.copy(f, root / "test" / "PNEUMONIA" / f"renamed_{i}.png")
    samples = data.scan(root).samples
    groups = data.cross_split_duplicates(samples)
    assert len(groups) == 3 and all({s.split for s in g} == {"train", "test"} for g in groups)
    assert "3 files appear byte-identical" in data.check_duplicates(samples, "warn")
    with pytest.raises(DataError, match="byte-identical"):
        data.check_duplicates(samples, "refuse")


def test_no_duplicates_means_no_warning(tmp_path):
    assert data.check_duplicates(data.scan(_kermany(tmp_path / "d")).samples, "refuse") is None


def test_symlinked_case_variant_class_folder_is_not_counted_twice(tmp_path):
    root = _kermany(tmp_path / "d")
    (root / "train" / "pneumonia").symlink_to(root / "train" / "PNEUMONIA", target_is_directory=True)
    os.symlink(root / "train" / "NORMAL" / min(os.listdir(root / "train" / "NORMAL")),
               root / "train" / "NORMAL" / "zz_link.png")
    scan = data.scan(root)
    counts = data.split_counts(scan.samples)
    assert counts["train"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert any("symlink" in reason for _, reason in scan.skipped)
    assert not any("pneumonia/" in s.path for s in scan.samples)


def test_non_utf8_file_name_is_skipped_with_a_printable_reason(tmp_path):
    root = _kermany(tmp_path / "d")
    bad = os.fsencode(root / "train" / "NORMAL") + b"/caf\xe9.png"
    shutil.copy(next((root / "train" / "NORMAL").iterdir()), bad)
    scan = data.scan(root)
    reasons = [(p, r) for p, r in scan.skipped if "UTF-8" in r]
    assert len(reasons) == 1 and "\\xe9" in reasons[0][0]
    reasons[0][0].encode("utf-8")  # writable to skipped.csv
    assert all("caf" not in s.path for s in scan.samples)


@pytest.mark.subprocess
def test_unreadable_class_folder_is_a_data_error(tmp_path):
    prefix = ()
    if os.geteuid() == 0:  # root reads anything: scan without the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a folder unreadable")
        prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    root = _kermany(tmp_path / "d")
    (root / "train" / "NORMAL").chmod(0)
    try:
        out = run_capped(f"""
            from core.data import layouts as data
            try:
                data.scan({str(root)!r})
            except data.DataError as e:
                print("DataError:", e)
        """, prefix=prefix, mem=2 * GiB)
        assert "DataError: cannot read folder" in out.stdout and "NORMAL" in out.stdout, out.stderr[-2000:]
    finally:
        (root / "train" / "NORMAL").chmod(0o755)


# ------------------------------------------------------------------------------------------------- artifacts


@pytest.fixture
def run_copy(tmp_path) -> Path:
    """The committed run's run.json and one model's small files (no checkpoints), to damage."""
    if not (COMMITTED / "run.json").is_file():
        pytest.skip("committed run not present")
    dst = tmp_path / "run"
    dst.mkdir()
    shutil.copy(COMMITTED / "run.json", dst / "run.json")
    shutil.copytree(COMMITTED / "small_cnn", dst / "small_cnn", ignore=shutil.ignore_patterns("checkpoints"))
    return dst


def _edit(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


FIELD_CASES = [
    ("run.json", "models", 5, lambda r: r.info), ("run.json", "split_counts", "x", lambda r: r.info),
    ("run.json", "split_counts", {"test": {"NORMAL": "many"}}, lambda r: r.info),
    ("run.json", "data_root", ["/"], lambda r: r.info), ("run.json", "n_skipped", -3, lambda r: r.info),
    ("small_cnn/metrics_test.json", "auc_ci", "x", lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/metrics_test.json", "auc", "0.99", lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/metrics_test.json", "thresholds", {"youden": {"value": "x"}},
     lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/metrics_test.json", "at", {"youden": [1, 2]}, lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/metrics_test.json", "roc", {"fpr": "abc"}, lambda r: r.model("small_cnn").metrics("test")),
    ("small_cnn/config.json", "input_size", 30000, lambda r: r.model("small_cnn").config),
    ("small_cnn/config.json", "input_size", "224", lambda r: r.model("small_cnn").config),
    ("small_cnn/config.json", "mean", [0.5], lambda r: r.model("small_cnn").config),
    ("small_cnn/config.json", "members", "a,b", lambda r: r.model("small_cnn").config),
    ("small_cnn/status.json", "message", {"x": 1}, lambda r: r.model("small_cnn").status()),
    ("small_cnn/status.json", "epoch", "two", lambda r: r.model("small_cnn").status()),
]


@pytest.mark.parametrize("file, key, value, read", FIELD_CASES, ids=[f"{f}:{k}={v!r}" for f, k, v, _ in FIELD_CASES])
def test_wrong_typed_artifact_field_is_one_clear_error(run_copy, file, key, value, read):
    _edit(run_copy / file, **{key: value})
    with pytest.raises(ArtifactError, match=f"{file.split('/')[-1]}: field '{key}'"):
        read(Run(run_copy))


def test_run_with_broken_run_json_still_lists_its_models(run_copy):
    _edit(run_copy / "run.json", models=5)
    assert [m.name for m in Run(run_copy).models] == ["small_cnn"]


def test_config_with_huge_input_size_cannot_allocate(run_copy):
    from core.models.inference import load_trained

    _edit(run_copy / "small_cnn" / "config.json", input_size=30000)
    with pytest.raises(ArtifactError, match="input_size"):
        load_trained(Run(run_copy).model("small_cnn"))


def test_duplicated_prediction_rows_are_rejected(run_copy):
    path = run_copy / "small_cnn" / "predictions_test.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[1:4]) + "\n")
    with pytest.raises(ArtifactError, match="3 rows repeat"):
        Run(run_copy).model("small_cnn").predictions("test")


@pytest.mark.parametrize("row", ["x.png,1,abc", "x.png,one,0.5", ",1,0.5", "x.png,2,0.5", "x.png,1,1.5"])
def test_bad_prediction_row_is_an_artifact_error(run_copy, row):
    path = run_copy / "small_cnn" / "predictions_val.csv"
    path.write_text(path.read_text() + row + "\n")
    with pytest.raises(ArtifactError, match="predictions_val.csv"):
        Run(run_copy).model("small_cnn").predictions("val")


@pytest.mark.subprocess
def test_huge_or_deeply_nested_json_is_refused_without_reading_it(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    _sparse(run / "run.json", 2 * GiB, b"{")
    out = run_capped(f"""
        from core.store import ArtifactError, Run
        try:
            Run(__import__("pathlib").Path({str(run)!r})).info
        except ArtifactError as e:
            print("ArtifactError:", e)
    """, mem=1 * GiB)
    assert "ArtifactError:" in out.stdout and "bytes" in out.stdout, out.stderr[-2000:]
    (run / "run.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ArtifactError, match="not valid JSON"):
        _ = Run(run).info


def _data_run(tmp_path: Path, data_root: str | None = None) -> tuple[Run, Path, Path]:
    """A run whose data folder has one film, a symlink out of it, and a film just outside it."""
    dataset = tmp_path / "data"
    inside = _png(dataset / "NORMAL" / "a.png")
    outside = _png(tmp_path / "elsewhere" / "secret.png", 200)
    (dataset / "NORMAL" / "link.png").symlink_to(outside)
    run_dir = tmp_path / "artifacts" / "r"
    run_dir.mkdir(parents=True)
    root = data_root or str(dataset)
    (run_dir / "run.json").write_text(json.dumps({"data_root": root, "data_root_given": root}))
    return Run(run_dir), inside, outside


def test_locate_finds_files_inside_the_data_root(tmp_path):
    run, inside, _ = _data_run(tmp_path)
    assert run.locate(str(inside)) == inside.resolve()
    assert run.locate("NORMAL/a.png") == inside.resolve()


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", "../elsewhere/secret.png",
                                  "NORMAL/../../elsewhere/secret.png", "NORMAL/link.png", "OUTSIDE", "a\0b"])
def test_locate_never_leaves_the_data_root(tmp_path, path):
    run, _, outside = _data_run(tmp_path)
    assert run.locate(path.replace("OUTSIDE", str(outside))) is None


@pytest.mark.parametrize("root", ["/", "/etc", "/proc/self"])
def test_a_data_root_that_is_not_a_data_set_opens_nothing(tmp_path, root):
    run, _, _ = _data_run(tmp_path, data_root=root)
    assert run.data_bases() == []
    for path in ("/etc/passwd", "etc/passwd", "environ", "/proc/self/environ"):
        assert run.locate(path) is None


def test_allow_list_lets_the_user_add_a_folder(tmp_path, monkeypatch):
    run, _, outside = _data_run(tmp_path)
    assert run.locate(str(outside)) is None
    monkeypatch.setenv(store.ENV_ALLOW, str(outside.parent))
    assert run.locate(str(outside)) == outside.resolve()
    assert Run(run.dir, allow=(str(outside.parent),)).locate(str(outside)) is not None


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "a\\b", ".hidden", "x" * 101, "a..b", 5, None])
def test_unusable_names_are_refused(name):
    assert store.name_problem(name)


@pytest.mark.parametrize("name", ["small_cnn", "kermany-lineup", "run-20261130-101010", "v1.2", "External_2"])
def test_usual_names_are_accepted(name):
    assert store.name_problem(name) is None


def test_error_messages_never_echo_text_from_the_file(run_copy):
    payload = "![x](http://tracker.example/p.png)"
    _edit(run_copy / "run.json", models=payload)
    _edit(run_copy / "small_cnn" / "config.json", arch=payload)
    for read in (lambda r: r.info, lambda r: r.model("small_cnn").config):
        with pytest.raises(ArtifactError) as err:
            read(Run(run_copy))
        assert "tracker" not in str(err.value) and "![" not in str(err.value)


def test_folders_with_unusable_names_are_neither_models_nor_runs(run_copy):
    shutil.copytree(run_copy / "small_cnn", run_copy / "![x](tracker.png)")
    assert [m.name for m in Run(run_copy).models] == ["small_cnn"]
    shutil.copytree(run_copy, run_copy.parent / "run `x`")
    assert [r.id for r in store.list_runs(run_copy.parent)] == ["run"]
