"""From a data folder to split, checked, cached images: everything that must hold before training starts."""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from core.data import layouts as data
from core.data.cache import ImageCache, load_or_build
from core.data.labels import CLASSES
from core.data.layouts import STRATA, DataError, Sample
from core.store import data_folder

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """The run's samples with splits assigned, and the files that could not be used."""

    root: str  # as the user gave it (artifacts store it so, and image paths relative to it)
    layout: str
    samples: list[Sample]
    skipped: list[tuple[str, str]]

    def splits(self) -> list[str]:
        """Split names in use (not ``excluded``), in ``core.data.layouts.sort_splits`` order."""
        return data.sort_splits(s.split for s in self.samples if s.split and s.split != data.EXCLUDED)

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.samples) if s.split == split], dtype=int)

    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=int)


def subsample(samples: list[Sample], per_class: int, seed: int) -> list[Sample]:
    """Keep whole patients, chosen at random, until each class has about ``per_class`` images per split."""
    by_key: dict[tuple, list[Sample]] = defaultdict(list)
    for s in samples:
        by_key[(s.split, s.label, s.patient_id)].append(s)
    rng = random.Random(seed)
    keep: list[Sample] = []
    for split in sorted({s.split or "" for s in samples}):
        for label in range(len(CLASSES)):
            groups = [g for (sp, lb, _), g in sorted(by_key.items()) if (sp or "") == split and lb == label]
            rng.shuffle(groups)
            n = 0
            for g in groups:
                if n >= per_class:
                    break
                keep.extend(g)
                n += len(g)
    return sorted(keep, key=lambda s: s.path)


OFFICIAL_VAL = "official_val"


def prepare(root: str, *, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
            subset: int | None = None, assign: bool = True) -> Prepared:
    """Scan ``root``, carve patient-grouped splits, and check them. Raises DataError before any training.

    A Kermany tree's own ``val/`` (16 images) is too small to choose anything on, so it is set aside as the
    split ``official_val``: scored after training like test, never used for a decision. It comes from the
    official test's hospital batch, so it is a small early look at the shift that the held-out test shows.
    """
    scan = data.scan(root)
    samples = scan.samples
    if assign:
        # a fixed split: assign_splits keeps it and excludes pool images of its patients (no leakage)
        samples = [replace(s, split=OFFICIAL_VAL) if s.split == "val" else s for s in samples]
        samples = data.assign_splits(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if subset:
        samples = subsample(samples, subset, seed)
    if assign:
        data.check_no_patient_overlap(samples)
    return Prepared(root=str(root), layout=scan.layout, samples=samples, skipped=list(scan.skipped))


@dataclass(frozen=True)
class Source:
    """One data source of a run: a name (``kermany``, ``nih_adult``, a hospital's own) and its folder or manifest."""

    name: str
    data: str  # as the user gave it (relative stays relative)


def common_root(sources: list[Source]) -> str:
    """The folder every source lies in: a multi-source run's data root, which its image paths are stored
    relative to (``../shared/data`` for ``../shared/data/kermany224`` and ``../shared/data/nih_adult/...``)."""
    folders = [os.path.normpath(data_folder(s.data)) for s in sources]
    if len({os.path.isabs(f) for f in folders}) > 1:
        folders = [os.path.abspath(f) for f in folders]
    return os.path.commonpath(folders)


def prepare_sources(sources: list[Source], *, seed: int = 0, val_fraction: float = 0.15,
                    test_fraction: float = 0.15, subset: int | None = None) -> Prepared:
    """Scan and split each source on its own (patients never cross sources, each source keeps its own class
    balance in every split), then join them. Patient ids are prefixed with the source name so that two sources'
    ids cannot collide; each film carries its source (``Sample.source``) into split.csv and the predictions."""
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise DataError(f"sources: names must be distinct, got {names}")
    samples, skipped = [], []
    for src in sources:
        part = prepare(src.data, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, subset=subset)
        try:
            check_usable(part)
        except DataError as e:
            raise DataError(f"source {src.name!r} ({src.data}): {e}") from None
        samples += [replace(s, source=src.name, patient_id=f"{src.name}:{s.patient_id}") for s in part.samples]
        skipped += part.skipped
    data.check_no_patient_overlap(samples)
    return Prepared(root=common_root(sources), layout="sources", samples=sorted(samples, key=lambda s: s.path),
                    skipped=sorted(skipped))


def strata_of(samples: list[Sample]) -> dict[str, list[str]]:
    """Stratum columns known for any of ``samples`` (source, view, sex, age band): {column: value per sample}."""
    columns = ["source", *STRATA]
    values = {c: [s.stratum(c) for s in samples] for c in columns}
    return {c: v for c, v in values.items() if any(v)}


def build_cache(prepared: Prepared, size: int, *, cache_dir=None, workers=None, quiet=False) -> ImageCache:
    """Decode once at ``size``; files that fail to decode are dropped from the samples and listed as skipped."""
    step = 200 * max(1, round(len(prepared.samples) / 2000))  # about ten lines a build

    def progress(done, total):
        if not quiet and (done == total or done % step == 0):
            log.info(f"  caching {size}px images: {done}/{total}")

    cache = load_or_build(prepared.samples, size, root=cache_dir, workers=workers, progress=progress)
    if cache.failures:
        bad = {p for p, _ in cache.failures}
        prepared.skipped.extend(f for f in cache.failures if f not in prepared.skipped)
        prepared.samples = [s for s in prepared.samples if s.path not in bad]
    return cache


def rows_for(prepared: Prepared, cache: ImageCache) -> np.ndarray:
    """Row of each (usable) sample in the cache."""
    where = cache.index_of()
    return np.array([where[s.path] for s in prepared.samples], dtype=int)


@dataclass
class SplitData:
    """One split's images as a model entry sees them: cache rows, labels and the files they came from."""

    rows: np.ndarray
    labels: np.ndarray
    paths: list[str]
    strata: dict[str, list[str]] = field(default_factory=dict)  # ``strata_of``: source, view, sex, age band

    @property
    def sources(self) -> list[str] | None:
        """Each image's source when the split holds more than one, else None (one population, nothing to weigh)."""
        src = self.strata.get("source")
        return src if src is not None and len(set(src)) > 1 else None


def split_data(prepared: Prepared, cache: ImageCache) -> dict[str, SplitData]:
    """Every split in use, with its rows in ``cache`` (built for the entry's input size)."""
    rows, labels = rows_for(prepared, cache), prepared.labels()
    out = {}
    for split in prepared.splits():
        idx = prepared.indices(split)
        samples = [prepared.samples[i] for i in idx]
        out[split] = SplitData(rows[idx], labels[idx], [s.path for s in samples], strata_of(samples))
    return out


def check_usable(prepared: Prepared, required=("train", "val", "test")) -> None:
    if not prepared.samples:
        raise DataError(f"{prepared.root}: no usable images ({len(prepared.skipped)} skipped)")
    data.check_splits_usable(prepared.samples, required=required)
