"""What every dashboard page shares: the prologue, the model choice, colours, the footer, cached reads.

Every page starts the same way and has one control flow: ``run = start("Title")`` configures the page, shows
the notice and the run selector, and stops the script (with the footer) when there is no run; a page that
cannot go on calls ``stop(message)``; a page that reaches its end calls ``footer()``. Pages that compare models
call ``choose_models(run)``: one sidebar choice shared by every page (kept in ``st.session_state``), defaulting
to the best few models by validation AUC plus the ensembles, optionally with a second run's models beside them.
Any artifact problem is shown as an error element where it happens (``guard``); the rest of the page renders.
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.artifacts import ArtifactError, ModelArtifacts, Run, default_root, default_run, list_runs
from core.data import sort_splits
from dashboard import figures
from dashboard.tables import plain

REPO = Path(__file__).resolve().parents[1]
NOTICE = ("**Research use only — not for clinical diagnosis.** These models were trained on children's films from "
          "one hospital and, in the populations run, adults' films from one other hospital; they have not been "
          "validated for clinical use. Do not use them to diagnose or treat anyone.")
CITATION = ("Data: Kermany, Zhang, Goldbaum et al., *Identifying Medical Diagnoses and Treatable Diseases by "
            "Image-Based Deep Learning*, Cell 172(5), 2018; Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 "
            "(CC BY 4.0). Adult films: NIH Clinical Center, ChestX-ray14 (Wang et al., *ChestX-ray8*, CVPR 2017).")
RUN_KEY = "selected_run"  # plain session-state keys (not widget keys), so the choices survive page switches
COMPARE_KEY = "compare_run"
MODELS_KEY = "selected_models"  # {(run id, compared run id or ""): [labels]}
PAGE_KEY = "page"  # the title of the page being drawn (start() sets it)
DEFAULT_TOP = 3  # default choice: this many best models by validation AUC, plus every ensemble
NO_COMPARE = "(none)"


def artifacts_root() -> Path:
    """``streamlit run dashboard/Home.py -- --artifacts DIR``, else ``$CXR_ARTIFACTS``, else ``./artifacts``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--artifacts")
    args, _ = p.parse_known_args(sys.argv[1:])
    if args.artifacts:
        return Path(args.artifacts)
    root = default_root()
    return root if root.is_absolute() or root.exists() else REPO / root


# --- the prologue, the footer and the one way out -----------------------------------------------------------

def start(title: str, icon: str = "🫁") -> Run:
    """Every page's first line: page setup, the notice in the sidebar, the run selector. Without any run it tells
    how to train one and stops the script (with the footer)."""
    st.set_page_config(page_title=f"{title} · CXR model comparison", page_icon=icon, layout="wide")
    st.session_state[PAGE_KEY] = title
    st.sidebar.warning(NOTICE)
    run = select_run()
    if run is None:
        st.warning(NOTICE)
        stop()
    return run


def footer() -> None:
    """The data set's citation, at the end of every page."""
    st.divider()
    st.caption(CITATION)


def stop(message: str | None = None, kind: str = "info") -> None:
    """End the page here: an optional message (``st.info``/``st.warning``/``st.error``), then the footer."""
    if message:
        getattr(st, kind)(message)
    footer()
    st.stop()


def model_names(run: Run) -> list[str]:
    """The run's trained model names; ends the page with a warning when it has none."""
    names: list[str] = []
    with guard(f"Run {run.id}"):
        names = [m.name for m in run.models]
    if not names:
        stop(f"Run `{run.id}` has no trained models yet.", kind="warning")
    return names


def chosen_with_splits(run: Run, compare: Run | None) -> tuple[list[Entry], list[str]]:
    """The sidebar's chosen models and the splits they have predictions for; ends the page when either is empty."""
    chosen = choose_models(run, compare)
    splits = sort_splits(s for e in chosen for s in e.model.splits())
    if not chosen:
        stop("Choose one or more models in the sidebar.")
    if not splits:
        stop(f"None of the chosen models of run `{run.id}` has predictions yet.")
    return chosen, splits


def select_run() -> Run | None:
    """Sidebar run selector shared by all pages; ``None`` (with a message) when there are no runs."""
    root = artifacts_root()
    runs = list_runs(root)
    if not runs:
        where = "" if root.resolve() == (REPO / "artifacts").resolve() else f" --artifacts {root}"
        st.info(f"No training runs found in `{root}`. Train one, for example:\n\n"
                "```\npython -m trainer train --data ../shared/data/kermany224 "
                f"--models small_cnn,mobilenet_v2 --epochs 10 --run first{where}\n```")
        return None
    ids = [r.id for r in runs]
    current = st.session_state.get(RUN_KEY)
    index = ids.index(current) if current in ids else ids.index(default_run(runs, root).id)
    chosen = st.sidebar.selectbox("Run", ids, index=index, help=f"runs in {root}")
    st.session_state[RUN_KEY] = chosen
    return runs[ids.index(chosen)]


