"""``python -m trainer focus``: where each model of a run looks, measured as lung focus (core/explain/focus.py).

For a fixed, seeded sample of ``--n`` films of one split (the same films for every model), each model's raw CAM
for PNEUMONIA is computed (``core.explain.cams.raw_maps``: before any per-image stretching, as the Grad-CAM page
measures
it), and its lung focus and border mass are measured against the film's
lung mask (the committed lung model, core/models/lungs.py) and body mask. Films are taken at ``MASK_SIZE`` px, the size
of
the Kermany 224 copy; each map is resized to it.

Writes, per model: ``<run>/<model>/lung_focus_<split>.csv`` (one row per film and method) and
``lung_focus_<split>.json`` (n, per-method median / quartiles / share flagged, the lung model's held-out Dice).
Ensembles have no network of their own and are skipped.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.images import ImageError, load_for_model
from core.data.labels import POSITIVE
from core.explain.cams import GRADIENT_FREE, raw_maps, raw_maps_many
from core.explain.focus import BORDER_BAND, FLAG_BELOW, body_mask, map_focus, ranking
from core.models.framing import unframe
from core.models.inference import load_trained
from core.models.lungs import METRICS, lung_mask
from core.store import (
    FOCUS_COLUMNS,
    ArtifactError,
    ModelArtifacts,
    Run,
    is_ensemble,
    now_iso,
    read_focus,
    read_json,
    write_focus,
)

log = logging.getLogger(__name__)

MASK_SIZE = 224


def find_image(run: Run, path: str, data_root: Path | None) -> Path | None:
    """The film a split path names: ``Run.locate`` first, then the path's tail (split/class/file) under
    ``data_root`` (for runs whose stored paths are another machine's)."""
    found = run.locate(path)
    if found is not None or data_root is None:
        return found
    parts = Path(str(path)).parts
    for k in (3, 2, 1):
        cand = data_root.joinpath(*parts[-k:])
        if len(parts) >= k and cand.is_file():
            return cand
    return None


def sample_films(run: Run, split: str, n: int, seed: int, data_root: Path | None) -> pd.DataFrame:
    """``n`` films of ``split`` (all when n <= 0 or larger than the split), seeded; columns path, label, file."""
    table = run.split_table()
    table = table[table["split"] == split].reset_index(drop=True)
    if table.empty:
        raise ArtifactError(f"{run.dir}: split {split!r} has no films")
    # located before sampling: with part of the data here (a sample), the n films are drawn from those present;
    # with all of it here the draw is the same as from the whole split
    table = table.assign(file=[find_image(run, p, data_root) for p in table["path"]])
    missing = int(table["file"].isna().sum())
    if missing == len(table):
        raise ArtifactError(f"none of the {len(table)} films of {split!r} were found here (e.g. "
                            f"{table['path'].iloc[0]}); give --data-root")
    if missing:
        log.warning(f"warning: {missing} of {len(table)} films of {split!r} not found here; drawing from the rest")
    table = table.dropna(subset=["file"]).reset_index(drop=True)
    if 0 < n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))]
    return table.reset_index(drop=True)


def film_masks(films: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[np.ndarray, np.ndarray]]]:
    """(lung mask, body mask) per film at MASK_SIZE px, computed once for all models; unreadable films dropped."""
    keep, out = [], []
    for i, f in enumerate(films["file"]):
        try:
            gray = load_for_model(f, MASK_SIZE)
        except ImageError as e:
            log.warning(f"warning: skipped {f}: {e}")
            continue
        lungs = lung_mask(gray)
        keep.append(i)
        out.append((lungs, body_mask(gray, lungs)))
    return films.iloc[keep].reset_index(drop=True), out


