"""The Training curves page's figures, built once per set of histories and options and shared by every session.

Measured (cProfile of the page's script in a warm process, committed default run, 2 models, one loaded core):
building its six plotly figures was 0.8 s of the script's 1.2 s (plotly validates every property it is given),
and the same histories give the same figures to every user until the trainer writes an epoch. So each figure is
cached with ``st.cache_resource``, keyed by the histories' contents (``digest``) and the drawing options: a figure
is never changed after it is built (``st.plotly_chart`` copies it to send it), and ``st.cache_data`` would
unpickle a copy, which plotly validates all over again. ``dashboard.warm`` builds the default choice's figures at
server start (``default_figures``), so a first visit only sends them."""

from __future__ import annotations

import hashlib
from collections import Counter

import pandas as pd
import streamlit as st

from dashboard import figures

__all__ = ["BUILT", "EXTRAS", "GRID_METRICS", "OVERLAID", "cached_figure", "default_figures", "digest"]

# The overlaid layout, in reading order: (chart key, builder, options); left and right columns alternate.
OVERLAID = (
    ("curves_loss", "history", dict(series=(("train_loss", "train"), ("val_loss", "val")), title="Loss",
                                    y_title="cross-entropy")),
    ("curves_acc", "history", dict(series=(("train_acc", "train"), ("val_acc", "val")), title="Accuracy",
                                   y_title="accuracy")),
    ("curves_auc", "history", dict(series=(("val_auc", "val"),), y_title="AUC", title="Validation AUC (★ best epoch)")),
    ("curves_gap", "gap", dict(height=340)),
)
# Below the fold, in a collapsed expander: built only when it is opened.
EXTRAS = (
    ("curves_lr", "history", dict(series=(("lr", "train"),), title="Learning rate", y_title="lr", mark_best=False,
                                  log_y=True, height=280)),
    ("curves_seconds", "history", dict(series=(("seconds", "train"),), title="Seconds per epoch", y_title="s",
                                       mark_best=False, height=280)),
)
# One chart per model (many models): the metric shown, its history columns and y axis title.
GRID_METRICS = {"loss": ((("train_loss", "train"), ("val_loss", "val")), "cross-entropy"),
                "accuracy": ((("train_acc", "train"), ("val_acc", "val")), "accuracy"),
                "validation AUC": ((("val_auc", "val"),), "AUC")}
BUILT: Counter = Counter()  # figures built per kind in this process: a warm server builds none on a first visit
_BUILDERS = {"history": figures.history_figure, "grid": figures.history_grid, "gap": figures.gap_figure}


def digest(histories: dict[str, pd.DataFrame]) -> tuple:
    """What identifies the histories' contents: each one's label, columns and a hash of its values (1 ms a
    history; Streamlit's own hashing of the DataFrames, once per figure, was 0.2 s of a 0.6 s script)."""
    return tuple((label, tuple(map(str, h.columns)),
                  hashlib.sha1(pd.util.hash_pandas_object(h, index=True).to_numpy().tobytes()).hexdigest())
                 for label, h in histories.items())


def cached_figure(kind: str, histories: dict[str, pd.DataFrame], colors: dict[str, str], smoothing: float = 0.0,
                  *, key: tuple | None = None, **options):
    """``figures.history_figure`` ("history"), ``history_grid`` ("grid") or ``gap_figure`` ("gap") of
    ``histories``, built once and shared: do not change what it returns. ``key``: ``digest(histories)``, when the
    caller draws several figures of the same histories."""
    return _figure(kind, key or digest(histories), colors, float(smoothing), tuple(sorted(options.items())),
                   histories)


@st.cache_resource(show_spinner=False, max_entries=64)
def _figure(kind: str, key: tuple, colors: dict[str, str], smoothing: float, options: tuple, _histories: dict):
    BUILT[kind] += 1
    return _BUILDERS[kind](_histories, colors=colors, smoothing=smoothing, **dict(options))


def default_figures(histories: dict[str, pd.DataFrame], colors: dict[str, str]) -> int:
    """Build what a first visit draws for these models (overlaid charts, unsmoothed); how many figures."""
    key = digest(histories)
    for _, kind, options in OVERLAID:
        cached_figure(kind, histories, colors, 0.0, key=key, **options)
    return len(OVERLAID)
