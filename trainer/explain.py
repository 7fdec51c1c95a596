"""``python -m trainer explain``: what the dashboard needs to show explanations a clinician can read, per model.

* ``cam_reference.json``: for each CAM method and target class, the ``REFERENCE_PERCENTILE`` of the model's raw
  maps over a fixed sample of validation films: the value that full colour means (``core.cams``).
* ``calibration.json``: the validation-fitted temperature and bias (``core.calibration``).

The trainer runs it after training; this command adds it to runs that lack it (``--force`` recomputes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from core import calibration, faithfulness
from core.artifacts import ArtifactError, ModelArtifacts, Run, now_iso, write_json
from core.cams import (
    CAM_METHODS,
    GRADIENT_FREE,
    REFERENCE_FILE,
    REFERENCE_PERCENTILE,
    on_shared_scale,
    raw_maps,
    raw_maps_many,
    read_reference,
    reference_value,
)
from core.images import load_for_model
from core.inference import load_trained
from core.labels import CLASSES

# Class-specific methods only: EigenCAM is the same map whatever the class (no "evidence for PNEUMONIA" to scale),
# Score-CAM takes minutes per film on a CPU. Both are shown contrast-stretched, and labelled so.
REFERENCE_METHODS = [m for m in CAM_METHODS if m not in GRADIENT_FREE]
DEFAULT_SAMPLE = 64
BATCH = 16
FAITHFULNESS_METHODS = [m for m in CAM_METHODS if m != "Score-CAM"]  # Score-CAM: minutes per film on a CPU
FAITHFULNESS_SAMPLE = 4


def sample_rows(model: ModelArtifacts, split: str, n: int, seed: int = 0):
    """A fixed random sample of ``n`` rows of the model's predictions on ``split`` (all rows when fewer)."""
    pred = model.predictions(split)
    if n >= len(pred):
        return pred.reset_index(drop=True)
    return pred.sample(n=n, random_state=seed).reset_index(drop=True)


def load_films(run: Run, paths, size: int) -> np.ndarray:
    """uint8 (N, S, S) films at the model's input size; ``ArtifactError`` naming the first missing file."""
    out = []
    for p in paths:
        found = run.locate(p)
        if found is None:
            raise ArtifactError(f"{p}: film not found on this machine (data folder of run {run.id} absent?)")
        out.append(load_for_model(found, size))
    return np.stack(out)


def maps_for(loaded, films_u8: np.ndarray, methods, target: int, batch: int = BATCH) -> dict:
    """Raw maps {method: (N, S, S)} of ``films_u8`` in batches, over the model's framed inputs (the values a
    reference is taken from do not depend on where the box lies); gradient methods share one pass per batch."""
    shared = [m for m in methods if m not in GRADIENT_FREE]
    out = {m: [] for m in methods}
    for i in range(0, len(films_u8), batch):
        x = loaded.inputs(loaded.frame(films_u8[i:i + batch])[0])
        found = raw_maps_many(loaded.model, loaded.spec, x, shared, target) if shared else {}
        found.update({m: raw_maps(loaded.model, loaded.spec, x, m, target) for m in methods if m in GRADIENT_FREE})
        for m in methods:
            out[m].append(found[m])
    return {m: np.concatenate(v) for m, v in out.items()}


def compute_references(run: Run, name: str, methods=REFERENCE_METHODS, n: int = DEFAULT_SAMPLE,
                       seed: int = 0) -> dict:
    model = run.model(name)
    loaded = load_trained(model)
    rows = sample_rows(model, "val", n, seed)
    films = load_films(run, rows["path"], loaded.input_size)
    refs = {m: {} for m in methods}
    t0 = time.perf_counter()
    for t, target_name in enumerate(CLASSES):
        for m, maps in maps_for(loaded, films, methods, t).items():
            refs[m][target_name] = reference_value(maps)
    return {"percentile": REFERENCE_PERCENTILE, "split": "val", "n": int(len(rows)), "seed": seed,
            "units": "raw CAM values (ReLU'd weighted activations at the CAM layer), resized to the input size",
            "rule": f"{REFERENCE_PERCENTILE:g}th percentile of all pixels of the raw maps of a fixed random sample "
                    "of validation films; shared scale = raw / reference, clipped to [0, 1]",
            "methods": refs, "seconds": round(time.perf_counter() - t0, 2), "created": now_iso()}


