"""Data pipeline: images/s delivered to the model by the cached loader vs a naive torchvision pipeline.

Ours (what trainer/train.py does per batch): rows of the memory-mapped uint8 cache -> ``to_float`` ->
``augment`` -> ``normalize`` (3 channels, channels-last), batches of 32, in the training process.
Naive: ``ImageFolder`` + PIL + ``Resize``/``ToTensor``/``Normalize`` through a ``DataLoader`` with 2 workers,
batch 32 (persistent workers, so worker start-up is not counted after the first epoch; no augmentation, so the
naive side does less work than ours). Both read the train/ and val/ folders of each data set (on kermany224 a
fixed subset of 1,024 images, 256 in quick mode: the rate does not depend on the number of files). The first
epoch is a warm-up, then rounds of one epoch each (naive, ours, ...); the speed-up is the median of the per-round
ratios. The target compares the same work (ours without augmentation, since the naive pipeline has none);
ours with augmentation is reported beside it. A diagnostic rides along: ours on one torch thread (the batch path
runs on the process's OpenMP threads; on a CPU shared with other jobs their spin-waiting can cost more than the
second thread gains). The cold cache build (``core.data.cache.load_or_build`` into a fresh folder, its default worker
count) is timed separately.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from bench import FULLRES, KERMANY224
from bench.report import check, figure
from bench.timing import Ctx, median, paired_ratio
from core.data import layouts as data
from core.data.cache import load_or_build
from core.data.transforms import AugmentConfig, augment, normalize, to_float
from core.models.registry import IMAGENET_MEAN, IMAGENET_STD

BATCH = 32
SIZE = 224


def _samples(root: Path, limit: int | None):
    samples = [s for s in data.scan(root).samples if s.split in ("train", "val")]
    if limit and len(samples) > limit:  # a fixed, label-mixed subset (quick mode)
        rng = np.random.default_rng(0)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), limit, replace=False))]
    return samples


def _ours(cache, seed: int = 0):
    """One epoch generator factory: returns a function that runs one epoch, returns images delivered."""
    aug = AugmentConfig(blur_prob=0.2)  # the lineup's recipe
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = len(cache.paths)

    def epoch(with_augment: bool = True, stages: dict | None = None) -> int:
        """One epoch; with ``stages``, adds the seconds spent in each step of the batch path to it."""
        order = rng.permutation(n)
        clock = time.perf_counter
        for b in range(0, n, BATCH):
            t0 = clock()
            u8 = torch.from_numpy(cache.images[np.sort(order[b:b + BATCH])])
            t1 = clock()
            x = to_float(u8)
            t2 = clock()
            if with_augment:
                x = augment(x, aug, gen)
            t3 = clock()
            x = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
            t4 = clock()
            if stages is not None:
                for k, dt in zip(("fetch", "to_float", "augment", "normalize"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    stages[k] = stages.get(k, 0.0) + dt
        return n

    return epoch


def _naive(root: Path, samples):
    tf = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    parts = [datasets.ImageFolder(str(root / split), transform=tf) for split in ("train", "val")]
    ds = ConcatDataset(parts)
    wanted = {str(Path(s.path).resolve()) for s in samples}
    all_paths = [str(Path(p).resolve()) for part in parts for p, _ in part.samples]
    if len(wanted) < len(all_paths):
        ds = Subset(ds, [i for i, p in enumerate(all_paths) if p in wanted])
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))

    def epoch() -> int:
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        return n

    return epoch, loader


def _bench_dataset(ctx: Ctx, key: str, root: Path, limit: int | None) -> tuple[list, list, dict]:
    samples = _samples(root, limit)
    n = len(samples)
    raw: dict = {"n_images": n, "root": str(root)}

    # Cold cache build: a fresh folder each time (the JPEGs themselves are in the OS page cache after the first).
    builds = []
    for _ in range(ctx.reps(1, 3)):
        tmp = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=ctx.work))
        try:
            t0 = time.perf_counter()
            cache = load_or_build(samples, SIZE, root=tmp)
            builds.append(time.perf_counter() - t0)
            np.asarray(cache.images[:1])  # opened fine
            del cache
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    cache = load_or_build(samples, SIZE, root=ctx.work / "cache")  # the warm cache the epochs read

    ours = _ours(cache)
    naive, loader = _naive(root, samples)
    try:
        ours(), ours(False), naive()  # first epochs: warm-up (page cache, worker start-up, allocator)
        t_ours, t_noaug, t_naive, t_one = [], [], [], []
        for _ in range(ctx.reps(2, 4)):
            t0 = time.perf_counter()
            naive()
            t_naive.append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            ours()
            t_ours.append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            ours(False)
            t_noaug.append((time.perf_counter() - t0) / n)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # diagnostic: the same path on one torch thread
            try:
                t0 = time.perf_counter()
                ours()
                t_one.append((time.perf_counter() - t0) / n)
            finally:
                torch.set_num_threads(threads)
        stages: dict = {}
        ours(stages=stages)  # where our time goes, one more epoch
    finally:
        del loader
    ours_ips, naive_ips, noaug_ips = 1 / median(t_ours), 1 / median(t_naive), 1 / median(t_noaug)
    one_ips = 1 / median(t_one)
    build_ips = n / median(builds)
    speedup = paired_ratio(t_naive, t_ours)  # per round: naive seconds per image / ours
    # like for like: the naive pipeline does no augmentation, so the target compares ours without it too
    speedup_same_work = paired_ratio(t_naive, t_noaug)
    raw.update({"build_seconds": builds, "ours_s_per_image": t_ours, "ours_noaug_s_per_image": t_noaug,
                "naive_s_per_image": t_naive, "ours_one_thread_s_per_image": t_one, "ours_stage_seconds": stages})
    total = sum(stages.values()) or 1.0
    shares = {k: round(v / total, 3) for k, v in stages.items()}
    figs = [figure(f"{key}: cache build, cold (img/s)", build_ips, "img/s", n=n),
            figure(f"{key}: ours, cached+augment (img/s)", ours_ips, "img/s"),
            figure(f"{key}: ours without augment (img/s)", noaug_ips, "img/s"),
            figure(f"{key}: ours on 1 torch thread, diagnostic (img/s)", one_ips, "img/s"),
            figure(f"{key}: naive ImageFolder+DataLoader(2) (img/s)", naive_ips, "img/s"),
            figure(f"{key}: ours / naive (median of per-round ratios)", speedup, "x"),
            figure(f"{key}: ours / naive, same work (neither augments)", speedup_same_work, "x"),
            figure(f"{key}: ours, share of time in augment", shares.get("augment"), "fraction", stages=shares)]
    return figs, [speedup_same_work], raw


def run(ctx: Ctx) -> dict:
    torch.set_num_threads(2)
    figures, checks, raw = [], [], {}
    for key, root, limit in (("fullres", FULLRES, None), ("kermany224", KERMANY224, 256 if ctx.quick else 1024)):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: data set not found (set CXR_SHARED_DATA)")
        figs, (r,), raw[key] = _bench_dataset(ctx, key, root, limit)
        figures += figs
        if key == "fullres":
            checks.append(check("full-size JPEGs: ours / naive after the first epoch, same work", r, ">=", 5.0, "x"))
    return {"figures": figures, "checks": checks, "raw": raw}
