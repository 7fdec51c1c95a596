"""``trainer shift``: every model of a run scored under synthetic shifts of its own test split (trainer/shifts.py).

Each model is fed exactly as in ``trainer evaluate`` (its input size, intensity ``preprocess`` and test-time
views) and judged at the thresholds chosen on validation, at its headline rule: a shift that moves normal films
towards PNEUMONIA shows up as lost specificity even where the AUC holds. The run's ``official_val`` figures (a
real shift, 16 films) are put beside the synthetic ones. Writes ``shift.json`` into the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from core.data.cache import load_or_build
from core.data.layouts import DataError, Sample
from core.evaluate import metrics
from core.models.inference import load_trained, predict_loaded
from core.models.recipe import model_config
from core.store import SHIFT_FILE, ArtifactError, Run, now_iso, read_shift, write_shift
from trainer.shifts import SHIFTS, apply_shift

log = logging.getLogger(__name__)


def test_split_samples(run: Run, limit: int | None = None, seed: int = 0) -> list[Sample]:
    """The run's test split as found on this machine; ``limit`` keeps a fixed random subset (quick looks)."""
    table = run.split_table()
    table = table[table["split"] == "test"].reset_index(drop=True)
    if limit and limit < len(table):
        keep = np.sort(np.random.default_rng(seed).permutation(len(table))[:limit])
        table = table.iloc[keep].reset_index(drop=True)
    samples = []
    for path, label, patient in zip(table["path"], table["label"], table["patient_id"]):
        where = run.locate(path)
        if where is None:
            raise DataError(f"{run.dir}: test image {path} is not on this machine (is the data folder there?)")
        samples.append(Sample(path=str(where), label=int(label), patient_id=str(patient), split="test"))
    if not samples:
        raise DataError(f"{run.dir}: the run has no test split to shift")
    return samples


def score(y: np.ndarray, p: np.ndarray, thresholds: dict, rule: str) -> dict:
    """AUC, and accuracy/sensitivity/specificity at the model's headline validation threshold (top level) and at
    every other validation threshold (``at``), so rules can be compared under the same shift."""
    at = {name: {k: metrics.confusion_at(y, p, t["value"])[k]
                 for k in ("threshold", "accuracy", "sensitivity", "specificity")} for name, t in thresholds.items()}
    return {"auc": metrics.auc(y, p), "rule": rule, **at[rule], "at": at}


def _kept(run: Run, models, shifts, limit) -> tuple[dict, str]:
    """With ``models``, the other models' results of the stored shift.json (made with the same shifts and limit)
    and its command; without, nothing."""
    if not models:
        return {}, ""
    stored = read_shift(run.dir) or {"models": {}, "shifts": {s: None for s in shifts}, "limit": limit,
                                     "command": ""}
    if list(stored.get("shifts") or {}) != shifts or stored.get("limit") != limit:
        raise DataError(f"{run.dir / SHIFT_FILE} was made with other shifts or --limit: rerun without --models")
    unknown = sorted(set(models) - {m.name for m in run.models})
    if unknown:
        raise ArtifactError(f"{run.dir}: no model named {', '.join(unknown)}")
    return {k: v for k, v in stored["models"].items() if k not in models}, str(stored.get("command") or "")


