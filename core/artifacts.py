"""Reading and writing the artifacts folder: the contract between trainer and dashboard (docs/artifacts.md).

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): a reader sees the old file or
the new one, never half of one, and a killed trainer leaves a consistent run. Reads never raise on a bad
file: the reader records an ``ArtifactError`` for that file and carries on, so one broken model cannot take
a whole dashboard page down.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd

from core.data import sort_splits
from core.metrics import HEADLINE_RULE

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
ENV_ROOT = "CXR_ARTIFACTS"
STALE_AFTER_SECONDS = 600
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]
PREDICTION_COLUMNS = ["path", "label", "probability"]
SPLIT_COLUMNS = ["path", "label", "patient_id", "split"]


ENSEMBLE_ARCH = "ensemble"  # config.json "arch" of an ensemble: no network, the mean of its "members"


def is_ensemble(config: dict) -> bool:
    """Whether a model's config.json describes an ensemble (the one test for it, everywhere)."""
    return config.get("arch") == ENSEMBLE_ARCH


class ArtifactError(RuntimeError):
    """A missing, unreadable or malformed artifact file; the message names the file and the problem."""


def default_root() -> Path:
    """``$CXR_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get(ENV_ROOT) or "artifacts")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- writing ---------------------------------------------------------------------------------------------

def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_safe(obj):
    """NaN and infinity become null: JSON has no NaN, and a reader must not guess."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return _json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=1, allow_nan=False) + "\n")


