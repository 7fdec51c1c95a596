"""``export``: write each model's ONNX graph beside its best checkpoint."""

from __future__ import annotations

from trainer.commands.common import names
from trainer.export import export_run


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write each model's ONNX graph beside its best checkpoint")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--models", help="comma-separated model names (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    return export_run(args.run, names(args.models) or [])
