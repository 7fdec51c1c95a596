"""``ensemble``: add an ensemble (mean probability) of a run's finished models to the run."""

from __future__ import annotations

from pathlib import Path

from core.store import Run
from trainer import config as cfgmod
from trainer import ensemble
from trainer.commands.common import names
from trainer.exits import command_line
from trainer.locks import run_lock


def add_parser(sub) -> None:
    p = sub.add_parser("ensemble", help="add an ensemble (mean probability) of finished models to a run")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--members", required=True, help="comma-separated model names of the run")
    p.add_argument("--name", default="ensemble")
    p.set_defaults(func=run)


def run(args) -> int:
    members = names(args.members) or []
    run_ = Run(Path(args.run))
    _ = run_.info  # a missing or broken run is an error before anything is written
    cfgmod.check_ensemble_name(run_, args.name)
    with run_lock(run_.dir, command_line(args.argv)):
        m = ensemble.build(run_, args.name, members)
    print(f"ensemble {args.name} = mean of {', '.join(members)}: val AUC {m['auc']:.4f}")
    return 0
