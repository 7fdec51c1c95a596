"""Every number in the README's results table comes from the committed artifacts."""

import shutil
import subprocess
from pathlib import Path

import pytest

from core.store import Run
from tests.conftest import REPO, SAMPLE_DATA
from trainer import report

RUN = REPO / "artifacts" / "kermany-lineup"


@pytest.mark.parametrize("run_id", ["kermany-lineup", "kermany-robust", "populations", "seed-archs"])
def test_readme_results_table_matches_the_committed_artifacts(run_id):
    run_dir = REPO / "artifacts" / run_id
    if not (run_dir / "run.json").exists():
        pytest.skip(f"no committed run in artifacts/{run_id}")
    expected = report.table(Run(run_dir), ["test", "official_val"])
    assert report.current(REPO / "README.md", run_id) == expected, \
        f"README is stale: run `python -m trainer report --run artifacts/{run_id} --update README.md`"


def test_the_recommended_model_is_a_finished_committed_model():
    """artifacts/RECOMMENDED (what the maintainers score on the hidden sets) names a finished model with figures on
    every source of its run."""
    from core.store import recommended

    pick = recommended(REPO / "artifacts")
    assert pick is not None, "artifacts/RECOMMENDED must hold one line run/model"
    model = Run(REPO / "artifacts" / pick[0]).model(pick[1])
    assert model.status()["state"] == "finished"
    assert set(model.metrics("test")["by"]["source"]) == {"kermany", "nih_adult"}


def test_committed_run_is_compact_and_has_no_resume_state():
    """What git tracks of the run stays under 150 MB and holds no pickled resume checkpoints."""
    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    out = subprocess.run(["git", "ls-files", "-z", "--", str(RUN)], cwd=REPO, capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [REPO / p for p in out.stdout.decode().split("\0") if p]
    assert sum(p.stat().st_size for p in tracked if p.exists()) < 150 * 2**20
    assert not [p for p in tracked if p.suffix == ".pt"], "resume checkpoints must not be committed"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(RUN / "m" / "checkpoints" / "last.pt")], cwd=REPO)
    assert ignored.returncode == 0, ".gitignore must keep resume checkpoints out of the committed run"


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """The committed run and the sample films, copied to another directory and used from there, as on a machine
    where neither lives where it was made. The run's data root is ``../shared/data/kermany224`` as given to the
    trainer; the sample (a subset of that folder) is put there, beside the copied clone."""
    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    base = tmp_path_factory.mktemp("elsewhere")
    clone = base / "clone"
    shutil.copytree(RUN, clone / "artifacts" / RUN.name, ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(SAMPLE_DATA / "kermany224", base / "shared" / "data" / "kermany224")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(clone)  # where a user starts the dashboard
        yield Run(clone / "artifacts" / RUN.name), base


def _located_test_films(run: Run, model: str, base: Path, n: int | None = None):
    preds = run.model(model).predictions("test")
    files = [(row, run.locate(row.path)) for row in preds.itertuples()]
    found = [(row, f) for row, f in files if f is not None]
    assert all(f.is_relative_to(base) for _, f in found), "a film was found outside the moved copy"
    return found[:n] if n else found


def test_moved_run_stores_no_machine_path_and_finds_its_test_films(moved_run):
    run, base = moved_run
    assert run.info["data_root"] == "../shared/data/kermany224"  # as given, not resolved on the training machine
    for table in [run.split_table(), *(m.predictions(s) for m in run.models for s in m.splits())]:
        assert not any(Path(p).is_absolute() for p in table["path"])
    found = _located_test_films(run, "mobilenet_v2", base)
    sample = {p.relative_to(SAMPLE_DATA / "kermany224").as_posix()
              for p in (SAMPLE_DATA / "kermany224" / "train").rglob("*.jpeg")}
    test_in_sample = sample & set(run.model("mobilenet_v2").predictions("test")["path"])
    assert len(test_in_sample) >= 40 and {row.path for row, _ in found} == test_in_sample


def test_moved_run_draws_maps_of_its_test_films(moved_run):
    """What the Grad-CAM and Errors pages do with a test film: locate it, load it, predict, draw a map."""
    from core.data.images import load_for_model, load_xray
    from core.explain.cams import explain, overlay
    from core.models.inference import load_trained

    run, base = moved_run
    loaded = load_trained(run.model("mobilenet_v2"))
    for _row, film in _located_test_films(run, "mobilenet_v2", base, n=2):
        x = loaded.inputs(load_for_model(film, loaded.input_size)[None])
        heat = explain(loaded.model, loaded.spec, x, "Grad-CAM")
        assert heat.shape == (loaded.input_size, loaded.input_size) and 0 <= heat.min() < heat.max() <= 1
        gray = load_xray(film)
        drawn = overlay(gray, heat, alpha=0.4, units="evidence (test)")
        assert drawn.shape[1:] == (gray.shape[1], 3) and drawn.shape[0] > gray.shape[0]  # film + its colour bar


@pytest.mark.integration
def test_every_committed_checkpoint_loads_and_reproduces_its_predictions(moved_run):
    """The dashboard's loading path (float16 safetensors into the registry's network) gives the trainer's
    probabilities back, on the original films (the sample's copies, found through the moved run)."""
    import numpy as np

    from core.data.images import load_for_model
    from core.models.inference import load_trained, predict_loaded

    run, base = moved_run
    checked = 0
    for art in run.models:
        if art.status().get("state") != "finished" or art.is_ensemble:
            continue
        loaded = load_trained(art)
        found = _located_test_films(run, art.name, base, n=4)
        assert len(found) == 4, f"{art.name}: the sample's test films are not found"
        batch = np.stack([load_for_model(f, loaded.input_size) for _, f in found])
        np.testing.assert_allclose(predict_loaded(loaded, batch), [row.probability for row, _ in found], atol=5e-3)
        checked += 1
    assert checked >= 11


def test_nothing_committed_holds_a_machine_path():
    """No absolute path of a machine (the training one's data, a home folder) in any tracked text file."""
    out = subprocess.run(["git", "grep", "-I", "-l", "-E", r"/work/|/home/[a-z]|/root/|/Users/|C:\\\\Users"],
                         cwd=REPO, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        pytest.skip("not a git checkout")
    allowed = {"tests/test_committed_run.py"}  # this test's own pattern
    assert [f for f in out.stdout.split() if f not in allowed] == []


def test_summary_rows_agree_with_each_models_files():
    """core.report.summary's row (README table and leaderboard) holds each model's own figures at the headline rule."""
    from core.evaluate import metrics
    from core.report import summary

    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    run = Run(RUN)
    rows = summary.run_rows(run, "test", finished_only=True)
    assert [r["model"] for r in rows] == [m.name for m in run.models]
    for r in rows:
        art = run.model(r["model"])
        m = art.metrics("test")
        assert r["auc"] == m["auc"] and r["n"] == m["n"]
        assert r["sensitivity"] == m["at"][metrics.HEADLINE_RULE]["sensitivity"]
        assert r["threshold"] == pytest.approx(art.threshold())
        assert r["ensemble"] == (r["model"] == "ensemble") == art.is_ensemble
        assert r["weights"] == ("ImageNet" if art.config["pretrained"] else "scratch")
        # the sensitivity rule's name follows the recipe's target, whatever it is
        target = art.config.get("target_sensitivity", 0.95)
        assert metrics.sensitivity_rule(target) in m["thresholds"]
    assert metrics.rule_label(metrics.sensitivity_rule(0.9)) == "sensitivity ≥ 90 %"
