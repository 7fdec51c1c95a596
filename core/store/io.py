"""The store's file primitives: atomic writes, bounded reads of untrusted files, field checks, names.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``): a reader sees the old file or
the new one, never half of one, and a killed trainer leaves a consistent run. Every read problem (missing,
torn, malformed, too large, a pipe in a file's place) is an ``ArtifactError`` naming the file, never a bare parser
error, so a caller can show that one model's problem and carry on with the others.
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
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

__all__ = [
    "BOOL", "COUNT", "ENV_ROOT", "INTEGER", "MAPPING", "MAX_CSV_BYTES", "MAX_JSON_BYTES", "NAME", "NAMES",
    "NUMBER_OR_NULL", "TEXT", "TEXT_OR_NULL", "UNIT", "ArtifactError", "atomic_write_bytes", "atomic_write_text",
    "check_fields", "default_root", "is_integer", "is_number", "is_unit", "name_problem", "now_iso", "read_bytes",
    "read_csv", "read_json", "read_text", "shown", "write_csv", "write_json",
]

ENV_ROOT = "CXR_ARTIFACTS"


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
            raise ArtifactError(f"{path}: field {key!r} must be {what}, found {shown(obj[key])}")
    return obj


def shown(value) -> str:
    """A found value for an error message: numbers as they are, anything else by type only, so no text from a
    file (markup, a tracking link) ever reaches a page inside an error message."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    size = f" of length {len(value)}" if isinstance(value, (str, list, dict)) else ""
    return f"{'text' if isinstance(value, str) else type(value).__name__}{size}"


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_unit(v) -> bool:
    """A number in [0, 1] (a rate, a probability, an AUC, a threshold), or null."""
    return v is None or (is_number(v) and 0 <= v <= 1)


# field checks for ``read_json``: (what the field must be, the test)
TEXT = ("a string", lambda v: isinstance(v, str))
TEXT_OR_NULL = ("a string or null", lambda v: v is None or isinstance(v, str))
INTEGER = ("an integer", is_integer)
COUNT = ("a non-negative integer", lambda v: is_integer(v) and v >= 0)
NUMBER_OR_NULL = ("a number or null", lambda v: v is None or is_number(v))
UNIT = ("a number in [0, 1], or null", is_unit)
BOOL = ("true or false", lambda v: isinstance(v, bool))
MAPPING = ("an object", lambda v: isinstance(v, dict))
NAME = ("a name (letters, digits, '.', '_', '-')", lambda v: name_problem(v) is None)
NAMES = ("a list of names (letters, digits, '.', '_', '-')",
         lambda v: isinstance(v, list) and all(name_problem(x) is None for x in v))
