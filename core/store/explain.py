"""The explanation records of a run folder (docs/artifacts.md, docs/explanations.md), read and written here only.

* ``calibration.json`` (per model): the validation-fitted temperature and bias (``core.evaluate.calibration``);
* ``cam_reference.json`` (per model): per CAM method and class, the value full colour means (``core.explain.cams``);
* ``faithfulness.json`` (per run): ROAD and the randomisation check per model and method
(``core.explain.faithfulness``);
* ``lung_focus_<split>.csv`` / ``.json`` (per model): where the maps' evidence lies (``core.explain.focus``).

The computations are pure functions of arrays and models; these functions are the only way in and out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core.evaluate.calibration import B_BOUNDS, T_BOUNDS, Scaling
from core.store import files
from core.store.io import ArtifactError, read_csv, read_json, shown, write_csv, write_json
from core.store.schema import FAITHFULNESS_FIELDS, FOCUS_COLUMNS, REFERENCE_BOUNDS

__all__ = [
    "focus_splits", "focus_summary_splits", "has_calibration", "has_cam_reference", "read_calibration",
    "read_cam_reference", "read_faithfulness", "read_focus", "read_focus_summary", "read_scaling",
    "write_calibration", "write_cam_reference", "write_faithfulness", "write_focus",
]


# --- calibration.json -----------------------------------------------------------------------------------------

def has_calibration(model_dir: str | Path) -> bool:
    return (Path(model_dir) / files.CALIBRATION_FILE).exists()


def read_calibration(model_dir: str | Path) -> dict | None:
    """The model's calibration record as stored (temperature, bias, ECE/Brier per split), or None."""
    path = Path(model_dir) / files.CALIBRATION_FILE
    return read_json(path) if path.exists() else None


def _in_bounds(path: Path, key: str, value, bounds: tuple[float, float], positive: bool = False) -> float:
    """A fitted parameter within the bounds its fit searches in: outside them it was not fitted here, and would push
    every probability to 0 or 1 (T = 1e-9) or to 0.5 (T = 1e9)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or \
            (positive and value <= 0):
        raise ArtifactError(f"{path}: {key!r} must be a {'positive' if positive else 'finite'} number, found "
                            f"{shown(value)}")
    if not bounds[0] <= value <= bounds[1]:
        raise ArtifactError(f"{path}: {key!r} {value:g} is outside the fitted range {bounds[0]:g} to {bounds[1]:g}; "
                            "it would make every calibrated probability meaningless")
    return float(value)


def read_scaling(model_dir: str | Path) -> Scaling | None:
    """The model's fitted calibration, or ``None`` when it has none (probabilities are then shown raw). Files
    written before the bias existed read as ``b = 0``."""
    stored = read_calibration(model_dir)
    if stored is None:
        return None
    path = Path(model_dir) / files.CALIBRATION_FILE
    return Scaling(_in_bounds(path, "temperature", stored.get("temperature"), T_BOUNDS, positive=True),
                   _in_bounds(path, "bias", stored.get("bias", 0.0), B_BOUNDS))


def write_calibration(model_dir: str | Path, record: dict) -> None:
    write_json(Path(model_dir) / files.CALIBRATION_FILE, record)


# --- cam_reference.json ---------------------------------------------------------------------------------------

def has_cam_reference(model_dir: str | Path) -> bool:
    return (Path(model_dir) / files.CAM_REFERENCE_FILE).exists()


def read_cam_reference(model_dir: str | Path, method: str, target_name: str) -> float | None:
    """The stored validation reference of one model, method and target class; ``None`` when the run has none
    (the page then falls back to the labelled contrast-stretched view). 0: no evidence on validation."""
    path = Path(model_dir) / files.CAM_REFERENCE_FILE
    if not path.exists():
        return None
    methods = read_json(path).get("methods", {})
    entry = methods.get(method, {}) if isinstance(methods, dict) else None
    if not isinstance(entry, dict):
        raise ArtifactError(f"{path}: 'methods' must be an object {{method: {{class: number}}}}")
    value = entry.get(target_name)
    if value is None:
        return None
    lo, hi = REFERENCE_BOUNDS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ArtifactError(f"{path}: reference of {method}/{target_name} must be a number >= 0, found "
                            f"{shown(value)}")
    if value != 0 and not lo <= value <= hi:
        raise ArtifactError(f"{path}: reference of {method}/{target_name} is {value:g}, outside {lo:g} to {hi:g}; "
                            "it would make every map saturated or empty")
    return float(value)


def write_cam_reference(model_dir: str | Path, references: dict) -> None:
    write_json(Path(model_dir) / files.CAM_REFERENCE_FILE, references)


# --- faithfulness.json ----------------------------------------------------------------------------------------

def read_faithfulness(run_dir: str | Path) -> dict | None:
    """The run's stored figures, or ``None`` when it has none; every field the pages use is checked for type and
    range (``FAITHFULNESS_FIELDS``), so a malformed file is one ``ArtifactError``, never a crashed page."""
    path = Path(run_dir) / files.FAITHFULNESS_FILE
    return read_json(path, FAITHFULNESS_FIELDS) if path.exists() else None


def write_faithfulness(run_dir: str | Path, figures: dict) -> None:
    write_json(Path(run_dir) / files.FAITHFULNESS_FILE, figures)


# --- lung_focus_<split>.csv and .json -------------------------------------------------------------------------

def focus_splits(run) -> list[str]:
    """Splits for which some model of ``run`` has lung-focus figures."""
    return sorted({s for m in run.models for s in files.splits_with_focus(m.dir)})


def read_focus(run, split: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every model's lung-focus table of ``split`` in one table (a ``model`` column added), and per model that has
    none or a broken one, why (so a page can say so and go on)."""
    tables, problems = [], {}
    for m in run.models:
        path = m.dir / files.focus_table_file(split)
        if not path.exists():
            problems[m.name] = "no lung-focus figures"
            continue
        try:
            tables.append(read_csv(path, FOCUS_COLUMNS).assign(model=m.name))
        except ArtifactError as e:
            problems[m.name] = str(e)
    if not tables:
        return pd.DataFrame(columns=["model", *FOCUS_COLUMNS]), problems
    df = pd.concat(tables, ignore_index=True)
    for col in ("lung_focus", "border_mass", "lung_fraction"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df, problems


def focus_summary_splits(model_dir: str | Path) -> list[str]:
    """Splits a model has a lung-focus summary for, in the order of their file names."""
    return sorted(files.splits_with_focus(model_dir, summary=True), key=files.focus_summary_file)


def read_focus_summary(model_dir: str | Path, split: str) -> dict:
    return read_json(Path(model_dir) / files.focus_summary_file(split))


def write_focus(model_dir: str | Path, split: str, rows: list[dict], summary: dict) -> None:
    """One row per film and method (``FOCUS_COLUMNS``), then the summary."""
    write_csv(Path(model_dir) / files.focus_table_file(split), rows, FOCUS_COLUMNS)
    write_json(Path(model_dir) / files.focus_summary_file(split), summary)
