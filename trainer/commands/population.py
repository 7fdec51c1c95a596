"""``population``: fit each model's population check (``trainer/population.py``, docs/population.md)."""

from __future__ import annotations

import os

from trainer import population


def add_parser(sub) -> None:
    p = sub.add_parser("population", help="fit each model's population check (is a film like its training films?)")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--models", help="comma-separated model names (default: every model with a network)")
    p.add_argument("--max-films", type=int, default=population.MAX_FILMS,
                   help="films per source and split, and per measured set (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--measure", action="append", metavar="NAME=FOLDER",
                   help="also record how often the images of FOLDER are flagged (repeatable)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("CXR_THREADS", "0") or 0))
    p.set_defaults(func=run)


def run(args) -> int:
    return population.population_run(args)
