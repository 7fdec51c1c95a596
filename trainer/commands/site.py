"""``site``: a site profile per model from a site's own films (``trainer/site.py``, ``core/evaluate/site.py``)."""

from __future__ import annotations

from trainer.commands.common import names
from trainer.exits import command_line
from trainer.site import run_site


def add_parser(sub) -> None:
    p = sub.add_parser("site", help="a site profile per model (threshold, calibration, prevalence, figures) from a "
                                    "site's own films")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--data", required=True, help="the site's films: NORMAL/PNEUMONIA folders or a CSV manifest "
                                                 "(with --unlabelled, any folder of images)")
    p.add_argument("--site", required=True, help="the profile's name (letters, digits, '.', '_', '-')")
    p.add_argument("--prevalence", type=float, help="the site's share of PNEUMONIA (default: from the labels, or "
                                                    "estimated from unlabelled films)")
    p.add_argument("--unlabelled", action="store_true", help="ignore labels: estimate the prevalence only")
    p.add_argument("--models", help="comma-separated model names (default: every model of the run)")
    p.add_argument("--overlap", choices=["refuse", "drop"], default="refuse",
                   help="films the run trained or chose thresholds on: refuse (default) or leave them out")
    p.add_argument("--force", action="store_true", help="replace this site's profiles")
    p.add_argument("--cache-dir")
    p.add_argument("--workers", type=int)
    p.set_defaults(func=run)


def run(args) -> int:
    return run_site(args.run, args.data, args.site, prevalence=args.prevalence, unlabelled=args.unlabelled,
                    models=names(args.models), overlap=args.overlap, force=args.force, cache_dir=args.cache_dir,
                    workers=args.workers, command=command_line(args.argv))
