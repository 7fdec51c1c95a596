"""Every number in the README's results table comes from the committed artifacts."""

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


def test_committed_run_is_compact_and_loadable():
    if not (RUN / "run.json").exists():
        pytest.skip("no committed run in artifacts/kermany-lineup")
    files = [p for p in RUN.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 150 * 2**20
    assert not [p for p in files if p.suffix == ".pt"], "resume checkpoints must not be committed"