def scale_check(run: Run, name: str, k: int = 20, method: str = "Grad-CAM") -> dict:
    """The meaning of the shared scale, measured: the maximum of the PNEUMONIA map (raw / the stored reference) on
    the ``k`` most confidently NORMAL and the ``k`` most confidently PNEUMONIA validation films."""
    model = run.model(name)
    reference = read_reference(model.dir, method, "PNEUMONIA")
    if reference is None:
        raise ArtifactError(f"{model.dir / REFERENCE_FILE}: no {method} reference; run `python -m trainer explain`")
    scaling = calibration.read_scaling(model)
    loaded = load_trained(model)
    pred = model.predictions("val").sort_values("probability", kind="stable")
    out = {}
    for group, rows in (("confident_normal", pred.head(k)), ("confident_pneumonia", pred.tail(k))):
        films = load_films(run, rows["path"], loaded.input_size)
        raw = maps_for(loaded, films, [method], 1)[method]
        p = rows["probability"].to_numpy() if scaling is None else scaling(rows["probability"])
        weighted = [on_shared_scale(m, reference, q).max() for m, q in zip(raw, p)]
        out[group] = np.array(weighted)
        out[group + "_unweighted"] = on_shared_scale(raw, reference).reshape(len(raw), -1).max(axis=1)
    return out


def networks(run: Run) -> list[str]:
    """Models of the run that have a network and a best checkpoint (ensembles have neither)."""
    out = []
    for m in run.models:
        try:
            if not m.config.get("members") and m.best_checkpoint().is_file():
                out.append(m.name)
        except ArtifactError:
            continue
    return out


def explain_run(run_dir, models=None, *, n: int = DEFAULT_SAMPLE, methods=REFERENCE_METHODS, force: bool = False,
                seed: int = 0, log=print) -> list[str]:
    """Write the missing (or, with ``force``, all) references and calibrations; returns the models that failed.
    A model whose validation split has one class only cannot be calibrated: said, and its probabilities stay raw."""
    run = Run(Path(run_dir))
    names = models or [m.name for m in run.models]
    failed = []
    for name in names:
        model = run.model(name)
        try:
            if force or not (model.dir / calibration.CALIBRATION_FILE).exists():
                _calibrate(model, log)
            if name in networks(run) and (force or not (model.dir / REFERENCE_FILE).exists()):
                refs = compute_references(run, name, methods, n, seed)
                write_json(model.dir / REFERENCE_FILE, refs)
                log(f"{name}: CAM references on {refs['n']} val films, "
                    f"Grad-CAM PNEUMONIA {refs['methods'].get('Grad-CAM', {}).get('PNEUMONIA', float('nan')):.4g}")
        except (ArtifactError, ValueError, RuntimeError) as e:
            log(f"{name}: FAILED: {e}")
            failed.append(name)
    return failed


def _calibrate(model: ModelArtifacts, log) -> None:
    try:
        c = calibration.fit_and_write(model)
    except ValueError as e:  # one class in validation: nothing to fit, not an error of the model
        log(f"{model.name}: not calibrated ({e}); its probabilities are shown raw")
        return
    log(f"{model.name}: temperature {c['temperature']:.3f}, bias {c['bias']:+.3f}")


