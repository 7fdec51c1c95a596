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
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import MANIFEST_SUFFIXES, STRATA, sort_splits
from core.metrics import evaluate_split, headline_rule, strata_metrics

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
ENV_ROOT = "CXR_ARTIFACTS"
ENV_ALLOW = "CXR_DATA_ALLOW"  # extra folders a run's image paths may point into
STALE_AFTER_SECONDS = 600
HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds"]
PREDICTION_COLUMNS = ["path", "label", "probability"]
SPLIT_COLUMNS = ["path", "label", "patient_id", "split"]
STRATUM_COLUMNS = ["source", *STRATA]  # optional columns of split.csv and predictions_<split>.csv
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # read-only or not ours: name the file meant, not a random temporary name
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk fails the write with no file name: name the file meant
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
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

    def predictions(self, split: str, paths, labels, probabilities, strata: dict | None = None) -> None:
        # repr() round-trips a float exactly, so counts recomputed from this file at a threshold (itself one
        # of these probabilities) equal the ones in metrics_<split>.json
        rows = [{"path": stored_path(a, self.data_root), "label": int(b), "probability": repr(float(c))}
                for a, b, c in zip(paths, labels, probabilities)]
        extra = [c for c in STRATUM_COLUMNS if c in (strata or {})]
        for column in extra:
            for row, value in zip(rows, strata[column]):
                row[column] = value
        write_csv(self.dir / f"predictions_{split}.csv", rows, PREDICTION_COLUMNS + extra)

    def metrics(self, split: str, metrics: dict) -> None:
        write_json(self.dir / f"metrics_{split}.json", metrics)

    def score(self, split: str, paths, labels, probabilities, thresholds: dict, strata: dict | None = None) -> dict:
        """Write a split's predictions and its metrics at ``thresholds`` (chosen on validation); return the metrics.

        The one place where scored probabilities become artifacts: training, ``evaluate`` and ensembles use it.
        ``strata`` ({column: value per image}: source, view, sex, age band) adds each image's stratum to the
        predictions and per-stratum figures under the metrics' ``by`` key.
        """
        self.predictions(split, paths, labels, probabilities, strata)
        y, p = np.asarray(labels), np.asarray(probabilities)
        m = evaluate_split(y, p, thresholds, split=split)
        if strata:
            m["by"] = strata_metrics(y, p, thresholds, strata)
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
        """One row per sample (``core.data.Sample``): path, label, patient_id, split, and the stratum columns
        (source, view, sex, age band) that any sample has."""
        extra = [c for c in STRATUM_COLUMNS if any(s.stratum(c) for s in samples)]
        write_csv(self.dir / "split.csv", [{"path": stored_path(s.path, self.data_root), "label": s.label,
                                            "patient_id": s.patient_id, "split": s.split,
                                            **{c: s.stratum(c) for c in extra}} for s in samples],
                  SPLIT_COLUMNS + extra)

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


def _not_regular(mode: int) -> str | None:
    """What a special file is ("a named pipe", ...), or None for a regular file."""
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))
    return None if stat.S_ISREG(mode) else next((k for test, k in kinds if test(mode)), "not a regular file")


