"""Writing a run folder: ``RunWriter`` (run.json, split.csv, skipped.csv) and ``ModelWriter`` (one model's folder).

Writers only write: figures are computed by the caller (``core.evaluate.metrics.evaluate_split``) and handed over. Every
file is written whole (``core.store.io``). ``data_root`` is kept as the user gave it (relative stays relative) and
image paths are stored relative to it, so a run copied to another machine finds its films under that machine's
copy of the data.
"""

from __future__ import annotations

from pathlib import Path

from core.data.layouts import MANIFEST_SUFFIXES
from core.store import files
from core.store.io import ArtifactError, now_iso, read_json, write_csv, write_json
from core.store.schema import (
    HISTORY_COLUMNS,
    PREDICTION_COLUMNS,
    SCHEMA_VERSION,
    SKIPPED_COLUMNS,
    SPLIT_COLUMNS,
    STRATUM_COLUMNS,
)

__all__ = ["ModelWriter", "RunWriter", "data_folder", "prediction_rows", "prune_epoch_checkpoints", "stored_path"]


def data_folder(data_root: str | Path) -> Path:
    """The folder stored image paths are relative to: the data folder, or a manifest's own folder."""
    root = Path(data_root).expanduser()
    return root.parent if root.suffix.lower() in MANIFEST_SUFFIXES else root


def stored_path(path: str | Path, data_root: str | Path | None) -> str:
    """How an image path is written into an artifact: relative to the data root (portable to another machine),
    as given when it lies outside it (a manifest may list files anywhere)."""
    if data_root is None:
        return str(path)
    try:
        return Path(path).absolute().relative_to(data_folder(data_root).absolute()).as_posix()
    except ValueError:
        return str(path)


def prediction_rows(paths, labels, probabilities, data_root, strata: dict | None = None) -> tuple[list, list]:
    """(rows, columns) of a predictions file: stored path, label (0/1, or "" when unknown), probability, strata.

    ``repr`` round-trips a float exactly, so counts recomputed from the file at a threshold (itself one of these
    probabilities) equal the ones in the metrics."""
    rows = [{"path": stored_path(a, data_root), "label": "" if b is None else int(b), "probability": repr(float(c))}
            for a, b, c in zip(paths, labels, probabilities)]
    extra = [c for c in STRATUM_COLUMNS if c in (strata or {})]
    for column in extra:
        for row, value in zip(rows, strata[column]):
            row[column] = value
    return rows, PREDICTION_COLUMNS + extra


def prune_epoch_checkpoints(model_dir: str | Path, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` ``epoch_NNN.pt`` files of a model."""
    old = files.epoch_checkpoints(model_dir)
    for path in old[: max(0, len(old) - keep_last)]:
        path.unlink(missing_ok=True)


class ModelWriter:
    """Writes one model's folder inside a run; image paths are stored relative to ``data_root`` when given."""

    def __init__(self, run_dir: str | Path, name: str, data_root: str | Path | None = None):
        self.dir = Path(run_dir) / name
        self.data_root = data_root
        files.checkpoints_dir(self.dir).mkdir(parents=True, exist_ok=True)

    def config(self, config: dict) -> None:
        write_json(self.dir / files.CONFIG_FILE, {"schema_version": SCHEMA_VERSION, **config})

    def status(self, state: str, **fields) -> None:
        write_json(self.dir / files.STATUS_FILE, {"state": state, "heartbeat": now_iso(), **fields})

    def history(self, rows: list[dict]) -> None:
        write_csv(self.dir / files.HISTORY_FILE, rows, HISTORY_COLUMNS)

    def predictions(self, split: str, paths, labels, probabilities, strata: dict | None = None) -> None:
        rows, columns = prediction_rows(paths, labels, probabilities, self.data_root, strata)
        write_csv(self.dir / files.predictions_file(split), rows, columns)

    def metrics(self, split: str, metrics: dict) -> None:
        write_json(self.dir / files.metrics_file(split), metrics)

    def scored(self, split: str, paths, labels, probabilities, metrics: dict, strata: dict | None = None) -> None:
        """A scored split: its predictions (with each image's stratum) and then its metrics, computed by the caller
        (``core.evaluate.metrics.evaluate_split``). Training, ``evaluate`` and ensembles write through it."""
        self.predictions(split, paths, labels, probabilities, strata)
        self.metrics(split, metrics)


class RunWriter:
    """Writes a run's own files: run.json, split.csv and skipped.csv (docs/artifacts.md)."""

    def __init__(self, run_dir: str | Path, data_root: str | Path):
        self.dir = Path(run_dir)
        self.data_root = str(data_root)
        self.dir.mkdir(parents=True, exist_ok=True)

    def model(self, name: str) -> ModelWriter:
        return ModelWriter(self.dir, name, self.data_root)

    def split(self, samples) -> None:
        """One row per sample (``core.data.layouts.Sample``): path, label, patient_id, split, and the stratum columns
        (source, view, sex, age band) that any sample has."""
        extra = [c for c in STRATUM_COLUMNS if any(s.stratum(c) for s in samples)]
        write_csv(self.dir / files.SPLIT_FILE, [{"path": stored_path(s.path, self.data_root), "label": s.label,
                                                 "patient_id": s.patient_id, "split": s.split,
                                                 **{c: s.stratum(c) for c in extra}} for s in samples],
                  SPLIT_COLUMNS + extra)

    def skipped(self, skipped: list[tuple[str, str]]) -> None:
        write_csv(self.dir / files.SKIPPED_FILE, [{"path": stored_path(p, self.data_root), "reason": r}
                                                  for p, r in skipped], SKIPPED_COLUMNS)

    def info(self, **facts) -> None:
        """Write run.json; ``created`` survives a resume, ``updated`` is now."""
        try:
            created = read_json(self.dir / files.RUN_FILE).get("created")
        except ArtifactError:
            created = None
        write_json(self.dir / files.RUN_FILE, {"schema_version": SCHEMA_VERSION, "run_id": self.dir.name,
                                               "created": created or now_iso(), "updated": now_iso(),
                                               "data_root": self.data_root, **facts})
