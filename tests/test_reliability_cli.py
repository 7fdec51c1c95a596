"""Reliability corpus, command-line side (issue 14): data loss, flags, locks, resume, disk full, through the real
``python -m trainer`` on small real data. Each case builds its situation in tmp and asserts the clean outcome:
the documented exit code, a message naming the problem, and nothing written or replaced that should not be.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import KERMANY224, need
from test_reliability import run_capped

from trainer.cli import main
from trainer.locks import run_lock

REPO = Path(__file__).resolve().parents[1]
EXIT_DATA, EXIT_CONFIG = 2, 3


def _small_data(root: Path, per_class: int = 8) -> Path:
    """A Kermany-layout copy of a few real films per class: 3 x ``per_class`` in train/, ``per_class`` in test/."""
    src = need(KERMANY224) / "train"
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((src / cls).glob("*.jpeg"))
        for split, chosen in (("train", files[: 3 * per_class]), ("test", files[-per_class:])):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copy(f, root / split / cls / f.name)
    return root


def _train(tmp: Path, data: Path, run: str = "r", *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--models", "small_cnn", "--epochs", "1", "--input-size", "32",
            "--run", run, "--artifacts", str(tmp / "a"), "--cache-dir", str(tmp / "cache"), "--seed", "0",
            "--max-train-batches", "2", *extra]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, data folder): small_cnn trained for one epoch on a few real films."""
    tmp = tmp_path_factory.mktemp("small-run")
    data = _small_data(tmp / "data")
    assert main(_train(tmp, data)) == 0
    return tmp / "a" / "r", data


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _copy_run(small_run, tmp_path) -> Path:
    run_dir = tmp_path / "a" / "r"
    shutil.copytree(small_run[0], run_dir)
    return run_dir


# ---------------------------------------------------------------------------------------------- flags, config

BAD_FLAGS = [["--input-size", "0"], ["--input-size", "100000"], ["--epochs", "0"], ["--batch-size", "0"],
             ["--lr", "nan"], ["--lr", "-1"], ["--threads", "-1"], ["--device", "bogus"], ["--workers", "0"],
             ["--val-fraction", "1"], ["--tta", "0"], ["--run", "../../x"], ["--run", "a/b"]]


@pytest.mark.parametrize("flag", BAD_FLAGS, ids=[" ".join(f) for f in BAD_FLAGS])
def test_bad_flag_fails_before_any_work(tmp_path, capsys, flag):
    argv = ["train", "--data", str(tmp_path), "--artifacts", str(tmp_path / "a"), "--run", "r", *flag]
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert flag[0].lstrip("-").replace("-", "_") in err and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "x").exists()


def test_config_file_with_wrong_run_level_types(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: x\nmodels: 5\n")
    assert main(["train", "--config", str(cfg), "--artifacts", str(tmp_path / "a")]) == EXIT_CONFIG
    assert "models" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- no data loss


@pytest.mark.train
@pytest.mark.parametrize("split", ["test", "val", "train", "official_val", "TEST"])
def test_evaluate_never_replaces_the_runs_own_splits(small_run, tmp_path, capsys, split):
    run_dir = _copy_run(small_run, tmp_path)
    before = _digest(run_dir)
    code = main(["evaluate", "--run", str(run_dir), "--data", str(small_run[1]), "--split-name", split,
                 "--cache-dir", str(tmp_path / "c")])
    assert code == EXIT_DATA and "own splits" in capsys.readouterr().err
    assert _digest(run_dir) == before


@pytest.mark.train
def test_evaluate_twice_under_one_name_needs_force(small_run, tmp_path, capsys):
    run_dir = _copy_run(small_run, tmp_path)
    argv = ["evaluate", "--run", str(run_dir), "--data", str(small_run[1] / "test"), "--split-name", "ext",
            "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    first = _digest(run_dir)
    assert main(argv) == EXIT_DATA and "--force" in capsys.readouterr().err
    assert _digest(run_dir) == first
    assert main([*argv, "--force"]) == 0


@pytest.mark.train
@pytest.mark.parametrize("name, code", [("small_cnn", EXIT_DATA), ("../escape", EXIT_CONFIG), ("a/b", EXIT_CONFIG),
                                        ("..", EXIT_CONFIG)])
def test_ensemble_never_replaces_a_model_or_leaves_the_run(small_run, tmp_path, capsys, name, code):
    run_dir = _copy_run(small_run, tmp_path)
    before = _digest(tmp_path)
    assert main(["ensemble", "--run", str(run_dir), "--members", "small_cnn,small_cnn", "--name", name]) == code
    assert "--name" in capsys.readouterr().err
    assert _digest(tmp_path) == before


def test_report_on_a_missing_run_is_an_error(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path / "nonexistent")]) == EXIT_DATA
    assert "nonexistent" in capsys.readouterr().err


def test_resume_of_a_missing_run_is_an_error(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "NORMAL").mkdir(parents=True)
    assert main(_train(tmp_path, data, "never", "--resume")) == EXIT_CONFIG
    assert "no run to resume" in capsys.readouterr().err
    assert not (tmp_path / "a" / "never").exists()


@pytest.mark.train
def test_resume_after_data_files_vanished_is_an_error(small_run, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_run[1], data)
    assert main(_train(tmp_path, data, "r", "--epochs", "2")) == 0
    gone = sorted((data / "train" / "PNEUMONIA").iterdir())[0]
    gone.unlink()
    before = _digest(tmp_path / "a" / "r")
    assert main(_train(tmp_path, data, "r", "--epochs", "3", "--resume")) == EXIT_DATA
    err = capsys.readouterr().err
    assert "gone" in err and gone.name in err
    assert _digest(tmp_path / "a" / "r") == before


