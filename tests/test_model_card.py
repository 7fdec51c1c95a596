"""Model cards (issue 18, ``core/report/card.py``): every committed model has one, regenerated here byte for byte; the
figures in a card are its artifacts'; text from a run folder cannot inject markup; the dashboard page shows it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO

from core.report import card
from core.store import CARD_HTML_FILE, CARD_MD_FILE, Run, write_json

RUNS = [REPO / "artifacts" / name for name in ("kermany-robust", "kermany-lineup", "populations")]
MODELS = [(r, m.name) for r in RUNS for m in Run(r).models]


@pytest.mark.parametrize(("run_dir", "name"), MODELS, ids=[f"{r.name}/{n}" for r, n in MODELS])
def test_every_committed_model_has_its_card_regenerated_byte_for_byte(run_dir, name):
    run = Run(run_dir)
    m = run.model(name)
    blocks = card.card_blocks(run, m)
    md, page = card.to_markdown(blocks), card.to_html(blocks, f"Model card: {name}")
    assert (m.dir / CARD_MD_FILE).read_text(encoding="utf-8") == md, \
        f"stale card: python -m trainer card --run {run_dir.relative_to(REPO)} --model {name}"
    assert (m.dir / CARD_HTML_FILE).read_text(encoding="utf-8") == page
    for section in ("Intended use", "Training data and recipe", "Evaluation", "Operating points", "Calibration",
                    "Known failure modes", "Ethical considerations"):
        assert f"## {section}" in md, section


def test_a_card_quotes_the_metrics_files_and_the_site_profile():
    run = Run(RUNS[0])
    m = run.model("mobilenet_v2_lungs_plain")
    md = (m.dir / CARD_MD_FILE).read_text(encoding="utf-8")
    test = m.metrics("test")
    at = test["at"][m.config["threshold_rule"]]
    row = next(line for line in md.splitlines() if line.startswith("| test | children"))
    assert f"{test['auc']:.3f} [{test['auc_ci'][0]:.3f}, {test['auc_ci'][1]:.3f}]" in row
    assert f"{100 * at['sensitivity']:.1f}%" in row and f"{100 * at['specificity']:.1f}%" in row
    assert "site `nih_adult`" in md and "adults: measured on `nih_adult`" in md  # measured, so said so


@pytest.mark.integration
def test_the_command_writes_both_files_and_escapes_text_from_the_run(tmp_path, capsys):
    from trainer.cli import main

    src = RUNS[0]
    dst = tmp_path / "kermany-robust"
    dst.mkdir()
    for f in ("run.json", "split.csv", "shift.json"):
        shutil.copy2(src / f, dst / f)
    shutil.copytree(src / "mobilenet_v2_robust", dst / "mobilenet_v2_robust",
                    ignore=shutil.ignore_patterns("checkpoints", CARD_MD_FILE, CARD_HTML_FILE))
    shift = json.loads((dst / "shift.json").read_text())
    shift["shifts"]["noise"] = '<img src="https://example.org/pixel.gif"> noise'
    write_json(dst / "shift.json", shift)
    assert main(["card", "--run", str(dst), "--model", "mobilenet_v2_robust"]) == 0
    page = (dst / "mobilenet_v2_robust" / CARD_HTML_FILE).read_text()
    md = (dst / "mobilenet_v2_robust" / CARD_MD_FILE).read_text()
    assert "<img" not in page and "&lt;img" in page
    assert "`noise`" in md  # the shift that hurt specificity is a known failure mode
    assert main(["card", "--run", str(dst), "--model", "nope"]) == 2
    assert "no model named nope" in capsys.readouterr().err


def test_dashboard_page_shows_the_card_of_the_chosen_model(monkeypatch):
    from dashboard.common import RUN_KEY
    from tests.dashboard_app import page_app

    monkeypatch.setenv("CXR_ARTIFACTS", str(REPO / "artifacts"))
    at = page_app("10_Model_card.py", **{RUN_KEY: "kermany-robust", "card_model": "mobilenet_v2_lungs_plain"})
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    assert [h.value for h in at.header] == ["Model card: mobilenet_v2_lungs_plain"]
    assert {"Intended use", "Evaluation", "Known failure modes"} <= {t.label for t in at.tabs}
    assert any("stored beside the model is the same" in c.value for c in at.caption)
    assert len(at.table) >= 4 and not at.error
