"""Reading a run folder: ``Run`` and its ``ModelArtifacts``, the runs of an artifacts root, the run shown first.

Every accessor raises ``ArtifactError`` with a message naming the file; image paths stored relative to the data
root are found on this machine by ``Run.locate``, which never leaves the run's data folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import pandas as pd

from core.data.layouts import MANIFEST_SUFFIXES, sort_splits
from core.evaluate.metrics import headline_rule
from core.store import files
from core.store.io import (
    TEXT,
    ArtifactError,
    check_fields,
    default_root,
    name_problem,
    read_csv,
    read_json,
    read_text,
)
from core.store.schema import (
    CONFIG_FIELDS,
    HISTORY_COLUMNS,
    METRICS_FIELDS,
    PREDICTION_COLUMNS,
    RUN_FIELDS,
    SKIPPED_COLUMNS,
    SPLIT_COLUMNS,
    STATUS_FIELDS,
)

__all__ = [
    "ENSEMBLE_ARCH", "ENV_ALLOW", "REPO", "STALE_AFTER_SECONDS", "ModelArtifacts", "Run", "default_run",
    "heartbeat_stale", "is_ensemble", "is_run", "list_runs", "population_metrics", "population_specs", "recommended",
]

REPO = Path(__file__).resolve().parents[2]
ENV_ALLOW = "CXR_DATA_ALLOW"  # extra folders a run's image paths may point into
STALE_AFTER_SECONDS = 600
ENSEMBLE_ARCH = "ensemble"  # config.json "arch" of an ensemble: no network, the mean of its "members"


def is_ensemble(config: dict) -> bool:
    """Whether a model's config.json describes an ensemble (the one test for it, everywhere)."""
    return config.get("arch") == ENSEMBLE_ARCH


