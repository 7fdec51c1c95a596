"""``train``: train a lineup of model entries on a data folder and write the run (``trainer.lineup``).

Its flags are generated from the config's fields (``trainer.config.add_flags``): every config key but the
per-entry and list keys is a flag."""

from __future__ import annotations

from trainer import config as cfgmod
from trainer import lineup


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train models on a data folder and write artifacts")
    p.add_argument("--config", help="YAML/JSON file with the same keys as the flags (flags win)")
    p.add_argument("--resume", action="store_true", help="continue a run from its last finished epoch")
    cfgmod.add_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg, recipes = lineup.load_recipes(args.config, cfgmod.flag_values(args))
    return lineup.train_run(cfg, recipes, resume=args.resume, argv=args.argv)
