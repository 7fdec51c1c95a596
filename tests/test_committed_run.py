"""Every number in the README's results table comes from the committed artifacts."""

import subprocess

import pytest

from core.artifacts import Run
from tests.conftest import REPO
from trainer import report

RUN = REPO / "artifacts" / "kermany-lineup"


def test_readme_results_table_matches_the_committed_artifacts():
    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    expected = report.block(Run(RUN), ["test", "official_val"])
    assert report.current(REPO / "README.md") == expected, \
        "README is stale: run `python -m trainer report --run artifacts/kermany-lineup --update README.md`"


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


def test_every_committed_checkpoint_loads_and_reproduces_its_predictions():
    """The dashboard's loading path (float16 safetensors into the registry's network) gives the trainer's
    probabilities back, on the original files when they are on this machine."""
    import numpy as np

    from core.images import load_for_model
    from core.inference import load_trained, predict_loaded

    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    checked = 0
    for art in Run(RUN).models:
        if art.status().get("state") != "finished" or art.config.get("members"):
            continue
        loaded = load_trained(art)
        preds = art.predictions("test").head(4)
        files = [Run(RUN).locate(p) for p in preds["path"]]
        if None in files:
            pytest.skip("the run's data folder is not on this machine")
        batch = np.stack([load_for_model(f, loaded.input_size) for f in files])
        np.testing.assert_allclose(predict_loaded(loaded, batch), preds["probability"], atol=5e-3)
        checked += 1
    if not checked:
        pytest.skip("no finished model in the committed run yet")


def test_summary_rows_agree_with_each_models_files():
    """core.summary's row (README table and leaderboard) carries each model's own figures at the headline rule."""
    from core import metrics, summary

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
