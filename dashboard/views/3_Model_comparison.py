"""Model comparison: metrics with 95% intervals side by side, and DeLong's paired test against the best model.

AUC intervals come from the metrics file (bootstrap); accuracy, sensitivity and specificity get Wilson intervals
from the confusion counts at the validation-chosen threshold. The paired test matches images by path, so two
models are compared on exactly the same images.
"""

import streamlit as st

from core.report import comparison
from core.store import metrics_file, predictions_file
from dashboard import figures, tables
from dashboard.common import (
    cached_metrics,
    cached_predictions,
    choice,
    chosen_with_splits,
    guard,
    stop,
)

ctx = choice()
st.title("Model comparison")
chosen, splits = chosen_with_splits(ctx)
if (site := ctx.site).is_site:
    st.info(f"Site profile `{site.name}` is chosen, but this page compares models on the run's own splits at their "
            "validation thresholds (the training-data profile); the site's own figures are on Home, its threshold "
            "on the ROC page.")
colors = {e.label: e.color for e in chosen}
c1, _ = st.columns([1, 3])
split = c1.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="cmp_split")
if split == "val":
    st.warning(tables.VAL_WARNING)

metrics, preds = {}, {}
for e in chosen:
    if split not in e.model.splits():
        st.info(f"{e.label}: no predictions for split `{split}` (yet).")
        continue
    with guard(f"{e.label}: {metrics_file(split)}"):
        metrics[e.label] = cached_metrics(e.model, split)
    with guard(f"{e.label}: {predictions_file(split)}"):
        preds[e.label] = cached_predictions(e.model, split)

if not metrics:
    stop("No metrics to compare for the chosen models and split.")
long = tables.comparison_long(metrics)
st.plotly_chart(figures.comparison_bars(long, colors=colors), key="cmp_bars")
st.caption("AUC: 95% stratified bootstrap interval from the metrics file. Accuracy, sensitivity, "
           "specificity: 95% Wilson intervals at the threshold chosen on validation (Youden J). F1 is "
           "not a simple proportion, so it has no interval here.")

aucs = {n: m.get("auc") for n, m in metrics.items()}
delong = comparison.delong_vs_best(preds, aucs)
table = tables.comparison_table(long, delong)
st.subheader("Table (click a column to sort)")
st.caption("ΔAUC: this model's AUC minus the best one's. differs?: DeLong p < 0.05 against the best model. "
           "Sensitivity and specificity at the threshold chosen on validation; accuracy is in the chart above.")
st.container(key="cmp_table").dataframe(
    table, hide_index=True, placeholder="–", height="content",
    column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("AUC", "accuracy", "sensitivity",
                                                                             "specificity", "F1", "ΔAUC",
                                                                             "DeLong p")})

st.subheader("Is the difference real? DeLong's paired test against the best model")
if len(delong):
    best = delong["vs"].iloc[0]
    st.container(key="cmp_delong").dataframe(
        delong, hide_index=True, placeholder="–", height="content",
        column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("AUC", "AUC best", "ΔAUC", "z",
                                                                                 "p-value")})
    real = delong[delong["p < 0.05"]]["model"].tolist()
    same = delong[~delong["p < 0.05"]]["model"].tolist()
    lines = [f"Best AUC on **{split}**: **{best}**."]
    if real:
        lines.append(f"Significantly lower (p < 0.05): {', '.join(real)}.")
    if same:
        lines.append(f"Not distinguishable from {best} on these images (p ≥ 0.05): {', '.join(same)}.")
    st.markdown(" ".join(lines))
    st.caption("Two-sided DeLong test for correlated ROC AUCs on the images both models scored "
               "(matched by path). Several comparisons at once: treat p-values near 0.05 with care.")
    if len(preds) > 2:
        with st.expander("Every pair"):
            st.plotly_chart(figures.pvalue_heatmap(comparison.delong_all_pairs(preds)), key="cmp_pairs")
elif len(preds) < 2:
    st.info("Choose at least two models with predictions to test differences.")
