"""Reliability corpus, dashboard side (issue 14): a hostile run folder cannot crash a page or inject markup.

Each case copies a small real run (the committed run's run.json and two models, without checkpoints), damages it,
opens every results page headless (``streamlit.testing.v1.AppTest``) and checks: no exception, an error naming
the bad field, and no artifact text rendered as markdown (a remote image in a status message would make every
viewer's browser fetch it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "artifacts" / "kermany-lineup"
PAGES = ["Home.py", "1_Training_curves.py", "2_ROC_PR_confusion.py", "3_Model_comparison.py",
         "6_Calibration.py"]  # the entrypoint's Home, then files of dashboard/views/
TRACKER = "![t](http://tracker.example/pixel.png)"
TEXT_ELEMENTS = ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader")


@pytest.fixture
def hostile_root(tmp_path) -> Path:
    if not (COMMITTED / "run.json").is_file():
        pytest.skip("committed run not present")
    run = tmp_path / "artifacts" / "r"
    run.mkdir(parents=True)
    shutil.copy(COMMITTED / "run.json", run / "run.json")
    for name in ("small_cnn", "deep_cnn"):
        shutil.copytree(COMMITTED / name, run / name, ignore=shutil.ignore_patterns("checkpoints"))
    return tmp_path / "artifacts"


def _edit(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _open(page: str, root: Path, monkeypatch) -> AppTest:
    from tests.dashboard_app import page_app

    monkeypatch.setenv("CXR_ARTIFACTS", str(root))
    at = page_app(None if page == "Home.py" else page, timeout=90)
    at.run(timeout=90)
    return at


def _texts(at: AppTest) -> list[str]:
    out = []
    for kind in TEXT_ELEMENTS:
        out += [str(e.value) for e in at.get(kind)]
    return out


def _no_markup(at: AppTest) -> None:
    for text in _texts(at):
        assert "![" not in text and "](http" not in text, text


@pytest.mark.parametrize("page", [*PAGES, "4_Grad-CAM.py", "5_Errors.py"])
def test_markdown_in_artifacts_is_shown_as_plain_text(hostile_root, monkeypatch, page):
    run = hostile_root / "r"
    _edit(run / "run.json", data_root=f"data`{TRACKER}`", data_root_given=f"data`{TRACKER}`")
    preds = run / "small_cnn" / "predictions_test.csv"
    preds.write_text(preds.read_text() + f"{TRACKER.replace('//', '')}.png,1,0.99\n")
    _edit(run / "small_cnn" / "status.json", state="failed", message=f"boom {TRACKER}")
    at = _open(page, hostile_root, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    _no_markup(at)


WRONG_TYPES = [("run.json", "models", 5), ("run.json", "split_counts", "x"),
               ("small_cnn/metrics_test.json", "auc_ci", "x"), ("small_cnn/metrics_val.json", "thresholds", 3),
               ("small_cnn/config.json", "input_size", 30000), ("small_cnn/status.json", "epoch", "x")]


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("file, key, value", WRONG_TYPES, ids=[f"{f}:{k}" for f, k, _ in WRONG_TYPES])
def test_wrong_typed_field_is_an_error_on_its_spot_not_a_crash(hostile_root, monkeypatch, page, file, key, value):
    _edit(hostile_root / "r" / file, **{key: value})
    at = _open(page, hostile_root, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(str(e.value) for e in at.error)
    assert "Traceback" not in errors and "unexpected" not in errors.lower(), errors


def test_an_upload_is_decoded_once_per_content_and_size(monkeypatch):
    """Reruns (a slider moved) and other sessions reuse the decode of the same bytes; new bytes decode anew."""
    import io

    import numpy as np
    from PIL import Image

    from dashboard import explain as ex

    calls = []
    real_for_model, real_xray = ex.load_for_model, ex.load_xray
    monkeypatch.setattr(ex, "load_for_model", lambda *a, **k: calls.append("model") or real_for_model(*a, **k))
    monkeypatch.setattr(ex, "load_xray", lambda *a, **k: calls.append("display") or real_xray(*a, **k))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200), dtype=np.uint8)).save(buf, "PNG")
    upload = buf.getvalue()
    for _ in range(5):  # five reruns of the page
        image = ex.decoded(upload, "film.png")
        image.display()
        image.for_model(64)
        image.for_model(96)
    assert calls == ["display", "model", "model"]
    other = bytearray(upload)
    other[-20] ^= 1  # different content (the PNG's last chunk), same name
    assert ex.decoded(bytes(other), "film.png") is not image


# --- round two (issue 22): values out of range, malformed figures, special files -----------------------------------

OUT_OF_RANGE = [("small_cnn/metrics_test.json", "auc", 7.5), ("small_cnn/metrics_test.json", "auc_ci", [0.2, 9]),
                ("small_cnn/config.json", "preprocess", "sharpen")]


@pytest.mark.parametrize("file, key, value", OUT_OF_RANGE, ids=[f"{f}:{k}" for f, k, _ in OUT_OF_RANGE])
def test_a_value_out_of_range_is_an_error_on_home_not_a_figure(hostile_root, monkeypatch, file, key, value):
    _edit(hostile_root / "r" / file, **{key: value})
    at = _open("Home.py", hostile_root, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(str(e.value) for e in at.error)
    assert key in errors and "unexpected" not in errors.lower(), errors
    assert not any("7.5" in t for t in _texts(at) if "field" not in t)


BAD_FAITHFULNESS = [{"models": {"small_cnn": {"Grad-CAM": {"road": "x", "sanity_rho": 2, "sanity_pass": "yes"}}}},
                    {"models": [1, 2]}, {"models": {"small_cnn": {}}}]


@pytest.mark.parametrize("page", ["9_Faithfulness.py", "4_Grad-CAM.py"])
@pytest.mark.parametrize("figures", BAD_FAITHFULNESS, ids=["bad-entry", "models-list", "no-methods"])
def test_malformed_faithfulness_figures_do_not_crash_a_page(hostile_root, monkeypatch, page, figures):
    (hostile_root / "r" / "faithfulness.json").write_text(json.dumps(figures))
    at = _open(page, hostile_root, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert "unexpected" not in " ".join(str(e.value) for e in at.error).lower()


def test_an_oversized_input_size_does_not_crash_the_errors_page(hostile_root, monkeypatch):
    _edit(hostile_root / "r" / "small_cnn" / "config.json", input_size=30000)
    at = _open("5_Errors.py", hostile_root, monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert any("input_size" in str(e.value) for e in at.error)


def test_home_does_not_hang_on_a_named_pipe(hostile_root, monkeypatch):
    import os

    status = hostile_root / "r" / "small_cnn" / "status.json"
    status.unlink()
    os.mkfifo(status)
    os.mkfifo(hostile_root / "DEFAULT_RUN")
    at = _open("Home.py", hostile_root, monkeypatch)  # AppTest's timeout fails a hang
    assert not at.exception, [e.value for e in at.exception]
    assert any("named pipe" in str(e.value) for e in at.error)
