"""``card``: write a model card (MODEL_CARD.md, model_card.html) beside each model (``trainer/card.py``)."""

from __future__ import annotations

from core.store import CARD_HTML_FILE, CARD_MD_FILE
from trainer.card import card_run
from trainer.commands.common import names


def add_parser(sub) -> None:
    p = sub.add_parser("card", help=f"write a model card ({CARD_MD_FILE}, {CARD_HTML_FILE}) beside each model")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--model", help="comma-separated model names (default: every model)")
    p.set_defaults(func=run)


def run(args) -> int:
    return card_run(args.run, names(args.model))
