"""Site profiles (``python -m trainer site``, ``core/evaluate/site.py``): ``<model>/sites/<site>/profile.json`` and
``predictions.csv``, read and written here only (docs/artifacts.md)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from core.store import files
from core.store.io import ArtifactError, name_problem, read_csv, read_json, shown, write_csv, write_json
from core.store.run import ModelArtifacts, Run
from core.store.schema import PREDICTION_COLUMNS, SITE_FIELDS
from core.store.writers import prediction_rows

__all__ = ["has_site_profile", "read_site_predictions", "read_site_profile", "run_site_names", "site_names",
           "write_site"]


def _checked(site) -> str:
    if (why := name_problem(site)) is not None:
        raise ArtifactError(f"site {shown(site)} {why}")
    return site


def site_names(model: ModelArtifacts) -> list[str]:
    """The sites a model has a profile for (folder names that could not be a name are ignored), sorted."""
    return sorted(s for s in files.site_folders(model.dir) if name_problem(s) is None)


def has_site_profile(model_dir: str | Path, site: str) -> bool:
    return (files.site_dir(model_dir, _checked(site)) / files.SITE_PROFILE_FILE).exists()


def run_site_names(run: Run) -> list[str]:
    """Every site that at least one model of ``run`` has a profile for."""
    return sorted({s for m in run.models for s in site_names(m)})


def read_site_profile(model: ModelArtifacts, site: str) -> dict:
    """A model's profile for ``site``, schema-checked; ``ArtifactError`` when missing or malformed."""
    path = files.site_dir(model.dir, _checked(site)) / files.SITE_PROFILE_FILE
    prof = read_json(path, SITE_FIELDS)
    for key in ("threshold", "calibration", "prevalence"):
        if key not in prof:
            raise ArtifactError(f"{path}: missing key {key!r}")
    if prof.get("model", model.name) != model.name or prof.get("site", site) != site:
        raise ArtifactError(f"{path}: names model {shown(prof.get('model'))} / site {shown(prof.get('site'))}, "
                            f"not {model.name} / {site}")
    return prof


def read_site_predictions(model: ModelArtifacts, site: str) -> pd.DataFrame:
    """path, label (0/1, or NaN for unlabelled films) and raw probability of the site's films."""
    path = files.site_dir(model.dir, _checked(site)) / files.SITE_PREDICTIONS_FILE
    df = read_csv(path, PREDICTION_COLUMNS)
    prob = pd.to_numeric(df["probability"], errors="coerce")
    label = pd.to_numeric(df["label"], errors="coerce")
    if df.empty or not prob.between(0, 1).all() or not (label.isna() | label.isin([0, 1])).all():
        raise ArtifactError(f"{path}: needs rows with labels 0/1 (or empty) and probabilities in [0, 1]")
    return df.assign(path=df["path"].astype(str), label=label, probability=prob.astype(float))


def write_site(model_dir: str | Path, site: str, profile: dict, paths, labels, probabilities, data_root) -> None:
    """A site's predictions (raw probabilities; labels None when unlabelled) and then its profile."""
    folder = files.site_dir(model_dir, _checked(site))
    rows, columns = prediction_rows(paths, labels, probabilities, data_root)
    write_csv(folder / files.SITE_PREDICTIONS_FILE, rows, columns)
    write_json(folder / files.SITE_PROFILE_FILE, profile)
