"""What every dashboard page shares: the sidebar choice, colours, the footer, cached reads, ``guard``.

``dashboard/Home.py`` is the entrypoint (``st.navigation``): on every rerun it calls ``choose()``, which draws the
sidebar's run, compared run, models and site profile once and keeps them as one ``Choice`` in session state; then it
runs the page, which reads that choice with ``choice()`` and only draws. A page that cannot go on calls
``stop(message)`` (the footer, then ``st.stop``); a page that reaches its end gets the footer from the entrypoint.
The model choice defaults to the best few models by validation AUC plus the ensembles, optionally with a second
run's models beside them. Any artifact problem is shown as an error element where it happens (``guard``); the
rest of the page renders.

Caching, one approach for the whole dashboard: ``st.cache_resource`` for what is shared and never copied (loaded
models with their ONNX sessions and locks, decoded films: ``dashboard.explain``; population references:
``dashboard.population``); ``st.cache_data`` for data, each hit a copy (tables read from the run folder, here;
heatmaps, overlay PNGs and the run's test films: ``dashboard.explain``; population verdicts:
``dashboard.population``). Keys hold what the value depends on: a file's (mtime, size), a checkpoint's mtime, a
film's pixels; so a rewritten file is read again and an unchanged one never is. Errors are never cached (the next
rerun retries). No hand-written cache is left. ``dashboard.warm`` fills these caches in a background thread once
the server's first page is drawn.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.layouts import sort_splits
from core.evaluate.calibration import Scaling
from core.store import (
    ArtifactError,
    ModelArtifacts,
    Run,
    default_root,
    default_run,
    list_runs,
    read_scaling,
    read_site_profile,
    run_site_names,
    site_names,
)
from dashboard.colors import model_colors
from dashboard.tables import plain

__all__ = [
    "CITATION", "DEFAULT_TOP", "NOTICE", "REPO", "RUN_KEY", "SITE_KEY", "TRAINING_DATA", "Choice", "Entry",
    "SiteChoice", "artifacts_root", "cached_history", "cached_metrics", "cached_predictions", "choice", "choose",
    "RESEARCH_ONLY", "chosen_with_splits", "default_models", "entries", "footer", "guard", "model_names",
    "model_page", "plain", "site_table", "stop", "val_auc",
]

REPO = Path(__file__).resolve().parents[1]
NOTICE = ("**Research use only — not for clinical diagnosis.** These models were trained on children's films from "
          "one hospital and, in the populations run, adults' films from one other hospital; they have not been "
          "validated for clinical use. Do not use them to diagnose or treat anyone.")
CITATION = ("Data: Kermany, Zhang, Goldbaum et al., *Identifying Medical Diagnoses and Treatable Diseases by "
            "Image-Based Deep Learning*, Cell 172(5), 2018; Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 "
            "(CC BY 4.0). Adult films: NIH Clinical Center, ChestX-ray14 (Wang et al., *ChestX-ray8*, CVPR 2017).")
RESEARCH_ONLY = "**Research use only — not for diagnosis.**"  # the last words of a model page's caption
RUN_KEY = "selected_run"  # the sidebar widgets' keys: a test may set them before the first run
COMPARE_KEY = "compare_run"
SITE_KEY = "selected_site"
MODELS_KEY = "selected_models"  # {(run id, compared run id or ""): [labels]}: a run's choice outlives a switch
CHOICE_KEY = "_choice"  # the ``Choice`` of this rerun, for the page
DEFAULT_TOP = 3  # default choice: this many best models by validation AUC, plus every ensemble
NO_COMPARE = "(none)"
TRAINING_DATA = "training data"


def artifacts_root() -> Path:
    """``streamlit run dashboard/Home.py -- --artifacts DIR``, else ``$CXR_ARTIFACTS``, else ``./artifacts``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--artifacts")
    args, _ = p.parse_known_args(sys.argv[1:])
    if args.artifacts:
        return Path(args.artifacts)
    root = default_root()
    return root if root.is_absolute() or root.exists() else REPO / root


# --- the footer and the one way out -----------------------------------------------------------------------------

def footer() -> None:
    """The data set's citation, at the end of every page (the entrypoint draws it after the page, ``stop`` before
    it ends one)."""
    st.divider()
    st.caption(CITATION)


def stop(message: str | None = None, kind: str = "info") -> None:
    """End the page here: an optional message (``st.info``/``st.warning``/``st.error``), then the footer."""
    if message:
        getattr(st, kind)(message)
    footer()
    st.stop()


