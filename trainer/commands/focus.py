"""``focus``: lung focus and border mass of each model's CAMs over a split (``trainer/focus.py``)."""

from __future__ import annotations

import os

from trainer import focus


def add_parser(sub) -> None:
    p = sub.add_parser("focus", help="lung focus and border mass of each model's CAMs over a split")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=120, help="films sampled from the split (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="Grad-CAM", help="comma-separated CAM methods (see core/explain/cams.py)")
    p.add_argument("--models", help="comma-separated model names (default: every model of the run)")
    p.add_argument("--data-root", default=os.environ.get("CXR_DATA_ROOT"),
                   help="where the run's films are, when its stored paths do not resolve here")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--table", action="store_true", help="only print the stored figures as a Markdown table")
    p.set_defaults(func=run)


def run(args) -> int:
    return focus.focus_run(args)
