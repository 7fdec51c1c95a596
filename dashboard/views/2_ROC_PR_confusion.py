"""ROC, precision-recall and confusion from predictions_<split>.csv, with a live threshold per model.

The chosen models' curves share one ROC and one PR plot (zoomed to the informative corner, the full square one
click away). The operating-point panel shows one model at a time: moving its threshold moves its dot on both
curves and updates its confusion matrix and rates (``core.evaluate.metrics.confusion_at``); a compact table lists every
chosen model's operating point. Presets are the thresholds chosen on validation (metrics_val.json) and 0.5.
"""

import streamlit as st

from core.evaluate import metrics as cm
from core.store import metrics_file
from dashboard import figures, tables
from dashboard.common import (
    cached_metrics,
    cached_predictions,
    choice,
    chosen_with_splits,
    guard,
    stop,
)

THRESHOLDS_KEY = "thresholds"  # {model label: threshold}, kept across pages and model switches
VIEWS = ("zoomed", "full 0–1")


def slider_key(label: str) -> str:
    return f"thr_{label}"


def set_threshold(label: str, value: float) -> None:
    st.session_state[slider_key(label)] = float(value)
    st.session_state.setdefault(THRESHOLDS_KEY, {})[label] = float(value)


def keep_threshold(label: str) -> None:
    st.session_state.setdefault(THRESHOLDS_KEY, {})[label] = float(st.session_state[slider_key(label)])


def threshold_of(label: str, presets: dict) -> float:
    """The threshold last set for this model, else its first preset (the model's own rule: see ``load``)."""
    return st.session_state.get(THRESHOLDS_KEY, {}).get(label, next(iter(presets.values()), 0.5))


def load(chosen, split: str) -> dict:
    """label -> (y, p, metrics of the split or None, presets from validation) for the chosen models."""
    data = {}
    for e in chosen:
        m = e.model
        if split not in m.splits():
            st.info(f"{e.label}: no predictions for split `{split}` (yet).")
            continue
        with guard(f"{e.label}: predictions for {split}"):
            pred = cached_predictions(m, split)
            met = val = None
            with guard(f"{e.label}: {metrics_file(split)}"):
                if m.has_metrics(split):
                    met = cached_metrics(m, split)
            with guard(f"{e.label}: validation thresholds ({metrics_file('val')})"):
                val = cached_metrics(m, "val")
            presets = tables.threshold_presets(val)
            own = cm.headline_rule(m.config)  # the rule the model's figures are quoted at comes first
            presets = {own: presets[own], **presets} if own in presets else presets
            if (prof := site.profile(m)) is not None:  # the site's own threshold comes first
                presets = {f"site:{site.name}": float(prof["threshold"]["value"]), **presets}
            data[e.label] = (pred["label"].to_numpy(), pred["probability"].to_numpy(), met, presets)
    return data


def operating_panel(data: dict, prevalence: float) -> None:
    """One model's threshold, presets, confusion matrix and rates."""
    controls, heat, rates = st.columns([5, 4, 3])
    with controls:
        label = st.selectbox("Operating point of", list(data), key="roc_focus")
        y, p, _, presets = data[label]
        key = slider_key(label)
        if key not in st.session_state:
            st.session_state[key] = threshold_of(label, presets)
        thr = st.slider("Threshold: P(PNEUMONIA) ≥ t means PNEUMONIA", 0.0, 1.0, step=0.001, format="%.4f", key=key,
                        on_change=keep_threshold, args=(label,))
        keep_threshold(label)
        widths = [len(tables.preset_label(r)) + 6 for r in presets]  # room for each label, so none is cut
        for bc, (rule, value) in zip(st.columns(widths), presets.items()):
            bc.button(tables.preset_label(rule), key=f"preset_{rule}_{label}", on_click=set_threshold,
                      args=(label, value), width="stretch",
                      help=f"{cm.rule_label(rule)}, chosen on validation: {value:.4f}")
        pt = tables.live_point(y, p, thr, prevalence)
        st.markdown(f"**{label}** at threshold {thr:.4f}: TP {pt['tp']} · FP {pt['fp']} · TN {pt['tn']} · "
                    f"FN {pt['fn']}")
    heat.plotly_chart(figures.confusion_figure(pt), key="cm_focus", config={"displayModeBar": False})
    rates.container(key="rates_focus").dataframe(
        tables.rates_table(pt), hide_index=True, placeholder="–", height="content",
        column_config={"value": st.column_config.NumberColumn(format="%.3f")})
    st.caption(tables.PRESETS_EXPLAINED)


