"""Model comparison: metrics with 95% intervals side by side, and DeLong's paired test against the best model.

AUC intervals come from the metrics file (bootstrap); accuracy, sensitivity and specificity get Wilson intervals
from the confusion counts at the validation-chosen threshold. The paired test matches images by path, so two
models are compared on exactly the same images.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])  # the repo root, so that `dashboard` and `core` import
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from dashboard import figures, tables  # noqa: E402
from dashboard.common import CITATION, cached_metrics, cached_predictions, guard, page, select_run  # noqa: E402

page("Model comparison")
st.title("Model comparison")

run = select_run()
if run is not None:
    models = run.models
    names = [m.name for m in models]
    colors = figures.model_colors(names)
    splits = tables.sort_splits(s for m in models for s in m.splits())
    if not splits:
        st.info(f"No model of run `{run.id}` has predictions yet.")
    else:
        c1, c2 = st.columns([3, 1])
        chosen = c1.multiselect("Models", names, default=names, key="cmp_models")
        split = c2.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="cmp_split")

        metrics, preds = {}, {}
        for name in chosen:
            m = run.model(name)
            if split not in m.splits():
                st.info(f"{name}: no predictions for split `{split}` (yet).")
                continue
            with guard(f"{name}: metrics_{split}.json"):
                metrics[name] = cached_metrics(m, split)
            with guard(f"{name}: predictions_{split}.csv"):
                preds[name] = cached_predictions(m, split)

        if not metrics:
            st.info("No metrics to compare for the chosen models and split.")
        else:
            long = tables.comparison_long(metrics)
            st.plotly_chart(figures.comparison_bars(long, colors=colors), key="cmp_bars")
            st.caption("AUC: 95% stratified bootstrap interval from the metrics file. Accuracy, sensitivity, "
                       "specificity: 95% Wilson intervals at the threshold chosen on validation (Youden J). F1 is "
                       "not a simple proportion, so it has no interval here.")

            aucs = {n: m.get("auc") for n, m in metrics.items()}
            delong = tables.delong_vs_best(preds, aucs)
            table = tables.comparison_table(long, delong)
            st.subheader("Table (click a column to sort)")
            st.container(key="cmp_table").dataframe(table, hide_index=True, placeholder="–",
                         column_config={c: st.column_config.NumberColumn(format="%.4f")
                                        for c in ("AUC", "accuracy", "sensitivity", "specificity", "F1",
                                                  "ΔAUC vs best", "DeLong p")})

            st.subheader("Is the difference real? DeLong's paired test against the best model")
            if len(delong):
                best = delong["vs"].iloc[0]
                st.container(key="cmp_delong").dataframe(delong, hide_index=True, placeholder="–",
                             column_config={c: st.column_config.NumberColumn(format="%.4f")
                                            for c in ("AUC", "AUC best", "ΔAUC", "z", "p-value")})
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
                        st.plotly_chart(figures.pvalue_heatmap(tables.delong_all_pairs(preds)), key="cmp_pairs")
            elif len(preds) < 2:
                st.info("Choose at least two models with predictions to test differences.")

st.divider()
st.caption(CITATION)
