"""``python -m trainer explain``: what the dashboard needs to show explanations a clinician can read, per model.

* the CAM reference: for each CAM method and target class, the ``REFERENCE_PERCENTILE`` of the model's raw
  maps over a fixed sample of validation films: the value that full colour means (``core.explain.cams``).
* the calibration: the validation-fitted temperature and bias (``core.evaluate.calibration``).

Both are read and written through ``core.store``.

The trainer runs it after training; this command adds it to runs that lack it (``--force`` recomputes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.data.images import load_for_model
from core.data.labels import CLASSES
from core.evaluate import calibration
from core.explain import faithfulness
from core.explain.cams import (
    CAM_METHODS,
    GRADIENT_FREE,
    REFERENCE_PERCENTILE,
    on_shared_scale,
    raw_maps,
    raw_maps_many,
    reference_value,
)
from core.models import onnx_backend
from core.models.inference import load_trained
from core.models.recipe import model_config
from core.store import (
    CAM_REFERENCE_FILE,
    ArtifactError,
    ModelArtifacts,
    Run,
    has_calibration,
    has_cam_reference,
    is_ensemble,
    now_iso,
    read_cam_reference,
    read_faithfulness,
    read_scaling,
    write_calibration,
    write_cam_reference,
    write_faithfulness,
)

# Class-specific methods only: EigenCAM is the same map whatever the class (no "evidence for PNEUMONIA" to scale),
# Score-CAM costs 256 masked passes per film and class. Both are shown contrast-stretched, and labelled so.
REFERENCE_METHODS = [m for m in CAM_METHODS if m not in GRADIENT_FREE]
DEFAULT_SAMPLE = 64
BATCH = 16
FAITHFULNESS_METHODS = list(CAM_METHODS)  # every method the Grad-CAM page offers
# test films, stratified by source and class; 52 films x 7 methods x 3 levels: about 25 min of one core per 224 px
# MobileNetV2, half of it Score-CAM (BENCHMARKS.md)
FAITHFULNESS_SAMPLE = 52

log = logging.getLogger(__name__)


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
    reference = read_cam_reference(model.dir, method, "PNEUMONIA")
    if reference is None:
        raise ArtifactError(f"{model.dir / CAM_REFERENCE_FILE}: no {method} reference; run `python -m trainer "
                            "explain`")
    scaling = read_scaling(model.dir)
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
            if not is_ensemble(m.config) and m.best_checkpoint().is_file():  # an unreadable config: skipped
                out.append(m.name)
        except ArtifactError:
            continue
    return out


def explain_run(run_dir, models=None, *, n: int = DEFAULT_SAMPLE, methods=REFERENCE_METHODS, force: bool = False,
                seed: int = 0) -> list[str]:
    """Write the missing (or, with ``force``, all) references and calibrations; returns the models that failed.
    A model whose validation split has one class only cannot be calibrated: said, and its probabilities stay raw."""
    run = Run(Path(run_dir))
    names = models or [m.name for m in run.models]
    failed = []
    for name in names:
        model = run.model(name)
        try:
            if force or not has_calibration(model.dir):
                calibrate(model)
            if name in networks(run) and (force or not has_cam_reference(model.dir)):
                refs = compute_references(run, name, methods, n, seed)
                write_cam_reference(model.dir, refs)
                log.info(f"{name}: CAM references on {refs['n']} val films, "
                         f"Grad-CAM PNEUMONIA {refs['methods'].get('Grad-CAM', {}).get('PNEUMONIA', float('nan')):.4g}")
        except (ArtifactError, ValueError, RuntimeError) as e:
            log.error(f"{name}: FAILED: {e}")
            failed.append(name)
    return failed


def _labels_and_probabilities(model: ModelArtifacts, split: str) -> tuple:
    pred = model.predictions(split)
    return pred["label"].to_numpy(), pred["probability"].to_numpy()


def calibrate(model: ModelArtifacts) -> None:
    """Fit the model's calibration on its validation predictions, record before/after on every split it has, write
    it, and say what was fitted."""
    val = model.predictions("val")
    splits = {s: _labels_and_probabilities(model, s) for s in model.splits()}
    try:
        c = calibration.fit_record(val["label"], val["probability"], splits, created=now_iso())
    except ValueError as e:  # one class in validation: nothing to fit, not an error of the model
        log.warning(f"{model.name}: not calibrated ({e}); its probabilities are shown raw")
        return
    write_calibration(model.dir, c)
    log.info(f"{model.name}: temperature {c['temperature']:.3f}, bias {c['bias']:+.3f}")


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


def faithfulness_rows(model: ModelArtifacts, n: int, seed: int = 0):
    """A fixed sample of ``n`` test films, the same number from each source x class cell (as near as the cells
    allow), so that a run with a small second source still has it in the figures."""
    pred = model.predictions("test")
    keys = [c for c in ("source", "label") if c in pred.columns]
    cells = list(pred.groupby(keys, sort=True)) if keys else [((), pred)]
    per, extra = divmod(n, len(cells))
    picked = [g.sample(n=min(len(g), per + (i < extra)), random_state=seed) for i, (_, g) in enumerate(cells)]
    return pd.concat(picked).reset_index(drop=True)


def faithfulness_run(run_dir, models=None, *, n: int = FAITHFULNESS_SAMPLE, methods=FAITHFULNESS_METHODS,
                     seed: int = 0, percentiles=faithfulness.ROAD_PERCENTILES, force: bool = False) -> dict:
    """ROAD and the randomisation check per model and method on ``n`` fixed test films (the same films for every
    model and method), with bootstrap intervals; written to the run's record after each method, so an interrupted
    run keeps what it finished and a rerun with the same settings computes only what is missing."""
    run = Run(Path(run_dir))
    names = models or sorted(networks(run), key=lambda m: model_config(run.model(m)).input_size or 0)
    if not names:
        return {}
    rows = faithfulness_rows(run.model(names[0]), n, seed)
    settings = {"split": "test", "n": int(len(rows)), "seed": seed, "target": "PNEUMONIA",
                "road_percentiles": list(percentiles)}
    stored = read_faithfulness(run.dir) or {}
    same = not force and all(stored.get(k) == v for k, v in settings.items())
    out = {**settings, "sanity_max_rho": faithfulness.SANITY_MAX_RHO, "ci_level": faithfulness.CI_LEVEL,
           "sanity": "classifier head re-initialised; Spearman rho between maps over pixels, mean over films",
           "road": "ROADCombined (Rong et al. 2022) on softmax P(target), noisy linear imputation; level p removes "
                   "(100 - p) % of the pixels, exactly, ties in random order (core/explain/faithfulness.py)",
           "intervals": f"{faithfulness.CI_LEVEL:.0%} percentile bootstrap over films ({faithfulness.BOOTSTRAP} "
                        "resamples)",
           "films": [str(p) for p in rows["path"]],
           "sources": rows["source"].astype(str).tolist() if "source" in rows else None,
           "models": stored.get("models", {}) if same else {}}
    for name in names:
        _faithfulness_model(run, name, rows, methods, out, seed, percentiles)
    return out


def _faithfulness_model(run: Run, name: str, rows, methods, out: dict, seed: int, percentiles) -> None:
    loaded = load_trained(run.model(name))
    x = loaded.inputs(loaded.frame(load_films(run, rows["path"], loaded.input_size))[0])
    twin = faithfulness.with_random_head(loaded.model, loaded.spec, seed)
    forward = loaded.forward()  # ROAD's imputed films: the backend scoring uses (ONNX Runtime where faster)
    if forward is not loaded.model:  # Score-CAM's masked passes of the randomised twin on ONNX Runtime too
        onnx_backend.register_twin(twin, onnx_backend.OnnxModel.from_module(twin, loaded.input_size))
    done = out["models"].setdefault(name, {})
    for method in methods:
        if isinstance(done.get(method), dict) and done[method].get("n") == len(rows):
            continue
        t0 = time.perf_counter()
        r = faithfulness.check(loaded.model, loaded.spec, x, method, percentiles=percentiles, random_model=twin,
                               forward=forward, seed=seed)
        done[method] = {**r, "seconds": round(time.perf_counter() - t0, 1)}
        log.info(f"{name} {method}: ROAD {r['road']:+.3f} [{r['road_ci'][0]:+.3f}, {r['road_ci'][1]:+.3f}], sanity "
                 f"rho {r['sanity_rho']:.2f}{'' if r['sanity_pass'] else '  FAILS'} ({done[method]['seconds']} s)")
        out["created"] = now_iso()
        write_faithfulness(run.dir, out)