def model_focus(artifacts: ModelArtifacts, films: pd.DataFrame, masks, methods: list[str],
                batch: int = 16) -> list[dict]:
    """One row per film and method: lung focus and border mass of the model's raw PNEUMONIA map (the map the
    Grad-CAM page measures), computed in batches; gradient methods share one forward and backward pass."""
    loaded = load_trained(artifacts)
    grad_methods = [m for m in methods if m not in GRADIENT_FREE]
    rows = []
    for start in range(0, len(films), batch):
        chunk = films.iloc[start:start + batch]
        framed, boxes = loaded.frame(np.stack([load_for_model(f, loaded.input_size) for f in chunk["file"]]))
        x = loaded.inputs(framed)
        maps = raw_maps_many(loaded.model, loaded.spec, x, grad_methods, target=POSITIVE) if grad_methods else {}
        for m in methods:
            if m in GRADIENT_FREE:
                maps[m] = raw_maps(loaded.model, loaded.spec, x, m, target=POSITIVE)
        maps = {m: unframe(v, boxes) for m, v in maps.items()}  # on the whole film, where the masks are
        for i, (_, film) in enumerate(chunk.iterrows()):
            lungs, body = masks[start + i]
            for m in methods:
                focus = map_focus(maps[m][i], lungs, body)
                rows.append({"path": film["path"], "label": int(film["label"]), "method": m,
                             "lung_focus": round(focus.lung_focus, 5), "border_mass": round(focus.border_mass, 5),
                             "lung_fraction": round(float(lungs.mean()), 5)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per method: n, median and quartiles of lung focus, median border mass, share of maps flagged, and what a
    uniform map would score (the median share of the film inside the lungs)."""
    df = pd.DataFrame(rows, columns=FOCUS_COLUMNS)
    out = {}
    for method, t in df.groupby("method"):
        lf = t["lung_focus"].dropna()
        out[method] = {"n": len(t), "n_empty": int(t["lung_focus"].isna().sum()),
                       "lung_focus_median": round(float(lf.median()), 4),
                       "lung_focus_q25": round(float(lf.quantile(0.25)), 4),
                       "lung_focus_q75": round(float(lf.quantile(0.75)), 4),
                       "border_mass_median": round(float(t["border_mass"].dropna().median()), 4),
                       "share_flagged": round(float((lf < FLAG_BELOW).mean()), 4),
                       "uniform_map_lung_focus_median": round(float(t["lung_fraction"].median()), 4)}
    return out


def lung_model_figures() -> dict:
    """The committed lung model's held-out figures (shown beside every lung-focus number)."""
    try:
        return read_json(METRICS).get("heldout", {}).get("overall", {})
    except ArtifactError:
        return {}


def markdown_table(run_: Run, split: str) -> str:
    """The stored figures as a Markdown table (README): per model, median lung focus per method, ranked by the
    first method's median."""
    df, _ = read_focus(run_, split)
    methods = sorted(df["method"].dropna().unique(), key=lambda m: (m != "Grad-CAM", m))
    if not methods:
        raise ArtifactError(f"{run_.dir}: no lung-focus figures for {split!r}; run python -m trainer focus first")
    tables = {m: ranking(df, m).set_index("model") for m in methods}
    first = tables[methods[0]]
    lines = ["| model | " + " | ".join(f"{m} median lung focus" for m in methods)
             + f" | {methods[0]}: maps flagged | {methods[0]}: median border mass | films |",
             "|---|" + "---:|" * (len(methods) + 3)]
    for model, row in first.iterrows():
        cells = [f"{tables[m].loc[model, 'median lung focus']:.0%}" if model in tables[m].index else "–"
                 for m in methods]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {row['flagged']:.0%} | "
                     f"{row['median border mass']:.0%} | {int(row['n'])} |")
    uniform = df["lung_fraction"].median()
    lines.append(f"\nA uniform map would score {uniform:.0%} (the median share of these films inside the lungs).")
    return "\n".join(lines)


def focus_run(args) -> int:
    """``python -m trainer focus`` (flags: trainer/commands/focus.py)."""
    import torch
    if args.table:
        print(markdown_table(Run(Path(args.run)), args.split))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    run_ = Run(Path(args.run))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [m.strip() for m in args.models.split(",")] if args.models else [m.name for m in run_.models]
    data_root = Path(args.data_root) if args.data_root else None
    films = sample_films(run_, args.split, args.n, args.seed, data_root)
    t0 = time.time()
    films, masks = film_masks(films)
    log.info(f"{len(films)} films of {args.split}: lung masks in {time.time() - t0:.0f}s")
    for name in names:
        artifacts = run_.model(name)
        if is_ensemble(artifacts.config):
            continue  # an ensemble: no maps of its own
        t0 = time.time()
        rows = model_focus(artifacts, films, masks, methods)
        summary = summarize(rows)
        write_focus(artifacts.dir, args.split, rows, {
            "created": now_iso(), "split": args.split, "n_films": len(films), "seed": args.seed,
            "target": "PNEUMONIA", "mask_size": MASK_SIZE, "border_band": BORDER_BAND, "flag_below": FLAG_BELOW,
            "lung_model": lung_model_figures(), "methods": summary,
            "command": "python -m trainer " + " ".join(shlex.quote(a) for a in args.argv)})
        medians = ", ".join(f"{m} {s['lung_focus_median']:.2f}" for m, s in summary.items())
        log.info(f"== {name}: median lung focus {medians}  ({time.time() - t0:.0f}s)")
    return 0
