"""Reading and writing the artifacts folder: the contract between trainer and dashboard (docs/artifacts.md).

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): a reader sees the old file or
the new one, never half of one, and a killed trainer leaves a consistent run. Every read problem (missing,
torn, malformed) is an ``ArtifactError`` naming the file, never a bare parser error, so a caller can show that
one model's problem and carry on with the others. Image paths are stored relative to the data root.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import sort_splits
from core.metrics import evaluate_split, headline_rule

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
ENV_ROOT = "CXR_ARTIFACTS"
ENV_ALLOW = "CXR_DATA_ALLOW"  # extra folders a run's image paths may point into
STALE_AFTER_SECONDS = 600
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]
PREDICTION_COLUMNS = ["path", "label", "probability"]
SPLIT_COLUMNS = ["path", "label", "patient_id", "split"]
SKIPPED_COLUMNS = ["path", "reason"]


ENSEMBLE_ARCH = "ensemble"  # config.json "arch" of an ensemble: no network, the mean of its "members"


def is_ensemble(config: dict) -> bool:
    """Whether a model's config.json describes an ensemble (the one test for it, everywhere)."""
    return config.get("arch") == ENSEMBLE_ARCH


class ArtifactError(RuntimeError):
    """A missing, unreadable or malformed artifact file; the message names the file and the problem."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def name_problem(name) -> str | None:
    """Why ``name`` cannot be a run, model or split name (a folder or file name part), or None when it can.

    Letters, digits, '.', '_' and '-', starting with a letter or digit: no path separator, no '..', nothing
    that could climb out of the artifacts root or need quoting."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        return ("is not a usable name: use 1-100 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (no path separators)")
    return None


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


def data_folder(data_root: str | Path) -> Path:
    """The folder stored image paths are relative to: the data folder, or a CSV manifest's own folder."""
    root = Path(data_root).expanduser()
    return root.parent if root.suffix.lower() == ".csv" else root


def stored_path(path: str | Path, data_root: str | Path | None) -> str:
    """How an image path is written into an artifact: relative to the data root (portable to another machine),
    as given when it lies outside it (a manifest may list files anywhere)."""
    if data_root is None:
        return str(path)
    try:
        return Path(path).absolute().relative_to(data_folder(data_root).absolute()).as_posix()
    except ValueError:
        return str(path)


class ModelWriter:
    """Writes one model's folder inside a run; image paths are stored relative to ``data_root`` when given."""

    def __init__(self, run_dir: str | Path, name: str, data_root: str | Path | None = None):
        self.dir = Path(run_dir) / name
        self.data_root = data_root
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
        rows = [{"path": stored_path(a, self.data_root), "label": int(b), "probability": repr(float(c))}
                for a, b, c in zip(paths, labels, probabilities)]
        write_csv(self.dir / f"predictions_{split}.csv", rows, PREDICTION_COLUMNS)

    def metrics(self, split: str, metrics: dict) -> None:
        write_json(self.dir / f"metrics_{split}.json", metrics)

    def score(self, split: str, paths, labels, probabilities, thresholds: dict) -> dict:
        """Write a split's predictions and its metrics at ``thresholds`` (chosen on validation); return the metrics.

        The one place where scored probabilities become artifacts: training, ``evaluate`` and ensembles use it.
        """
        self.predictions(split, paths, labels, probabilities)
        m = evaluate_split(np.asarray(labels), np.asarray(probabilities), thresholds, split=split)
        self.metrics(split, m)
        return m


class RunWriter:
    """Writes a run's own files: run.json, split.csv and skipped.csv (docs/artifacts.md).

    ``data_root`` is kept as the user gave it (relative stays relative), and image paths are stored relative
    to it, so a run copied to another machine finds its films under that machine's copy of the data.
    """

    def __init__(self, run_dir: str | Path, data_root: str | Path):
        self.dir = Path(run_dir)
        self.data_root = str(data_root)
        self.dir.mkdir(parents=True, exist_ok=True)

    def model(self, name: str) -> ModelWriter:
        return ModelWriter(self.dir, name, self.data_root)

    def split(self, samples) -> None:
        """One row per sample (``core.data.Sample``): path, label, patient_id, split."""
        write_csv(self.dir / "split.csv", [{"path": stored_path(s.path, self.data_root), "label": s.label,
                                            "patient_id": s.patient_id, "split": s.split} for s in samples],
                  SPLIT_COLUMNS)

    def skipped(self, skipped: list[tuple[str, str]]) -> None:
        write_csv(self.dir / "skipped.csv", [{"path": stored_path(p, self.data_root), "reason": r}
                                             for p, r in skipped], SKIPPED_COLUMNS)

    def info(self, **facts) -> None:
        """Write run.json; ``created`` survives a resume, ``updated`` is now."""
        try:
            created = read_json(self.dir / "run.json").get("created")
        except ArtifactError:
            created = None
        write_json(self.dir / "run.json", {"schema_version": SCHEMA_VERSION, "run_id": self.dir.name,
                                           "created": created or now_iso(), "updated": now_iso(),
                                           "data_root": self.data_root, **facts})


