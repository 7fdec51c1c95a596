"""``explain``: CAM references (one colour scale) and calibration for a run's models (``trainer/explain.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from core.evaluate import calibration
from core.explain.cams import CAM_METHODS
from core.report import summary
from core.store import ArtifactError, Run
from trainer import explain
from trainer.commands.common import names

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="CAM references (one colour scale) and calibration for a run's models")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--models", help="comma-separated model names (default: all)")
    p.add_argument("--methods", help=f"comma-separated CAM methods (default: {','.join(explain.REFERENCE_METHODS)})")
    p.add_argument("--n", type=int, default=explain.DEFAULT_SAMPLE, help="validation films sampled per model")
    p.add_argument("--force", action="store_true", help="recompute what exists")
    p.add_argument("--threads", type=int)
    p.add_argument("--calibration-table", action="store_true",
                   help="only print ECE and Brier before/after calibration on test and official_val (Markdown)")
    p.add_argument("--recalibrate", action="store_true",
                   help="only refit the calibration (temperature and bias on validation), e.g. for files "
                        "written before the bias existed")
    p.add_argument("--scale-check", action="store_true",
                   help="only print the shared scale's check: PNEUMONIA map maxima on confidently NORMAL vs "
                        "confidently PNEUMONIA validation films")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.calibration_table:
        rows = summary.calibration_rows(Run(Path(args.run)))
        print(calibration.markdown_table(rows) if rows else "no model of this run is calibrated yet")
        return 0
    models = names(args.models)
    if args.recalibrate:
        run_ = Run(Path(args.run))
        for name in models or [m.name for m in run_.models]:
            explain.calibrate(run_.model(name))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale_check:
        explain.print_scale_check(Run(Path(args.run)), args.models)
        return 0
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else explain.REFERENCE_METHODS
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise ArtifactError(f"unknown CAM method(s) {unknown}; known: {', '.join(CAM_METHODS)}")
    failed = explain.explain_run(args.run, models, n=args.n, methods=methods, force=args.force)
    if failed:
        log.error(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