def other_runs(run: Run) -> list[Run]:
    return [r for r in list_runs(artifacts_root()) if r.id != run.id]


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
    colors = figures.model_colors([m.name for m in every], [m.name for m in every if m.is_ensemble])
    out = [Entry(m.name, m, run.id, colors[m.name], "solid") for m in models]
    out += [Entry(f"{compare.id}/{m.name}", m, compare.id, colors[m.name], "dash") for m in extra]
    return out


def _remember(widget_key: str, store_key: tuple) -> None:
    st.session_state.setdefault(MODELS_KEY, {})[store_key] = list(st.session_state[widget_key])


def compared_run(run: Run) -> Run | None:
    """The second run whose models are shown beside ``run``'s (sidebar; only when there is more than one run)."""
    others = other_runs(run)
    if not others:
        return None
    ids = [NO_COMPARE] + [r.id for r in others]
    current = st.session_state.get(COMPARE_KEY)
    pick = st.sidebar.selectbox("Compare with run", ids, index=ids.index(current) if current in ids else 0,
                                help="show a second run's models beside this run's (dashed, same colours)")
    st.session_state[COMPARE_KEY] = pick
    return next((r for r in others if r.id == pick), None)


def choose_models(run: Run, compare: Run | None = None, *, label: str = "Models") -> list[Entry]:
    """The sidebar's model choice, the same on every page that calls it, and its entries in run order.

    The first time: the best few models by validation AUC plus the ensembles (of ``compare`` too, labelled
    ``run/model``).
    """
    every = entries(run, compare)
    labels = [e.label for e in every]
    store_key = (run.id, compare.id if compare else "")
    # One widget per page: Streamlit drops a widget's state when a page without it runs, and a widget of the same
    # key on another page does not take it over; so each page's widget starts from the stored choice.
    widget_key = f"models_{st.session_state.get(PAGE_KEY, '')}_{run.id}_{store_key[1]}"
    if widget_key not in st.session_state:
        stored = st.session_state.get(MODELS_KEY, {}).get(store_key)
        if stored is None:
            stored = default_models(run.models)
            if compare is not None:
                stored += [f"{compare.id}/{n}" for n in default_models(compare.models)]
        st.session_state[widget_key] = [x for x in stored if x in labels]
    st.sidebar.multiselect(label, labels, key=widget_key, on_change=_remember, args=(widget_key, store_key),
                           help=f"default: the {DEFAULT_TOP} best models by validation AUC, plus the ensemble")
    _remember(widget_key, store_key)
    chosen = set(st.session_state[widget_key])
    return [e for e in every if e.label in chosen]


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
    return _read_model_file(str(m.run_dir), m.name, "history", "", _stamp(m.dir / "history.csv"))


def cached_predictions(m, split: str):
    """``m.predictions(split)``, cached by the file's mtime and size."""
    return _read_model_file(str(m.run_dir), m.name, "predictions", split, _stamp(m.dir / f"predictions_{split}.csv"))


def cached_metrics(m, split: str) -> dict:
    """``m.metrics(split)``, cached by the file's mtime and size."""
    return _read_model_file(str(m.run_dir), m.name, "metrics", split, _stamp(m.dir / f"metrics_{split}.json"))


# --- site profiles (``python -m trainer site``, core/site.py) -------------------------------------------------

SITE_KEY = "selected_site"
TRAINING_DATA = "training data"


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
        from core.artifacts import read_site_profile, site_names

        return read_site_profile(m, self.name) if self.is_site and self.name in site_names(m) else None

    def scaling(self, m: ModelArtifacts):
        """The calibration in use: the site's refit, else the validation one (None when the model has none)."""
        from core import calibration

        prof = self.profile(m)
        if prof is None:
            return calibration.read_scaling(m)
        return calibration.Scaling(float(prof["calibration"]["temperature"]), float(prof["calibration"]["bias"]))

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
    st.session_state[SITE_KEY] = st.session_state.get(f"{SITE_KEY}_widget", TRAINING_DATA)


def choose_site(run: Run) -> SiteChoice:
    """The sidebar's site selector (default: the training data), shared by every page through session state;
    the pages that show probabilities, labels, thresholds or PPV/NPV call it once, near the top."""
    from core.artifacts import run_site_names

    sites: list[str] = []
    with guard(f"Run {run.id}: site profiles"):
        sites = run_site_names(run)
    options = [TRAINING_DATA, *sites]
    current = st.session_state.get(SITE_KEY, TRAINING_DATA)
    st.session_state[f"{SITE_KEY}_widget"] = current if current in options else TRAINING_DATA
    st.sidebar.selectbox("Site profile", options, key=f"{SITE_KEY}_widget", on_change=_site_changed,
                         help="whose threshold, calibration and prevalence the pages use: the training data's "
                              "(validation split) or a site's own (python -m trainer site)")
    choice = SiteChoice(st.session_state[f"{SITE_KEY}_widget"])
    st.session_state[SITE_KEY] = choice.name
    if choice.is_site:
        st.sidebar.caption(f"Using site profile **{choice.name}**")
    return choice


def site_table(run: Run, choice: SiteChoice):
    """One row per model with a profile for the chosen site: its figures at the site threshold, 95% intervals."""
    import pandas as pd

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
