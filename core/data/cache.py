"""Decode and resize every image once, into a memory-mapped uint8 array that later epochs and runs reuse.

Decoding a full-size JPEG costs tens of milliseconds; reading a 224x224 slice of a memory map costs
microseconds. The cache key covers the file list, sizes and modification times (``core.data.layouts.fingerprint``)
and the target size, so a changed file or a new size builds a new cache and a stale one is never read.

Layout of one cache entry (a folder named by its key, made atomically by renaming a temporary folder):

    images.npy    N x size x size uint8 (.npy, memory-mapped), row i = samples[i] (zeros where the file failed)
    index.json    {"paths": [...], "ok": [...], "failures": [[path, reason], ...], "size": S}
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.data import cache_build
from core.data.layouts import DataError, Sample, fingerprint

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


def cache_key(samples: Sequence[Sample], size: int) -> str:
    return hashlib.sha256(f"{fingerprint(samples)}|{size}|v1".encode()).hexdigest()[:24]


class CacheError(DataError):
    """The image cache cannot be built or read (disk full, I/O error, damaged files); the message says what to do."""


STALE_BUILD_SECONDS = 24 * 3600  # a build folder without a live owner, or older than this, is debris


def load_or_build(samples: Sequence[Sample], size: int, *, root: str | Path | None = None,
                  workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> ImageCache:
    """Return the cache for ``samples`` at ``size``, building it first if needed.

    ``workers`` decoding processes (default: the CPU count, at most 8); ``progress(done, total)`` is called
    as images finish. Disk-full and other I/O errors become a ``CacheError`` and leave no build folder behind.
    """
    root = Path(root) if root is not None else default_cache_root()
    final = root / cache_key(samples, size)
    if (final / "index.json").is_file():
        return _open(final)
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".building-{os.getpid()}-", dir=root))
    except OSError as e:
        raise CacheError(_io_message(root, e)) from None
    try:
        cache = _build(samples, size, tmp, final, workers, progress)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CacheError(_io_message(root, e)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cache


def _build(samples, size, tmp: Path, final: Path, workers, progress) -> ImageCache:
    start = time.perf_counter()
    n = len(samples)
    images = _preallocated_memmap(tmp / "images.npy", (n, size, size))
    ok = np.zeros(n, dtype=bool)
    failures: list[tuple[str, str]] = []
    jobs = [(s.path, size) for s in samples]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1 and n > 32:  # workers write shards of rows straight into the file (core/data/cache_build.py)
        images.flush()
        ok, failures = cache_build.fill(tmp / "images.npy", [s.path for s in samples], size, workers=workers,
                                        progress=progress)
    else:
        _collect(map(cache_build.decode, jobs), images, ok, failures, jobs, progress)
    images.flush()
    del images
    index = {"paths": [s.path for s in samples], "ok": ok.tolist(), "failures": failures, "size": size,
             "build_seconds": time.perf_counter() - start}
    with open(tmp / "index.json", "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(json.dumps(index))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.replace(tmp, final)
    except OSError:  # another process built the same cache meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    cache = _open(final)
    cache.built_seconds = index["build_seconds"]
    return cache


def _preallocated_memmap(path: Path, shape: tuple) -> np.memmap:
    """An .npy memory map whose blocks are reserved on disk first: a full disk is then an ENOSPC error here,
    not a SIGBUS that kills the process when a page of a sparse file is written later."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    offset = len(header.getvalue())
    total = offset + int(np.prod(shape))
    with open(path, "wb") as f:
        f.write(header.getvalue())
        f.flush()
        _reserve(f, total)
    return np.memmap(path, dtype=np.uint8, mode="r+", offset=offset, shape=shape)


def _reserve(f, total: int) -> None:
    try:
        os.posix_fallocate(f.fileno(), 0, total)
        return
    except AttributeError:  # no posix_fallocate (macOS): write zeros, which allocates as well
        pass
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    f.seek(0, io.SEEK_END)
    chunk = b"\0" * (1 << 22)
    while f.tell() < total:
        f.write(chunk[: total - f.tell()])
    f.flush()


def _io_message(root: Path, e: OSError) -> str:
    what = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else (e.strerror or str(e))
    return (f"cannot build the image cache under {root}: {what} ({e.filename or root}); free some space or point "
            f"--cache-dir (or ${ENV_CACHE}) at a disk with room. Nothing was left behind.")


def remove_stale_builds(root: Path) -> list[Path]:
    """Delete ``.building-*`` folders whose process is gone (or that are older than a day); returns them."""
    removed = []
    for folder in root.glob(".building-*"):
        parts = folder.name.split("-")
        pid = int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
        try:
            old = time.time() - folder.stat().st_mtime > STALE_BUILD_SECONDS
        except OSError:
            continue
        if old or (pid is not None and not _alive(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    """Open a finished cache; a damaged one is a CacheError naming the folder to delete."""
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8", errors="surrogateescape"))
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        paths, ok, size = index["paths"], np.asarray(index["ok"], bool), int(index["size"])
        failures = [tuple(f) for f in index["failures"]]
        if images.dtype != np.uint8 or images.shape != (len(paths), size, size) or ok.shape != (len(paths),):
            raise ValueError(f"images.npy is {images.dtype} {images.shape}, index lists {len(paths)} at {size} px")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheError(f"the image cache {folder} is damaged ({type(e).__name__}: {e}); delete that folder "
                         "and it is rebuilt on the next run") from None
    return ImageCache(dir=folder, images=images, paths=paths, ok=ok, failures=failures, size=size)
