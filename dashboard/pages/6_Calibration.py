"""Calibration: do predicted probabilities match observed frequencies? Reliability diagram, ECE and Brier score.

Bins, ECE and Brier come from metrics_<split>.json; for a split without them they are recomputed from
predictions_<split>.csv with ``core.metrics`` (the same functions the trainer used).
"""

import streamlit as st

from dashboard import figures, tables
from dashboard.common import cached_metrics, cached_predictions, choose_models, footer, guard, start

run = start("Calibration")
chosen_entries = choose_models(run)
st.title("Calibration")
if run is not None:
    models = run.models
    colors = {e.label: e.color for e in chosen_entries}
    splits = tables.sort_splits(s for m in models for s in m.splits())
    if not splits:
        st.info(f"No model of run `{run.id}` has predictions yet.")
    else:
        c1, c2 = st.columns([3, 1])
        chosen = [e.label for e in chosen_entries]
        split = c2.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="cal_split")

        bins, rows, preds = {}, [], {}
        for name in chosen:
            m = run.model(name)
            if split not in m.splits():
                st.info(f"{name}: no predictions for split `{split}` (yet).")
                continue
            met = pred = None
            if (m.dir / f"metrics_{split}.json").exists():
                with guard(f"{name}: metrics_{split}.json"):
                    met = cached_metrics(m, split)
            with guard(f"{name}: predictions_{split}.csv"):
                pred = cached_predictions(m, split)
                preds[name] = pred
            if met is None and pred is None:
                continue
            with guard(f"{name}: calibration"):
                bins[name], _ = tables.calibration_from(met, pred)
                rows.append(tables.calibration_row(name, met, pred))

        if rows:
            table = tables.calibration_table(rows)
            labels = {r["model"]: f"{r['model']} · ECE {r['ECE']:.3f}" for r in rows}
            left, right = st.columns([3, 2])
            left.plotly_chart(figures.reliability_figure(bins, labels=labels, colors=colors), key="cal_reliability")
            with right:
                st.subheader("ECE and Brier score")
                st.container(key="cal_table").dataframe(table, hide_index=True, placeholder="–",
                             column_config={"ECE": st.column_config.NumberColumn(format="%.4f"),
                                            "Brier": st.column_config.NumberColumn(format="%.4f"),
                                            "n": st.column_config.NumberColumn(format="%d")})
                st.caption("ECE: count-weighted mean |confidence − frequency| over equal-width bins (lower is "
                           "better). Brier: mean squared error of the probability (0 is perfect, 0.25 is a coin "
                           "toss at 50% prevalence). Both on the chosen split.")
            if preds:
                st.plotly_chart(figures.probability_histogram(preds, colors=colors), key="cal_hist")
        elif chosen:
            st.info(f"Nothing to show for split {split}.")

footer()
