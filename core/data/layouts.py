"""Data layouts, patient ids and patient-grouped, label-stratified splits (docs/design.md, "Splits").

Patients, not images, are the unit of splitting: two films of one child in train and test would let a model
score well by recognising the child. Every carved split is therefore grouped by ``patient_id``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.data.images import SUPPORTED_EXTENSIONS
from core.data.labels import CLASSES

SPLIT_FOLDERS = ("train", "val", "test")  # also the order splits are listed in, everywhere


def sort_splits(names) -> list[str]:
    """Split names, train/val/test first, then any other (``official_val``, evaluated sets) by name."""
    rank = {name: i for i, name in enumerate(SPLIT_FOLDERS)}
    return sorted(set(names), key=lambda s: (rank.get(s, len(rank)), s))


EXCLUDED = "excluded"  # pool images of a patient who is already in a fixed split (e.g. the given test/)
LAYOUTS_HELP = (
    "accepted layouts: ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/* (Kermany; any of the split folders), "
    "ROOT/{NORMAL,PNEUMONIA}/* (flat), or a CSV/TSV manifest with columns path (or file),label (or class)"
    "[,patient_id][,split][,view,sex,age]"
)
MANIFEST_SUFFIXES = (".csv", ".tsv")
# Manifest columns kept with each film and reported per stratum (docs/recipes.md, "Populations"): the view is tied
# to the class in the NIH adult films, so a model can score by view; age and sex say whom a figure is about.
STRATA = ("view", "sex", "age")


class DataError(ValueError):
    """A data set that cannot be used as given; the message says what is wrong and where."""


@dataclass(frozen=True)
class Sample:
    path: str  # absolute path
    label: int  # index into core.data.labels.CLASSES
    patient_id: str
    split: str | None  # "train" | "val" | "test" | None (not assigned yet) | a manifest's own name
    source: str = ""  # the data source's name in a multi-source run (core.data.layouts.Source); "" for a single source
    meta: tuple = ()  # ((column, value), ...) of a manifest's stratum columns (STRATA): reported per stratum

    def stratum(self, column: str) -> str:
        """The sample's value of a stratum column ("" when unknown); ``source`` is one too."""
        if column == "source":
            return self.source
        return dict(self.meta).get(column, "")


@dataclass
class Scan:
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    layout: str = ""  # "kermany" | "flat" | "manifest"
    root: str = ""


# Kermany names: person1234_bacteria_567.jpeg, person447_virus_921_1.jpeg, IM-0115-0001.jpeg,
# IM-0429-0001-0002.jpeg, NORMAL2-IM-0372-0001.jpeg. The NORMAL2- prefix is dropped (DESIGN.md: patient IM-0372),
# so IM-0372 and NORMAL2-IM-0372 count as one patient: if they were two, merging them only makes a group
# bigger, which can never leak a patient across splits.
_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^(?:NORMAL\d*-)?IM-(\d+)-", re.IGNORECASE)


def patient_id(filename: str) -> str:
    """Patient of a Kermany file name; any other name is its own patient (its stem), the only safe guess."""
    base = os.path.basename(str(filename))
    m = _PERSON.match(base)
    if m:
        return m.group(1).lower()
    m = _IM.match(base)
    if m:
        return f"IM-{m.group(1)}"
    return Path(base).stem


# --------------------------------------------------------------------------------------------------- scanning


def scan(root) -> Scan:
    """Find the images and labels under ``root`` (a folder in the Kermany or flat layout, or a .csv manifest)."""
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DataError(f"data root {root_path} does not exist; {LAYOUTS_HELP}")
    if root_path.is_file():
        if root_path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(f"data root {root_path} is a file but not a .csv or .tsv manifest; {LAYOUTS_HELP}")
        return _scan_manifest(root_path)

    split_dirs = _split_dirs(root_path)
    class_dirs = _class_dirs(root_path)
    if split_dirs:
        layout, samples, skipped = "kermany", [], []
        for d in split_dirs:
            inner = _class_dirs(d)
            if not inner:
                raise DataError(f"split folder {d} has no NORMAL or PNEUMONIA folder; {LAYOUTS_HELP}")
            for cdir, label in inner:
                _scan_class_dir(cdir, label, d.name.lower(), samples, skipped)
    elif class_dirs:
        layout, samples, skipped = "flat", [], []
        for cdir, label in class_dirs:
            _scan_class_dir(cdir, label, None, samples, skipped)
    else:
        raise DataError(f"no train/val/test or NORMAL/PNEUMONIA folders in {root_path}; {LAYOUTS_HELP}")

    samples = _one_per_file(samples, skipped)
    if not samples:
        raise DataError(f"no supported images ({', '.join(SUPPORTED_EXTENSIONS)}) under {root_path} "
                        f"({len(skipped)} files skipped)")
    return Scan(sorted(samples, key=lambda s: s.path), sorted(skipped), layout, str(root_path))


