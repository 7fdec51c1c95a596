"""The population check on the Grad-CAM and Consensus pages: is this film like the films a model learnt from?

``check`` judges one film against a model's population.json (core/evaluate/population.py: the distance of the film's
features to each training source, under the limit set on validation, and the colour of the picture); ``show``
puts the verdict beside the prediction: a caption when the film lies inside a training source, a warning when it
lies outside all of them, with the model's measured figures for the population the film resembles, or the plain
statement that there are none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import streamlit as st

from core.evaluate import population as pop
from core.evaluate.metrics import headline_rule
from core.store import ArtifactError, ModelArtifacts, population_path, read_population


@dataclass(frozen=True)
class Check:
    """One model's verdict on one film."""

    model: str
    inside: tuple[str, ...] = ()  # training sources the film lies within
    problems: tuple[str, ...] = ()  # what the picture shows (colour)
    nearest: str | None = None  # the training source it is nearest to (relative to that source's limit)
    ratio: float | None = None  # its distance to ``nearest`` over that source's limit (> 1: outside)
    resembles: str | None = None  # a measured population outside training that the film lies within
    figures: dict = field(default_factory=dict)  # {set: {n, auc, sensitivity, specificity}} for that population
    missing: str = ""  # why no check was possible (no population.json)

    @property
    def outside(self) -> bool:
        return not self.missing and not self.inside

    def short(self) -> str:
        """One line for a table cell."""
        if self.missing:
            return "not checked"
        if self.inside:
            return f"inside ({', '.join(self.inside)})"
        return "OUTSIDE" + (f" (like {self.resembles})" if self.resembles else "")

    def message(self) -> str:
        """What the page says beside the prediction."""
        if self.missing:
            return f"Population not checked for {self.model}: {self.missing}"
        if self.inside:
            return (f"Inside the populations {self.model} was trained on: like its `{self.inside[0]}` training "
                    f"films (distance {self.ratio:.2f} of the limit set on validation).")
        why = ("; ".join(self.problems) if self.problems else
               f"its features are {self.ratio:.1f}× the limit from {self.model}'s nearest training source "
               f"`{self.nearest}`")
        return (f"**Outside the populations {self.model} was trained on** ({why}). " + self.figures_text()
                + " Treat this prediction as unsupported.")

    def figures_text(self) -> str:
        if not self.figures:
            like = f"It resembles `{self.resembles}` films. " if self.resembles else ""
            return like + "No measured figures for this population."
        parts = [f"{name} (n={f.get('n')}): AUC {_num(f.get('auc'))}, sensitivity {_pct(f.get('sensitivity'))}, "
                 f"specificity {_pct(f.get('specificity'))}" for name, f in self.figures.items()]
        return f"Measured on films like this one ({self.resembles}): " + "; ".join(parts) + "."


def _num(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def references(model: ModelArtifacts):
    """(training references, references of measured outside populations) of a model, read once per file version
    (``st.cache_resource``: read-only arrays, shared); ``ArtifactError`` when the file is missing or fails its
    checks (never cached: the next rerun reads again)."""
    path = population_path(model.dir)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise ArtifactError(f"{path}: missing; run `python -m trainer population --run {model.run_dir}`") from None
    return _references(str(model.dir), mtime)


@st.cache_resource(show_spinner=False, max_entries=64)
def _references(model_dir: str, mtime_ns: int):
    doc = read_population(Path(model_dir))
    return ([pop.from_json(n, s) for n, s in doc["sources"].items()],
            [pop.from_json(n, s) for n, s in (doc.get("known") or {}).items()])


def measured_figures(model: ModelArtifacts, population: str) -> dict:
    """The model's figures on an evaluated set named ``population`` (metrics_<population>.json) at its own
    threshold rule, or on that source within its test split (the ``by`` key of metrics_test.json)."""
    rule = headline_rule(model.config)
    out = {}
    for split, pick in ((population, lambda m: m), ("test", lambda m: m.get("by", {}).get("source", {})
                                                     .get(population))):
        try:
            m = pick(model.metrics(split)) if split in model.splits() else None
        except (ArtifactError, AttributeError):
            m = None
        if isinstance(m, dict) and m.get("auc") is not None:
            at = (m.get("at") or {}).get(rule, {})
            out[split] = {"n": m.get("n"), "auc": m.get("auc"), "sensitivity": at.get("sensitivity"),
                          "specificity": at.get("specificity")}
    return out


def picture_rgb(source):
    """A colour thumbnail of an upload (bytes) or a file, for ``core.evaluate.population.image_problems``."""
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    except (OSError, TypeError):
        return None
    return pop.thumbnail_rgb(data)


def check(model: ModelArtifacts, loaded, lock, pixels, source) -> Check:
    """The verdict of ``model`` (its ``LoadedModel`` and the lock that guards it) on one film: ``pixels`` at the
    model's input size, ``source`` its bytes or path. Cached (``st.cache_data``) by the model's folder, its
    population.json and checkpoint versions and the film's pixels and source, so a rerun (a slider moved) runs
    no network."""
    try:
        refs, known = references(model)
    except ArtifactError as e:
        return Check(model=model.name, missing=str(e))
    pixels = np.ascontiguousarray(pixels)
    src = hashlib.sha1(bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else
                       str(source).encode()).hexdigest()
    return _check(str(model.dir), _stamp(population_path(model.dir)), _stamp(model.best_checkpoint()),
                  hashlib.sha1(pixels.tobytes()).hexdigest(), src, model, loaded, lock, pixels, source, refs, known)


def _stamp(path: Path):
    s = path.stat()
    return (s.st_mtime_ns, s.st_size)


@st.cache_data(show_spinner=False, max_entries=512)
def _check(model_dir: str, pop_stamp, ckpt_stamp, pixels_digest: str, source_digest: str, _model, _loaded, _lock,
           _pixels, _source, _refs, _known) -> Check:
    with _lock:
        feats = pop.features(_loaded, _pixels[None])
    problems = pop.image_problems(picture_rgb(_source))
    v = pop.judge(_refs, feats, problems)[0]
    nearest = v.nearest
    ratio = v.distances[nearest][0] / v.distances[nearest][1]
    if v.inside:
        return Check(model=_model.name, inside=tuple(v.inside), nearest=nearest, ratio=ratio)
    resembles = next(iter(pop.judge(_known, feats)[0].inside), None) if _known and not problems else None
    figures = measured_figures(_model, resembles) if resembles else {}
    return Check(model=_model.name, problems=problems, nearest=nearest, ratio=ratio, resembles=resembles,
                 figures=figures)


def show(c: Check) -> None:
    """The verdict on the page: a warning when outside, a caption otherwise."""
    if c.outside:
        st.warning(c.message(), icon="⚠️")
    else:
        st.caption(c.message())
