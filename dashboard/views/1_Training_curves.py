"""Training curves: per-epoch loss, accuracy, AUC, learning rate and epoch time from history.csv.

Train solid, validation dashed, EMA smoothing, best epoch (max val AUC) starred, the generalisation gap on its
own chart. A few models are overlaid; many get one small chart each (small multiples), so a dozen stay readable.
While a chosen model is training, the charts refresh on their own. Ensembles train nothing and have no curves.
"""

import streamlit as st

from core.report import summary
from core.store import HISTORY_FILE, STATUS_FILE
from dashboard import tables
from dashboard.common import cached_history, choice, guard, stop
from dashboard.curves import EXTRAS, GRID_METRICS, OVERLAID, cached_figure, digest

REFRESH_SECONDS = 5
OVERLAY_MAX = 5  # more models than this: one small chart per model by default
LAYOUTS = ("overlaid", "one chart per model")


def statuses(chosen) -> dict[str, dict]:
    out = {}
    for e in chosen:
        try:
            out[e.label] = e.model.status()
        except Exception:  # shown by the guard in curves()
            pass
    return out


def overlaid(histories: dict, smoothing: float, colors: dict) -> None:
    """Loss, accuracy, AUC and the gap in two columns; figures cached and shared (``dashboard.curves``)."""
    cols, key = st.columns(2), digest(histories)
    for i, (chart, kind, options) in enumerate(OVERLAID):
        cols[i % 2].plotly_chart(cached_figure(kind, histories, colors, smoothing, key=key, **options), key=chart)


def small_multiples(histories: dict, smoothing: float, colors: dict) -> None:
    metric = st.segmented_control("Metric", list(GRID_METRICS), default="loss", key="curves_grid_metric") or "loss"
    series, y_title = GRID_METRICS[metric]
    st.plotly_chart(cached_figure("grid", histories, colors, smoothing, series=series, title=metric.capitalize(),
                                  y_title=y_title), key="curves_grid")


def extras(histories: dict, colors: dict) -> None:
    """Below the fold: built only while the expander is open (two figures and charts fewer on a first visit)."""
    box = st.expander("Learning rate and seconds per epoch", key="curves_extras", on_change="rerun")
    if box.open:
        cols, key = box.columns(2), digest(histories)
        for col, (chart, kind, options) in zip(cols, EXTRAS):
            col.plotly_chart(cached_figure(kind, histories, colors, key=key, **options), key=chart)


chosen = choice().chosen
st.title("Training curves")
ensembles = [e for e in chosen if e.model.is_ensemble]
trained = [e for e in chosen if not e.model.is_ensemble]
if ensembles:
    st.caption(f"{', '.join(e.label for e in ensembles)}: an ensemble averages its members' outputs and trains "
               "nothing itself, so it has no curves here.")
if not trained:
    stop("Choose one or more trained models (not only ensembles) in the sidebar.")

c1, c2 = st.columns([2, 2])
auto = LAYOUTS[0] if len(trained) <= OVERLAY_MAX else LAYOUTS[1]
layout = c1.segmented_control("Layout", LAYOUTS, default=auto, key=f"curves_layout_{auto}",  # new default: new key
                              help=f"more than {OVERLAY_MAX} models: one chart per model by default")
smoothing = c2.slider("Smoothing (EMA weight)", 0.0, 0.95, 0.0, 0.05, key="curves_smoothing",
                      help="0 = raw values; higher = smoother (TensorBoard-style exponential moving average)")
live = any(summary.state_of(s) == "running" for s in statuses(trained).values())


@st.fragment(run_every=REFRESH_SECONDS if live else None)
def curves() -> None:
    stat = statuses(trained)
    for name, s in stat.items():
        if s.get("state") in ("running", "pending") or summary.state_of(s) == "stale":
            st.info(tables.progress_line(name, s))
    if live and not any(summary.state_of(s) == "running" for s in stat.values()):
        st.rerun()  # training just ended: stop refreshing
    histories = {}
    for e in trained:
        with guard(f"{e.label}: {STATUS_FILE}"):
            if e.label not in stat:
                e.model.status()
        with guard(f"{e.label}: {HISTORY_FILE}"):
            h = tables.checked_history(cached_history(e.model), str(e.model.history_path))
            if h.empty:
                st.info(f"{e.label}: no finished epoch yet.")
            else:
                histories[e.label] = h
    if not histories:
        st.info("No training history to show yet.")
        return
    colors = {e.label: e.color for e in trained}
    if layout == LAYOUTS[1]:
        small_multiples(histories, smoothing, colors)
    else:
        overlaid(histories, smoothing, colors)
    extras(histories, colors)
    best = {n: tables.best_epoch(h) for n, h in histories.items()}
    st.caption("Best epoch (max validation AUC, the checkpoint kept): "
               + ", ".join(f"{n} → {b}" for n, b in best.items())
               + (f" · refreshing every {REFRESH_SECONDS} s while training" if live else ""))


curves()
