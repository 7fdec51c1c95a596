"""Scale benchmark: ``python -m bench.scale [--films 50000] [--ddp] [--steps cpu|cuda] [--work DIR] [--json FILE]``

Cache build (``core.data.cache.load_or_build``, the sharded parallel fill of ``core/data/cache_build.py``) on a
synthetic
flat folder of ``--films`` grayscale JPEG films of ``--film-px`` pixels, generated on the fly into a temporary
folder (never committed; removed afterwards unless ``--keep``). Reported: images/s of the build, and peak
resident memory of the building process (getrusage), of its largest worker and of the whole process tree (both
sampled every 0.1 s with psutil; memory-mapped cache pages count in them, so they are upper bounds).

``--steps DEVICE`` adds training images/s of mobilenet_v2 and resnet50 at 224 px (the trainer's own loop on
random films): float32, and on CUDA the mixed precision the trainer picks, so one GPU can be set against this CPU.

``--compare N`` builds N of the films twice with each of the old path (``pool.map`` returning every image to
the parent) and the sharded one, interleaved, for a speed and memory comparison under the same load.

``--ddp`` adds the training throughput of ``small_cnn`` on a real subset of kermany224 through the real
trainer: one process (``python -m trainer train``, 2 threads) vs two gloo processes (``torchrun
--nproc_per_node 2 -m trainer train``, 1 thread each), images/s of the training epochs as timed in history.csv.
``--steps`` and ``--ddp`` run in a child process (``bench/scale_train.py``): torch and the trainer would otherwise
add about 1.1 GiB to the memory measured here.

The CPU is shared with other jobs, so the load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench import REPO
from core.data import cache_build
from core.data import layouts as data
from core.data.cache import load_or_build


def _films(args: tuple[str, int, int, int]) -> int:
    """Write films ``start..stop`` of a flat NORMAL/PNEUMONIA folder: smooth random shapes plus noise."""
    root, start, stop, px = args
    rng = np.random.default_rng(start)
    yy, xx = np.mgrid[0:px, 0:px] / px
    for i in range(start, stop):
        label = "PNEUMONIA" if i % 2 else "NORMAL"
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.3)]
        img = 90 + 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / r**2) + rng.normal(0, 12, (px, px))
        name = f"person{i}_bacteria_{i}.jpeg" if label == "PNEUMONIA" else f"IM-{i:06d}-0001.jpeg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(Path(root) / label / name, quality=85)
    return stop - start


def make_folder(root: Path, n: int, px: int, workers: int) -> float:
    """Generate the synthetic folder (kept from an earlier ``--keep`` run when it has ``n`` films); returns seconds."""
    start = time.perf_counter()
    if sum(len(os.listdir(d)) for d in (root / "NORMAL", root / "PNEUMONIA") if d.is_dir()) == n:
        return 0.0
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True, exist_ok=True)
    chunks = [(str(root), a, min(n, a + 1000), px) for a in range(0, n, 1000)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_films, chunks))
    return time.perf_counter() - start


class PeakTree(threading.Thread):
    """Samples the summed RSS of this process and its descendants until stopped; keeps the peak."""

    def __init__(self, every: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.me, self.every, self.halt = psutil.Process(), every, threading.Event()
        self.peak = self.peak_child = 0

    def run(self):
        import psutil

        while not self.halt.is_set():
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if p is not self.me:
                    self.peak_child = max(self.peak_child, rss)
            self.peak = max(self.peak, total)
            time.sleep(self.every)


def bench_cache(folder: Path, work: Path, size: int, workers: int) -> dict:
    t0 = time.perf_counter()
    samples = data.scan(folder).samples
    scan_s = time.perf_counter() - t0
    sampler = PeakTree()
    sampler.start()
    t0 = time.perf_counter()
    cache = load_or_build(samples, size, root=work / "cache", workers=workers)
    build_s = time.perf_counter() - t0
    sampler.halt.set()
    sampler.join()
    mb = 1024  # ru_maxrss is in KiB on Linux
    return {"films": len(samples), "size": size, "workers": workers, "scan_seconds": round(scan_s, 1),
            "build_seconds": round(build_s, 1), "images_per_second": round(len(samples) / build_s, 1),
            "failures": len(cache.failures), "cache_gib": round(cache.images.nbytes / 2**30, 2),
            "peak_rss_parent_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mb),
            "peak_rss_largest_worker_mib": round(sampler.peak_child / 2**20),
            "peak_rss_tree_mib": round(sampler.peak / 2**20)}


def _pool_build(paths: list[str], size: int, out: Path, workers: int) -> None:
    """The build before core/data/cache_build.py, for comparison: ``pool.map`` sends every decoded image back to the
    parent, which writes it into its own memory map (so the parent's resident pages grow with N)."""
    images = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(paths), size, size))
    with ProcessPoolExecutor(workers) as pool:
        for i, (img, _) in enumerate(pool.map(cache_build.decode, [(p, size) for p in paths], chunksize=16)):
            if img is not None:
                images[i] = img
    images.flush()