# --- reading ---------------------------------------------------------------------------------------------
# Artifacts are untrusted input (a run folder may come from anyone): sizes are checked before reading, and every
# field a page uses is type-checked here, so a wrong type is one clear ArtifactError naming file and field.

MAX_JSON_BYTES = 16 * 2**20
MAX_CSV_BYTES = 128 * 2**20


def _size_checked(path: Path, limit: int) -> Path:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable ({e.strerror or e})") from None
    if size > limit:
        raise ArtifactError(f"{path}: {size:,} bytes, more than the {limit:,} an artifact of this kind may have")
    return path


def read_json(path: str | Path, fields: dict | None = None) -> dict:
    """A JSON object, size-bounded; ``fields`` ({key: (description, check)}) type-checks the keys present."""
    path = _size_checked(Path(path), MAX_JSON_BYTES)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the file may be half-written or corrupt") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return check_fields(obj, fields or {}, path)


def read_csv(path: str | Path, columns: list[str]) -> pd.DataFrame:
    path = _size_checked(Path(path), MAX_CSV_BYTES)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ArtifactError(f"{path}: unreadable CSV ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing columns {missing}; has {len(df.columns)} other columns")
    return df


def check_fields(obj: dict, fields: dict, path) -> dict:
    for key, (what, ok) in fields.items():
        if key in obj and not ok(obj[key]):
            raise ArtifactError(f"{path}: field {key!r} must be {what}, found {_short(obj[key])}")
    return obj


