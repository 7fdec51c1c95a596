"""``models``: the registry, with where each architecture's ImageNet weights come from on this machine."""

from __future__ import annotations

import os

from core.models.registry import count_params, list_specs
from core.models.weights import ENV_WEIGHTS_DIR, WeightsError, resolve_weights


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model lineup and where its ImageNet weights come from")
    p.add_argument("--weights-dir", default=os.environ.get(ENV_WEIGHTS_DIR))
    p.set_defaults(func=run)


def run(args) -> int:
    print(f"{'name':<18} {'params':>11} {'input':>5}  ImageNet weights on this machine")
    for spec in list_specs():
        model = spec.build()
        if spec.weights is None:
            where = "none known (trains from scratch)"
        else:
            try:
                _, info = resolve_weights(spec.weights, weights_dir=args.weights_dir, allow_download=False)
                where = info.source if info.pretrained else "not found here (download when online, else from scratch)"
            except WeightsError as e:  # a wrong-hash or broken file: say so on its line, list the others
                where = f"REFUSED: {e}"
        print(f"{spec.name:<18} {count_params(model):>11,} {spec.input_size:>5}  {where}")
    return 0
