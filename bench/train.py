"""Training: images/s of the trainer's own step per model at its lineup input size, the share of step time spent
on the batch (fetch + to_float + augment + normalize), and peak memory.

Each model runs in its own subprocess (``python -m bench.train ARCH ...``) so that its RSS high-water mark
(``resource.getrusage``) is its own. The loop is the trainer's own ``trainer.train.train_one_epoch`` (with
``make_fit``: channels-last model, the recipe's optimiser, parameter groups, schedule, class-weighted loss),
which times the batch and the model step of every batch. Models are built without ImageNet weights (the
weights do not change the cost) and with every layer trainable (the main stage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench import REPO
from bench.common import fixed_cache, lineup_recipes
from bench.report import check, figure
from bench.timing import Ctx, median
from core.models.registry import create_model, get_spec, input_size_for
from trainer.train import make_fit, train_one_epoch

QUICK_MODELS = ("small_cnn", "mobilenet_v2")
N_IMAGES = 256


def worker(arch: str, warmup: int, steps: int, work: str) -> dict:
    # Unix only and a dev requirement: only the measuring worker needs them
    import resource

    import psutil

    torch.set_num_threads(2)
    rss_start = psutil.Process().memory_info().rss
    total = warmup + steps
    recipe = replace(lineup_recipes()[arch], max_train_batches=total)
    size = input_size_for(recipe.arch, recipe.input_size)
    cache, labels = fixed_cache(N_IMAGES, size, Path(work))
    torch.manual_seed(0)
    model, _ = create_model(arch, pretrained=False, input_size=size)
    model.to(torch.device("cpu"), memory_format=torch.channels_last)
    fit = make_fit(model, get_spec(arch), recipe, labels, torch.device("cpu"))
    rows, t_data, t_step, epoch = np.arange(len(labels)), [], [], 0
    while len(t_step) < total:  # the trainer's own epoch loop, as many epochs as the batches need
        epoch += 1
        stats = train_one_epoch(fit, cache.images, rows, labels, seed=0, epoch=epoch)
        t_data += stats.data_seconds
        t_step += stats.step_seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"arch": arch, "size": size, "batch_size": recipe.batch_size, "augment": recipe.augment,
            "data_s": t_data[warmup:total], "model_s": t_step[warmup:total], "rss_start_mb": rss_start / 2**20,
            "peak_rss_mb": peak / 2**20, "threads": torch.get_num_threads()}


def run(ctx: Ctx) -> dict:
    recipes = lineup_recipes()
    archs = [a for a in recipes if a in QUICK_MODELS] if ctx.quick else list(recipes)
    warmup, steps = ctx.reps(1, 2), ctx.reps(2, 6)
    # caches are built here, outside the timed subprocesses
    for size in sorted({input_size_for(a, recipes[a].input_size) for a in archs}):
        fixed_cache(N_IMAGES, size, ctx.work)
    figures, checks, raw = [], [], {}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for arch in archs:
        out = subprocess.run([sys.executable, "-m", "bench.train", arch, str(warmup), str(steps), str(ctx.work)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"train worker for {arch} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        raw[arch] = r
        per_step = [d + m for d, m in zip(r["data_s"], r["model_s"])]
        ips = r["batch_size"] / median(per_step)
        share = median([d / (d + m) for d, m in zip(r["data_s"], r["model_s"])])
        figures += [figure(f"{arch} @{r['size']}px: train step (img/s)", ips, "img/s"),
                    figure(f"{arch} @{r['size']}px: share of step waiting for data", share, "fraction",
                           data_ms=1000 * median(r["data_s"]), model_ms=1000 * median(r["model_s"])),
                    figure(f"{arch} @{r['size']}px: peak RSS", r["peak_rss_mb"], "MB",
                           rss_after_imports_mb=r["rss_start_mb"])]
        checks.append(check(f"{arch}: data share of the step", share, "<=", 0.05))
    return {"figures": figures, "checks": checks, "raw": raw}


if __name__ == "__main__":
    a, w, s, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    print(json.dumps(worker(a, w, s, work)))
