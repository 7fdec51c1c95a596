"""Decode and resize every image once, into a memory-mapped uint8 array that later epochs and runs reuse.

Decoding a full-size JPEG costs tens of milliseconds; reading a 224x224 slice of a memory map costs
microseconds. The cache key covers the file list, sizes and modification times (``core.data.fingerprint``)
and the target size, so a changed file or a new size builds a new cache and a stale one is never read.

Layout of one cache entry (a folder named by its key, made atomically by renaming a temporary folder):

    images.npy    N x size x size uint8 (.npy, memory-mapped), row i = samples[i] (zeros where the file failed)
    index.json    {"paths": [...], "ok": [...], "failures": [[path, reason], ...], "size": S}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.data import Sample, fingerprint
from core.images import ImageError, load_for_model

ENV_CACHE = "CXR_CACHE_DIR"


def default_cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "cxr-compare")


@dataclass
class ImageCache:
    """Cached images of a sample list: ``images[i]`` is ``paths[i]`` at ``size`` x ``size``."""

    dir: Path
    images: np.ndarray  # memory map, read-only
    paths: list[str]
    ok: np.ndarray  # bool per row: False where the file could not be decoded
    failures: list[tuple[str, str]]
    size: int
    built_seconds: float = 0.0  # 0 when it was read from disk

    def index_of(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def _decode(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    path, size = args
    try:
        return load_for_model(path, size), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # anything else a broken file provokes: record it, never crash the build
        return None, f"{type(e).__name__}: {e}"


def cache_key(samples: Sequence[Sample], size: int) -> str:
    return hashlib.sha256(f"{fingerprint(samples)}|{size}|v1".encode()).hexdigest()[:24]


def load_or_build(samples: Sequence[Sample], size: int, *, root: str | Path | None = None,
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> ImageCache:
    """Return the cache for ``samples`` at ``size``, building it first if needed.

    ``workers`` decoding processes (default: the CPU count, at most 8); ``progress(done, total)`` is called
    as images finish.
    """
    root = Path(root) if root is not None else default_cache_root()
    final = root / cache_key(samples, size)
    if (final / "index.json").is_file():
        return _open(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        start = time.perf_counter()
        n = len(samples)
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        ok = np.zeros(n, dtype=bool)
        failures: list[tuple[str, str]] = []
        jobs = [(s.path, size) for s in samples]
        workers = workers or min(8, os.cpu_count() or 1)
        if workers > 1 and n > 32:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_decode, jobs, chunksize=16)
                _collect(results, images, ok, failures, jobs, progress)
        else:
            _collect(map(_decode, jobs), images, ok, failures, jobs, progress)
        images.flush()
        del images
        index = {"paths": [s.path for s in samples], "ok": ok.tolist(), "failures": failures, "size": size,
                 "build_seconds": time.perf_counter() - start}
        (tmp / "index.json").write_text(json.dumps(index))
        try:
            os.replace(tmp, final)
        except OSError:  # another process built the same cache meanwhile: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        cache = _open(final)
        cache.built_seconds = index["build_seconds"]
        return cache
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _collect(results, images, ok, failures, jobs, progress) -> None:
    for i, (img, err) in enumerate(results):
        if img is None:
            failures.append((jobs[i][0], err))
        else:
            images[i] = img
            ok[i] = True
        if progress:
            progress(i + 1, len(jobs))


def _open(folder: Path) -> ImageCache:
    index = json.loads((folder / "index.json").read_text())
    images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
    return ImageCache(dir=folder, images=images, paths=index["paths"], ok=np.asarray(index["ok"], bool),
                      failures=[tuple(f) for f in index["failures"]], size=index["size"])