# ------------------------------------------------------------------------------------------------- one writer


@pytest.mark.train
@pytest.mark.parametrize("command", ["train", "evaluate", "ensemble"])
def test_a_run_being_written_is_locked_for_others(small_run, tmp_path, capsys, command):
    run_dir = _copy_run(small_run, tmp_path)
    argv = {"train": _train(tmp_path, small_run[1], "r", "--resume"),
            "evaluate": ["evaluate", "--run", str(run_dir), "--data", str(small_run[1] / "test"), "--split-name",
                         "ext", "--cache-dir", str(tmp_path / "c")],
            "ensemble": ["ensemble", "--run", str(run_dir), "--members", "small_cnn,small_cnn", "--name", "e"]}
    before = _digest(run_dir)
    with run_lock(run_dir, "the test"):
        assert main(argv[command]) == EXIT_DATA
    err = capsys.readouterr().err
    assert "being written by another process" in err and "the test" in err
    assert _digest(run_dir) == before


@pytest.mark.train
@pytest.mark.slow  # three trainer processes; the in-process lock cases run by default
def test_two_trainers_on_one_run_cannot_both_write(tmp_path):
    data = _small_data(tmp_path / "data", per_class=4)
    cfg = tmp_path / "long.yaml"
    cfg.write_text("epochs: 500\npatience: 500\n")  # the first trainer keeps the run until it is stopped
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "trainer", *_train(tmp_path, data, "same", "--config", str(cfg))]
    cmd.remove("--epochs")
    cmd.remove("1")
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        history = tmp_path / "a" / "same" / "small_cnn" / "history.csv"
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None and not history.exists():
            time.sleep(0.05)
        assert first.poll() is None, "the first trainer ended early"
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
        resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=300, check=False)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    for other in (second, resumed):
        assert other.returncode == EXIT_DATA and "being written by another process" in other.stderr, other.stderr
    assert first.returncode == 130  # stopped by us, after writing alone all along


# ---------------------------------------------------------------------------------------------------- disk full


@pytest.mark.train
@pytest.mark.slow  # a trainer process under a file-size cap; core's disk-full case runs by default
def test_disk_full_during_training_is_a_message_not_a_crash(tmp_path):
    data = _small_data(tmp_path / "data", per_class=4)
    argv = [*_train(tmp_path, data, "r"), "--input-size", "512"]  # 48 films x 512 x 512 > 5 MB
    out = run_capped(f"""
        import sys
        from trainer.cli import main
        sys.exit(main({argv!r}))
    """, mem=8 * 2**30, fsize=5_000_000, timeout=300)
    assert out.returncode == EXIT_DATA, out.stderr[-3000:]
    assert "disk is full" in out.stderr and "Traceback" not in out.stderr
    assert not list((tmp_path / "cache").glob(".building-*"))


# ------------------------------------------------------------------------------------------------ exact resume


def _resume_cmd(data: Path, artifacts: Path, run: str, extra=()) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--data", str(data), "--models", "deep_cnn", "--epochs", "3",
            "--input-size", "32", "--batch-size", "8", "--run", run, "--artifacts", str(artifacts), "--cache-dir",
            str(artifacts.parent / "cache"), "--seed", "3", "--augment", "--threads", "1", *extra]


@pytest.mark.train
@pytest.mark.slow  # 30 s; tests/test_trainer.py resumes after a kill on every run
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """deep_cnn has dropout (the global torch RNG) and augmentation: both must continue where they stopped."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    data, arts = _small_data(tmp_path / "data"), tmp_path / "a"
    whole = subprocess.run(_resume_cmd(data, arts, "whole"), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen(_resume_cmd(data, arts, "cut"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    hist = arts / "cut" / "deep_cnn" / "history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (hist.exists() and len(pd.read_csv(hist)) >= 1):
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert len(pd.read_csv(hist)) < 3, "the run finished before it could be killed"
    resumed = subprocess.run(_resume_cmd(data, arts, "cut", ["--resume"]), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming deep_cnn" in resumed.stderr  # progress is logged (trainer/logs.py)

    a, b = arts / "whole" / "deep_cnn", arts / "cut" / "deep_cnn"
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv")[cols], pd.read_csv(b / "history.csv")[cols])
    for split in ("val", "test"):
        assert (a / f"predictions_{split}.csv").read_bytes() == (b / f"predictions_{split}.csv").read_bytes()
        ma, mb = (json.loads((d / f"metrics_{split}.json").read_text()) for d in (a, b))
        assert ma["auc"] == mb["auc"] and ma["at"] == mb["at"]


@pytest.mark.train
def test_temp_files_of_a_killed_writer_are_removed_when_the_run_is_next_written(small_run, tmp_path):
    run_dir = _copy_run(small_run, tmp_path)
    leftovers = [run_dir / ".run.json.x1y2.tmp", run_dir / "small_cnn" / ".metrics_test.json.abcd.tmp"]
    for p in leftovers:
        p.write_text("{half")
    argv = ["evaluate", "--run", str(run_dir), "--data", str(small_run[1] / "test"), "--split-name", "ext2",
            "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0
    assert not any(p.exists() for p in leftovers)


def test_models_command_names_a_wrong_weights_file_and_lists_the_rest(tmp_path, capsys):
    (tmp_path / "mobilenet_v2-b0353104.pth").write_bytes(b"not the expected weights")
    assert main(["models", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("mobilenet_v2 "))
    assert "REFUSED" in line and "sha256 mismatch" in line
    assert "efficientnet_lite0" in out and "resnet18" in out
