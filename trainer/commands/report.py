"""``report``: print a run's results table, or rewrite it between the results markers of a README."""

from __future__ import annotations

from pathlib import Path

from core.store import Run
from trainer import report
from trainer.commands.common import names


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print the results table of a run (or rewrite it in the README)")
    p.add_argument("--run", required=True)
    p.add_argument("--splits", default="test,official_val", help="comma-separated splits, one table each")
    p.add_argument("--update", metavar="README", help="rewrite the table between the results markers of this file")
    p.set_defaults(func=run)


def run(args) -> int:
    run_ = Run(Path(args.run))
    _ = run_.info  # a missing or broken run is an error here (exit 2), not an empty table
    splits = names(args.splits) or []
    if args.update:
        changed = report.update(args.update, run_, splits)
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
    else:
        print(report.table(run_, splits))
    return 0
