"""ROC, precision-recall and confusion matrices from predictions_<split>.csv, with a live threshold per model.

Moving a model's threshold slider moves its operating point on both curves and updates its confusion matrix and
rates (``core.metrics.confusion_at``). Presets are the thresholds chosen on validation (metrics_val.json) and
0.5. PPV and NPV are also shown at a prevalence the user chooses (``core.metrics.predictive_values``).
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])  # the repo root, so that `dashboard` and `core` import
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import streamlit as st  # noqa: E402

from core import metrics as cm  # noqa: E402
from dashboard import figures, tables  # noqa: E402
from dashboard.common import CITATION, cached_metrics, cached_predictions, guard, page, select_run  # noqa: E402

PRESET_LABELS = {"youden": "Youden", "sens95": "Sens95", "default": "0.5"}
PRESET_HELP = {"youden": "max Youden J (sensitivity + specificity − 1) on validation",
               "sens95": "highest threshold with validation sensitivity ≥ 95%", "default": "the fixed 0.5"}


def slider_key(model: str) -> str:
    return f"thr_{model}"


def set_threshold(key: str, value: float) -> None:
    st.session_state[key] = float(value)


page("ROC, PR and confusion")
st.title("ROC, precision–recall and confusion")

run = select_run()
if run is not None:
    models = run.models
    names = [m.name for m in models]
    colors = figures.model_colors(names)
    splits = tables.sort_splits(s for m in models for s in m.splits())
    if not splits:
        st.info(f"No model of run `{run.id}` has predictions yet.")
    else:
        c1, c2, c3 = st.columns([3, 1, 1])
        chosen = c1.multiselect("Models", names, default=names, key="roc_models")
        split = c2.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="roc_split")

        data = {}  # name -> (y, p, metrics of the split or None, presets)
        for name in chosen:
            m = run.model(name)
            if split not in m.splits():
                st.info(f"{name}: no predictions for split `{split}` (yet).")
                continue
            with guard(f"{name}: predictions for {split}"):
                pred = cached_predictions(m, split)
                met = None
                with guard(f"{name}: metrics_{split}.json"):
                    if (m.dir / f"metrics_{split}.json").exists():
                        met = cached_metrics(m, split)
                val = None
                with guard(f"{name}: validation thresholds (metrics_val.json)"):
                    val = cached_metrics(m, "val")
                data[name] = (pred["label"].to_numpy(), pred["probability"].to_numpy(), met,
                              tables.threshold_presets(val))

        split_prev = next((float(y.mean()) for y, *_ in data.values()), 0.5)
        prevalence = c3.number_input("Prevalence for PPV/NPV", min_value=0.001, max_value=0.999,
                                     value=round(min(max(split_prev, 0.001), 0.999), 3), step=0.01, format="%.3f",
                                     key=f"roc_prevalence_{split}",
                                     help=f"PNEUMONIA prevalence to re-weight PPV and NPV to (this split: "
                                          f"{split_prev:.3f}), e.g. a clinic's rather than the data set's")

        charts = st.container()
        points, curves, labels = {}, {}, {}
        for name, (y, p, met, presets) in data.items():
            key = slider_key(name)
            st.session_state.setdefault(key, presets.get("youden", 0.5))
            with st.container(border=True):
                controls, heat, rates = st.columns([5, 4, 3])
                with controls:
                    st.markdown(f"#### {name}")
                    thr = st.slider("Threshold: P(PNEUMONIA) ≥ t means PNEUMONIA", 0.0, 1.0, step=0.001,
                                    format="%.4f", key=key)
                    bcols = st.columns(len(presets))
                    for bc, (rule, value) in zip(bcols, presets.items()):
                        label = PRESET_LABELS.get(rule, rule) + ("" if rule == "default" else f" {value:.3f}")
                        bc.button(label, key=f"preset_{rule}_{name}", on_click=set_threshold, args=(key, value),
                                  width="stretch", help=f"{PRESET_HELP.get(rule, rule)}: {value:.4f}")
                    pt = tables.live_point(y, p, thr, prevalence)
                    st.markdown(f"**{name}** at threshold {thr:.4f}: TP {pt['tp']} · FP {pt['fp']} · "
                                f"TN {pt['tn']} · FN {pt['fn']}")
                    st.caption("Presets are chosen on validation (metrics_val.json), never on the split shown.")
                heat.plotly_chart(figures.confusion_figure(pt), key=f"cm_{name}", config={"displayModeBar": False})
                rates.container(key=f"rates_{name}").dataframe(
                    tables.rates_table(pt), hide_index=True, placeholder="–",
                    column_config={"value": st.column_config.NumberColumn(format="%.3f")})
                points[name] = pt
                c = cm.curves(y, p)
                curves[name] = {**c["pr"], **c["roc"]}  # the ROC's thresholds win: its hover shows them
                labels[name] = tables.legend_label(name, met, y, p)

        with charts:
            if curves:
                a, b = st.columns(2)
                a.plotly_chart(figures.roc_figure(curves, labels=labels, points=points, colors=colors), key="roc")
                b.plotly_chart(figures.pr_figure(curves, labels=labels, points=points, colors=colors,
                                                 prevalence=split_prev), key="pr")
                st.caption(f"Split **{split}**. Legend: AUC with its 95% bootstrap interval. Dots: each model's "
                           "current threshold. ✕: the operating point Kermany et al. 2018 published on their own "
                           "test set (sensitivity 93.2%, specificity 90.1%), for reference only.")
            elif chosen:
                st.info("No predictions to draw for the chosen models.")

st.divider()
st.caption(CITATION)
