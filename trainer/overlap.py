"""Leakage by content: which films handed to ``trainer evaluate`` are byte-for-byte films the run trained or
validated on, whatever their names (issue 22).

A copy of a training film under a new name scores as if it were unseen, and flatters the model. Paths are not
enough, so files are compared by sha256; only files whose size equals some training or validation film's size are
hashed, so an evaluation set that shares nothing costs one ``stat`` per file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from core.data.layouts import file_sha256
from core.store import Run, evaluated_file

SEEN_SPLITS = ("train", "val")  # what the model learned from, or was chosen on


def _size(path) -> int | None:
    """The size of a regular file, else None (missing, unreadable, a pipe: never opened)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def seen_films(run: Run, splits: Iterable[str] = SEEN_SPLITS) -> list:
    """The run's training and validation films on this machine (``Run.locate``: inside its data root only)."""
    table = run.split_table()
    rows = table[table["split"].astype(str).isin(list(splits))]
    return [p for p in (run.locate(path) for path in rows["path"].astype(str)) if p is not None]


def content_overlap(run: Run, samples) -> list[str]:
    """Paths of ``samples`` (``core.data.layouts.Sample``, or anything with ``.path``) whose bytes equal a film of the
    run's
    train or val split, in the order given. Sizes first; only same-size files are hashed."""
    seen = {}
    for path in seen_films(run):
        size = _size(path)
        if size is not None:
            seen.setdefault(size, []).append(path)
    if not seen:
        return []
    candidates = [(str(s.path), size) for s in samples if (size := _size(s.path)) in seen]
    if not candidates:
        return []
    hashes = {h for size in {size for _, size in candidates} for p in seen[size] if (h := file_sha256(p))}
    return [path for path, _ in candidates if file_sha256(path) in hashes]


def leak_message(leaked: list[str], total: int) -> str:
    """The loud warning ``evaluate`` prints: how many, and the first few."""
    shown = ", ".join(leaked[:3]) + (", ..." if len(leaked) > 3 else "")
    return (f"{len(leaked)} of {total} films are byte-identical copies of films this run trained or validated on "
            f"({shown}); their scores are not an independent evaluation (listed under 'leaked' in "
            f"{evaluated_file('<split>')})")
