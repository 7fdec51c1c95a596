"""Training curves: per-epoch loss, accuracy, AUC, learning rate and epoch time from history.csv.

Train solid, validation dashed, several models overlaid, EMA smoothing, best epoch (max val AUC) starred, and
the generalisation gap on its own chart. While a selected model is training, the charts refresh on their own.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])  # the repo root, so that `dashboard` and `core` import
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from dashboard import figures, tables  # noqa: E402
from dashboard.common import CITATION, cached_history, guard, page, select_run  # noqa: E402

REFRESH_SECONDS = 5

page("Training curves")
st.title("Training curves")

run = select_run()
if run is not None:
    names = [m.name for m in run.models]
    colors = figures.model_colors(names)
    c1, c2 = st.columns([3, 1])
    chosen = c1.multiselect("Models", names, default=names, key="curves_models")
    smoothing = c2.slider("Smoothing (EMA weight)", 0.0, 0.95, 0.0, 0.05, key="curves_smoothing",
                          help="0 = raw values; higher = smoother (TensorBoard-style exponential moving average)")

    def statuses() -> dict[str, dict]:
        out = {}
        for name in chosen:
            try:
                out[name] = run.model(name).status()
            except Exception:  # shown by the guard below
                pass
        return out

    live = any(tables.status_label(s) == "running" for s in statuses().values())

    @st.fragment(run_every=REFRESH_SECONDS if live else None)
    def curves() -> None:
        stat = statuses()
        for name, s in stat.items():
            if s.get("state") in ("running", "pending") or tables.status_label(s) == "stale":
                st.info(tables.progress_line(name, s))
        if live and not any(tables.status_label(s) == "running" for s in stat.values()):
            st.rerun()  # training just ended: stop refreshing
        histories = {}
        for name in chosen:
            m = run.model(name)
            with guard(f"{name}: status.json"):
                if name not in stat:
                    m.status()
            with guard(f"{name}: history.csv"):
                h = tables.checked_history(cached_history(m), str(m.dir / "history.csv"))
                if h.empty:
                    st.info(f"{name}: no finished epoch yet.")
                else:
                    histories[name] = h
        if not histories:
            if chosen:
                st.info("No training history to show yet.")
            return
        kw = dict(smoothing=smoothing, colors=colors)
        left, right = st.columns(2)
        left.plotly_chart(figures.history_figure(histories, [("train_loss", "train"), ("val_loss", "val")],
                                                 title="Loss", y_title="cross-entropy", **kw), key="curves_loss")
        right.plotly_chart(figures.history_figure(histories, [("train_acc", "train"), ("val_acc", "val")],
                                                  title="Accuracy", y_title="accuracy", **kw), key="curves_acc")
        left.plotly_chart(figures.history_figure(histories, [("val_auc", "val")], y_title="AUC",
                                                 title="Validation AUC (★ best epoch)", **kw), key="curves_auc")
        right.plotly_chart(figures.gap_figure(histories, **kw, height=340), key="curves_gap")
        left.plotly_chart(figures.history_figure(histories, [("lr", "train")], title="Learning rate",
                                                 y_title="lr", smoothing=0.0, colors=colors, mark_best=False,
                                                 log_y=True, height=280), key="curves_lr")
        right.plotly_chart(figures.history_figure(histories, [("seconds", "train")], title="Seconds per epoch",
                                                  y_title="s", smoothing=0.0, colors=colors, mark_best=False,
                                                  height=280), key="curves_seconds")
        best = {n: tables.best_epoch(h) for n, h in histories.items()}
        st.caption("Best epoch (max validation AUC, the checkpoint kept): "
                   + ", ".join(f"{n} → {b}" for n, b in best.items())
                   + (f" · refreshing every {REFRESH_SECONDS} s while training" if live else ""))

    curves()

st.divider()
st.caption(CITATION)
