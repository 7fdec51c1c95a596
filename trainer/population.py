"""``python -m trainer population``: fit each model's population check (core/evaluate/population.py) on the run's films.

Per model and per source of the run (split.csv's ``source`` column; a run without one has a single source named
after its data root, ``kermany224`` → ``kermany``): the train films' features make the reference, the validation
films' distances set its limit, and the test films measure how often the check wrongly flags films of the
model's own populations. ``--measure NAME=FOLDER`` also records how often it flags the images of a folder (adult
films, photographs: docs/population.md). Writes ``<run>/<model>/population.json``; ensembles are skipped (no
network of their own: the pages judge a film with each member).
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.images import SUPPORTED_EXTENSIONS, ImageError, load_for_model
from core.evaluate import population as pop
from core.models.inference import load_trained
from core.store import ArtifactError, ModelArtifacts, Run, name_problem, now_iso, write_population
from trainer.focus import find_image

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_FILMS = 600  # films per source and split, and per measured set (seeded sample; docs/population.md)


def default_source(run: Run) -> str:
    """The single source of a run without a ``source`` column: its data root's name without a size suffix."""
    base = Path(str(run.info.get("data_root") or "data").rstrip("/")).stem
    return re.sub(r"([_-]?(\d+(px)?|fullres))+$", "", base) or base


def films_by_source(run: Run, split: str, max_films: int, seed: int) -> dict[str, pd.DataFrame]:
    """Per source, the films of ``split`` found on this machine (path, label, file), at most ``max_films``."""

    table = run.split_table()
    table = table[table["split"] == split]
    if "source" not in table.columns:
        table = table.assign(source=default_source(run))
    data_root = run.data_dir()
    out = {}
    for source, t in table.groupby("source", sort=True):
        t = t.assign(file=[find_image(run, p, data_root) for p in t["path"]]).dropna(subset=["file"])
        if 0 < max_films < len(t):
            t = t.iloc[np.sort(np.random.default_rng(seed).choice(len(t), max_films, replace=False))]
        out[str(source)] = t.reset_index(drop=True)
    return out


def load_squares(files, size: int) -> tuple[np.ndarray, list[int]]:
    """uint8 (N, size, size) films and the indices of those that decoded (the rest are skipped with a note)."""
    squares, ok = [], []
    for i, f in enumerate(files):
        try:
            squares.append(load_for_model(f, size))
            ok.append(i)
        except ImageError as e:
            log.warning(f"warning: skipped {f}: {e}")
    return (np.stack(squares) if squares else np.zeros((0, size, size), np.uint8)), ok


def file_problems(path) -> tuple[str, ...]:
    """``core.evaluate.population.image_problems`` of an image file."""
    try:
        return pop.image_problems(pop.thumbnail_rgb(Path(path).read_bytes()))
    except OSError:
        return ()


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS and p.is_file())


def model_population(artifacts: ModelArtifacts, sources: dict, measure: dict[str, list[Path]]) -> dict:
    """population.json of one model: a reference per source (train → fit, val → limit), the test films' rate
    outside (false flags), and the rate outside for each ``measure`` set; a measured set large enough gets a
    reference of its own under ``known`` (fit on every other image, limit on the rest), so that the pages can say
    which measured population an outside film resembles."""

    loaded = load_trained(artifacts)

    def feats(files):
        squares, ok = load_squares(list(files), loaded.input_size)
        return pop.features(loaded, squares), ok

    refs, entries = [], {}
    for source, splits in sources.items():
        train, _ = feats(splits["train"]["file"])
        ref = pop.with_limit(pop.fit(source, train), feats(splits["val"]["file"])[0])
        refs.append(ref)
        entries[source] = pop.to_json(ref)
    measured = {}
    for source, splits in sources.items():
        if len(splits.get("test", ())):
            f, ok = feats(splits["test"]["file"])
            measured[f"{source} test"] = {"n": len(ok), "outside": pop.outside_rate(refs, f), "own": True}
    known = {}
    for name, files in measure.items():
        f, ok = feats(files)
        problems = [file_problems(files[i]) for i in ok]
        measured[name] = {"n": len(ok), "outside": pop.outside_rate(refs, f, problems),
                          "outside_distance_only": pop.outside_rate(refs, f), "own": False}
        if len(f) >= 2 * pop.MIN_FIT and name_problem(name) is None:  # a population the pages can name
            known[name] = pop.to_json(pop.with_limit(pop.fit(name, f[0::2]), f[1::2]))
    return {"schema_version": SCHEMA_VERSION, "model": artifacts.name, "created": now_iso(),
            "feature": "classifier input, signed square root", "dim": refs[0].dim, "components": pop.COMPONENTS,
            "quantile": pop.QUANTILE, "max_colour": pop.MAX_COLOUR, "sources": entries, "known": known,
            "measured": measured}


def _measure_sets(specs: list[str], max_films: int, seed: int) -> dict[str, list[Path]]:
    out = {}
    for spec in specs or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            raise ArtifactError(f"--measure {spec!r}: expected NAME=FOLDER with an existing folder")
        files = folder_images(Path(folder))
        if 0 < max_films < len(files):
            files = [files[i] for i in np.sort(np.random.default_rng(seed).choice(len(files), max_films, False))]
        out[name] = files
    return out


def population_run(args) -> int:
    """``python -m trainer population`` (flags: trainer/commands/population.py)."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    run_ = Run(Path(args.run))
    names = [m.strip() for m in args.models.split(",")] if args.models else [m.name for m in run_.models]
    by_split = {s: films_by_source(run_, s, args.max_films, args.seed) for s in ("train", "val", "test")}
    sources = {src: {s: by_split[s].get(src, pd.DataFrame(columns=["file"])) for s in by_split}
               for src in by_split["train"]}
    if not sources:
        raise ArtifactError(f"{run_.dir}: no train films found on this machine")
    measure = _measure_sets(args.measure, args.max_films, args.seed)
    for name in names:
        artifacts = run_.model(name)
        if artifacts.is_ensemble:
            continue
        t0 = time.time()
        out = model_population(artifacts, sources, measure)
        out["command"] = "python -m trainer " + " ".join(shlex.quote(a) for a in args.argv)
        write_population(artifacts.dir, out)
        rates = ", ".join(f"{k} {v['outside']:.1%}" for k, v in out["measured"].items())
        log.info(f"== {name}: outside: {rates}  ({time.time() - t0:.0f}s)")
    return 0
