"""``python -m trainer site``: a site profile per model from a site's own films (issue 18, ``core/evaluate/site.py``).

    python -m trainer site --run artifacts/R --data FOLDER_OR_MANIFEST --site NAME [--prevalence P] [--unlabelled]

Scores every model of the run on the site's films and writes, per model, a profile and the films' predictions under
``<model>/sites/<NAME>/`` (docs/artifacts.md). The run's own files are never touched. Films the run trained or chose
its thresholds on (its ``train`` or ``val`` split, matched by real file, by content or by stored path) are refused
(``--overlap drop`` leaves them out instead); films of its held-out splits are kept and flagged.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from core.data import layouts as data
from core.data.images import SUPPORTED_EXTENSIONS
from core.data.layouts import DataError, Sample, file_sha256
from core.evaluate import site as site_mod
from core.models.inference import load_trained, predict_loaded
from core.models.recipe import model_config
from core.store import (
    SPLIT_FILE,
    ArtifactError,
    ModelArtifacts,
    Run,
    has_site_profile,
    name_problem,
    now_iso,
    read_scaling,
    stored_path,
    write_site,
)
from trainer.prepare import Prepared, build_cache, prepare, rows_for

log = logging.getLogger(__name__)

MIN_FILMS = 10  # below this no profile is written: nothing about a site can be measured on fewer
FITTED_ON = {"train", "val"}  # splits the run's weights, thresholds and calibration were chosen on


def run_site(run_dir, data_root, site: str, *, prevalence: float | None = None, unlabelled: bool = False,
             models: list[str] | None = None, overlap: str = "refuse", force: bool = False, cache_dir=None,
             workers=None, command: str = "") -> int:
    run = Run(Path(run_dir))
    _ = run.info  # a broken run.json fails here, before any work
    if (why := name_problem(site)) is not None:
        raise DataError(f"--site {site!r} {why}")
    if prevalence is not None and not 0 < prevalence < 1:
        raise DataError(f"--prevalence {prevalence}: give the share of PNEUMONIA, strictly between 0 and 1")
    prepared = _films(str(data_root), unlabelled)
    flagged = _check_overlap(run, prepared, overlap)
    if len(prepared.samples) < MIN_FILMS:
        raise DataError(f"{data_root}: {len(prepared.samples)} usable films; a site profile needs at least "
                        f"{MIN_FILMS} (and about {site_mod.SUPPORTED_N} labelled ones for a threshold within 3 "
                        "points of sensitivity: docs/site-curve.md)")
    chosen = [m for m in run.models if models is None or m.name in models]
    if models and (unknown := sorted(set(models) - {m.name for m in chosen})):
        raise ArtifactError(f"{run.dir}: no model named {', '.join(unknown)}")
    if not force and (done := [m.name for m in chosen if has_site_profile(m.dir, site)]):
        raise DataError(f"site {site!r} already has profiles for {', '.join(done)}; add --force to replace them")
    facts = {"site": site, "data_root": prepared.root, "layout": prepared.layout, "labelled": not unlabelled,
             "data_fingerprint": data.fingerprint(prepared.samples), "n_skipped": len(prepared.skipped),
             "overlap": flagged, "created": now_iso(), "command": command}
    probs = _score_networks(run, chosen, prepared, cache_dir=cache_dir, workers=workers)
    probs.update(_ensembles(chosen, probs))
    if not probs:
        raise ArtifactError(f"{run.dir}: no model could be scored (no finished model with a best checkpoint)")
    y = None if unlabelled else prepared.labels()
    for m in chosen:
        if m.name in probs:
            _write_profile(m, prepared, y, probs[m.name], prevalence, facts)
    return 0


# --- which films ----------------------------------------------------------------------------------------------

def _films(root: str, unlabelled: bool) -> Prepared:
    """The site's films; with ``unlabelled`` a plain folder of images is accepted too (labels then unused)."""
    try:
        return prepare(root, assign=False)
    except DataError:
        if not unlabelled or not Path(root).is_dir():
            raise
    files = sorted(p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"{root}: no images ({', '.join(SUPPORTED_EXTENSIONS)}) found")
    samples = [Sample(str(p.absolute()), 0, data.patient_id(p.name), None) for p in files]
    return Prepared(root=root, layout="unlabelled", samples=samples, skipped=[])


def trained_on(run: Run, samples: list[Sample], root: str) -> dict[str, tuple[str, str]]:
    """Site films that are films of the run: {path: (the run's split, how matched)}. Matched by real file, by
    content (sha256, only for files of equal size) and by the path stored relative to the data root (a copy of
    the same data set elsewhere; the run's own films need not be on this machine for that one)."""
    table = run.split_table()
    by_stored = dict(zip(table["path"].astype(str), table["split"].astype(str)))
    found: dict[str, tuple[str, str]] = {}
    for s in samples:
        if (split := by_stored.get(stored_path(s.path, root))) is not None:
            found[s.path] = (split, "same path under the data root")
    real, by_size = {}, defaultdict(list)
    for stored, split in by_stored.items():
        if (f := run.locate(stored)) is not None:
            real[os.path.realpath(f)] = split
            by_size[f.stat().st_size].append((f, split))
    sizes = {s.path: os.path.getsize(s.path) for s in samples if s.path not in found}
    hashes: dict[Path, str] = {}
    for s in samples:
        if s.path in found:
            continue
        if (split := real.get(os.path.realpath(s.path))) is not None:
            found[s.path] = (split, "same file")
            continue
        same = by_size.get(sizes[s.path], [])
        if same:
            digest = file_sha256(s.path)
            for f, split in same:
                if digest is not None and hashes.setdefault(f, file_sha256(f)) == digest:
                    found[s.path] = (split, "same content (sha256)")
                    break
    return found


