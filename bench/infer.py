"""Inference: eager torch, torch.compile and ONNX Runtime side by side, per model, in one process, interleaved.

Baseline: eager torch's bare forward pass (images already normalised, batches of 64, ``torch.inference_mode``,
eval mode, channels-last, as ``core.models.inference.load_trained`` prepares a model). Against it, round by round:

* ``evaluate (onnx)``: what ``trainer evaluate`` runs now (``predict_probabilities`` on cached uint8 images through
  the model's ONNX Runtime session: to_float -> normalize -> ONNX Runtime -> softmax), one view;
* ``evaluate (torch)``: the same path on eager torch (``CXR_BACKEND=torch``);
* ``compiled``: the bare forward pass of ``torch.compile(model)`` (compiled once, before timing; full mode,
  ``COMPILED_MODELS`` only);
* ``evaluate (onnx), TTA=5``: five views in one batch, against one view on the same backend.

Ratios are medians of per-round ratios (throughput over eager bare; for TTA, time over one view's time).

Each architecture is measured at its lineup size and, in full mode, at the other sizes committed runs use
(``EXTRA_SIZES``; ONNX Runtime and eager torch only): ``CXR_BACKEND=auto`` picks, per architecture and
size, the backend measured faster here (``evaluate (onnx)`` vs ``evaluate (torch)``, same path, same rounds).
``python -m bench.infer --write-table RESULTS.json...`` turns runs' figures into ``core/models/backend_table.json``;
``CXR_BENCH_INFER_SIZES=lineup`` or ``extra`` measures one half (each fits a 10-minute quiet window).
``CXR_BENCH_COMPILE=0`` skips ``torch.compile`` (minutes of compiling, not needed for the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import fixed_cache, lineup_recipes, recipe_size
from bench.report import check, figure
from bench.timing import Ctx, interleaved, median, paired_ratio
from core.data.transforms import normalize, to_float
from core.models.inference import predict_probabilities
from core.models.onnx_backend import OnnxModel
from core.models.registry import create_model, get_spec
from core.store import write_json

QUICK_MODELS = ("small_cnn", "mobilenet_v2")
COMPILED_MODELS = ("small_cnn", "mobilenet_v2")  # torch.compile takes minutes per model on 2 shared cores
BATCH = 64
TTA = 5
# sizes besides the lineup's: those of the committed runs (kermany-lineup, kermany-robust, populations)
EXTRA_SIZES = {"mobilenet_v2": (96, 160), "efficientnet_lite0": (224,)}
DEFAULT_EXTRA = ()
ONNX_MARGIN = 1.1  # ONNX Runtime must be this much faster to be picked: it costs an export and a second copy
SIZES_ENV = "CXR_BENCH_INFER_SIZES"  # all (default), lineup or extra: the two halves fit a 10-minute quiet window each


def run(ctx: Ctx) -> dict:
    torch.set_num_threads(2)
    recipes = lineup_recipes()
    archs = [a for a in recipes if a in QUICK_MODELS] if ctx.quick else list(recipes)
    figures, checks, raw = [], [], {}
    for arch, size, lineup in _plan(ctx, archs, recipes):
        t0, spec = time.perf_counter(), get_spec(arch)
        n = ctx.reps(32, 48) if lineup else ctx.reps(16, 32)
        cache, _ = fixed_cache(n, size, ctx.work)
        model, _ = create_model(arch, pretrained=False, input_size=size)
        model.eval().to(memory_format=torch.channels_last)
        t, extra = _time_model(ctx, arch, model, spec, size, np.array(cache.images[: len(cache.paths)]), lineup)
        raw[arch if lineup else f"{arch}@{size}"] = {"arch": arch, "size": size, "n": n, "seconds": t, **extra}
        figures += _figures(arch, size, n, t, extra)
        print(f"   infer {arch} @{size}: onnx / torch {paired_ratio(t['torch'], t['onnx']):.2f}x "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if not lineup:
            continue
        checks.append(check(f"{arch}: evaluate path (onnx) / eager bare forward", paired_ratio(t["bare"], t["onnx"]),
                            ">=", 3.0, "x"))
        if "onnx_tta" in t:
            checks.append(check(f"{arch}: TTA={TTA} time / one view (onnx)", paired_ratio(t["onnx_tta"], t["onnx"]),
                                "<=", float(TTA), "x"))
    return {"figures": figures, "checks": checks, "raw": raw}


def _plan(ctx: Ctx, archs, recipes) -> list[tuple[str, int, bool]]:
    """(arch, size, is the lineup's size) to measure: the lineup's sizes, then (full mode) the extra sizes."""
    which = os.environ.get(SIZES_ENV, "all")
    lineup = [(a, recipe_size(recipes[a]), True) for a in archs]
    extra = [] if ctx.quick else [(a, s, False) for a, size, _ in lineup for s in EXTRA_SIZES.get(a, DEFAULT_EXTRA)
                                  if s != size]
    return {"lineup": lineup, "extra": extra}.get(which, lineup + extra)


def _time_model(ctx: Ctx, arch, model, spec, size, images, lineup: bool = True):
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
    if not lineup:  # the backend table needs only the two evaluate paths
        del fns["bare"]
    compile_wanted = lineup and not ctx.quick and arch in COMPILED_MODELS and os.environ.get("CXR_BENCH_COMPILE") != "0"
    compiled = _compiled(model, x_all[:BATCH], extra) if compile_wanted else None
    if compiled is not None:
        fns["compiled"] = bare(compiled)
    if lineup and (not ctx.quick or arch == "mobilenet_v2"):
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
    out = [figure(f"{name}: eager bare forward (img/s)", n / median(t["bare"]), "img/s")] if "bare" in t else []
    for key, label in (("onnx", "evaluate path, ONNX Runtime"), ("torch", "evaluate path, eager torch"),
                       ("compiled", "torch.compile bare forward")):
        if key in t:
            out.append(figure(f"{name}: {label} (img/s)", n / median(t[key]), "img/s"))
            if "bare" in t:
                out.append(figure(f"{name}: {label} / eager bare", paired_ratio(t["bare"], t[key]), "x"))
    out.append(figure(f"{name}: evaluate path, ONNX Runtime / eager torch", paired_ratio(t["torch"], t["onnx"]), "x"))
    if "onnx_tta" in t:
        out.append(figure(f"{name}: TTA={TTA} in one batch, time / one view (ONNX Runtime)",
                          paired_ratio(t["onnx_tta"], t["onnx"]), "x"))
    out.append(figure(f"{name}: max |p_onnx - p_torch|", extra["max_abs_diff_onnx_vs_torch"], ""))
    return out


def backend_table(*runs: dict) -> dict:
    """``core/models/backend_table.json`` from one or more bench runs' JSON (e.g. the lineup and extra halves): per
    architecture and size, the evaluate path's speed on ONNX Runtime over eager torch (median of per-round ratios)
    and the backend ``CXR_BACKEND=auto`` takes. A later run's entry replaces an earlier one's."""
    found = {}
    for results in runs:
        sec = results["sections"]["infer"]
        for key, r in sec["raw"].items():
            t = r["seconds"]
            speedup = paired_ratio(t["torch"], t["onnx"])
            found[(r.get("arch", key), int(r["size"]))] = {
                "arch": r.get("arch", key), "size": int(r["size"]), "onnx_over_torch": round(speedup, 3),
                "backend": "onnx" if speedup >= ONNX_MARGIN else "torch"}
    machine = runs[-1].get("machine", {})
    return {"rule": f"onnx when the evaluate path on ONNX Runtime was >= {ONNX_MARGIN}x eager torch's throughput "
                    "(median of per-round ratios, interleaved, same process); the nearest measured size of the "
                    "architecture decides for an unmeasured size",
            "runs": [{"command": r.get("command"), "started": r.get("started"),
                      "git_head": r.get("machine", {}).get("git_head"),
                      "load_avg": [r["sections"]["infer"].get("load_avg_start"),
                                   r["sections"]["infer"].get("load_avg_end")]} for r in runs],
            "cpu": machine.get("cpu_model"), "cores": machine.get("cores"),
            "torch_threads": machine.get("torch_threads"), "entries": [found[k] for k in sorted(found)]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.infer", description="write core/models/backend_table.json")
    p.add_argument("--write-table", type=Path, nargs="+", required=True, metavar="RESULTS.json",
                   help="`python -m bench --only infer` JSONs (full mode; e.g. the lineup and extra halves)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "core" / "backend_table.json")
    args = p.parse_args(argv)
    table = backend_table(*(json.loads(f.read_text()) for f in args.write_table))
    write_json(args.out, table)
    for r in table["entries"]:
        print(f"{r['arch']:>20} @{r['size']:<4} onnx/torch {r['onnx_over_torch']:6.2f}x -> {r['backend']}")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
