"""``card``: write a model card (MODEL_CARD.md, model_card.html) beside each model (``core/report/card.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from core.report.card import write_card
from core.store import CARD_HTML_FILE, CARD_MD_FILE, ArtifactError, Run
from trainer.commands.common import names

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("card", help=f"write a model card ({CARD_MD_FILE}, {CARD_HTML_FILE}) beside each model")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--model", help="comma-separated model names (default: every model)")
    p.set_defaults(func=run)


def run(args) -> int:
    return card_run(args.run, names(args.model))


def card_run(run_dir, models: list[str] | None = None) -> int:
    run = Run(Path(run_dir))
    _ = run.info
    chosen = [m for m in run.models if not models or m.name in models]
    if models and (unknown := sorted(set(models) - {m.name for m in chosen})):
        raise ArtifactError(f"{run.dir}: no model named {', '.join(unknown)}")
    failed = 0
    for m in chosen:
        try:
            write_card(run, m)
            print(f"{m.name}: {m.dir / CARD_MD_FILE}")
        except ArtifactError as e:
            log.warning(f"skip {m.name}: {e}")
            failed += 1
    return 1 if failed else 0