def write_csv(path: str | Path, rows, columns: list[str]) -> None:
    """Rows are dicts (or a DataFrame); columns fixes the order."""
    buf = io.StringIO()
    if isinstance(rows, pd.DataFrame):
        rows.to_csv(buf, index=False, columns=columns)
    else:
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class ModelWriter:
    """Writes one model's folder inside a run."""

    def __init__(self, run_dir: str | Path, name: str):
        self.dir = Path(run_dir) / name
        (self.dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def config(self, config: dict) -> None:
        write_json(self.dir / "config.json", {"schema_version": SCHEMA_VERSION, **config})

    def status(self, state: str, **fields) -> None:
        write_json(self.dir / "status.json", {"state": state, "heartbeat": now_iso(), **fields})

    def history(self, rows: list[dict]) -> None:
        write_csv(self.dir / "history.csv", rows, HISTORY_COLUMNS)

    def predictions(self, split: str, paths, labels, probabilities) -> None:
        # repr() round-trips a float exactly, so counts recomputed from this file at a threshold (itself one
        # of these probabilities) equal the ones in metrics_<split>.json
        rows = [{"path": a, "label": int(b), "probability": repr(float(c))}
                for a, b, c in zip(paths, labels, probabilities)]
        write_csv(self.dir / f"predictions_{split}.csv", rows, PREDICTION_COLUMNS)

    def metrics(self, split: str, metrics: dict) -> None:
        write_json(self.dir / f"metrics_{split}.json", metrics)


# --- reading ---------------------------------------------------------------------------------------------

def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the file may be half-written or corrupt") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def read_csv(path: str | Path, columns: list[str]) -> pd.DataFrame:
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ArtifactError(f"{path}: unreadable CSV ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing columns {missing}; has {list(df.columns)}")
    return df


@dataclass
class ModelArtifacts:
    """One model of a run, read lazily; every accessor raises ``ArtifactError`` with a clear message."""

    run_dir: Path
    name: str
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @cached_property
    def config(self) -> dict:
        return read_json(self.dir / "config.json")

    def status(self) -> dict:
        """Read fresh each time (a running model changes it); adds ``stale`` for a dead trainer."""
        st = read_json(self.dir / "status.json")
        if st.get("state") == "running":
            try:
                age = (datetime.now(timezone.utc) - datetime.fromisoformat(st["heartbeat"])).total_seconds()
                st["stale"] = age > STALE_AFTER_SECONDS
            except (KeyError, TypeError, ValueError):
                st["stale"] = True
        return st

    def history(self) -> pd.DataFrame:
        path = self.dir / "history.csv"
        df = read_csv(path, HISTORY_COLUMNS)
        if df[["epoch", "train_loss", "seconds"]].isna().any().any():
            raise ArtifactError(f"{path}: a row is incomplete (half-written or edited by hand)")
        return df

    @property
    def is_ensemble(self) -> bool:
        """True for an ensemble; False for a network, or when config.json is unreadable (loading it says why)."""
        try:
            return is_ensemble(self.config)
        except ArtifactError:
            return False

    def splits(self) -> list[str]:
        """Splits that have predictions, in ``core.data.sort_splits`` order (val, test, then the others)."""
        return sort_splits(p.stem.removeprefix("predictions_") for p in self.dir.glob("predictions_*.csv"))

    def predictions(self, split: str) -> pd.DataFrame:
        df = read_csv(self.dir / f"predictions_{split}.csv", PREDICTION_COLUMNS)
        if df.empty:
            raise ArtifactError(f"{self.dir / f'predictions_{split}.csv'}: no rows")
        if not df["probability"].between(0, 1).all() or not df["label"].isin([0, 1]).all():
            raise ArtifactError(f"{self.dir / f'predictions_{split}.csv'}: labels must be 0/1 and "
                                "probabilities in [0, 1]")
        return df

    def metrics(self, split: str) -> dict:
        m = read_json(self.dir / f"metrics_{split}.json")
        for key in ("auc", "thresholds", "at"):
            if key not in m:
                raise ArtifactError(f"{self.dir / f'metrics_{split}.json'}: missing key {key!r}")
        return m

    def threshold(self, rule: str = HEADLINE_RULE) -> float:
        """The operating threshold chosen on validation (never on any other split)."""
        return float(self.metrics("val")["thresholds"][rule]["value"])

    def best_checkpoint(self) -> Path:
        path = self.dir / "checkpoints" / "best.safetensors"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; this model has no best checkpoint yet")
        return path


@dataclass
class Run:
    """A run folder; ``models`` lists model folders that have a config.json or status.json (readable or not)."""

    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @cached_property
    def info(self) -> dict:
        return read_json(self.dir / "run.json")

    def split_table(self) -> pd.DataFrame:
        return read_csv(self.dir / "split.csv", SPLIT_COLUMNS)

    def skipped(self) -> pd.DataFrame:
        path = self.dir / "skipped.csv"
        return read_csv(path, ["path", "reason"]) if path.exists() else pd.DataFrame(columns=["path", "reason"])

    @cached_property
    def models(self) -> list[ModelArtifacts]:
        # a model that failed before writing its config still has a status.json worth showing
        names = sorted({p.parent.name for pat in ("*/config.json", "*/status.json") for p in self.dir.glob(pat)})
        order = self.info.get("models", []) if (self.dir / "run.json").exists() and self._info_ok() else []
        names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
        return [ModelArtifacts(self.dir, n) for n in names]

    def _info_ok(self) -> bool:
        try:
            self.info
            return True
        except ArtifactError:
            return False

    def locate(self, path: str | Path) -> Path | None:
        """The image file a split/predictions path names, on this machine, or None when it is not here.

        Paths are recorded absolute on the training machine. Elsewhere (a fresh clone of a committed run) the
        part under the run's ``data_root`` is looked for under the data root as the user gave it
        (``data_root_given``, e.g. ``../shared/data/kermany224``), relative to the working folder or the repo.
        """
        p = Path(str(path))
        candidates = [p]
        try:
            info = self.info
        except ArtifactError:
            info = {}
        root, given = info.get("data_root"), info.get("data_root_given")
        if root and not p.is_absolute():
            candidates.append(Path(root) / p)
        elif root and given:
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = None
            if rel is not None:
                bases = [Path(given)] if Path(given).is_absolute() else [Path.cwd() / given, REPO / given]
                candidates += [b / rel for b in bases]
        for c in candidates:
            try:
                if c.is_file():
                    return c
            except OSError:
                continue
        return None

    def model(self, name: str) -> ModelArtifacts:
        for m in self.models:
            if m.name == name:
                return m
        raise ArtifactError(f"{self.dir}: no model named {name!r}; has {[m.name for m in self.models]}")


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Run folders (those with a run.json), newest first."""
    root = Path(root) if root is not None else default_root()
    if not root.is_dir():
        return []
    runs = [Run(p.parent) for p in root.glob("*/run.json")]
    return sorted(runs, key=lambda r: r.dir.joinpath("run.json").stat().st_mtime, reverse=True)
