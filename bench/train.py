"""Training: images/s of the trainer's own step per model at its lineup input size, the share of step time spent
on the batch (fetch + to_float + augment + normalize, timed separately in the same loop), and peak memory.

Each model runs in its own subprocess (``python -m bench.train ARCH ...``) so that its RSS high-water mark
(``resource.getrusage``) is its own. The loop is trainer/train.py's: channels-last model, AdamW with the
trainer's parameter groups and schedule, class-weighted cross-entropy with the recipe's label smoothing,
``zero_grad`` / backward / step / scheduler step, the loss read back every step. Models are built without
ImageNet weights (the weights do not change the cost) and with every layer trainable (the main stage).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bench import REPO
from bench.report import check, figure
from bench.timing import Ctx, median

QUICK_MODELS = ("small_cnn", "mobilenet_v2")
N_IMAGES = 256


def worker(arch: str, warmup: int, steps: int, work: str) -> dict:
    import resource
    from pathlib import Path

    import numpy as np
    import psutil
    import torch
    import torch.nn.functional as F

    from bench.common import fixed_cache, lineup_recipes, recipe_size
    from core.models import create_model, get_spec
    from core.transforms import AugmentConfig, augment, normalize, to_float
    from trainer.train import _class_weights, _lr_lambda, _param_groups

    torch.set_num_threads(2)
    rss_start = psutil.Process().memory_info().rss
    recipe = lineup_recipes()[arch]
    size = recipe_size(recipe)
    cache, labels = fixed_cache(N_IMAGES, size, Path(work))
    train_rows = np.arange(len(labels))
    device = torch.device("cpu")
    spec = get_spec(arch)
    torch.manual_seed(0)
    model, _ = create_model(arch, pretrained=False, input_size=size)
    model.to(device, memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, spec, recipe), weight_decay=recipe.weight_decay)
    total = warmup + steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, 1))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    class_w = _class_weights(labels, recipe, device)
    aug = AugmentConfig(hflip=recipe.hflip, blur_prob=recipe.blur_prob)
    gen = torch.Generator().manual_seed(0)
    bs = recipe.batch_size
    order = np.concatenate([np.random.default_rng([0, e]).permutation(len(train_rows))
                            for e in range(total * bs // len(train_rows) + 1)])
    t_data, t_step = [], []
    clock = time.perf_counter
    for b in range(total):
        t0 = clock()
        idx = order[b * bs:(b + 1) * bs]
        x = to_float(torch.from_numpy(cache.images[np.sort(train_rows[idx])]))
        y = torch.from_numpy(labels[idx][np.argsort(train_rows[idx], kind="stable")])
        if recipe.augment:
            x = augment(x, aug, gen)
        x, y = normalize(x, spec.mean, spec.std).to(device, non_blocking=True), y.to(device)
        t1 = clock()
        with torch.autocast(device.type, enabled=False):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=class_w, label_smoothing=recipe.label_smoothing)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        float(loss.detach()), int((logits.argmax(1) == y).sum())
        t2 = clock()
        if b >= warmup:
            t_data.append(t1 - t0)
            t_step.append(t2 - t1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"arch": arch, "size": size, "batch_size": bs, "augment": recipe.augment, "data_s": t_data,
            "model_s": t_step, "rss_start_mb": rss_start / 2**20, "peak_rss_mb": peak / 2**20,
            "threads": torch.get_num_threads()}


def run(ctx: Ctx) -> dict:
    from bench.common import fixed_cache, lineup_recipes, recipe_size

    recipes = lineup_recipes()
    archs = [a for a in recipes if a in QUICK_MODELS] if ctx.quick else list(recipes)
    warmup, steps = ctx.reps(1, 2), ctx.reps(2, 6)
    for size in sorted({recipe_size(recipes[a]) for a in archs}):  # build outside the timed subprocesses
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