ctx = choice()
st.title("ROC, precision–recall and confusion")
chosen, splits = chosen_with_splits(ctx)
site = ctx.site
st.caption(site.describe())

c1, c2, c3 = st.columns([2, 2, 2])
split = c1.selectbox("Split", splits, index=splits.index(tables.default_split(splits)), key="roc_split")
view = c2.segmented_control("Axes", VIEWS, default=VIEWS[0], key="roc_view",
                            help="zoomed: the corner where good models differ; full: the whole 0–1 square")
if split == "val":
    st.warning(tables.VAL_WARNING)
data = load(chosen, split)
if not data:
    stop("No predictions to draw for the chosen models.")
split_prev = float(next(iter(data.values()))[0].mean())
prev_default = next((site.prevalence(e.model, split_prev) for e in chosen if site.profile(e.model)), split_prev)
prevalence = c3.number_input("Prevalence for PPV/NPV", min_value=0.001, max_value=0.999,
                             value=round(min(max(prev_default, 0.001), 0.999), 3), step=0.01, format="%.3f",
                             key=f"roc_prevalence_{split}_{site.name}",
                             help=f"PNEUMONIA prevalence to re-weight PPV and NPV to (this split: {split_prev:.3f}), "
                                  "e.g. a clinic's rather than the data set's")

points, curves, labels = {}, {}, {}
for label, (y, p, met, presets) in data.items():
    points[label] = tables.live_point(y, p, threshold_of(label, presets), prevalence)
    c = cm.curves(y, p)
    curves[label] = {**c["pr"], **c["roc"]}  # the ROC's thresholds win: its hover shows them
    labels[label] = tables.legend_label(label, met, y, p)

charts = st.container()
with st.container(border=True):
    operating_panel(data, prevalence)

with charts:
    colors = {e.label: e.color for e in chosen}
    dashes = {e.label: e.dash for e in chosen}
    zoom = figures.zoom_box(curves, points) if view != VIEWS[1] else None
    a, b = st.columns(2)
    height = figures.curves_height(len(curves))
    a.plotly_chart(figures.roc_figure(curves, labels=labels, points=points, colors=colors, dashes=dashes, zoom=zoom,
                                      height=height), key="roc")
    b.plotly_chart(figures.pr_figure(curves, labels=labels, points=points, colors=colors, dashes=dashes,
                                     prevalence=split_prev, zoom=zoom, height=height), key="pr")
    st.caption(f"Split **{split}**. Legend: AUC with its 95% bootstrap interval. Dots: each model's current "
               "threshold. ✕: the operating point Kermany et al. 2018 published on their own test set "
               "(sensitivity 93.2%, specificity 90.1%), for reference only. Double-click a plot to autoscale it.")

st.subheader("Operating points of every chosen model")
st.container(key="roc_points").dataframe(
    tables.points_table(points, {k: v[3] for k, v in data.items()}), hide_index=True, placeholder="–",
    height="content", column_config={c: st.column_config.NumberColumn(format="%.3f")
                                     for c in ("threshold", "sensitivity", "specificity", "PPV", "NPV", "F1")})
st.caption("Each model at its current threshold (the panel above moves one model's; the others stay where they "
           "were set, by default at Youden's threshold chosen on validation).")
