"""``faithfulness``: ROAD and the model-randomisation sanity check per model and CAM method
(``trainer/explain.py``, ``core/explain/faithfulness.py``)."""

from __future__ import annotations

import torch

from core.explain import faithfulness
from core.explain.cams import CAM_METHODS
from core.store import ArtifactError
from trainer import explain
from trainer.commands.common import names


def add_parser(sub) -> None:
    p = sub.add_parser("faithfulness", help="ROAD and the model-randomisation sanity check per model and CAM method")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--models", help="comma-separated model names (default: every model with a network)")
    p.add_argument("--methods",
                   help=f"comma-separated CAM methods (default: {','.join(explain.FAITHFULNESS_METHODS)})")
    p.add_argument("--n", type=int, default=explain.FAITHFULNESS_SAMPLE,
                   help="test films (a fixed random sample, the same number from each source x class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--percentiles", default=",".join(str(p) for p in faithfulness.ROAD_PERCENTILES),
                   help="ROAD levels p, comma-separated: (100 - p) %% of the pixels removed each way (each level "
                        "costs two imputations per film and method)")
    p.add_argument("--force", action="store_true", help="recompute every entry (default: only the missing ones)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else explain.FAITHFULNESS_METHODS
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise ArtifactError(f"unknown CAM method(s) {unknown}; known: {', '.join(CAM_METHODS)}")
    percentiles = [int(p) for p in args.percentiles.split(",")]
    if not all(0 < p < 100 for p in percentiles):
        raise ArtifactError(f"--percentiles must lie strictly between 0 and 100, got {percentiles}")
    explain.faithfulness_run(args.run, names(args.models), n=args.n, methods=methods, seed=args.seed,
                             percentiles=percentiles, force=args.force)
    return 0