def cmd_explain(args) -> int:
    if args.calibration_table:
        rows = calibration.before_after(Run(Path(args.run)))
        print(calibration.markdown_table(rows) if rows else "no model of this run has a calibration.json yet")
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.recalibrate:
        run = Run(Path(args.run))
        for name in models or [m.name for m in run.models]:
            _calibrate(run.model(name), print)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale_check:
        print_scale_check(Run(Path(args.run)), args.models)
        return 0
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else REFERENCE_METHODS
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise ArtifactError(f"unknown CAM method(s) {unknown}; known: {', '.join(CAM_METHODS)}")
    failed = explain_run(args.run, models, n=args.n, methods=methods, force=args.force)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def print_scale_check(run: Run, models: str | None) -> None:
    names = [m.strip() for m in models.split(",")] if models else networks(run)
    print("Maximum of the Grad-CAM PNEUMONIA map on the shared scale, mean [max or min] over the 20 most confidently "
          "NORMAL / PNEUMONIA validation films; 'evidence only' = before weighting by the calibrated probability.\n")
    print("| model | confident NORMAL | confident PNEUMONIA | evidence only: NORMAL | evidence only: PNEUMONIA |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        r = scale_check(run, name)
        cells = [f"{r[g].mean():.3f} [{(r[g].max() if 'normal' in g else r[g].min()):.3f}]"
                 for g in ("confident_normal", "confident_pneumonia", "confident_normal_unweighted",
                           "confident_pneumonia_unweighted")]
        print(f"| {name} | " + " | ".join(cells) + " |")


def faithfulness_run(run_dir, models=None, *, n: int = FAITHFULNESS_SAMPLE, methods=FAITHFULNESS_METHODS,
                     seed: int = 0, percentiles=faithfulness.ROAD_PERCENTILES, log=print) -> dict:
    """ROAD and the randomisation check per model and method on ``n`` fixed test films; merged into the run's
    ``faithfulness.json`` model by model (so an interrupted run keeps what it finished)."""
    run = Run(Path(run_dir))
    path = run.dir / faithfulness.FAITHFULNESS_FILE
    stored = faithfulness.read(run.dir) or {}
    out = {"split": "test", "n": n, "seed": seed, "target": "PNEUMONIA",
           "road_percentiles": list(percentiles), "sanity_max_rho": faithfulness.SANITY_MAX_RHO,
           "sanity": "classifier head re-initialised; Spearman rho between maps over pixels, mean over films",
           "road": "pytorch-grad-cam ROADCombined on softmax P(target), noisy linear imputation",
           "models": stored.get("models", {}) if stored.get("n") == n and stored.get("seed") == seed else {}}
    # smallest inputs first: the imputation ROAD runs grows fast with the size, so an interrupted run keeps most
    for name in models or sorted(networks(run), key=lambda m: int(run.model(m).config.get("input_size") or 0)):
        model = run.model(name)
        loaded = load_trained(model)
        rows = sample_rows(model, "test", n, seed)
        x = loaded.inputs(loaded.frame(load_films(run, rows["path"], loaded.input_size))[0])
        twin = faithfulness.with_random_head(loaded.model, loaded.spec, seed)
        t0, result = time.perf_counter(), {}
        for method in methods:
            result[method] = faithfulness.check(loaded.model, loaded.spec, x, method, percentiles=percentiles,
                                                random_model=twin)
            log(f"{name} {method}: ROAD {result[method]['road']:+.3f}, sanity rho {result[method]['sanity_rho']:.2f}"
                f"{'' if result[method]['sanity_pass'] else '  FAILS'}")
        out["models"][name] = {**result, "seconds": round(time.perf_counter() - t0, 1),
                               "films": [str(p) for p in rows["path"]]}
        out["created"] = now_iso()
        write_json(path, out)
    return out


def cmd_faithfulness(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else FAITHFULNESS_METHODS
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown:
        raise ArtifactError(f"unknown CAM method(s) {unknown}; known: {', '.join(CAM_METHODS)}")
    percentiles = [int(p) for p in args.percentiles.split(",")]
    if not all(0 < p < 100 for p in percentiles):
        raise ArtifactError(f"--percentiles must lie strictly between 0 and 100, got {percentiles}")
    faithfulness_run(args.run, models, n=args.n, methods=methods, seed=args.seed, percentiles=percentiles)
    return 0


def add_commands(sub) -> None:
    """Register ``explain`` (and ``faithfulness``) on the trainer's subcommand parser."""
    e = sub.add_parser("explain", help="CAM references (one colour scale) and calibration for a run's models")
    e.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    e.add_argument("--models", help="comma-separated model names (default: all)")
    e.add_argument("--methods", help=f"comma-separated CAM methods (default: {','.join(REFERENCE_METHODS)})")
    e.add_argument("--n", type=int, default=DEFAULT_SAMPLE, help="validation films sampled per model")
    e.add_argument("--force", action="store_true", help="recompute what exists")
    e.add_argument("--threads", type=int)
    e.add_argument("--calibration-table", action="store_true",
                   help="only print ECE and Brier before/after calibration on test and official_val (Markdown)")
    e.add_argument("--recalibrate", action="store_true",
                   help="only refit calibration.json (temperature and bias on validation), e.g. for files written "
                        "before the bias existed")
    e.add_argument("--scale-check", action="store_true",
                   help="only print the shared scale's check: PNEUMONIA map maxima on confidently NORMAL vs "
                        "confidently PNEUMONIA validation films")
    e.set_defaults(func=cmd_explain)

    f = sub.add_parser("faithfulness", help="ROAD and the model-randomisation sanity check per model and CAM method")
    f.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    f.add_argument("--models", help="comma-separated model names (default: every model with a network)")
    f.add_argument("--methods", help=f"comma-separated CAM methods (default: {','.join(FAITHFULNESS_METHODS)})")
    f.add_argument("--n", type=int, default=FAITHFULNESS_SAMPLE, help="test films (a fixed random sample)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--percentiles", default=",".join(str(p) for p in faithfulness.ROAD_PERCENTILES),
                   help="ROAD: percent of pixels removed, comma-separated (each costs one imputation per film)")
    f.add_argument("--threads", type=int)
    f.set_defaults(func=cmd_faithfulness)