def _size_checked(path: Path, limit: int) -> Path:
    """``path`` when it is a regular file of at most ``limit`` bytes. A named pipe (a tar can carry one) would block
    the reader forever and a device never ends, so special files are refused before anything opens them."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable ({e.strerror or e})") from None
    if kind := _not_regular(st.st_mode):
        raise ArtifactError(f"{path}: is {kind}, not a file; refusing to open it")
    if st.st_size > limit:
        raise ArtifactError(f"{path}: {st.st_size:,} bytes, more than the {limit:,} an artifact of this kind may have")
    return path


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else ``ArtifactError``. Opened non-blocking and checked
    again on the open file, so a file swapped for a pipe between the check and the open cannot hang the reader."""
    path = _size_checked(Path(path), limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except OSError as e:
        raise ArtifactError(f"{path}: unreadable ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        if kind := _not_regular(os.fstat(fd).st_mode):
            raise ArtifactError(f"{path}: is {kind}, not a file; refusing to read it")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise ArtifactError(f"{path}: unreadable ({e.strerror or e})") from None
    if len(data) > limit:
        raise ArtifactError(f"{path}: more than the {limit:,} bytes an artifact of this kind may have")
    return data


def read_text(path: str | Path, limit: int = MAX_JSON_BYTES) -> str:
    """A small text file (UTF-8, undecodable bytes replaced) read as ``read_bytes`` does: never a pipe or device."""
    return read_bytes(path, limit).decode("utf-8", errors="replace")


def read_json(path: str | Path, fields: dict | None = None) -> dict:
    """A JSON object, size-bounded; ``fields`` ({key: (description, check)}) type-checks the keys present."""
    path = Path(path)
    raw = read_bytes(path, MAX_JSON_BYTES)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the file may be half-written or corrupt") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return check_fields(obj, fields or {}, path)


def read_csv(path: str | Path, columns: list[str]) -> pd.DataFrame:
    path = Path(path)
    raw = read_bytes(path, MAX_CSV_BYTES)
    try:
        df = pd.read_csv(io.BytesIO(raw))
    except ( UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
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


def _preprocess(v) -> bool:
    from core.transforms import PREPROCESS  # an unknown name must not reach the model
    return v is None or v in PREPROCESS


def _framing(v) -> bool:
    from core.framing import FRAMINGS
    return v is None or v in FRAMINGS


_SHA256 = re.compile(r"[0-9a-f]{64}")
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
    "sources": ("a list of {name, data} with names and relative paths", lambda v: isinstance(v, list) and all(
        isinstance(s, dict) and name_problem(s.get("name")) is None and isinstance(s.get("data"), str)
        for s in v)),
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
    "preprocess": ("one of the trainer's preprocess names (core.transforms.PREPROCESS), or null", _preprocess),
    "framing": ("one of the trainer's framings (core.framing.FRAMINGS), or null", _framing),
    "lung_model_sha256": ("a sha256 (64 hex digits)", lambda v: isinstance(v, str) and _SHA256.fullmatch(v)),
}
STATUS_FIELDS = {
    "state": (f"one of {', '.join(STATES)}", lambda v: v in STATES), "heartbeat": TEXT, "message": TEXT_OR_NULL,
    "epoch": COUNT, "epochs": COUNT, "batch": COUNT, "batches": COUNT, "best_epoch": COUNT,
    "best_val_auc": NUMBER_OR_NULL, "eta_seconds": NUMBER_OR_NULL, "train_seconds": NUMBER_OR_NULL,
    "early_stopped": BOOL,
}
def _unit(v) -> bool:
    """A number in [0, 1] (a rate, a probability, an AUC, a threshold), or null."""
    return v is None or (_number(v) and 0 <= v <= 1)


def _curves(v) -> bool:
    """{name: list}: every value in [0, 1] but bin counts (non-negative); the curves are plotted as they are."""
    return isinstance(v, dict) and all(isinstance(xs, list) and all(
        (x is None or (_number(x) and x >= 0)) if k == "count" else _unit(x) for x in xs) for k, xs in v.items())


COUNT_MEASURES = ("tp", "fp", "tn", "fn")  # in metrics "at": counts; every other measure is a rate in [0, 1]
UNIT = ("a number in [0, 1], or null", _unit)
METRICS_FIELDS = {
    "split": TEXT, "n": COUNT, "n_pos": COUNT, "n_neg": COUNT, "auc": UNIT, "brier": UNIT, "ece": UNIT,
    "prevalence": UNIT,
    "auc_ci": ("two numbers in [0, 1] (or nulls), low first", lambda v: isinstance(v, list) and len(v) == 2
               and all(map(_unit, v)) and (None in v or v[0] <= v[1])),
    "thresholds": ("an object {rule: {value: number in [0, 1]}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and t.get("value") is not None and _unit(t.get("value")) for t in v.values())),
    "at": ("an object {rule: {measure: rate in [0, 1] or count}}", lambda v: isinstance(v, dict) and all(
        isinstance(t, dict) and all((x is None or (_number(x) and x >= 0)) if k in COUNT_MEASURES else _unit(x)
                                    for k, x in t.items()) for t in v.values())),
    **{k: ("an object of lists of numbers in [0, 1]", _curves) for k in ("roc", "pr", "calibration")},
}


CLOCK_SKEW_SECONDS = 300  # a heartbeat this far ahead of our clock was not written by a live trainer here


def heartbeat_stale(heartbeat) -> bool:
    """Whether a running model's heartbeat says its trainer is gone: older than ``STALE_AFTER_SECONDS``, missing,
    unparsable, without a time zone, or in the future (a crafted date must not make a run look alive forever)."""
    try:
        when = datetime.fromisoformat(heartbeat)
        age = (datetime.now(timezone.utc) - when).total_seconds()
    except (TypeError, ValueError, OverflowError):  # naive dates cannot be compared with aware ones: TypeError
        return True
    return not -CLOCK_SKEW_SECONDS <= age <= STALE_AFTER_SECONDS


def population_specs(whole: dict, split: str, column: str = "source") -> list[str]:
    """``split:value`` (sources) or ``split:column=value`` specs of the strata a split's metrics hold."""
    by = whole.get("by")
    groups = by.get(column) if isinstance(by, dict) else None
    prefix = "" if column == "source" else f"{column}="
    if not isinstance(groups, dict):
        return []
    return [f"{split}:{prefix}{v}" for v in sorted(groups) if ":" not in str(v) and "=" not in str(v)]


def population_metrics(whole: dict, spec: str, path="metrics") -> dict:
    """One stratum of a split's metrics (``whole``), shaped like a split's own (``auc``, ``auc_ci``, ``at``,
    ``thresholds``, ``split`` = the spec), checked like one; ArtifactError when it is not there."""
    stratum = spec.partition(":")[2]
    column, _, value = stratum.rpartition("=")
    by = whole.get("by")
    group = (by or {}).get(column or "source", {}).get(value) if isinstance(by, dict) else None
    if not isinstance(group, dict):
        raise ArtifactError(f"{path}: no figures for {column or 'source'} {value!r}")
    group = check_fields(dict(group), {k: METRICS_FIELDS[k] for k in ("n", "n_pos", "n_neg", "auc", "auc_ci", "at")},
                         path)
    if "at" not in group or "auc" not in group:
        raise ArtifactError(f"{path}: figures for {value!r} lack auc or at")
    return {**group, "split": spec, "thresholds": whole["thresholds"]}


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
            st["stale"] = heartbeat_stale(st.get("heartbeat"))
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
        """A split's metrics_<split>.json; ``split:value`` (``test:nih_adult``) or ``split:column=value``
        (``test:view=AP``) is one population of it (``population``)."""
        if ":" in split:
            return self.population(split)
        m = read_json(self.dir / f"metrics_{split}.json", METRICS_FIELDS)
        for key in ("auc", "thresholds", "at"):
            if key not in m:
                raise ArtifactError(f"{self.dir / f'metrics_{split}.json'}: missing key {key!r}")
        if all(k in m for k in ("n", "n_pos", "n_neg")) and m["n_pos"] + m["n_neg"] != m["n"]:
            raise ArtifactError(f"{self.dir / f'metrics_{split}.json'}: n_pos + n_neg = {m['n_pos'] + m['n_neg']} "
                                f"but n = {m['n']}; the counts do not add up")
        return m

    def population(self, spec: str) -> dict:
        """The figures of one stratum of a split (``population_metrics``): ``test:nih_adult`` is the source
        nih_adult of test, ``test:view=AP`` its AP films."""
        split = spec.partition(":")[0]
        return population_metrics(self.metrics(split), spec, self.dir / f"metrics_{split}.json")

    def populations(self, split: str, column: str = "source") -> list[str]:
        """The ``split:value`` specs that ``split`` has figures for in ``column`` (sources, views...)."""
        try:
            return population_specs(self.metrics(split), split, column)
        except ArtifactError:
            return []

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
        sources = [] if info is not self.info else self.source_roots()
        return next((b for b in (_data_base(h, sources) for h in here) if b is not None), None)

    def source_roots(self) -> list[str]:
        """A multi-source run's source folders or manifests, relative to its data root, as recorded in run.json
        (``sources``: [{name, data}]), else []."""
        listed = self.info.get("sources") or []
        return [s["data"] for s in listed if isinstance(s, dict) and isinstance(s.get("data"), str)]

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


def _data_base(root: Path, sources: list[str] = ()) -> Path | None:
    """``root`` resolved, when it is a data set on this machine: a folder with class or split folders, or a CSV/TSV
    manifest with path (file) and label (class) columns (its folder), or, for a multi-source run, a folder under
    which every one of ``sources`` is a data set. Else None: a run.json naming ``/`` as its data root must not
    open the whole disk."""
    wanted = {"normal", "pneumonia", "train", "val", "test"}
    try:
        real = root.resolve()
        if sources and real.is_dir() and real != Path(real.anchor):  # each source lies under the common root
            under = [_data_base(real / s) for s in sources if not Path(s).is_absolute() and ".." not in Path(s).parts]
            ok = len(under) == len(sources) and all(b is not None and b.is_relative_to(real) for b in under)
            return real if ok else None
        if real.is_file() and real.suffix.lower() in MANIFEST_SUFFIXES:
            with open(real, encoding="utf-8-sig", errors="replace") as f:
                sep = "\t" if real.suffix.lower() == ".tsv" else ","
                header = {h.strip().lower() for h in f.readline(4096).split(sep)}
            return real.parent if ({"path", "file"} & header and {"label", "class"} & header
                                   and real.parent != Path(real.anchor)) else None
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
        named = read_text(path, 4096)[:200].strip() if path.exists() else ""
    except (OSError, ArtifactError):  # a pipe or folder in its place must not hang or break Home
        named = ""
    return next((r for r in runs if r.id == named), None) or max(runs, key=lambda r: len(r.models))


RECOMMENDED_FILE = "RECOMMENDED"  # in the artifacts root: ``run/model``, the model recommended for new films


def recommended(root: str | Path | None = None) -> tuple[str, str] | None:
    """(run id, model name) named in ``<root>/RECOMMENDED`` (chosen by the rule in docs/recipes.md), or None when
    the file is missing or does not name a ``run/model`` pair of usable names."""
    path = (Path(root) if root is not None else default_root()) / RECOMMENDED_FILE
    try:
        text = read_text(path, 1000).strip()
    except ArtifactError:
        return None
    run_id, _, model = text.partition("/")
    return (run_id, model) if name_problem(run_id) is None and name_problem(model) is None else None


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Run folders (those with a run.json), newest first."""
    root = Path(root) if root is not None else default_root()
    if not root.is_dir():
        return []
    runs = [Run(p.parent) for p in root.glob("*/run.json") if name_problem(p.parent.name) is None]
    return sorted(runs, key=_mtime, reverse=True)


def _mtime(run: Run) -> float:
    """When run.json last changed; 0 for a dangling link or an unreadable one (its page then says why)."""
    try:
        return run.dir.joinpath("run.json").stat().st_mtime
    except OSError:
        return 0.0


# --- site profiles (``python -m trainer site``, core/site.py): <model>/sites/<site>/profile.json ----------------

SITES_DIR = "sites"


def _scaling_ok(v) -> bool:
    return (isinstance(v, dict) and _number(v.get("temperature")) and v["temperature"] > 0
            and _number(v.get("bias", 0.0)))


SITE_FIELDS = {
    "site": NAME, "model": NAME, "labelled": BOOL, "n": COUNT, "n_pos": COUNT, "n_neg": COUNT, "created": TEXT,
    "command": TEXT, "data_root": TEXT, "overlap": MAPPING, "figures": MAPPING, "val_prevalence": NUMBER_OR_NULL,
    "threshold": ("an object {rule, value: number in [0, 1], source, val_value}", lambda v: isinstance(v, dict)
                  and name_problem(v.get("rule")) is None and _number(v.get("value")) and 0 <= v["value"] <= 1
                  and isinstance(v.get("source"), str) and _number(v.get("val_value"))),
    "calibration": ("an object {temperature > 0, bias, source}", lambda v: _scaling_ok(v)
                    and isinstance(v.get("source"), str)),
    "val_calibration": ("null or an object {temperature > 0, bias}", lambda v: v is None or _scaling_ok(v)),
    "prevalence": ("an object {value strictly between 0 and 1, source}", lambda v: isinstance(v, dict)
                   and _number(v.get("value")) and 0 < v["value"] < 1 and isinstance(v.get("source"), str)),
    "warnings": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def site_names(model: ModelArtifacts) -> list[str]:
    """The sites a model has a profile for (folder names that could not be a name are ignored), sorted."""
    base = model.dir / SITES_DIR
    if not base.is_dir():
        return []
    return sorted(p.parent.name for p in base.glob("*/profile.json") if name_problem(p.parent.name) is None)


def run_site_names(run: Run) -> list[str]:
    """Every site that at least one model of ``run`` has a profile for."""
    return sorted({s for m in run.models for s in site_names(m)})


def read_site_profile(model: ModelArtifacts, site: str) -> dict:
    """A model's profile for ``site``, schema-checked; ``ArtifactError`` when missing or malformed."""
    if (why := name_problem(site)) is not None:
        raise ArtifactError(f"site {_short(site)} {why}")
    path = model.dir / SITES_DIR / site / "profile.json"
    prof = read_json(path, SITE_FIELDS)
    for key in ("threshold", "calibration", "prevalence"):
        if key not in prof:
            raise ArtifactError(f"{path}: missing key {key!r}")
    if prof.get("model", model.name) != model.name or prof.get("site", site) != site:
        raise ArtifactError(f"{path}: names model {_short(prof.get('model'))} / site {_short(prof.get('site'))}, "
                            f"not {model.name} / {site}")
    return prof


def read_site_predictions(model: ModelArtifacts, site: str) -> pd.DataFrame:
    """path, label (0/1, or NaN for unlabelled films) and raw probability of the site's films."""
    if (why := name_problem(site)) is not None:
        raise ArtifactError(f"site {_short(site)} {why}")
    path = model.dir / SITES_DIR / site / "predictions.csv"
    df = read_csv(path, PREDICTION_COLUMNS)
    prob = pd.to_numeric(df["probability"], errors="coerce")
    label = pd.to_numeric(df["label"], errors="coerce")
    if df.empty or not prob.between(0, 1).all() or not (label.isna() | label.isin([0, 1])).all():
        raise ArtifactError(f"{path}: needs rows with labels 0/1 (or empty) and probabilities in [0, 1]")
    return df.assign(path=df["path"].astype(str), label=label, probability=prob.astype(float))


POPULATION_FILE = "population.json"  # per model: the population check's references (core/population.py)


def _population_source(name, s, path) -> tuple[int, int]:
    """Check one source of a population.json; return (feature size, principal axes)."""
    if name_problem(name) is not None or not isinstance(s, dict):
        raise ArtifactError(f"{path}: source {_short(name)} must be a name mapping to an object")
    vectors = [s.get(k) for k in ("mean", "variances")] + list(s.get("axes") or [None])
    if not all(isinstance(v, list) and v and all(map(_number, v)) for v in vectors):
        raise ArtifactError(f"{path}: source {name!r} needs number lists mean, variances and axes")
    dim, k = len(s["mean"]), len(s["variances"])
    if len(s["axes"]) != k or any(len(a) != dim for a in s["axes"]) or min(s["variances"]) <= 0:
        raise ArtifactError(f"{path}: source {name!r}: {k} positive variances, {k} axes of {dim} values expected")
    for key in ("limit", "rest_variance"):
        if not (_number(s.get(key)) and s[key] > 0):
            raise ArtifactError(f"{path}: source {name!r}: {key} must be a positive number, found "
                                f"{_short(s.get(key))}")
    for key in ("n_fit", "n_limit"):
        if not (_integer(s.get(key)) and s[key] >= 0):
            raise ArtifactError(f"{path}: source {name!r}: {key} must be a count, found {_short(s.get(key))}")
    return dim, k


def read_population(model_dir: str | Path) -> dict:
    """A model's population.json, checked: at least one training source, every source (and every ``known``
    outside population) with the same feature size, every vector the right length and finite; ``measured``
    rates in [0, 1]. ``ArtifactError`` otherwise."""
    path = Path(model_dir) / POPULATION_FILE
    obj = read_json(path, {"schema_version": INTEGER, "model": NAME, "quantile": NUMBER_OR_NULL,
                           "sources": MAPPING, "measured": MAPPING})
    if obj.get("schema_version") != 1:
        raise ArtifactError(f"{path}: schema_version {_short(obj.get('schema_version'))}; this code reads 1")
    if not obj.get("sources"):
        raise ArtifactError(f"{path}: no source to judge a film against")
    if not isinstance(obj.get("known", {}), dict):
        raise ArtifactError(f"{path}: field 'known' must be an object")
    dims = {_population_source(n, s, path)[0] for part in ("sources", "known")
            for n, s in (obj.get(part) or {}).items()}
    if len(dims) != 1:
        raise ArtifactError(f"{path}: sources disagree on the feature size ({sorted(dims)})")
    for name, m in (obj.get("measured") or {}).items():
        if not (isinstance(m, dict) and _integer(m.get("n")) and _number(m.get("outside"))
                and 0 <= m["outside"] <= 1):
            raise ArtifactError(f"{path}: measured set {_short(name)} needs n and an outside rate in [0, 1]")
    return obj