@contextmanager
def guard(what: str):
    """Show any failure inside as an error element about ``what``; the page goes on below it."""
    try:
        yield
    except ArtifactError as e:
        st.error(f"{what}: {plain(e)}")
    except Exception as e:  # a dashboard page must never crash; the message still says what went wrong
        st.error(f"{what}: unexpected {type(e).__name__}: {plain(e)}")
        with st.expander("details"):
            st.code("".join(traceback.format_exception(e))[-4000:])


# --- which models, in which colour ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A chosen model: ``label`` is how every figure and table names it (``run/model`` for a compared run)."""

    label: str
    model: ModelArtifacts
    run_id: str
    color: str
    dash: str  # "solid" for the selected run, "dash" for the compared one (same model, same colour)


def val_auc(m: ModelArtifacts) -> float:
    """The model's validation AUC (NaN when it has none yet): what the default choice ranks by."""
    try:
        return float(cached_metrics(m, "val")["auc"])
    except (ArtifactError, KeyError, TypeError, ValueError):
        return math.nan


def default_models(models: list[ModelArtifacts], top: int = DEFAULT_TOP) -> list[str]:
    """The ``top`` single models with the best validation AUC, plus every ensemble, in run order."""
    singles = [m for m in models if not m.is_ensemble and math.isfinite(val_auc(m))]
    best = {m.name for m in sorted(singles, key=val_auc, reverse=True)[:top]}
    return [m.name for m in models if m.name in best or m.is_ensemble]


def entries(run: Run, compare: Run | None = None) -> list[Entry]:
    """Every model of ``run`` (and of ``compare``, labelled ``run/model`` and dashed), with its colour."""
    models = list(run.models)
    extra = list(compare.models) if compare is not None else []
    every = models + [m for m in extra if m.name not in {x.name for x in models}]
    colors = model_colors([m.name for m in every], [m.name for m in every if m.is_ensemble])
    out = [Entry(m.name, m, run.id, colors[m.name], "solid") for m in models]
    out += [Entry(f"{compare.id}/{m.name}", m, compare.id, colors[m.name], "dash") for m in extra]
    return out


@dataclass(frozen=True)
class Choice:
    """What the sidebar chose, for the page being drawn: the run, the compared run, the models, the site."""

    root: Path
    run: Run
    compare: Run | None
    chosen: list[Entry]  # in run order; a compared run's models after the run's own
    site: SiteChoice

    @property
    def own(self) -> list[Entry]:
        """The chosen models of the selected run (pages that explain films use no compared run)."""
        return [e for e in self.chosen if e.run_id == self.run.id]

    @property
    def nets(self) -> list[Entry]:
        """The chosen models of the selected run that have a network of their own (not ensembles)."""
        return [e for e in self.own if not e.model.is_ensemble]

    def first_model(self) -> str | None:
        """The name of the first chosen model of the selected run (single-model pages start on it)."""
        return self.own[0].model.name if self.own else None


def choice() -> Choice:
    """The sidebar's choice for this rerun (``choose`` stored it); a page run outside the entrypoint fails here."""
    c = st.session_state.get(CHOICE_KEY)
    if not isinstance(c, Choice):
        raise RuntimeError("dashboard pages run through the entrypoint: streamlit run dashboard/Home.py")
    return c


def model_page(title: str, caption: str) -> Choice:
    """The top of a page that shows what the sidebar's models say (Errors, Consensus): its title, a caption saying
    what it shows and ending in ``RESEARCH_ONLY``, and the sidebar's ``Choice``, which the page picks its models
    from."""
    c = choice()
    st.title(title)
    st.caption(f"{caption} {RESEARCH_ONLY}")
    return c


def choose(uses_models: bool = True) -> Choice | None:
    """The sidebar, once per rerun (the entrypoint calls it): run, compared run, models and site profile, kept
    for the page as one ``Choice``. ``uses_models=False`` (a page that shows every model of the run) greys the
    model choice out without forgetting it. Without any run it tells how to train one and returns None."""
    root = artifacts_root()
    runs = list_runs(root)
    if not runs:
        no_runs(root)
        return None
    run = _choose_run(runs, root)
    compare = _choose_compare(runs, run)
    chosen = _choose_models(run, compare, uses_models)
    c = Choice(root, run, compare, chosen, _choose_site(run))
    st.session_state[CHOICE_KEY] = c
    return c


def no_runs(root: Path) -> None:
    where = "" if root.resolve() == (REPO / "artifacts").resolve() else f" --artifacts {root}"
    st.info(f"No training runs found in `{root}`. Train one, for example:\n\n"
            "```\npython -m trainer train --data ../shared/data/kermany224 "
            f"--models small_cnn,mobilenet_v2 --epochs 10 --run first{where}\n```")
    st.warning(NOTICE)


