"""Inference: ``trainer evaluate``'s prediction path vs the bare forward pass on the same tensors, same process.

The evaluate path is ``core.inference.predict_probabilities`` on cached uint8 images (what trainer/evaluate.py
runs through ``predict_loaded``: memory-map rows -> to_float -> normalize -> model -> softmax, batches of 64),
with one view (tta=1). The bare pass feeds the same images, already normalised, straight to the model in the
same batches under ``torch.inference_mode``. Both on a model prepared as ``core.inference.load_trained`` does it
(eval mode, channels-last) at its lineup input size, interleaved after a warm-up; the ratio is the median of the
per-round ratios. Models with test-time augmentation in the lineup are also timed with their recipe's number of
views (full mode).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.report import check, figure
from bench.timing import Ctx, interleaved, median, paired_ratio

QUICK_MODELS = ("small_cnn", "mobilenet_v2")
BATCH = 64


def run(ctx: Ctx) -> dict:
    from bench.common import fixed_cache, lineup_recipes, recipe_size
    from core.inference import predict_probabilities
    from core.models import create_model, get_spec
    from core.transforms import normalize, to_float

    torch.set_num_threads(2)
    recipes = lineup_recipes()
    archs = [a for a in recipes if a in QUICK_MODELS] if ctx.quick else list(recipes)
    n = ctx.reps(64, 128)
    figures, checks, raw = [], [], {}
    for arch in archs:
        recipe, spec = recipes[arch], get_spec(arch)
        size = recipe_size(recipe)
        cache, _ = fixed_cache(n, size, ctx.work)
        rows = np.arange(len(cache.paths))
        model, _ = create_model(arch, pretrained=False, input_size=size)
        model.eval().to(memory_format=torch.channels_last)
        x_all = normalize(to_float(torch.from_numpy(np.array(cache.images[rows]))), spec.mean, spec.std)

        def evaluate_path(tta=1):
            return predict_probabilities(model, cache.images[rows], spec.mean, spec.std, batch_size=BATCH, tta=tta)

        @torch.inference_mode()
        def bare():
            for start in range(0, len(x_all), BATCH):
                model(x_all[start:start + BATCH])

        t = interleaved({"evaluate": evaluate_path, "bare": bare}, reps=ctx.reps(2, 5))
        if recipe.tta > 1 and not ctx.quick:  # the recipe's views: several times the work, so fewer repetitions
            t.update(interleaved({f"evaluate_tta{recipe.tta}": lambda: evaluate_path(recipe.tta)}, reps=2, warmup=0))
        raw[arch] = {"size": size, "n": len(rows), "seconds": t}
        ev, bare_ips = len(rows) / median(t["evaluate"]), len(rows) / median(t["bare"])
        r = paired_ratio(t["bare"], t["evaluate"])  # evaluate's throughput / bare's, round by round
        figures += [figure(f"{arch} @{size}px: evaluate path (img/s)", ev, "img/s"),
                    figure(f"{arch} @{size}px: bare forward (img/s)", bare_ips, "img/s"),
                    figure(f"{arch} @{size}px: evaluate / bare (median of per-round ratios)", r, "x")]
        for k in t:
            if k.startswith("evaluate_tta"):
                figures.append(figure(f"{arch} @{size}px: evaluate with recipe TTA={recipe.tta} (img/s)",
                                      len(rows) / median(t[k]), "img/s"))
        checks.append(check(f"{arch}: evaluate path / bare forward", r, ">=", 0.90))
    return {"figures": figures, "checks": checks, "raw": raw}
