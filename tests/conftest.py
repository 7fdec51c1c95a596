"""Shared fixtures. Real data: ../shared/data (or $CXR_SHARED_DATA) when present, else the committed sample in
tests/data (a few dozen real films, see its README). Under CI=true a missing data set fails a test instead of
skipping it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see core/__init__.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "tests" / "data"
SHARED_DATA = Path(os.environ.get("CXR_SHARED_DATA") or REPO.parent / "shared" / "data")
DATA = SHARED_DATA if (SHARED_DATA / "kermany224").is_dir() else SAMPLE_DATA
FULL_DATA = DATA != SAMPLE_DATA  # the whole data set, not the sample
KERMANY224 = DATA / "kermany224"
FULLRES = DATA / "kermany_fullres"
# adult films: the whole NIH sample beside the full data set, else the 36 committed ones (tests/data/README.md)
NIH_ADULT = DATA / "nih_adult" if (DATA / "nih_adult").is_dir() else SAMPLE_DATA / "nih_adult"
# images per split and class that a scan finds, for tests that check a whole data set
KERMANY224_COUNTS = ({"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "val": {"NORMAL": 8, "PNEUMONIA": 8}}
                     if FULL_DATA else
                     {"train": {"NORMAL": 130, "PNEUMONIA": 147}, "val": {"NORMAL": 8, "PNEUMONIA": 8}})
# The sample's pool (about 90 films a class) is carved in thirds, so that a tiny run sees about 30 films per class
# and split, as it does on the full data set with --subset 30.
TINY_SPLIT = [] if FULL_DATA else ["--val-fraction", "0.33", "--test-fraction", "0.33"]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)  # make test-fast: 2 workers, 1 core each
os.environ["CXR_OFFLINE"] = "1"  # the internet is the one thing tests never reach


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (full training)")


def pytest_report_header(config):
    return f"data: {DATA} ({'full data set' if FULL_DATA else 'committed sample'})"


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def missing(reason: str) -> None:
    """Skip, or under CI fail: CI must never pass by skipping what it was meant to check."""
    if CI:
        pytest.fail(f"{reason} (CI=true: a missing data set is a failure)")
    pytest.skip(reason)


def need(path: Path) -> Path:
    if not path.is_dir():
        missing(f"real data not found at {path} (tests/data is missing: a broken checkout?)")
    return path


@pytest.fixture(scope="session")
def kermany224() -> Path:
    return need(KERMANY224)


@pytest.fixture(scope="session")
def fullres() -> Path:
    return need(FULLRES)


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in sys.modules; a later test that spawns
    processes (torch.multiprocessing) would then re-run that page in every child. Put the real one back."""
    main = sys.modules.get("__main__")
    yield
    sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches the user's caches or the network; one image cache per test session keeps tests fast."""
    monkeypatch.setenv("CXR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "image-cache"))
    monkeypatch.setenv("CXR_OFFLINE", "1")


TINY_MODELS = ("small_cnn", "mobilenet_v2")


def train_tiny(artifacts: Path, cache: Path, *extra: str, run: str = "tiny") -> Path:
    """Run the real trainer on a small real subset (about 30 images per class and split, 96 px, 2 epochs)."""
    from trainer.cli import main

    code = main(["train", "--data", str(need(KERMANY224)), "--models", ",".join(TINY_MODELS), "--subset", "30",
                 "--epochs", "2", "--input-size", "96", "--run", run, "--artifacts", str(artifacts),
                 "--cache-dir", str(cache), "--seed", "0", *TINY_SPLIT, *extra])
    assert code == 0, f"trainer exited with {code}"
    return artifacts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """An artifacts root holding run 'tiny' (small_cnn + mobilenet_v2) written by the real trainer."""
    base = tmp_path_factory.mktemp("tiny-run")
    return train_tiny(base / "artifacts", tmp_path_factory.getbasetemp() / "image-cache")


def write_dicom(target, pixels, *, photometric="MONOCHROME2", slope=None, intercept=None, center=None, width=None,
                frames=1, preamble=True, bits_stored=None, raw_tags=None):
    """Write a real DICOM film (Secondary Capture, explicit VR little endian) to ``target`` (a path or a binary
    file object) and return it. ``raw_tags`` = {keyword: DS text} are written unvalidated ("nan", "inf"...)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CR"
    pixels = np.asarray(pixels)
    rgb = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    stored = bits_stored or bits
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    for key, value in (raw_tags or {}).items():
        ds[key] = pydicom.DataElement(pydicom.datadict.tag_for_keyword(key), "DS", value, validation_mode=0)
    ds.PixelData = pixels.tobytes()
    if preamble:
        ds.save_as(target, enforce_file_format=True)
    else:
        pydicom.dcmwrite(target, ds, implicit_vr=False, little_endian=True)
    return target