def shift_run(run_dir, *, shifts=None, limit: int | None = None, cache_dir=None, workers=None,
              command=None, models: list[str] | None = None) -> dict:
    """Score the run's models (only ``models`` when given, keeping the others' stored results) and write it."""
    run = Run(Path(run_dir))
    shifts = list(shifts or SHIFTS)
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise DataError(f"unknown shifts {unknown}; known: {', '.join(SHIFTS)}")
    kept, before = _kept(run, models, shifts, limit)
    samples = test_split_samples(run, limit)
    y = np.array([s.label for s in samples])
    images: dict[int, dict[str, np.ndarray]] = {}  # size -> shift -> uint8 batch
    probs: dict[str, dict[str, np.ndarray]] = {}
    results: dict[str, dict] = dict(kept)
    for art in run.models:
        if art.is_ensemble or (models and art.name not in models):
            continue
        try:
            loaded = load_trained(art)
            thresholds, rule = art.metrics("val")["thresholds"], metrics.headline_rule(art.config)
        except ArtifactError as e:
            log.warning(f"skip {art.name}: {e}")
            continue
        if loaded.input_size not in images:
            cache = load_or_build(samples, loaded.input_size, root=cache_dir, workers=workers)
            where = cache.index_of()
            base = np.asarray(cache.images[[where[s.path] for s in samples]])
            images[loaded.input_size] = {name: apply_shift(name, base) for name in shifts}
        probs[art.name] = {name: predict_loaded(loaded, batch) for name, batch in images[loaded.input_size].items()}
        results[art.name] = _model_result(art, y, probs[art.name], thresholds, rule)
        log.info(_line(art.name, results[art.name]))
    for art in run.models:
        members = model_config(art).members if art.is_ensemble else None
        if members and all(m in probs for m in members):
            mean = {s: np.mean([probs[m][s] for m in members], axis=0) for s in shifts}
            results[art.name] = _model_result(art, y, mean, art.metrics("val")["thresholds"],
                                              metrics.headline_rule(art.config))
            log.info(_line(art.name, results[art.name]))
    if not results:
        raise ArtifactError(f"{run.dir}: no model could be scored (no finished model with a best checkpoint)")
    order = [m.name for m in run.models]
    out = {"created": now_iso(), "n": len(samples), "n_pos": int(y.sum()), "limit": limit,
           "shifts": {s: SHIFTS[s][0] for s in shifts},
           "models": {k: results[k] for k in sorted(results, key=lambda k: order.index(k) if k in order else 0)},
           "command": "; ".join(c for c in (before, command or "") if c)}
    write_shift(run.dir, out)
    return out


def _model_result(art, y, probs_by_shift: dict, thresholds: dict, rule: str) -> dict:
    by_shift = {s: score(y, p, thresholds, rule) for s, p in probs_by_shift.items()}
    shifted = [r for s, r in by_shift.items() if s != "none"] or list(by_shift.values())
    out = {"rule": rule, "shifts": by_shift, "mean_auc": float(np.mean([r["auc"] for r in shifted])),
           "worst_specificity": float(min(r["specificity"] for r in shifted)),
           "worst_sensitivity": float(min(r["sensitivity"] for r in shifted))}
    try:
        ov = art.metrics("official_val")
        out["official_val"] = {"n": ov["n"], "auc": ov["auc"], "at": {
            name: {k: at[k] for k in ("accuracy", "sensitivity", "specificity")} for name, at in ov["at"].items()}}
    except (ArtifactError, KeyError):
        out["official_val"] = None
    return out


def _line(name: str, r: dict) -> str:
    none = r["shifts"].get("none", {})
    return (f"{name:<22} test AUC {none.get('auc', float('nan')):.4f}  shifted: mean AUC {r['mean_auc']:.4f}, "
            f"worst sens {r['worst_sensitivity']:.3f}, worst spec {r['worst_specificity']:.3f} (at {r['rule']})")


def table(result: dict, rule: str | None = None) -> str:
    """Markdown: one row per model, AUC and sensitivity / specificity under each shift, at each model's headline
    rule or at ``rule`` (any rule its validation chose a threshold for)."""
    shifts = list(result["shifts"])
    head = ["model", "rule", *[f"{s}<br>AUC / sens / spec" for s in shifts], "official_val<br>AUC / sens / spec"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["models"].items():
        use = rule or r["rule"]
        cells = []
        for s in shifts:
            at = r["shifts"][s]["at"].get(use)
            cells.append(f"{r['shifts'][s]['auc']:.3f} / {at['sensitivity']:.2f} / {at['specificity']:.2f}"
                         if at else "–")
        ov = r.get("official_val") or {}
        ov_at = (ov.get("at") or {}).get(use)
        cells.append(f"{ov['auc']:.3f} / {ov_at['sensitivity']:.2f} / {ov_at['specificity']:.2f}" if ov_at else "–")
        rows.append("| " + " | ".join([name, use, *cells]) + " |")
    return "\n".join(rows)