def _check_overlap(run: Run, prepared: Prepared, policy: str) -> dict:
    """Refuse (or, under ``drop``, leave out) films the run was fitted on; flag films of its held-out splits."""
    try:
        found = trained_on(run, prepared.samples, prepared.root)
    except ArtifactError as e:
        log.warning(f"warning: cannot check the films against the run's {SPLIT_FILE} ({e})")
        return {"checked": False}
    fitted = {p: v for p, v in found.items() if v[0] in FITTED_ON}
    held = {p: v for p, v in found.items() if v[0] not in FITTED_ON}
    examples = [f"{stored_path(p, prepared.root)} ({split}, {how})" for p, (split, how) in sorted(fitted.items())[:3]]
    if fitted and policy != "drop":
        raise DataError(f"{len(fitted)} of these films are films the run trained or chose its thresholds on "
                        f"(e.g. {'; '.join(examples)}): a site profile on them would flatter the model. Remove them, "
                        "or add --overlap drop to leave them out")
    if fitted:
        prepared.samples = [s for s in prepared.samples if s.path not in fitted]
        log.warning(f"warning: left out {len(fitted)} films the run trained or chose thresholds on")
    if held:
        log.warning(f"warning: {len(held)} films are in the run's held-out splits "
                    f"({', '.join(sorted({v[0] for v in held.values()}))}): kept, and flagged in the profile")
    return {"checked": True, "left_out_fitted": len(fitted), "examples_left_out": examples,
            "held_out_of_run": len(held), "held_out_splits": sorted({v[0] for v in held.values()})}


# --- scoring -------------------------------------------------------------------------------------------------

def _score_networks(run: Run, models, prepared: Prepared, *, cache_dir, workers) -> dict[str, np.ndarray]:
    out = {}
    for art in models:
        if art.is_ensemble:
            continue
        try:
            loaded = load_trained(art)
        except ArtifactError as e:
            log.warning(f"skip {art.name}: {e}")
            continue
        cache = build_cache(prepared, loaded.input_size, cache_dir=cache_dir, workers=workers)
        if not prepared.samples:
            raise DataError(f"{prepared.root}: no readable images ({len(prepared.skipped)} skipped)")
        out[art.name] = predict_loaded(loaded, cache.images[rows_for(prepared, cache)]).astype(np.float64)
    if len({len(v) for v in out.values()}) > 1:  # a film that failed to decode at one size only
        raise DataError(f"{prepared.root}: films failed to decode at some input sizes; remove the skipped files")
    return out


def _ensembles(models, probs: dict) -> dict[str, np.ndarray]:
    """An ensemble's probability is its members' mean (as ``trainer ensemble``), when all members were scored."""
    out = {}
    for art in models:
        try:
            members = list(model_config(art).members) if art.is_ensemble else []
        except ArtifactError:
            continue
        if members and all(m in probs for m in members):
            out[art.name] = np.mean([probs[m] for m in members], axis=0)
        elif members:
            log.warning(f"skip {art.name}: its members {', '.join(members)} were not all scored")
    return out


def _write_profile(m: ModelArtifacts, prepared: Prepared, y, p: np.ndarray, prevalence, facts: dict) -> None:
    val = m.metrics("val")
    scaling = read_scaling(m.dir)
    prof = site_mod.profile(y, p, config=m.config, val_thresholds=val["thresholds"], val_scaling=scaling,
                            val_prevalence=float(val["prevalence"]), prevalence=prevalence)
    prof = {"schema_version": 1, **facts, "model": m.name, **prof,
            "val_calibration": None if scaling is None else {"temperature": scaling.temperature, "bias": scaling.bias},
            "val_prevalence": float(val["prevalence"])}
    labels = [None if y is None else s.label for s in prepared.samples]
    write_site(m.dir, facts["site"], prof, [s.path for s in prepared.samples], labels, p, prepared.root)
    print(_line(m.name, prof))
    for w in prof["warnings"]:
        log.warning(f"  warning: {w}")


def _line(name: str, prof: dict) -> str:
    thr, cal, prev = prof["threshold"], prof["calibration"], prof["prevalence"]
    head = (f"{name:<28} threshold {thr['value']:.4f} ({thr['rule']}, {thr['source']}; validation "
            f"{thr['val_value']:.4f}) · calibration {cal['source']} · prevalence {prev['value']:.3f} "
            f"({prev['source']})")
    f = (prof.get("figures") or {}).get("site_threshold")
    if not f:
        return head
    def pct(k):
        v = f.get(k)
        return "n/a" if v is None or v != v else f"{100 * v:.1f}%"
    return head + f" · sens {pct('sensitivity')} spec {pct('specificity')} (n = {f['n']})"
