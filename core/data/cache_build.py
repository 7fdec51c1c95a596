"""Parallel, sharded fill of the image cache (``core.data.cache``), sized for data sets of 100k+ films.

The caller creates ``images.npy`` (N x S x S uint8, its disk space reserved: ``core.data.cache``), and this module
hands out shards of consecutive rows to worker processes. Each worker decodes its shard's files and writes the
pixels straight into its rows of the file through its own memory map, unmaps it, and returns only which rows
decoded and why the others failed. No image travels through a pipe and no list of arrays is held anywhere, so peak
memory is about one shard's pages per worker plus the path list, whatever N. At most two shards per worker are in
flight, so the parent's bookkeeping stays small too.

Workers are forked where the platform can (as the serial-era pool was): ``spawn`` would re-run an unguarded
caller script in every worker. A forked worker only decodes files with Pillow and numpy; it never touches the
torch or gloo threads that the parent may run.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from core.data.images import ImageError, load_for_model

SHARD_ROWS = 256


def decode(args: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """One film for the cache: (pixels, None), or (None, why) when it cannot be read; never raises."""
    path, size = args
    try:
        return load_for_model(path, size), None
    except ImageError as e:
        return None, str(e)
    except Exception as e:  # anything else a broken file provokes: record it, never crash the build
        return None, f"{type(e).__name__}: {e}"


def _fill_shard(images_path: str, start: int, paths: list[str], size: int) -> tuple[int, np.ndarray, list]:
    """Decode ``paths`` into rows ``start..`` of the .npy file; returns (start, ok per row, failures)."""
    rows = np.load(images_path, mmap_mode="r+", allow_pickle=False)
    ok = np.zeros(len(paths), dtype=bool)
    failures = []
    for i, path in enumerate(paths):
        img, err = decode((path, size))
        if img is None:
            failures.append((path, err))
        else:
            rows[start + i] = img
            ok[i] = True
    del rows  # unmapped: the pages leave this worker's memory; the parent's final flush writes them to disk
    return start, ok, failures


def fill(images_path: str | Path, paths: Sequence[str], size: int, *, workers: int,
         progress: Callable[[int, int], None] | None = None,
         shard_rows: int = SHARD_ROWS) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode every path into its row of ``images_path`` with ``workers`` processes; returns (ok, failures).

    Failures come back in row order, as a serial build lists them.
    """
    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    found: dict[int, list] = {}
    starts = iter(range(0, n, shard_rows))
    done = 0
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            def submit(pending: set) -> None:
                start = next(starts, None)
                if start is not None:
                    chunk = list(paths[start : start + shard_rows])
                    pending.add(pool.submit(_fill_shard, str(images_path), start, chunk, size))

            pending: set = set()
            for _ in range(2 * workers):
                submit(pending)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    start, shard_ok, shard_failures = future.result()
                    ok[start : start + len(shard_ok)] = shard_ok
                    found[start] = shard_failures
                    done += len(shard_ok)
                    if progress:
                        progress(done, n)
                    submit(pending)
    except BrokenProcessPool as e:
        raise OSError(f"a cache-building worker died ({e}); if memory or disk ran out, free some and retry") from e
    return ok, [f for start in sorted(found) for f in found[start]]
