"""Inference: eager torch, torch.compile and ONNX Runtime side by side, per model, in one process, interleaved.

Baseline: eager torch's bare forward pass (images already normalised, batches of 64, ``torch.inference_mode``,
eval mode, channels-last, as ``core.inference.load_trained`` prepares a model). Against it, round by round:

* ``evaluate (onnx)``: what ``trainer evaluate`` runs now (``predict_probabilities`` on cached uint8 images through
  the model's ONNX Runtime session: to_float -> normalize -> ONNX Runtime -> softmax), one view;
* ``evaluate (torch)``: the same path on eager torch (``CXR_BACKEND=torch``);
* ``compiled``: the bare forward pass of ``torch.compile(model)`` (compiled once, before timing; full mode,
  ``COMPILED_MODELS`` only);
* ``evaluate (onnx), TTA=5``: five views in one batch, against one view on the same backend.

Ratios are medians of per-round ratios (throughput over eager bare; for TTA, time over one view's time).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.report import check, figure
from bench.timing import Ctx, interleaved, median, paired_ratio

QUICK_MODELS = ("small_cnn", "mobilenet_v2")
COMPILED_MODELS = ("small_cnn", "mobilenet_v2")  # torch.compile takes minutes per model on 2 shared cores
BATCH = 64
TTA = 5


def run(ctx: Ctx) -> dict:
    from bench.common import fixed_cache, lineup_recipes, recipe_size
    from core.models import create_model, get_spec

    torch.set_num_threads(2)
    recipes = lineup_recipes()
    archs = [a for a in recipes if a in QUICK_MODELS] if ctx.quick else list(recipes)
    n = ctx.reps(32, 48)
    figures, checks, raw = [], [], {}
    for arch in archs:
        spec = get_spec(arch)
        size = recipe_size(recipes[arch])
        cache, _ = fixed_cache(n, size, ctx.work)
        model, _ = create_model(arch, pretrained=False, input_size=size)
        model.eval().to(memory_format=torch.channels_last)
        t, extra = _time_model(ctx, arch, model, spec, size, np.array(cache.images[: len(cache.paths)]))
        raw[arch] = {"size": size, "n": n, "seconds": t, **extra}
        figures += _figures(arch, size, n, t, extra)
        checks.append(check(f"{arch}: evaluate path (onnx) / eager bare forward", paired_ratio(t["bare"], t["onnx"]),
                            ">=", 3.0, "x"))
        if "onnx_tta" in t:
            checks.append(check(f"{arch}: TTA={TTA} time / one view (onnx)", paired_ratio(t["onnx_tta"], t["onnx"]),
                                "<=", float(TTA), "x"))
    return {"figures": figures, "checks": checks, "raw": raw}


def _time_model(ctx: Ctx, arch, model, spec, size, images):
    from core.inference import predict_probabilities
    from core.onnx_backend import OnnxModel
    from core.transforms import normalize, to_float

    t0 = time.perf_counter()
    onnx = OnnxModel.from_module(model, size)
    extra = {"export_seconds": time.perf_counter() - t0}
    x_all = normalize(to_float(torch.from_numpy(images)), spec.mean, spec.std)

    def bare(net):
        @torch.inference_mode()
        def go():
            for start in range(0, len(x_all), BATCH):
                net(x_all[start:start + BATCH])
        return go

    def evaluate(forward, tta=1):
        return lambda: predict_probabilities(forward, images, spec.mean, spec.std, batch_size=BATCH, tta=tta)

    fns = {"bare": bare(model), "onnx": evaluate(onnx), "torch": evaluate(model)}
    compiled = None if ctx.quick or arch not in COMPILED_MODELS else _compiled(model, x_all[:BATCH], extra)
    if compiled is not None:
        fns["compiled"] = bare(compiled)
    if not ctx.quick or arch == "mobilenet_v2":
        fns["onnx_tta"] = evaluate(onnx, TTA)
    with torch.inference_mode():
        p_torch = predict_probabilities(model, images, spec.mean, spec.std)
    extra["max_abs_diff_onnx_vs_torch"] = float(np.abs(p_torch - evaluate(onnx)()).max())
    return interleaved(fns, reps=ctx.reps(2, 3)), extra


def _compiled(model, x, extra):
    """``torch.compile(model)`` warmed up on one batch (the compile time is recorded), or None if it fails."""
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(x)
    except Exception as e:  # inductor needs a C++ compiler; report instead of failing the section
        extra["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return None
    extra["compile_seconds"] = time.perf_counter() - t0
    return compiled


def _figures(arch, size, n, t, extra) -> list[dict]:
    name = f"{arch} @{size}px"
    out = [figure(f"{name}: eager bare forward (img/s)", n / median(t["bare"]), "img/s")]
    for key, label in (("onnx", "evaluate path, ONNX Runtime"), ("torch", "evaluate path, eager torch"),
                       ("compiled", "torch.compile bare forward")):
        if key in t:
            out += [figure(f"{name}: {label} (img/s)", n / median(t[key]), "img/s"),
                    figure(f"{name}: {label} / eager bare", paired_ratio(t["bare"], t[key]), "x")]
    if "onnx_tta" in t:
        out.append(figure(f"{name}: TTA={TTA} in one batch, time / one view (ONNX Runtime)",
                          paired_ratio(t["onnx_tta"], t["onnx"]), "x"))
    out.append(figure(f"{name}: max |p_onnx - p_torch|", extra["max_abs_diff_onnx_vs_torch"], ""))
    return out
