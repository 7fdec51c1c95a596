"""``python -m trainer focus``: where each model of a run looks, measured as lung focus (core/focus.py).

For a fixed, seeded sample of ``--n`` films of one split (the same films for every model), each model's CAM for
PNEUMONIA is computed (``core.cams.explain``), and its lung focus and border mass are measured against the film's
lung mask (the committed lung model, core/lungs.py) and body mask. Films are taken at ``MASK_SIZE`` px, the size of
the Kermany 224 copy; each map is resized to it.

Writes, per model: ``<run>/<model>/lung_focus_<split>.csv`` (one row per film and method) and
``lung_focus_<split>.json`` (n, per-method median / quartiles / share flagged, the lung model's held-out Dice).
Ensembles have no network of their own and are skipped.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.artifacts import (
    ArtifactError,
    ModelArtifacts,
    Run,
    now_iso,
    read_json,
    write_csv,
    write_json,
)
from core.focus import BORDER_BAND, FLAG_BELOW, FOCUS_COLUMNS, body_mask, map_focus
from core.images import ImageError, load_for_model
from core.labels import POSITIVE

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
    if 0 < n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(seed).choice(len(table), n, replace=False))]
    table = table.assign(file=[find_image(run, p, data_root) for p in table["path"]])
    missing = table["file"].isna().sum()
    if missing == len(table):
        raise ArtifactError(f"none of the {len(table)} films of {split!r} were found here (e.g. "
                            f"{table['path'].iloc[0]}); give --data-root")
    if missing:
        print(f"warning: {missing} of {len(table)} films not found; measured on the rest")
    return table.dropna(subset=["file"]).reset_index(drop=True)


def film_masks(films: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lung mask, body mask) per film at MASK_SIZE px, computed once for all models."""
    from core.lungs import lung_mask
    out = []
    for f in films["file"]:
        gray = load_for_model(f, MASK_SIZE)
        lungs = lung_mask(gray)
        out.append((lungs, body_mask(gray, lungs)))
    return out


def model_focus(artifacts: ModelArtifacts, films: pd.DataFrame, masks, methods: list[str]) -> list[dict]:
    """One row per film and method: lung focus and border mass of the model's PNEUMONIA map."""
    from core.cams import explain
    from core.inference import load_trained
    loaded = load_trained(artifacts)
    rows = []
    for (_, film), (lungs, body) in zip(films.iterrows(), masks):
        try:
            x = loaded.inputs(load_for_model(film["file"], loaded.input_size)[None])
        except ImageError as e:
            print(f"   skipped {film['path']}: {e}")
            continue
        for method in methods:
            focus = map_focus(explain(loaded.model, loaded.spec, x, method, target=POSITIVE), lungs, body)
            rows.append({"path": film["path"], "label": int(film["label"]), "method": method,
                         "lung_focus": round(focus.lung_focus, 5), "border_mass": round(focus.border_mass, 5)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per method: n, median and quartiles of lung focus, median border mass, share of maps flagged."""
    df = pd.DataFrame(rows, columns=FOCUS_COLUMNS)
    out = {}
    for method, t in df.groupby("method"):
        lf = t["lung_focus"].dropna()
        out[method] = {"n": len(t), "n_empty": int(t["lung_focus"].isna().sum()),
                       "lung_focus_median": round(float(lf.median()), 4),
                       "lung_focus_q25": round(float(lf.quantile(0.25)), 4),
                       "lung_focus_q75": round(float(lf.quantile(0.75)), 4),
                       "border_mass_median": round(float(t["border_mass"].dropna().median()), 4),
                       "share_flagged": round(float((lf < FLAG_BELOW).mean()), 4)}
    return out


def lung_model_figures() -> dict:
    """The committed lung model's held-out figures (shown beside every lung-focus number)."""
    from core.lungs import METRICS
    try:
        return read_json(METRICS).get("heldout", {}).get("overall", {})
    except ArtifactError:
        return {}


def run(args) -> int:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    run_ = Run(Path(args.run))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [m.strip() for m in args.models.split(",")] if args.models else [m.name for m in run_.models]
    data_root = Path(args.data_root) if args.data_root else None
    films = sample_films(run_, args.split, args.n, args.seed, data_root)
    t0 = time.time()
    masks = film_masks(films)
    print(f"{len(films)} films of {args.split}: lung masks in {time.time() - t0:.0f}s")
    for name in names:
        artifacts = run_.model(name)
        if artifacts.config.get("members"):
            continue  # an ensemble: no maps of its own
        t0 = time.time()
        rows = model_focus(artifacts, films, masks, methods)
        summary = summarize(rows)
        write_csv(artifacts.dir / f"lung_focus_{args.split}.csv", rows, FOCUS_COLUMNS)
        write_json(artifacts.dir / f"lung_focus_{args.split}.json", {
            "created": now_iso(), "split": args.split, "n_films": len(films), "seed": args.seed,
            "target": "PNEUMONIA", "mask_size": MASK_SIZE, "border_band": BORDER_BAND, "flag_below": FLAG_BELOW,
            "lung_model": lung_model_figures(), "methods": summary,
            "command": "python -m trainer " + " ".join(shlex.quote(a) for a in args.argv)})
        medians = ", ".join(f"{m} {s['lung_focus_median']:.2f}" for m, s in summary.items())
        print(f"== {name}: median lung focus {medians}  ({time.time() - t0:.0f}s)", flush=True)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("focus", help="lung focus and border mass of each model's CAMs over a split")
    p.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=120, help="films sampled from the split (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="Grad-CAM", help="comma-separated CAM methods (see core/cams.py)")
    p.add_argument("--models", help="comma-separated model names (default: every model of the run)")
    p.add_argument("--data-root", default=os.environ.get("CXR_DATA_ROOT"),
                   help="where the run's films are, when its stored paths do not resolve here")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=run)
