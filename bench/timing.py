"""Timing helpers: medians, percentiles, interleaved repetitions, and the bench's shared settings."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Ctx:
    """What every section gets: quick or full, and where it may write."""

    quick: bool
    results: Path  # bench/results (or a test's tmp dir)
    work: Path  # scratch shared across invocations: image caches, the 8-model run

    def reps(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=float)))


def p95(xs) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), 95))


def summary(xs) -> dict:
    """Median, 95th percentile, min and the number of repetitions of a list of seconds."""
    xs = [float(x) for x in xs]
    return {"median": median(xs), "p95": p95(xs), "min": min(xs), "n": len(xs)}


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn (a, b, a, b, ...) after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            out[k].append(timed(fn))
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[i] / den[i]``: each round's two timings were taken back to back, so a change
    in the machine's load between rounds (common on a shared CPU) cancels out instead of skewing the ratio."""
    pairs = [a / b for a, b in zip(num, den) if b > 0]
    return median(pairs) if pairs else float("nan")
