"""``evaluate``: score every model of a run on another data set, at the thresholds it chose on validation."""

from __future__ import annotations

from pathlib import Path

from core.store import Run
from trainer import config as cfgmod
from trainer.evaluate import evaluate_run
from trainer.exits import command_line
from trainer.locks import run_lock


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score every model of a run on another data set")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--data", required=True, help="any supported layout; images the run has never seen")
    p.add_argument("--split-name", required=True, help="name to store it under, e.g. external")
    p.add_argument("--split", help="only this split of the data set (e.g. test); default: all images")
    p.add_argument("--cache-dir")
    p.add_argument("--workers", type=int)
    p.add_argument("--force", action="store_true", help="replace a split of this name evaluated before")
    p.set_defaults(func=run)


def run(args) -> int:
    run_ = Run(Path(args.run))
    _ = run_.info  # a missing or broken run is an error before any work
    cfgmod.check_new_split(run_, args.split_name, force=args.force)
    with run_lock(run_.dir, command_line(args.argv)):
        return evaluate_run(args.run, args.data, split_name=args.split_name, only_split=args.split,
                            cache_dir=args.cache_dir, workers=args.workers, command=command_line(args.argv))