def _split_dirs(root: Path) -> list[Path]:
    """train/val/test folders (any case), each real folder once."""
    return [d for d in _unique_real(_subdirs(root)) if d.name.lower() in SPLIT_FOLDERS]


def _one_per_file(samples: list[Sample], skipped: list) -> list[Sample]:
    """Drop samples that are the same file as an earlier one (reached through a symlink): one film, one vote."""
    seen: dict[str, str] = {}
    out = []
    for s in sorted(samples, key=lambda s: (os.path.islink(s.path), s.path)):
        real = os.path.realpath(s.path)
        if real in seen:
            skipped.append((printable(s.path), f"same file as {printable(seen[real])} (symlink)"))
            continue
        seen[real] = s.path
        out.append(s)
    return out


def _list(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"cannot read folder {printable(folder)}: {e.strerror or e}") from None


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _list(folder) if p.is_dir() and not p.name.startswith(".")]


def _class_dirs(folder: Path) -> list[tuple[Path, int]]:
    """Class folders matched case-insensitively ("normal", "Pneumonia"), each real folder once.

    A symlink to a folder already listed (a case-variant link, say) is dropped, so its images are not counted
    twice; two real folders of one class ("NORMAL" and "normal") are both scanned."""
    upper = [c.upper() for c in CLASSES]
    dirs = [d for d in _unique_real(_subdirs(folder)) if d.name.upper() in upper]
    return [(d, upper.index(d.name.upper())) for d in dirs]


def _unique_real(dirs: list[Path]) -> list[Path]:
    """``dirs`` without those resolving to a folder already kept; real folders are kept before links."""
    seen, out = set(), []
    for d in sorted(dirs, key=lambda d: (d.is_symlink(), d.name)):
        real = d.resolve()
        if real not in seen:
            seen.add(real)
            out.append(d)
    return sorted(out)


def printable(path) -> str:
    """A path as text that can be printed and written as UTF-8 (undecodable bytes shown as \\x..)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _skip_reason(path: Path) -> str | None:
    """Why a file is not an image candidate, or None; pixels are not read here (core.data.images does that later)."""
    if path.name.startswith("."):
        return "hidden file"
    if printable(path.name) != path.name:
        return "file name is not valid UTF-8 (rename the file to use it)"
    if path.is_dir():
        return "folder inside a class folder (not scanned)"
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        return f"unsupported extension '{path.suffix}' (accepted: {', '.join(SUPPORTED_EXTENSIONS)})"
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):  # a named pipe would hang the decoder, a device never ends
        return "not a regular file (a named pipe, device or socket)"
    return "empty file" if st.st_size == 0 else None


def _scan_class_dir(cdir: Path, label: int, split, samples: list, skipped: list) -> None:
    for path in _list(cdir):
        reason = _skip_reason(path)
        if reason:
            skipped.append((printable(path), reason))
        else:
            samples.append(Sample(str(path), label, patient_id(path.name), split))


def _parse_label(value: str) -> int | None:
    v = (value or "").strip().upper()
    if v in ("0", "1", "0.0", "1.0"):  # 1.0/0.0: CheXpert-style finding columns
        return int(float(v))
    upper = [c.upper() for c in CLASSES]
    return upper.index(v) if v in upper else None


_ALIASES = {"patientid": "patient_id", "patient": "patient_id", "file": "path", "class": "label",
            "viewposition": "view", "patientage": "age", "patientsex": "sex", "gender": "sex"}


def _column_name(header: str) -> str:
    """Lower-case column name with the usual aliases: NIH's "Patient ID" and RSNA's "patientId" are patient_id,
    "file" is path, "class" is label, NIH's "View Position" is view. Other columns are allowed and ignored."""
    name = header.strip().lower()
    return _ALIASES.get(name.replace(" ", "").replace("_", ""), name)


