"""What the shared heatmap scale means, measured on the committed run, and the commands that store it.

On validation films of ``artifacts/kermany-lineup`` (Grad-CAM, target PNEUMONIA; figures from
``python -m trainer explain --run artifacts/kermany-lineup --scale-check``), the maximum of the map on the shared
scale, mean over the 20 most confidently NORMAL vs the 20 most confidently PNEUMONIA films:

    mobilenet_v2 0.000 vs 0.971 · efficientnet_lite0 0.000 vs 1.000 · small_cnn 0.001 vs 0.838 ·
    vit_tiny 0.003 vs 0.507 · every other model 0.000 vs 0.72-0.98.

Evidence alone (before the weight by calibrated probability) does not have this meaning for every model:
small_cnn 0.979 vs 0.845, deep_cnn 0.945 vs 0.725, vit_tiny 0.862 vs 0.523 (these models hold strong positive
PNEUMONIA evidence on NORMAL films and cancel it elsewhere); hence the weight.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core import store
from core.explain import faithfulness
from core.store import Run
from tests.conftest import KERMANY224, REPO, SAMPLE_DATA, need
from trainer.cli import main
from trainer.explain import networks, scale_check

RUN = REPO / "artifacts" / "kermany-lineup"
SCALE_CHECKED = ("mobilenet_v2", "efficientnet_lite0", "small_cnn")  # their films are in the sample too


def _committed() -> Run:
    if not (RUN / "run.json").exists():
        pytest.skip("no committed run")
    need(KERMANY224)
    return Run(RUN)


@pytest.fixture(scope="module")
def with_films(tmp_path_factory):
    """The committed run where its validation films can be found: as it is beside the full data set, else a copy
    (artifacts only, no checkpoints of other models) beside the committed sample, laid out as the run expects."""
    run = _committed()
    if run.data_dir() is not None:
        yield run
        return
    base = tmp_path_factory.mktemp("with-sample")
    clone = base / "clone" / "artifacts" / RUN.name
    clone.mkdir(parents=True)
    for f in ("run.json", "split.csv"):
        shutil.copyfile(RUN / f, clone / f)
    for name in SCALE_CHECKED:
        shutil.copytree(RUN / name, clone / name, ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(SAMPLE_DATA / "kermany224", base / "shared" / "data" / "kermany224")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base / "clone")
        yield Run(clone)


def _assert_scale_means_the_same(name: str, run: Run | None = None) -> None:
    r = scale_check(run or _committed(), name, k=20)
    normal, pneumonia = r["confident_normal"], r["confident_pneumonia"]
    assert len(normal) == len(pneumonia) == 20
    assert normal.mean() < 0.05 and normal.max() < 0.1, (name, normal)
    assert pneumonia.mean() > 0.4, (name, pneumonia)
    assert normal.mean() < 0.1 * pneumonia.mean()


@pytest.mark.integration
@pytest.mark.parametrize("name", SCALE_CHECKED)
def test_confident_normal_films_show_far_less_pneumonia_colour(name, with_films):
    _assert_scale_means_the_same(name, with_films)


@pytest.mark.slow
def test_shared_scale_holds_for_every_committed_model():
    for name in networks(_committed()):
        _assert_scale_means_the_same(name)


def test_committed_run_has_references_and_calibration_for_every_model():
    run = _committed()
    for m in run.models:
        assert store.read_scaling(m.dir) is not None, m.name
    for name in networks(run):
        refs = json.loads((run.dir / name / store.CAM_REFERENCE_FILE).read_text())
        assert refs["split"] == "val" and refs["n"] >= 32
        assert refs["methods"]["Grad-CAM"]["PNEUMONIA"] > 0


@pytest.mark.integration
def test_trainer_writes_references_and_calibration_and_the_commands_rerun(tiny_run, capsys):
    run = Run(tiny_run / "tiny")
    for name in ("small_cnn", "mobilenet_v2"):  # written by the trainer right after training
        refs = json.loads((run.dir / name / store.CAM_REFERENCE_FILE).read_text())
        assert set(refs["methods"]) == {"Grad-CAM", "Grad-CAM++", "HiResCAM", "XGradCAM", "LayerCAM"}
        assert refs["n"] == len(run.model(name).predictions("val"))  # the tiny run has fewer val films than n
        assert store.read_scaling(run.model(name).dir).temperature > 0
    assert main(["explain", "--run", str(run.dir), "--calibration-table"]) == 0
    assert "| small_cnn |" in capsys.readouterr().out
    assert main(["explain", "--run", str(run.dir), "--models", "nope"]) == 2  # a clear error, nothing lost
    assert main(["explain", "--run", str(run.dir), "--methods", "Magic-CAM"]) == 2


@pytest.mark.integration
def test_faithfulness_command_flags_a_map_that_ignores_the_model(tiny_run, tmp_path):
    """EigenCAM is the activations' first principal component: re-initialising the head cannot change it, so the
    randomisation check must fail it (rho 1); Grad-CAM's map follows the head."""
    import shutil

    dest = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", dest, ignore=shutil.ignore_patterns("*.pt"))
    assert main(["faithfulness", "--run", str(dest), "--models", "small_cnn", "--methods", "Grad-CAM,EigenCAM",
                 "--n", "2"]) == 0
    figures = store.read_faithfulness(dest)
    entry = figures["models"]["small_cnn"]
    assert len(figures["films"]) == 2 and len(entry["Grad-CAM"]["road_per_film"]) == 2
    assert entry["EigenCAM"]["sanity_rho"] > 0.99 and entry["EigenCAM"]["sanity_pass"] is False
    assert faithfulness.failing(figures, "small_cnn", "EigenCAM") > 0.99
    assert np.isfinite(entry["Grad-CAM"]["road"]) and -1 <= entry["Grad-CAM"]["road"] <= 1
