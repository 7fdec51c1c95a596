"""Calibration: do predicted probabilities match observed frequencies? Reliability diagram, ECE and Brier score.

Bins, ECE and Brier come from metrics_<split>.json; for a split without them they are recomputed from
predictions_<split>.csv with ``core.evaluate.metrics`` (the same functions the trainer used).
"""

import pandas as pd
import streamlit as st

from core.data.layouts import sort_splits
from core.report import summary
from core.store import CALIBRATION_FILE, metrics_file, predictions_file
from dashboard import figures, tables
from dashboard.common import cached_metrics, cached_predictions, choice, guard, plain, stop

ctx = choice()
run, site, chosen_entries = ctx.run, ctx.site, ctx.chosen
st.title("Calibration")
colors = {e.label: e.color for e in chosen_entries}
splits = sort_splits(s for m in run.models for s in m.splits())
if not splits:
    stop(f"No model of run `{plain(run.id)}` has predictions yet.")
c1, c2 = st.columns([3, 1])
chosen = [e.label for e in chosen_entries]
split = c2.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="cal_split")
use_cal = c1.radio("Probabilities", ["raw", "calibrated"], key="cal_which", horizontal=True,
                   help="calibrated: temperature and bias on the logit, fitted on validation "
                        "(python -m trainer explain)")

bins, rows, preds = {}, [], {}
for name, m in ((e.label, e.model) for e in chosen_entries):
    if split not in m.splits():
        st.info(f"{name}: no predictions for split `{split}` (yet).")
        continue
    met = pred = None
    if use_cal == "calibrated":
        with guard(f"{name}: calibration"):
            scaling = site.scaling(m)  # the chosen profile's calibration
            if scaling is None:
                st.info(f"{name}: no {CALIBRATION_FILE} (run `python -m trainer explain --run …`).")
                continue
            pred = cached_predictions(m, split).copy()
            pred["probability"] = scaling(pred["probability"])
            preds[name] = pred
            bins[name], _ = tables.calibration_from(None, pred)
            rows.append(tables.calibration_row(name, None, pred))
        continue
    if m.has_metrics(split):
        with guard(f"{name}: {metrics_file(split)}"):
            met = cached_metrics(m, split)
    with guard(f"{name}: {predictions_file(split)}"):
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
    left, right = st.columns([1, 1])  # the table's model names need half the width
    left.plotly_chart(figures.reliability_figure(bins, labels=labels, colors=colors), key="cal_reliability")
    with right:
        st.subheader("ECE and Brier score")
        st.container(key="cal_table").dataframe(
            table, hide_index=True, placeholder="–", height="content",
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
if use_cal == "calibrated":
    st.caption(site.describe())

with st.expander("Before and after calibration: temperature, bias, ECE and Brier per model"), guard("calibration"):
    ba = [r for r in summary.calibration_rows(run, ("test", "official_val")) if r["model"] in chosen]
    if ba:
        st.dataframe(pd.DataFrame(ba)[["model", "split", "temperature", "bias", "n", "ece_raw", "ece_calibrated",
                                       "brier_raw", "brier_calibrated"]]
                     .rename(columns={"temperature": "T", "bias": "b", "ece_raw": "ECE raw",
                                      "ece_calibrated": "ECE cal.",
                                      "brier_raw": "Brier raw", "brier_calibrated": "Brier cal."}),
                     hide_index=True, width="stretch", height=min(40 + 35 * len(ba), 600),
                     column_config={c: st.column_config.NumberColumn(format="%.4f")
                                    for c in ("T", "b", "ECE raw", "ECE cal.", "Brier raw", "Brier cal.")})
        st.caption("One temperature T and bias b per model, fitted on validation only (p_cal = "
                   "sigmoid(logit(p) / T + b)); scored on test and official_val. The map is monotonic: no film "
                   "changes label. T fixes over- or under-confidence; b fixes the shift between the classes that "
                   "the class-weighted loss makes on purpose (it trains as if both classes were equally common).")
    else:
        st.info("No model of this run has a calibration yet: `python -m trainer explain --run …`.")
