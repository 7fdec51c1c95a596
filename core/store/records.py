"""Records that the trainer's later commands add to a run folder (docs/artifacts.md): what ``trainer evaluate``
scored (``evaluated_<name>.json``), what ``trainer shift`` measured (``shift.json``) and each model's card
(``MODEL_CARD.md``, ``model_card.html``, ``trainer card``)."""

from __future__ import annotations

from pathlib import Path

from core.store import files
from core.store.io import ArtifactError, atomic_write_text, read_json, read_text, write_json

__all__ = ["MAX_CARD_BYTES", "read_card", "read_shift", "write_card", "write_evaluated", "write_shift"]

MAX_CARD_BYTES = 2**20


def write_evaluated(run_dir: str | Path, split: str, record: dict) -> None:
    """What ``trainer evaluate --split-name SPLIT`` scored: data root (the split's image paths are relative to it),
    fingerprint, counts, skipped files, command (``Run.data_dir`` reads the root back)."""
    write_json(Path(run_dir) / files.evaluated_file(split), record)


def read_shift(run_dir: str | Path) -> dict | None:
    """The run's shift.json, or None when ``trainer shift`` has not run."""
    path = Path(run_dir) / files.SHIFT_FILE
    return read_json(path) if path.exists() else None


def write_shift(run_dir: str | Path, figures: dict) -> None:
    write_json(Path(run_dir) / files.SHIFT_FILE, figures)


def write_card(model_dir: str | Path, markdown: str, page: str) -> Path:
    """The model card as Markdown and as a page; returns the Markdown file's path."""
    md = Path(model_dir) / files.CARD_MD_FILE
    atomic_write_text(md, markdown)
    atomic_write_text(Path(model_dir) / files.CARD_HTML_FILE, page)
    return md


def read_card(model_dir: str | Path) -> str | None:
    """The stored Markdown card, or None when there is none (or it is not a small regular file)."""
    try:
        return read_text(Path(model_dir) / files.CARD_MD_FILE, MAX_CARD_BYTES)
    except ArtifactError:
        return None
