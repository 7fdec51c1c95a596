"""``shift``: score every model of a run under synthetic shifts of its test split (``trainer/shifts.py``)."""

from __future__ import annotations

from trainer.commands.common import names
from trainer.exits import command_line
from trainer.shift import shift_run, table


def add_parser(sub) -> None:
    p = sub.add_parser("shift", help="score every model of a run under synthetic shifts of its test split")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--shifts", help="comma-separated names from trainer/shifts.py (default: all)")
    p.add_argument("--limit", type=int, help="score a fixed random subset of this many test images (quick look)")
    p.add_argument("--rule", help="print the table at this validation threshold rule (default: each model's own)")
    p.add_argument("--models", help="score only these models (comma-separated), keeping the others' stored results "
                                    "(made with the same --shifts and --limit)")
    p.add_argument("--cache-dir")
    p.add_argument("--workers", type=int)
    p.set_defaults(func=run)


def run(args) -> int:
    result = shift_run(args.run, shifts=names(args.shifts), limit=args.limit, cache_dir=args.cache_dir,
                       workers=args.workers, command=command_line(args.argv), models=names(args.models))
    print(table(result, args.rule))
    return 0
