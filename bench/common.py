"""What several sections share: the lineup's recipe per architecture, and a fixed set of cached images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench import KERMANY224, LINEUP
from core.data import layouts as data
from core.data.cache import load_or_build
from core.models.registry import input_size_for
from trainer import config as cfgmod


def lineup_recipes() -> dict:
    """arch -> the Recipe of its first entry in configs/lineup.yaml (input size, batch size, augmentation...)."""
    cfg = cfgmod.build(cfgmod.load_file(LINEUP), {})
    out = {}
    for r in cfgmod.entries(cfg):
        out.setdefault(r.arch, r)
    return out


def recipe_size(recipe) -> int:
    return input_size_for(recipe.arch, recipe.input_size)


def fixed_samples(n: int):
    """``n`` training images of kermany224 (a fixed, seeded, label-mixed choice)."""
    if not KERMANY224.is_dir():
        raise FileNotFoundError(f"{KERMANY224}: data set not found (set CXR_SHARED_DATA)")
    samples = [s for s in data.scan(KERMANY224).samples if s.split == "train"]
    rng = np.random.default_rng(0)
    return [samples[i] for i in sorted(rng.choice(len(samples), min(n, len(samples)), replace=False))]


def fixed_cache(n: int, size: int, work: Path):
    """The cache of ``fixed_samples(n)`` at ``size`` (built once under ``work/cache``, then memory-mapped)."""
    samples = fixed_samples(n)
    cache = load_or_build(samples, size, root=work / "cache")
    return cache, np.array([s.label for s in samples])