def is_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (its run.json), readable or not."""
    return (Path(run_dir) / files.RUN_FILE).is_file()


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


def parse_population(spec: str) -> tuple[str, str, str]:
    """``test:nih_adult`` -> (``test``, ``source``, ``nih_adult``); ``test:view=AP`` -> (``test``, ``view``, ``AP``)."""
    split, _, stratum = spec.partition(":")
    column, _, value = stratum.rpartition("=")
    return split, column or "source", value


def population_metrics(whole: dict, spec: str, path="metrics") -> dict:
    """One stratum of a split's metrics (``whole``), shaped like a split's own (``auc``, ``auc_ci``, ``at``,
    ``thresholds``, ``split`` = the spec), checked like one; ArtifactError when it is not there."""
    _, column, value = parse_population(spec)
    by = whole.get("by")
    group = (by or {}).get(column, {}).get(value) if isinstance(by, dict) else None
    if not isinstance(group, dict):
        raise ArtifactError(f"{path}: no figures for {column} {value!r}")
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

    @classmethod
    def at(cls, model_dir: str | Path) -> ModelArtifacts:
        """The model whose folder is ``model_dir``."""
        return cls(Path(model_dir).parent, Path(model_dir).name)

    @property
    def history_path(self) -> Path:
        return self.dir / files.HISTORY_FILE

    def predictions_path(self, split: str) -> Path:
        return self.dir / files.predictions_file(split)

    def metrics_path(self, split: str) -> Path:
        return self.dir / files.metrics_file(split)

    def has_history(self) -> bool:
        return self.history_path.exists()

    def has_metrics(self, split: str) -> bool:
        return self.metrics_path(split).exists()

    @cached_property
    def config(self) -> dict:
        return read_json(self.dir / files.CONFIG_FILE, CONFIG_FIELDS)

    def status(self) -> dict:
        """Read fresh each time (a running model changes it); adds ``stale`` for a dead trainer."""
        st = read_json(self.dir / files.STATUS_FILE, STATUS_FIELDS)
        if st.get("state") == "running":
            st["stale"] = heartbeat_stale(st.get("heartbeat"))
        return st

    def history(self) -> pd.DataFrame:
        path = self.history_path
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
        """Splits that have predictions, in ``core.data.layouts.sort_splits`` order (val, test, then the others)."""
        names = files.splits_with_predictions(self.dir)
        return sort_splits(n for n in names if name_problem(n) is None)  # a file name is no place for markup

    def predictions(self, split: str) -> pd.DataFrame:
        """path, label (0/1), probability ([0, 1]); one row per image: a repeated path would count twice."""
        path = self.predictions_path(split)
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
        path = self.metrics_path(split)
        m = read_json(path, METRICS_FIELDS)
        for key in ("auc", "thresholds", "at"):
            if key not in m:
                raise ArtifactError(f"{path}: missing key {key!r}")
        if all(k in m for k in ("n", "n_pos", "n_neg")) and m["n_pos"] + m["n_neg"] != m["n"]:
            raise ArtifactError(f"{path}: n_pos + n_neg = {m['n_pos'] + m['n_neg']} but n = {m['n']}; the counts "
                                "do not add up")
        return m

    def population(self, spec: str) -> dict:
        """The figures of one stratum of a split (``population_metrics``): ``test:nih_adult`` is the source
        nih_adult of test, ``test:view=AP`` its AP films."""
        split = spec.partition(":")[0]
        return population_metrics(self.metrics(split), spec, self.metrics_path(split))

    def population_predictions(self, spec: str) -> pd.DataFrame:
        """The predictions of ``spec``: a whole split, or one stratum of it (``test:nih_adult``, ``test:view=AP``;
        none when the predictions lack that column)."""
        split, column, value = parse_population(spec)
        df = self.predictions(split)
        if ":" not in spec:
            return df
        return df[df[column].astype(str) == value] if column in df else df.iloc[0:0]

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
        path = files.best_checkpoint(self.dir)
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
        return read_json(self.dir / files.RUN_FILE, RUN_FIELDS)

    def has_split_table(self) -> bool:
        return (self.dir / files.SPLIT_FILE).exists()

    def split_table(self) -> pd.DataFrame:
        return read_csv(self.dir / files.SPLIT_FILE, SPLIT_COLUMNS)

    def skipped(self) -> pd.DataFrame:
        path = self.dir / files.SKIPPED_FILE
        return read_csv(path, SKIPPED_COLUMNS) if path.exists() else pd.DataFrame(columns=SKIPPED_COLUMNS)

    @cached_property
    def models(self) -> list[ModelArtifacts]:
        # a model that failed before writing its config still has a status.json worth showing
        # folder names that could not be a model name (markup, spaces, control characters) are not models
        names = sorted(n for n in files.model_folders(self.dir) if name_problem(n) is None)
        order = self.info.get("models", []) if is_run(self.dir) and self._info_ok() else []
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
        record = self.dir / files.evaluated_file(split) if split else None
        try:
            info = read_json(record, {"data_root": TEXT}) if record and record.exists() else self.info
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


def default_run(runs: list[Run], root: str | Path | None = None) -> Run | None:
    """The run shown first: the one named in ``<root>/DEFAULT_RUN`` when it is among ``runs``; otherwise the one
    with the most models (the lineup, not a one-model experiment beside it), the newest of equals."""
    if not runs:
        return None
    path = (Path(root) if root is not None else default_root()) / files.DEFAULT_RUN_FILE
    try:
        named = read_text(path, 4096)[:200].strip() if path.exists() else ""
    except (OSError, ArtifactError):  # a pipe or folder in its place must not hang or break Home
        named = ""
    return next((r for r in runs if r.id == named), None) or max(runs, key=lambda r: len(r.models))


def recommended(root: str | Path | None = None) -> tuple[str, str] | None:
    """(run id, model name) named in ``<root>/RECOMMENDED`` (chosen by the rule in docs/recipes.md), or None when
    the file is missing or does not name a ``run/model`` pair of usable names."""
    path = (Path(root) if root is not None else default_root()) / files.RECOMMENDED_FILE
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
    runs = [Run(p) for p in files.run_folders(root) if name_problem(p.name) is None]
    return sorted(runs, key=_mtime, reverse=True)


def _mtime(run: Run) -> float:
    """When run.json last changed; 0 for a dangling link or an unreadable one (its page then says why)."""
    try:
        return run.dir.joinpath(files.RUN_FILE).stat().st_mtime
    except OSError:
        return 0.0