def _sharded_build(paths: list[str], size: int, out: Path, workers: int) -> None:
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(paths), size, size)).flush()
    cache_build.fill(out, paths, size, workers=workers)


def compare_builds(folder: Path, work: Path, size: int, workers: int, n: int, rounds: int = 2) -> dict:
    """Pool (before) vs sharded (now) on the same ``n`` films, interleaved, so the machine's load hits both."""
    paths = sorted(str(p) for p in folder.rglob("*.jpeg"))[:n]
    rates: dict[str, list] = {"pool_map_before": [], "sharded_now": []}
    peaks: dict[str, list] = {"pool_map_before": [], "sharded_now": []}
    for _ in range(rounds):
        for name, build in (("pool_map_before", _pool_build), ("sharded_now", _sharded_build)):
            out = work / f"compare-{name}.npy"
            sampler = PeakTree()
            sampler.start()
            t0 = time.perf_counter()
            build(paths, size, out, workers)
            rates[name].append(round(len(paths) / (time.perf_counter() - t0), 1))
            sampler.halt.set()
            sampler.join()
            peaks[name].append(round(sampler.peak / 2**20))
            out.unlink()
    return {"films": len(paths), "images_per_second": rates, "peak_rss_tree_mib": peaks,
            "speed_ratio_sharded_over_pool": round(float(np.median(np.array(rates["sharded_now"]) /
                                                                  np.array(rates["pool_map_before"]))), 2)}


def _child(kind: str, arg: str) -> dict:
    """One training benchmark (``bench.scale_train``) in a child process, so that its imports never count in this
    process's cache-build memory figures; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "bench.scale_train", kind, arg], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"bench.scale_train {kind} {arg} exited {out.returncode}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--films", type=int, default=50_000, help="0: skip the cache build")
    p.add_argument("--film-px", type=int, default=256, help="side of each synthetic film")
    p.add_argument("--size", type=int, default=224, help="cache size (the models' input)")
    p.add_argument("--workers", type=int, default=None, help="cache-building processes (default: as the trainer)")
    p.add_argument("--ddp", action="store_true", help="also time 1-process vs 2-process training")
    p.add_argument("--compare", type=int, metavar="N", help="also build N of the films with the old pool.map "
                   "path and the sharded one, interleaved, twice each")
    p.add_argument("--steps", metavar="DEVICE", help="also time training steps of mobilenet_v2 and resnet50 at "
                   "224 px on DEVICE (cpu, cuda): float32, and mixed precision on CUDA")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic folder in --work for the next run")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cxr-scale-"))
    workers = args.workers or min(8, os.cpu_count() or 1)
    result = {"load_average_before": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count()}
    try:
        if args.films:
            result["generate_seconds"] = round(make_folder(work / "films", args.films, args.film_px, workers), 1)
            result["cache_build"] = bench_cache(work / "films", work, args.size, workers)
        if args.films and args.compare:
            result["compare"] = compare_builds(work / "films", work, args.size, workers, args.compare)
        if args.ddp:
            result["ddp"] = _child("ddp", str(work))
        if args.steps:
            result["steps"] = _child("steps", args.steps)
    finally:
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        if args.keep:
            shutil.rmtree(work / "cache", ignore_errors=True)  # the next run times a cold build again
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