def age_band(value: str) -> str:
    """An age in years as a reporting band (children, then adults by decades of risk); "" when not a number."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return ""
    if not 0 <= age < 130:
        return ""
    return next(band for limit, band in ((18, "<18"), (40, "18-39"), (60, "40-59"), (130, "60+")) if age < limit)


def _meta(cell) -> tuple:
    """The stratum columns of one manifest row: view and sex upper-cased, age as a band."""
    out = []
    for column in STRATA:
        value = cell(column)
        value = age_band(value) if column == "age" else value.upper()[:20]
        if value:
            out.append((column, value))
    return tuple(out)


def _scan_manifest(csv_path: Path) -> Scan:
    """Manifest rows: path (relative to the manifest's folder, or absolute), label, optional patient_id, split and
    stratum columns (``STRATA``). A .tsv manifest is tab-separated."""
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read manifest {csv_path}: {e}") from e
    if not rows:
        raise DataError(f"manifest {csv_path} is empty; it needs a header path,label[,patient_id][,split]")
    header = [_column_name(h) for h in rows[0]]
    if "path" not in header or "label" not in header:
        raise DataError(f"manifest {csv_path} needs columns path and label (found: {', '.join(header)}); "
                        f"{LAYOUTS_HELP}")
    col = {name: header.index(name) for name in ("path", "label", "patient_id", "split", *STRATA) if name in header}

    samples, skipped, seen = [], [], {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue

        def cell(name, row=row):
            return row[col[name]].strip() if name in col and col[name] < len(row) else ""

        raw_path, raw_label = cell("path"), cell("label")
        if not raw_path:
            raise DataError(f"{csv_path}, line {line_no}: empty path")
        label = _parse_label(raw_label)
        if label is None:
            raise DataError(f"{csv_path}, line {line_no}: unknown label {raw_label!r} "
                            f"(use {' or '.join(CLASSES)}, or 0/1)")
        path = Path(raw_path).expanduser()
        path = (path if path.is_absolute() else csv_path.parent / path).absolute()
        if str(path) in seen:
            raise DataError(f"{csv_path}, line {line_no}: {path} is listed twice (first on line {seen[str(path)]})")
        seen[str(path)] = line_no
        if not path.exists():
            skipped.append((str(path), f"listed in manifest (line {line_no}) but not found"))
            continue
        reason = _skip_reason(path)
        if reason:
            skipped.append((str(path), reason))
            continue
        split = cell("split").lower() or None
        samples.append(Sample(str(path), label, cell("patient_id") or patient_id(path.name), split, meta=_meta(cell)))

    if not samples:
        raise DataError(f"manifest {csv_path} lists no usable images ({len(skipped)} skipped)")
    return Scan(sorted(samples, key=lambda s: s.path), sorted(skipped), "manifest", str(csv_path))


# ----------------------------------------------------------------------------------------------------- splits


def assign_splits(samples, *, val_fraction=0.15, test_fraction=0.15, seed=0) -> list[Sample]:
    """Carve validation (and test, if none is given) out of the pool, by patient, stratified by label.

    The pool is every sample with split None, "train" or "val" (the official 16-image val is too small to be a
    validation set, so it is merged). Samples with any other split ("test", or a manifest's own name) keep it;
    if some have "test", only validation is carved. Pool images of a patient who also appears in such a fixed
    split get split ``EXCLUDED`` (they can go nowhere without leaking that patient; the Kermany test folder shares
    patients with train). Fractions are of the pool's images, per class. Same seed -> same split.
    """
    samples = list(samples)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= frac < 1:
            raise DataError(f"{name} must be in [0, 1), got {frac}")
    fixed = [s for s in samples if s.split not in (None, "train", "val")]
    has_test = any(s.split == "test" for s in fixed)
    if not has_test and val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    fixed_patients = {s.patient_id for s in fixed}
    pool = [s for s in samples if s.split in (None, "train", "val") and s.patient_id not in fixed_patients]
    if not pool:
        raise DataError("no training images: every image is in a fixed split (test or a manifest split)")

    fractions = {"val": val_fraction} if has_test else {"test": test_fraction, "val": val_fraction}
    patient_split = _carve(pool, fractions, seed)

    out = []
    for s in samples:
        if s.split in (None, "train", "val"):
            split = EXCLUDED if s.patient_id in fixed_patients else patient_split[s.patient_id]
            s = dataclasses.replace(s, split=split)
        out.append(s)
    return out


def _carve(pool: list[Sample], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """patient -> split. Per class (a patient's majority label, ties to PNEUMONIA) and, where a manifest gives it,
    view (the NIH adult films' view is tied to their class: every split keeps the same class-by-view mix), walk the
    patients in a seeded random order and fill each carved split in turn up to its share of that group's images;
    the rest is train. Without views the groups are the classes alone, as before."""
    images, views = defaultdict(list), {}
    for s in pool:
        images[s.patient_id].append(s.label)
        views.setdefault(s.patient_id, s.stratum("view"))
    by_group = defaultdict(list)
    for pid in sorted(images):
        counts = Counter(images[pid])
        by_group[(max(counts, key=lambda lab: (counts[lab], lab)), views[pid])].append(pid)

    rng = np.random.default_rng(seed)
    result = {}
    for group in sorted(by_group):
        pids = [by_group[group][i] for i in rng.permutation(len(by_group[group]))]
        total = sum(len(images[p]) for p in pids)
        bounds, acc = [], 0.0
        for split, frac in fractions.items():
            acc += frac * total
            bounds.append((acc, split))
        done = 0
        for pid in pids:
            result[pid] = next((split for bound, split in bounds if done < bound), "train")
            done += len(images[pid])
    return result


def check_no_patient_overlap(samples) -> None:
    """Raise DataError naming every patient found in two splits (unassigned and excluded samples are ignored)."""
    splits = defaultdict(set)
    for s in samples:
        if s.split not in (None, EXCLUDED):
            splits[s.patient_id].add(s.split)
    shared = {pid: sorted(sp) for pid, sp in splits.items() if len(sp) > 1}
    if shared:
        listed = "; ".join(f"{pid} in {', '.join(sp)}" for pid, sp in sorted(shared.items())[:20])
        more = f" and {len(shared) - 20} more" if len(shared) > 20 else ""
        raise DataError(f"{len(shared)} patients are in more than one split: {listed}{more}")


def split_counts(samples) -> dict[str, dict[str, int]]:
    """{split: {class name: n}}; train, val, test first; unassigned samples are counted under "unassigned"."""
    counts: dict[str, dict[str, int]] = {}
    for s in samples:
        key = s.split if s.split is not None else "unassigned"
        counts.setdefault(key, {c: 0 for c in CLASSES})[CLASSES[s.label]] += 1
    return {k: counts[k] for k in sort_splits(counts)}


def check_splits_usable(samples, required=("train", "val", "test")) -> None:
    """Raise DataError if a required split is missing or lacks a class (AUC and thresholds need both)."""
    counts = split_counts(samples)
    problems = []
    for split in required:
        if split not in counts:
            problems.append(f"split '{split}' has no images")
            continue
        problems += [f"split '{split}' has no {c} images" for c, n in counts[split].items() if n == 0]
    if problems:
        table = "; ".join(f"{k}: " + ", ".join(f"{c} {n}" for c, n in v.items()) for k, v in counts.items())
        raise DataError(f"{'; '.join(problems)} (counts: {table or 'no images'})")


def cross_split_duplicates(samples) -> list[list[Sample]]:
    """Groups of byte-identical files in different splits: a training film copied into test under a new name
    leaks it as surely as a shared patient does. Only files whose size matches one in another split are hashed."""
    by_size: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.split not in (None, EXCLUDED):
            try:
                by_size[os.path.getsize(s.path)].append(s)
            except OSError:
                continue  # a vanished file is reported where it is read
    groups = []
    for same in by_size.values():
        if len({s.split for s in same}) < 2:
            continue
        by_hash: dict[str, list[Sample]] = defaultdict(list)
        for s in same:
            by_hash[_sha256(s.path)].append(s)
        groups += [g for g in by_hash.values() if len({s.split for s in g}) > 1]
    return sorted(groups, key=lambda g: g[0].path)


def check_duplicates(samples, policy: str = "warn") -> str | None:
    """A warning naming the cross-split duplicates (None if there are none); a DataError when policy is "refuse"."""
    groups = cross_split_duplicates(samples)
    if not groups:
        return None
    shown = "; ".join(" = ".join(f"{printable(s.path)} ({s.split})" for s in g) for g in groups[:5])
    more = f" and {len(groups) - 5} more" if len(groups) > 5 else ""
    message = f"{len(groups)} files appear byte-identical in more than one split: {shown}{more}"
    if policy == "refuse":
        raise DataError(message + "; remove the copies (or use duplicates: warn to go on anyway)")
    return message


def file_sha256(path) -> str | None:
    """sha256 of a file's bytes, read in 1 MB blocks; None when it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _sha256(path: str) -> str:
    return file_sha256(path) or f"unreadable:{path}"  # never equal to another file's hash


def fingerprint(samples) -> str:
    """sha256 over sorted (path, size, mtime_ns): changes when a file is added, removed, replaced or touched."""
    entries = set()
    for s in samples:
        try:
            st = os.stat(s.path)
        except OSError as e:
            raise DataError(f"cannot fingerprint {s.path}: {e.strerror or e}") from e
        entries.add((s.path, st.st_size, st.st_mtime_ns))
    h = hashlib.sha256()
    for path, size, mtime in sorted(entries):
        h.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
