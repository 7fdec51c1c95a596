"""CAM latency: ``core.explain.cams.explain`` per model and method (warm), and its ratio to the same model's bare
forward
pass on the same one-image input, interleaved in the same run (the median of per-round ratios). 2 torch threads.

Full mode: all CAM methods for mobilenet_v2 and Grad-CAM for every model of the lineup, each at its lineup input
size (Score-CAM, one masked forward pass per channel, gets few repetitions). Score-CAM's masked passes run on the
model's ONNX Runtime twin (as in the dashboard, where the probability has already built the session), with the
channels grouped into ``core.explain.fast_cams.SCORE_CAM_CLUSTERS`` clusters (one scored each) and, in full mode, once
more
with every channel scored (" (all channels)"); one repetition. A method name ending in " (torch)" in ``_plan``
forces eager torch for comparison (Score-CAM on eager torch: 40 s to minutes, left out of the default plan).
Quick mode: all methods on small_cnn, Grad-CAM and EigenCAM on mobilenet_v2. Also timed: the dashboard's whole
request for one map (``dashboard.explain.explain_one`` without its heatmap cache: the probability with the
recipe's test-time augmentation, then the map).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch

from bench.common import fixed_cache, lineup_recipes, recipe_size
from bench.report import check, figure
from bench.timing import Ctx, interleaved, median, p95, paired_ratio
from core.data.transforms import normalize, to_float
from core.explain.cams import CAM_METHODS, explain
from core.explain.fast_cams import FastScoreCAM
from core.models.inference import LoadedModel
from core.models.onnx_backend import ENV_BACKEND, OnnxModel, register_twin
from core.models.registry import create_model, get_spec
from dashboard.explain import CachedModel, ModelKey, explain_one

QUICK_MOBILENET = ("Grad-CAM", "EigenCAM")
# mobilenet_v2 at 224 px; Score-CAM: issue 20's limit for a map a user waits for (with a progress bar)
TARGET_MS = {"EigenCAM": 50.0, "Score-CAM": 10000.0}
ALL_CHANNELS = " (all channels)"  # Score-CAM without channel clusters, for comparison (full mode)


def _plan(ctx: Ctx, archs: list[str]) -> list[tuple[str, str]]:
    if ctx.quick:
        return [("small_cnn", m) for m in CAM_METHODS] + [("mobilenet_v2", m) for m in QUICK_MOBILENET]
    return ([("mobilenet_v2", m) for m in CAM_METHODS] + [("mobilenet_v2", "Score-CAM" + ALL_CHANNELS)]
            + [(a, "Grad-CAM") for a in archs if a != "mobilenet_v2"])


@contextmanager
def _clusters(n):
    """Score-CAM with ``n`` channel clusters (None: every channel) inside the block."""
    before = FastScoreCAM.clusters
    FastScoreCAM.clusters = n
    try:
        yield
    finally:
        FastScoreCAM.clusters = before


def _register_onnx_twin(model, size: int) -> None:
    """What the dashboard has once it has computed a probability: the model's ONNX Runtime session, which
    Score-CAM's masked passes then use (``core.explain.fast_cams``)."""
    register_twin(model, OnnxModel.from_module(model, size))


@contextmanager
def _backend(name: str):
    before = os.environ.get(ENV_BACKEND)
    os.environ[ENV_BACKEND] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_BACKEND, None)
        else:
            os.environ[ENV_BACKEND] = before


def run(ctx: Ctx) -> dict:
    torch.set_num_threads(2)
    recipes = lineup_recipes()
    plan = _plan(ctx, list(recipes))
    figures, checks, raw = [], [], {}
    models, forwards = {}, {}
    for arch, method in plan:
        recipe, spec = recipes[arch], get_spec(arch)
        size = recipe_size(recipe)
        if arch not in models:
            cache, _ = fixed_cache(8, size, ctx.work)
            model, _ = create_model(arch, pretrained=False, input_size=size)
            model.eval().to(memory_format=torch.channels_last)
            x = normalize(to_float(torch.from_numpy(np.array(cache.images[:1]))), spec.mean, spec.std)
            _register_onnx_twin(model, size)
            models[arch] = (model, x, np.asarray(cache.images[0]))
        model, x, img = models[arch]
        backend = "torch" if method.endswith("(torch)") else "auto"
        method_name = method.removesuffix(" (torch)").removesuffix(ALL_CHANNELS)
        clusters = None if method.endswith(ALL_CHANNELS) else FastScoreCAM.clusters

        def forward(model=model, x=x):
            with torch.inference_mode():
                model(x)

        slow = method_name == "Score-CAM"
        reps = 1 if backend == "torch" else 1 if slow else ctx.reps(5, 20)

        def cam(model=model, x=x, backend=backend, method_name=method_name, spec=spec, clusters=clusters):
            with _backend(backend), _clusters(clusters):
                return explain(model, spec, x, method_name)

        t = interleaved({"cam": cam, "forward": forward}, reps=reps, warmup=0 if slow else 2)
        key = f"{arch}/{method}"
        raw[key] = {"size": size, "seconds": t}
        r = paired_ratio(t["cam"], t["forward"])  # round by round, then the median
        figures += [figure(f"{arch} @{size}px {method}: median latency", 1000 * median(t["cam"]), "ms",
                           p95_ms=1000 * p95(t["cam"]), n=reps),
                    figure(f"{arch} @{size}px {method}: p95 latency", 1000 * p95(t["cam"]), "ms"),
                    figure(f"{arch} @{size}px {method}: / forward pass", r, "x",
                           forward_ms=1000 * median(t["forward"]))]
        forwards.setdefault(arch, []).extend(t["forward"])
        if arch == "mobilenet_v2" and method in TARGET_MS:
            checks.append(check(f"mobilenet_v2 {method} @{size}px latency", 1000 * median(t["cam"]), "<=",
                                TARGET_MS[method], "ms"))
        if arch == "mobilenet_v2" and method == "Grad-CAM":
            checks.append(check(f"mobilenet_v2 Grad-CAM @{size}px / forward pass", r, "<=", 3.0, "x"))
            figures.append(_dashboard_request(ctx, arch, recipe, spec, size, model, img))
    for arch, ts in forwards.items():  # every forward pass timed beside a CAM of that model
        figures.append(figure(f"{arch}: bare forward pass, 1 image (all rounds)", 1000 * median(ts), "ms",
                              n=len(ts)))
    return {"figures": figures, "checks": checks, "raw": raw}


def _dashboard_request(ctx, arch, recipe, spec, size, model, img) -> dict:
    loaded = LoadedModel(name=arch, spec=spec, model=model, input_size=size, mean=spec.mean, std=spec.std,
                         tta=int(recipe.tta or 1))
    cm = CachedModel(key=ModelKey("bench", arch, 0), loaded=loaded)
    t = interleaved({"req": lambda: explain_one(cm, img, "Grad-CAM", use_cache=False)}, reps=ctx.reps(3, 10))
    return figure(f"{arch} @{size}px Grad-CAM: dashboard request (probability with TTA={loaded.tta} + map)",
                  1000 * median(t["req"]), "ms", p95_ms=1000 * p95(t["req"]))
