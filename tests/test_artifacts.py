"""Atomic writes and the artifact reader on real files."""

import doctest
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import core.evaluate.metrics
from core import store
from core.data.layouts import Sample
from core.store import DEFAULT_RUN_FILE, ArtifactError, ModelWriter, Run, default_run, list_runs

REPO = Path(__file__).resolve().parents[1]


def test_metrics_docstring_examples_run():
    assert doctest.testmod(core.evaluate.metrics).failed == 0


@pytest.mark.subprocess
def test_killed_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "metrics_val.json"
    store.write_json(target, {"auc": 0.5})
    code = f"from core.store import atomic_write_bytes; atomic_write_bytes({str(target)!r}, b'x' * 1_500_000_000)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)  # python -c imports from its working folder
    deadline = time.time() + 60
    while not list(tmp_path.glob(".metrics_val.json.*.tmp")) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
    assert json.loads(target.read_text()) == {"auc": 0.5}


def test_failed_write_removes_temp_and_keeps_old(tmp_path):
    target = tmp_path / "a.json"
    store.write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        store.atomic_write_bytes(target, "text, not bytes")  # fails inside the write
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_nan_is_written_as_null(tmp_path):
    store.write_json(tmp_path / "m.json", {"auc": float("nan"), "ci": [float("inf"), 0.5]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": None, "ci": [None, 0.5]}


def _tiny_run(root: Path) -> Path:
    run = root / "r1"
    store.write_json(run / "run.json", {"schema_version": 1, "models": ["b", "a"]})
    for name in ("a", "b"):
        w = ModelWriter(run, name)
        w.config({"arch": "small_cnn", "input_size": 64})
        w.status("finished", epoch=1)
        w.history([{"epoch": 1, "train_loss": 0.5, "train_acc": 0.7, "val_loss": 0.4, "val_acc": 0.8,
                    "val_auc": 0.9, "lr": 1e-4, "seconds": 3.0}])
        w.predictions("val", ["x.png", "y.png"], [0, 1], [0.2, 0.7])
    return run


def test_reader_lists_runs_and_models_in_run_order(tmp_path):
    run = _tiny_run(tmp_path)
    runs = list_runs(tmp_path)
    assert [r.id for r in runs] == ["r1"]
    assert [m.name for m in runs[0].models] == ["b", "a"]
    m = Run(run).model("a")
    assert m.history()["val_auc"].tolist() == [0.9]
    assert m.predictions("val")["probability"].tolist() == [0.2, 0.7]
    assert m.splits() == ["val"]


def test_the_default_run_is_the_one_named_in_the_root_else_the_biggest(tmp_path):
    _tiny_run(tmp_path)
    store.write_json(tmp_path / "small" / "run.json", {"schema_version": 1})
    ModelWriter(tmp_path / "small", "only").config({"arch": "small_cnn"})
    runs = list_runs(tmp_path)
    assert default_run(runs, tmp_path).id == "r1"  # no file: the run with the most models
    for named, shown in (("small\n", "small"), ("gone", "r1"), ("\x00" * 5000, "r1")):
        (tmp_path / DEFAULT_RUN_FILE).write_text(named)
        assert default_run(runs, tmp_path).id == shown
    assert default_run([], tmp_path) is None


@pytest.mark.parametrize("content", ["{\"auc\": 0.9", "", "[1, 2]", "\x00\x01garbage"])
def test_half_written_json_is_a_clear_artifact_error(tmp_path, content):
    run = _tiny_run(tmp_path)
    (run / "a" / "config.json").write_text(content)
    with pytest.raises(ArtifactError, match="config.json"):
        _ = Run(run).model("a").config
    assert Run(run).model("b").config["arch"] == "small_cnn"  # the other model still reads


def test_bad_predictions_are_rejected(tmp_path):
    run = _tiny_run(tmp_path)
    (run / "a" / "predictions_val.csv").write_text("path,label,probability\nx.png,0,1.7\n")
    with pytest.raises(ArtifactError, match="probabilities"):
        Run(run).model("a").predictions("val")
    (run / "a" / "predictions_val.csv").write_text("path,prob\nx.png,0.3\n")
    with pytest.raises(ArtifactError, match="missing columns"):
        Run(run).model("a").predictions("val")


def test_stale_running_status(tmp_path):
    run = _tiny_run(tmp_path)
    store.write_json(run / "a" / "status.json", {"state": "running", "heartbeat": "2020-01-01T00:00:00+00:00"})
    assert Run(run).model("a").status()["stale"] is True
    ModelWriter(run, "a").status("running")
    assert Run(run).model("a").status()["stale"] is False


def test_missing_checkpoint_message(tmp_path):
    run = _tiny_run(tmp_path)
    with pytest.raises(ArtifactError, match="best checkpoint"):
        Run(run).model("a").best_checkpoint()


def test_locate_finds_relative_paths_under_the_data_root_as_given(tmp_path, monkeypatch):
    """Stored paths are relative to run.json's data_root, itself kept as the user gave it ("mydata"): found from
    the working folder, or from the folder that holds the artifacts root when started elsewhere."""
    data = tmp_path / "mydata" / "train" / "NORMAL"
    data.mkdir(parents=True)
    (data / "a.jpeg").write_bytes(b"x")
    run = tmp_path / "artifacts" / "r"
    writer = store.RunWriter(run, "mydata")
    writer.info(models=[])
    writer.split([Sample(str(Path("mydata/train/NORMAL/a.jpeg").absolute()), 0, "a", "train")])
    monkeypatch.chdir(tmp_path)
    stored = Run(run).split_table()["path"].tolist()
    assert stored == ["train/NORMAL/a.jpeg"] and Run(run).info["data_root"] == "mydata"
    assert Run(run).locate("train/NORMAL/a.jpeg") == data / "a.jpeg"
    assert Run(run).locate("train/NORMAL/missing.jpeg") is None
    monkeypatch.chdir(tmp_path / "mydata")  # elsewhere: found beside the artifacts root instead
    assert Run(run).locate("train/NORMAL/a.jpeg") == data / "a.jpeg"
    assert Run(run).locate("/somewhere/else/a.jpeg") is None
