"""The training half of ``python -m bench.scale`` (``--ddp``, ``--steps``), run by it in a child process.

Its imports (torch, timm, the trainer, the store's pandas and scipy) make a process about 1.1 GiB resident
(1,134 MiB after ``import trainer.train``, against 43 MiB for what the cache build needs); in bench.scale's own
process they would swamp the cache build's peak-memory figures (70 MiB for the building process, BENCHMARKS.md).

``python -m bench.scale_train ddp WORK`` or ``python -m bench.scale_train steps DEVICE`` prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import KERMANY224, REPO
from core.models.accel import choose
from core.models.registry import create_model, get_spec
from core.store import ModelArtifacts, Run
from trainer.config import Recipe
from trainer.train import make_fit, train_one_epoch

__all__ = ["bench_ddp", "bench_steps"]


def _train(launcher: list[str], run: str, work: Path, threads: int, subset: int, epochs: int) -> dict:
    """One trainer run of small_cnn; images/s over its training epochs (history.csv's seconds)."""
    cmd = [*launcher, "train", "--data", str(KERMANY224), "--models", "small_cnn", "--subset", str(subset),
           "--epochs", str(epochs), "--input-size", "128", "--run", run, "--artifacts", str(work / "artifacts"),
           "--cache-dir", str(work / "train-cache"), "--threads", str(threads), "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "CXR_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-3000:]}")
    split = Run(work / "artifacts" / run).split_table()
    history = ModelArtifacts(work / "artifacts" / run, "small_cnn").history()
    n_train = int((split["split"] == "train").sum())
    seconds = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]  # epoch 1 warms up
    return {"n_train": n_train, "epoch_seconds": [round(float(s), 2) for s in history["seconds"]],
            "images_per_second": round(n_train / float(np.median(seconds)), 1), "wall_seconds": round(wall, 1),
            "val_auc_last": round(float(history["val_auc"].iloc[-1]), 4)}


def bench_ddp(work: Path, subset: int = 300, epochs: int = 3) -> dict:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "trainer", "--"]
    single = _train([sys.executable, "-m", "trainer"], "one", work, 2, subset, epochs)
    double = _train(torchrun, "two", work, 1, subset, epochs)
    return {"one_process_2_threads": single, "two_processes_1_thread": double,
            "speedup": round(double["images_per_second"] / single["images_per_second"], 2)}


def bench_steps(device: str, archs=("mobilenet_v2", "resnet50"), size: int = 224, batch: int = 32,
                warmup: int = 1, steps: int = 3) -> dict:
    """Training images/s of the trainer's own epoch loop (batch + step) at ``size`` px on random films:
    float32, and on CUDA also the mixed precision ``core.models.accel`` chooses (bfloat16, or float16 + GradScaler)."""
    n = batch * (warmup + steps)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    out = {}
    for arch in archs:
        for amp in ([False, True] if torch.device(device).type == "cuda" else [False]):
            torch.manual_seed(0)
            accel = choose(device, amp=amp)
            model, _ = create_model(arch, pretrained=False, input_size=size)
            recipe = Recipe(name=arch, arch=arch, epochs=1, batch_size=batch, max_train_batches=warmup + steps)
            fit = make_fit(accel.prepare(model), get_spec(arch), recipe, labels, accel.device)
            fit.accel, fit.scaler = accel, accel.scaler()
            stats = train_one_epoch(fit, images, np.arange(n), labels, seed=0, epoch=1)
            seconds = sum(stats.data_seconds[warmup:]) + sum(stats.step_seconds[warmup:])
            mode = accel.describe()["mixed precision"] if amp else "float32"
            out[f"{arch} {size}px {mode}"] = round(batch * steps / seconds, 1)
    return {"device": str(choose(device).device), "threads": torch.get_num_threads(), "images_per_second": out}


if __name__ == "__main__":
    kind, arg = sys.argv[1], sys.argv[2]
    print(json.dumps(bench_ddp(Path(arg)) if kind == "ddp" else bench_steps(arg)))
