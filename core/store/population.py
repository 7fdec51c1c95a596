"""``population.json`` (per model, ``python -m trainer population``): the population check's references
(``core/evaluate/population.py``), checked on every read; read and written here only."""

from __future__ import annotations

from pathlib import Path

from core.store import files
from core.store.io import (
    INTEGER,
    MAPPING,
    NAME,
    NUMBER_OR_NULL,
    ArtifactError,
    is_integer,
    is_number,
    name_problem,
    read_json,
    shown,
    write_json,
)

__all__ = ["population_path", "read_population", "write_population"]


def population_path(model_dir: str | Path) -> Path:
    """The file itself, for a reader that caches by its modification time."""
    return Path(model_dir) / files.POPULATION_FILE


def write_population(model_dir: str | Path, doc: dict) -> None:
    write_json(population_path(model_dir), doc)


def _population_source(name, s, path) -> tuple[int, int]:
    """Check one source of a population.json; return (feature size, principal axes)."""
    if name_problem(name) is not None or not isinstance(s, dict):
        raise ArtifactError(f"{path}: source {shown(name)} must be a name mapping to an object")
    vectors = [s.get(k) for k in ("mean", "variances")] + list(s.get("axes") or [None])
    if not all(isinstance(v, list) and v and all(map(is_number, v)) for v in vectors):
        raise ArtifactError(f"{path}: source {name!r} needs number lists mean, variances and axes")
    dim, k = len(s["mean"]), len(s["variances"])
    if len(s["axes"]) != k or any(len(a) != dim for a in s["axes"]) or min(s["variances"]) <= 0:
        raise ArtifactError(f"{path}: source {name!r}: {k} positive variances, {k} axes of {dim} values expected")
    for key in ("limit", "rest_variance"):
        if not (is_number(s.get(key)) and s[key] > 0):
            raise ArtifactError(f"{path}: source {name!r}: {key} must be a positive number, found "
                                f"{shown(s.get(key))}")
    for key in ("n_fit", "n_limit"):
        if not (is_integer(s.get(key)) and s[key] >= 0):
            raise ArtifactError(f"{path}: source {name!r}: {key} must be a count, found {shown(s.get(key))}")
    return dim, k


def read_population(model_dir: str | Path) -> dict:
    """A model's population.json, checked: at least one training source, every source (and every ``known``
    outside population) with the same feature size, every vector the right length and finite; ``measured``
    rates in [0, 1]. ``ArtifactError`` otherwise."""
    path = population_path(model_dir)
    obj = read_json(path, {"schema_version": INTEGER, "model": NAME, "quantile": NUMBER_OR_NULL,
                           "sources": MAPPING, "measured": MAPPING})
    if obj.get("schema_version") != 1:
        raise ArtifactError(f"{path}: schema_version {shown(obj.get('schema_version'))}; this code reads 1")
    if not obj.get("sources"):
        raise ArtifactError(f"{path}: no source to judge a film against")
    if not isinstance(obj.get("known", {}), dict):
        raise ArtifactError(f"{path}: field 'known' must be an object")
    dims = {_population_source(n, s, path)[0] for part in ("sources", "known")
            for n, s in (obj.get(part) or {}).items()}
    if len(dims) != 1:
        raise ArtifactError(f"{path}: sources disagree on the feature size ({sorted(dims)})")
    for name, m in (obj.get("measured") or {}).items():
        if not (isinstance(m, dict) and is_integer(m.get("n")) and is_number(m.get("outside"))
                and 0 <= m["outside"] <= 1):
            raise ArtifactError(f"{path}: measured set {shown(name)} needs n and an outside rate in [0, 1]")
    return obj