def _choose_run(runs: list[Run], root: Path) -> Run:
    ids = [r.id for r in runs]
    if st.session_state.get(RUN_KEY) not in ids:
        st.session_state[RUN_KEY] = default_run(runs, root).id
    return runs[ids.index(st.sidebar.selectbox("Run", ids, key=RUN_KEY, help=f"runs in {root}"))]


def _choose_compare(runs: list[Run], run: Run) -> Run | None:
    """The second run whose models are shown beside ``run``'s (only when there is more than one run)."""
    others = [r for r in runs if r.id != run.id]
    if not others:
        return None
    ids = [NO_COMPARE] + [r.id for r in others]
    if st.session_state.get(COMPARE_KEY) not in ids:
        st.session_state[COMPARE_KEY] = NO_COMPARE
    pick = st.sidebar.selectbox("Compare with run", ids, key=COMPARE_KEY,
                                help="show a second run's models beside this run's (dashed, same colours)")
    return next((r for r in others if r.id == pick), None)


def _choose_models(run: Run, compare: Run | None, enabled: bool) -> list[Entry]:
    """The sidebar's model choice, in run order. The first time for a (run, compared run): the best few models by
    validation AUC plus the ensembles (of ``compare`` too, labelled ``run/model``); afterwards the last choice."""
    every = entries(run, compare)
    labels = [e.label for e in every]
    store_key = (run.id, compare.id if compare else "")
    widget_key = f"models::{store_key[0]}::{store_key[1]}"  # one widget per pair of runs: their labels differ
    if widget_key not in st.session_state:
        stored = st.session_state.get(MODELS_KEY, {}).get(store_key)
        if stored is None:
            stored = default_models(run.models)
            if compare is not None:
                stored += [f"{compare.id}/{n}" for n in default_models(compare.models)]
        st.session_state[widget_key] = [x for x in stored if x in labels]
    picked = st.sidebar.multiselect(
        "Models", labels, key=widget_key, disabled=not enabled,
        help=(f"default: the {DEFAULT_TOP} best models by validation AUC, plus the ensemble" if enabled else
              "this page shows every model of the run; the choice applies on the other pages"))
    st.session_state.setdefault(MODELS_KEY, {})[store_key] = list(picked)
    return [e for e in every if e.label in set(picked)]


def model_names(c: Choice) -> list[str]:
    """The selected run's trained model names; ends the page with a warning when it has none."""
    names: list[str] = []
    with guard(f"Run {c.run.id}"):
        names = [m.name for m in c.run.models]
    if not names:
        stop(f"Run `{c.run.id}` has no trained models yet.", kind="warning")
    return names


def chosen_with_splits(c: Choice) -> tuple[list[Entry], list[str]]:
    """The sidebar's chosen models and the splits they have predictions for; ends the page when either is empty."""
    splits = sort_splits(s for e in c.chosen for s in e.model.splits())
    if not c.chosen:
        stop("Choose one or more models in the sidebar.")
    if not splits:
        stop(f"None of the chosen models of run `{c.run.id}` has predictions yet.")
    return c.chosen, splits


# --- cached artifact reads -------------------------------------------------------------------------------
# Keyed by the file's (mtime, size), so a file the trainer rewrites (always whole, via os.replace) is read again
# and an unchanged one never is. Errors are not cached: a missing or broken file is retried on the next rerun.

def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        s = path.stat()
        return (s.st_mtime_ns, s.st_size)
    except OSError:
        return None


@st.cache_data(show_spinner=False, max_entries=1024)
def _read_model_file(run_dir: str, model: str, kind: str, split: str, stamp) -> object:
    m = ModelArtifacts(Path(run_dir), model)
    if kind == "history":
        return m.history()
    if kind == "predictions":
        return m.predictions(split)
    if kind == "metrics":
        return m.metrics(split)
    raise ValueError(kind)


def cached_history(m):
    """``m.history()`` (an ``ArtifactError`` when missing or broken), cached by the file's mtime and size."""
    return _read_model_file(str(m.run_dir), m.name, "history", "", _stamp(m.history_path))


def cached_predictions(m, split: str):
    """``m.predictions(split)``, cached by the file's mtime and size."""
    return _read_model_file(str(m.run_dir), m.name, "predictions", split, _stamp(m.predictions_path(split)))


def cached_metrics(m, split: str) -> dict:
    """``m.metrics(split)``, cached by the file's mtime and size."""
    return _read_model_file(str(m.run_dir), m.name, "metrics", split, _stamp(m.metrics_path(split)))