def _short(value) -> str:
    """A found value for an error message: numbers as they are, anything else by type only, so no text from a
    file (markup, a tracking link) ever reaches a page inside an error message."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    size = f" of length {len(value)}" if isinstance(value, (str, list, dict)) else ""
    return f"{'text' if isinstance(value, str) else type(value).__name__}{size}"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _numbers_or_null(v) -> bool:
    return isinstance(v, list) and all(x is None or _number(x) for x in v)


def _input_size(v) -> bool:
    from core.images import MAX_INPUT_SIZE, MIN_INPUT_SIZE
    return v is None or (_integer(v) and MIN_INPUT_SIZE <= v <= MAX_INPUT_SIZE)


TEXT = ("a string", lambda v: isinstance(v, str))
TEXT_OR_NULL = ("a string or null", lambda v: v is None or isinstance(v, str))
INTEGER = ("an integer", _integer)
COUNT = ("a non-negative integer", lambda v: _integer(v) and v >= 0)
NUMBER_OR_NULL = ("a number or null", lambda v: v is None or _number(v))
BOOL = ("true or false", lambda v: isinstance(v, bool))
MAPPING = ("an object", lambda v: isinstance(v, dict))
NAME = ("a name (letters, digits, '.', '_', '-')", lambda v: name_problem(v) is None)
NAMES = ("a list of names (letters, digits, '.', '_', '-')",
         lambda v: isinstance(v, list) and all(name_problem(x) is None for x in v))
STATES = ("running", "finished", "failed", "stopped", "pending")
RUN_FIELDS = {
    "run_id": NAME, "created": TEXT, "updated": TEXT, "data_root": TEXT, "data_root_given": TEXT,
    "data_layout": TEXT, "data_fingerprint": TEXT, "command": TEXT, "config": MAPPING, "versions": MAPPING,
    "split_rule": TEXT, "models": NAMES, "n_skipped": COUNT,
    "split_counts": ("an object {split: {class: count}}", lambda v: isinstance(v, dict) and all(
        isinstance(c, dict) and all(_integer(n) and n >= 0 for n in c.values()) for c in v.values())),
}
CONFIG_FIELDS = {
    "name": NAME, "arch": NAME, "members": NAMES, "pretrained": BOOL, "params": COUNT, "weights_source": TEXT,
    "input_size": ("an integer input size in the trainer's bounds, or null", _input_size),
    "tta": ("an integer from 1 to 64", lambda v: _integer(v) and 1 <= v <= 64),
    "mean": ("three numbers", lambda v: isinstance(v, list) and len(v) == 3 and all(map(_number, v))),
    "std": ("three positive numbers", lambda v: isinstance(v, list) and len(v) == 3
            and all(_number(x) and x > 0 for x in v)),
}
STATUS_FIELDS = {
    "state": (f"one of {', '.join(STATES)}", lambda v: v in STATES), "heartbeat": TEXT, "message": TEXT_OR_NULL,
    "epoch": COUNT, "epochs": COUNT, "batch": COUNT, "batches": COUNT, "best_epoch": COUNT,
    "best_val_auc": NUMBER_OR_NULL, "eta_seconds": NUMBER_OR_NULL, "train_seconds": NUMBER_OR_NULL,
    "early_stopped": BOOL,
}
METRICS_FIELDS = {
    "split": TEXT, "n": COUNT, "n_pos": COUNT, "n_neg": COUNT, "auc": NUMBER_OR_NULL, "brier": NUMBER_OR_NULL,
    "ece": NUMBER_OR_NULL, "prevalence": NUMBER_OR_NULL,
    "auc_ci": ("two numbers (or nulls)", lambda v: isinstance(v, list) and len(v) == 2 and _numbers_or_null(v)),
    "thresholds": ("an object {rule: {value: number}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and _number(t.get("value")) for t in v.values())),
    "at": ("an object {rule: {measure: number}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and all(x is None or _number(x) for x in t.values()) for t in v.values())),
    **{k: ("an object of number lists", lambda v: isinstance(v, dict) and all(map(_numbers_or_null, v.values())))
       for k in ("roc", "pr", "calibration")},
}


@dataclass
class ModelArtifacts:
    """One model of a run, read lazily; every accessor raises ``ArtifactError`` with a clear message."""

    run_dir: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @cached_property
    def config(self) -> dict:
        return read_json(self.dir / "config.json", CONFIG_FIELDS)

    def status(self) -> dict:
        """Read fresh each time (a running model changes it); adds ``stale`` for a dead trainer."""
        st = read_json(self.dir / "status.json", STATUS_FIELDS)
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
        names = (p.stem.removeprefix("predictions_") for p in self.dir.glob("predictions_*.csv"))
        return sort_splits(n for n in names if name_problem(n) is None)  # a file name is no place for markup

    def predictions(self, split: str) -> pd.DataFrame:
        """path, label (0/1), probability ([0, 1]); one row per image: a repeated path would count twice."""
        path = self.dir / f"predictions_{split}.csv"
        df = read_csv(path, PREDICTION_COLUMNS)
        if df.empty:
            raise ArtifactError(f"{path}: no rows")
        prob = pd.to_numeric(df["probability"], errors="coerce")
        label = pd.to_numeric(df["label"], errors="coerce")
        if not prob.between(0, 1).all() or not label.isin([0, 1]).all():
            raise ArtifactError(f"{path}: labels must be 0/1 and probabilities in [0, 1]")
        if df["path"].isna().any():
            raise ArtifactError(f"{path}: row {int(df['path'].isna().to_numpy().argmax()) + 2} has no path")
        dup = df["path"].astype(str).duplicated()
        if dup.any():
            first = int(dup.to_numpy().argmax())
            raise ArtifactError(f"{path}: {int(dup.sum())} rows repeat an image already listed (first on row "
                                f"{first + 2}); each image must appear once")
        return df.assign(path=df["path"].astype(str), label=label.astype(int), probability=prob.astype(float))

    def metrics(self, split: str) -> dict:
        m = read_json(self.dir / f"metrics_{split}.json", METRICS_FIELDS)
        for key in ("auc", "thresholds", "at"):
            if key not in m:
                raise ArtifactError(f"{self.dir / f'metrics_{split}.json'}: missing key {key!r}")
        return m

    def threshold(self, rule: str | None = None) -> float:
        """The operating threshold chosen on validation (never on any other split), by default at the model's own
        headline rule (its recipe's ``threshold_rule``)."""
        rule = rule or headline_rule(self.config)
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
    allow: tuple = ()  # extra folders images may be read from (see ``data_bases``)

    @property
    def id(self) -> str:
        return self.dir.name

    @cached_property
    def info(self) -> dict:
        return read_json(self.dir / "run.json", RUN_FIELDS)

    def split_table(self) -> pd.DataFrame:
        return read_csv(self.dir / "split.csv", SPLIT_COLUMNS)

    def skipped(self) -> pd.DataFrame:
        path = self.dir / "skipped.csv"
        return read_csv(path, SKIPPED_COLUMNS) if path.exists() else pd.DataFrame(columns=SKIPPED_COLUMNS)

    @cached_property
    def models(self) -> list[ModelArtifacts]:
        # a model that failed before writing its config still has a status.json worth showing
        # folder names that could not be a model name (markup, spaces, control characters) are not models
        names = sorted({p.parent.name for pat in ("*/config.json", "*/status.json") for p in self.dir.glob(pat)
                        if name_problem(p.parent.name) is None})
        order = self.info.get("models", []) if (self.dir / "run.json").exists() and self._info_ok() else []
        names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
        return [ModelArtifacts(self.dir, n) for n in names]

    def _info_ok(self) -> bool:
        try:
            return isinstance(self.info, dict)
        except ArtifactError:
            return False

    def data_dir(self, split: str | None = None) -> Path | None:
        """The folder the image paths of ``split`` are relative to, resolved on this machine, or None when it is
        not here or does not look like a data set (``_data_base``: a run.json naming ``/`` must not open the disk).

        That is the run's data root, or for a split added by ``trainer evaluate`` the root recorded in its
        ``evaluated_<split>.json``. Roots are kept as the user gave them; a relative one is looked for from the
        working folder, from the folder holding the artifacts root (where the trainer ran), and from the repo.
        """
        record = self.dir / f"evaluated_{split}.json"
        try:
            info = read_json(record, {"data_root": TEXT}) if split and record.exists() else self.info
        except ArtifactError:
            return None
        given = info.get("data_root")
        if not given:
            return None
        here = [Path(given)] if Path(given).is_absolute() else [Path.cwd() / given, self.dir.parent.parent / given,
                                                               REPO / given]
        return next((b for b in map(_data_base, here) if b is not None), None)

    def locate(self, path: str | Path, split: str | None = None) -> Path | None:
        """The image file a split.csv/predictions path names, on this machine, or None when it is not here.

        Stored paths are relative to the data root (``data_dir``); an absolute one (a manifest entry outside its
        folder) is taken as it is. A run folder may come from anyone, so the file found must resolve (symlinks
        followed) inside one of ``data_bases(split)``: never ``/etc/passwd`` or a path that climbs out with ``..``.
        """
        p = Path(str(path))
        if not p.is_absolute():
            root = self.data_dir(split)
            if root is None:
                return None
            p = root / p
        try:
            real = p.resolve()
            if real.is_file() and any(real.is_relative_to(b) for b in self.data_bases(split)):
                return real
        except (OSError, ValueError, RuntimeError):  # unreadable, NUL in the name, symlink loop
            pass
        return None

    def data_bases(self, split: str | None = None) -> list[Path]:
        """Folders images may be read from: the data root of ``split`` where it is on this machine and looks like a
        data set (class or split folders, or a manifest), plus the user's allow-list (``$CXR_DATA_ALLOW``, folders
        separated by ``os.pathsep``, and ``Run.allow``)."""
        root = self.data_dir(split)
        bases = [root] if root is not None else []
        allow = [a for a in os.environ.get(ENV_ALLOW, "").split(os.pathsep) if a] + list(self.allow)
        for a in allow:
            try:
                bases.append(Path(a).expanduser().resolve())
            except (OSError, RuntimeError):
                continue
        return bases

    def model(self, name: str) -> ModelArtifacts:
        for m in self.models:
            if m.name == name:
                return m
        raise ArtifactError(f"{self.dir}: no model named {name!r}; has {[m.name for m in self.models]}")


def _data_base(root: Path) -> Path | None:
    """``root`` resolved, when it is a data set on this machine: a folder with class or split folders, or a CSV
    manifest with path and label columns (its folder). Else None: a run.json
    naming ``/`` as its data root must not open the whole disk."""
    wanted = {"normal", "pneumonia", "train", "val", "test"}
    try:
        real = root.resolve()
        if real.is_file() and real.suffix.lower() == ".csv":
            with open(real, encoding="utf-8-sig", errors="replace") as f:
                header = {h.strip().lower() for h in f.readline(4096).split(",")}
            return real.parent if {"path", "label"} <= header and real.parent != Path(real.anchor) else None
        if real.is_dir() and real != Path(real.anchor) and {d.name.lower() for d in real.iterdir()} & wanted:
            return real
    except (OSError, ValueError, RuntimeError):
        pass
    return None


DEFAULT_RUN_FILE = "DEFAULT_RUN"  # in the artifacts root: the id of the run shown first (one line)


def default_run(runs: list[Run], root: str | Path | None = None) -> Run | None:
    """The run shown first: the one named in ``<root>/DEFAULT_RUN`` when it is among ``runs``; otherwise the one
    with the most models (the lineup, not a one-model experiment beside it), the newest of equals."""
    if not runs:
        return None
    path = (Path(root) if root is not None else default_root()) / DEFAULT_RUN_FILE
    try:
        named = path.read_text(encoding="utf-8", errors="replace")[:200].strip()
    except OSError:
        named = ""
    return next((r for r in runs if r.id == named), None) or max(runs, key=lambda r: len(r.models))


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Run folders (those with a run.json), newest first."""
    root = Path(root) if root is not None else default_root()
    if not root.is_dir():
        return []
    runs = [Run(p.parent) for p in root.glob("*/run.json") if name_problem(p.parent.name) is None]
    return sorted(runs, key=lambda r: r.dir.joinpath("run.json").stat().st_mtime, reverse=True)
