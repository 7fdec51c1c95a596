"""Lung fields and lung focus latency, against the model's bare forward pass (issue 8: a map with its lung focus
must cost at most 3x the forward pass).

Timed, interleaved in one run on one 224 px film with an untrained mobilenet_v2 (the architecture, not the
weights, sets the cost): the bare forward pass; Grad-CAM; Grad-CAM plus lung focus with the film's lung mask
already cached (every map after a film's first: the dashboard shows several models and methods per film); and
Grad-CAM plus lung focus computing the lung and body masks afresh (a film's first map). Also: the lung mask alone.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import fixed_cache
from bench.report import check, figure
from bench.timing import Ctx, interleaved, median, paired_ratio
from core.data.transforms import normalize, to_float
from core.explain.cams import explain
from core.explain.focus import body_mask, map_focus
from core.models.lungs import load_model, lung_mask
from core.models.registry import create_model, get_spec


def run(ctx: Ctx) -> dict:
    torch.set_num_threads(2)
    spec = get_spec("mobilenet_v2")
    cache, _ = fixed_cache(8, 224, ctx.work)
    film = np.array(cache.images[0])
    model, _ = create_model("mobilenet_v2", pretrained=False, input_size=224)
    model.eval().to(memory_format=torch.channels_last)
    x = normalize(to_float(torch.from_numpy(film[None])), spec.mean, spec.std)
    lungs_model = load_model()
    cached = lung_mask(film)
    body = body_mask(film, cached)

    def forward():
        with torch.inference_mode():
            model(x)

    def fresh_masks():
        m = lung_mask(film, model=lungs_model)  # an explicit model bypasses the per-film cache
        return m, body_mask(film, m)

    def map_cached():
        return map_focus(explain(model, spec, x, "Grad-CAM"), cached, body)

    def map_fresh():
        return map_focus(explain(model, spec, x, "Grad-CAM"), *fresh_masks())

    reps = ctx.reps(5, 20)
    t = interleaved({"forward": forward, "cam": lambda: explain(model, spec, x, "Grad-CAM"),
                     "cached": map_cached, "fresh": map_fresh, "mask": fresh_masks}, reps=reps, warmup=2)
    r_cached, r_fresh = paired_ratio(t["cached"], t["forward"]), paired_ratio(t["fresh"], t["forward"])
    figures = [figure(f"{k}: median latency", 1000 * median(v), "ms", n=reps) for k, v in (
        ("mobilenet_v2 @224px bare forward pass", t["forward"]), ("mobilenet_v2 @224px Grad-CAM", t["cam"]),
        ("Grad-CAM + lung focus, film's masks cached", t["cached"]),
        ("Grad-CAM + lung focus, masks computed", t["fresh"]), ("lung + body mask of a 224px film", t["mask"]))]
    figures += [figure("Grad-CAM + lung focus (masks cached) / forward pass", r_cached, "x"),
                figure("Grad-CAM + lung focus (masks computed) / forward pass", r_fresh, "x")]
    checks = [check("Grad-CAM + lung focus (masks cached) / forward pass", r_cached, "<=", 3.0, "x"),
              check("Grad-CAM + lung focus (masks computed) / forward pass", r_fresh, "<=", 3.0, "x")]
    return {"figures": figures, "checks": checks, "raw": dict(t)}
