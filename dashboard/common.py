"""What every dashboard page shares: page setup, the notice, the run selector and error containment.

Pages stay thin: they call these helpers, read artifacts through ``core.artifacts`` and draw figures built by
``dashboard.figures``. Any artifact problem is shown as an error element where it happens (``guard``), so
the rest of the page still renders.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from core.artifacts import ArtifactError, Run, default_root, list_runs  # noqa: E402

NOTICE = ("**Research use only — not for clinical diagnosis.** These models were trained on one paediatric "
          "data set and have not been validated for clinical use. Do not use them to diagnose or treat anyone.")
CITATION = ("Data: Kermany, Zhang, Goldbaum et al., *Identifying Medical Diagnoses and Treatable Diseases by "
            "Image-Based Deep Learning*, Cell 172(5), 2018; Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 "
            "(CC BY 4.0).")
RUN_KEY = "selected_run"  # plain session-state key (not a widget key) so the choice survives page switches


def artifacts_root() -> Path:
    """``streamlit run dashboard/Home.py -- --artifacts DIR``, else ``$CXR_ARTIFACTS``, else ``./artifacts``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--artifacts")
    args, _ = p.parse_known_args(sys.argv[1:])
    if args.artifacts:
        return Path(args.artifacts)
    root = default_root()
    return root if root.is_absolute() or root.exists() else REPO / root


def page(title: str, icon: str = "🫁") -> None:
    """Configure the page and show the notice in the sidebar (on every page, so it cannot be missed)."""
    st.set_page_config(page_title=f"{title} · CXR model comparison", page_icon=icon, layout="wide")
    st.sidebar.warning(NOTICE)


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
    index = ids.index(current) if current in ids else 0
    chosen = st.sidebar.selectbox("Run", ids, index=index, help=f"runs in {root}")
    st.session_state[RUN_KEY] = chosen
    return runs[ids.index(chosen)]


@contextmanager
def guard(what: str):
    """Show any failure inside as an error element about ``what``; the page goes on below it."""
    try:
        yield
    except ArtifactError as e:
        st.error(f"{what}: {e}")
    except Exception as e:  # a dashboard page must never crash; the message still says what went wrong
        st.error(f"{what}: unexpected {type(e).__name__}: {e}")
        with st.expander("details"):
            st.code("".join(traceback.format_exception(e))[-4000:])


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
    from core.artifacts import ModelArtifacts

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