# --- site profiles (``python -m trainer site``, core/evaluate/site.py)
# -------------------------------------------------

@dataclass(frozen=True)
class SiteChoice:
    """The sidebar's site profile: ``name`` is ``TRAINING_DATA`` (the run's validation fit) or a site. A model
    without a profile for the chosen site falls back to its validation fit, and ``describe`` says so."""

    name: str

    @property
    def is_site(self) -> bool:
        return self.name != TRAINING_DATA

    def profile(self, m: ModelArtifacts) -> dict | None:
        """The model's profile for this site, or None (training data, or no profile: the validation fit)."""
        return read_site_profile(m, self.name) if self.is_site and self.name in site_names(m) else None

    def scaling(self, m: ModelArtifacts):
        """The calibration in use: the site's refit, else the validation one (None when the model has none)."""
        prof = self.profile(m)
        if prof is None:
            return read_scaling(m.dir)
        return Scaling(float(prof["calibration"]["temperature"]), float(prof["calibration"]["bias"]))

    def threshold(self, m: ModelArtifacts, rule: str | None = None) -> float:
        """The raw threshold in use: the site's (its rule) when the rule asked is the profile's, else validation's."""
        prof = self.profile(m)
        if prof is not None and rule in (None, prof["threshold"]["rule"]):
            return float(prof["threshold"]["value"])
        return m.threshold(rule)

    def prevalence(self, m: ModelArtifacts, default: float) -> float:
        prof = self.profile(m)
        return float(prof["prevalence"]["value"]) if prof is not None else float(default)

    def describe(self, m: ModelArtifacts | None = None) -> str:
        """One line for captions and reports: which profile the figures use."""
        if not self.is_site:
            return "profile: training data (threshold and calibration chosen on the run's validation split)"
        if m is not None and self.profile(m) is None:
            return f"profile: site `{self.name}` chosen, but {m.name} has none: its validation fit is used"
        return (f"profile: site `{self.name}` (threshold, calibration and prevalence from that site's films, "
                "`python -m trainer site`)")


def _site_changed() -> None:
    """A new profile moves every operating point to its own: thresholds set by hand are forgotten."""
    for key in [k for k in st.session_state if isinstance(k, str) and (k == "thresholds" or k.startswith("thr_"))]:
        del st.session_state[key]


def _choose_site(run: Run) -> SiteChoice:
    """The sidebar's site selector (default: the training data), shown when the run has site profiles."""
    sites: list[str] = []
    with guard(f"Run {run.id}: site profiles"):
        sites = run_site_names(run)
    options = [TRAINING_DATA, *sites]
    if st.session_state.get(SITE_KEY) not in options:
        st.session_state[SITE_KEY] = TRAINING_DATA
    if not sites:
        return SiteChoice(TRAINING_DATA)
    name = st.sidebar.selectbox("Site profile", options, key=SITE_KEY, on_change=_site_changed,
                                help="whose threshold, calibration and prevalence the pages use: the training "
                                     "data's (validation split) or a site's own (python -m trainer site)")
    if name != TRAINING_DATA:
        st.sidebar.caption(f"Using site profile **{name}**")
    return SiteChoice(name)


def site_table(run: Run, choice: SiteChoice):
    """One row per model with a profile for the chosen site: its figures at the site threshold, 95% intervals."""
    def pct(v, ci=None) -> str:
        if v is None:
            return "–"
        lo, hi = ci or (None, None)
        return f"{100 * v:.1f}%" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else "")

    rows = []
    for m in run.models:
        with guard(f"{m.name}: site profile {choice.name}"):
            prof = choice.profile(m)
            if prof is None:
                continue
            f = (prof.get("figures") or {}).get("site_threshold") or {}
            prev = prof["prevalence"]
            rows.append({"model": m.name, "films": prof.get("n"), "threshold": f"{prof['threshold']['value']:.3f} "
                         f"({prof['threshold']['source']})", "calibration": prof["calibration"]["source"],
                         "prevalence": pct(prev["value"], prev.get("ci")) + f" ({prev['source']})",
                         "AUC": "–" if f.get("auc") is None else f"{f['auc']:.3f}",
                         "sensitivity": pct(f.get("sensitivity"), f.get("sensitivity_ci")),
                         "specificity": pct(f.get("specificity"), f.get("specificity_ci")),
                         "PPV": pct(f.get("ppv"), f.get("ppv_ci")), "NPV": pct(f.get("npv"), f.get("npv_ci")),
                         "warnings": " · ".join(prof.get("warnings") or []) or "–"})
    return pd.DataFrame(rows)
