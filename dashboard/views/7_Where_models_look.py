"""Where models look: per model, how much of its heatmap lies inside the lung fields, over a split, ranked.

Figures come from ``<run>/<model>/lung_focus_<split>.csv`` written by ``python -m trainer focus`` (core/explain/focus.py
defines lung focus and border mass; core/models/lungs.py the lung model). Nothing is computed here, so the page is
instant.
"""

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from core.explain.focus import FLAG_BELOW, ranking
from core.models.lungs import METRICS
from core.store import ArtifactError, focus_splits, read_focus, read_json
from dashboard.common import choice, guard, stop
from dashboard.tables import plain

UNIFORM_MARGIN = 0.1  # "clearly above a uniform map"

run = choice().run
st.title("Where models look")
st.markdown(
    "A heatmap is only worth reading if it points at the lungs. **Lung focus** is the share of a map's weight that "
    "lies inside the lung fields; **border mass** is the share on the image border (where the burned-in "
    "\"R\" / \"A-P\" markers and labels sit) or outside the body. A model whose maps mostly fall outside the "
    "lungs may have learned a shortcut (markers, film edges, positioning) instead of the disease: its maps are "
    f"flagged when lung focus is below {FLAG_BELOW:.0%}. Models are ranked by their median lung focus, best first.")


def lung_model_line() -> str:
    try:
        m = read_json(METRICS)
        o = m["heldout"]["overall"]
        return (f"Lung fields come from the project's lung model (MobileNetV2 U-Net, `lungmodel/`): held-out "
                f"Dice {o['dice']:.3f}, IoU {o['iou']:.3f} on {o['n']} films never used in its training.")
    except (ArtifactError, KeyError, TypeError):
        return "The lung model's held-out figures are missing (lungmodel/metrics.json)."


def is_ensemble(model) -> bool:
    """Ensembles have no maps of their own: not worth a "not shown" note."""
    return model.is_ensemble  # core.store.is_ensemble, the one test (False when config.json is unreadable)


def focus_figure(df, order, method: str) -> go.Figure:
    """Horizontal box per model (every film a dot), best model on top; the flag line at FLAG_BELOW."""
    fig = go.Figure()
    for name in reversed(order):
        t = df[(df["model"] == name) & (df["method"] == method)]
        fig.add_trace(go.Box(x=t["lung_focus"], name=name, boxpoints="all", jitter=0.4, pointpos=0,
                             marker={"size": 4, "opacity": 0.45, "color": "#1f4e79"},
                             line={"width": 1.5, "color": "#1f4e79"}, fillcolor="rgba(31, 78, 121, 0.25)",
                             showlegend=False,
                             hovertext=t["path"].map(lambda p: Path(str(p)).name), boxmean=False))
    fig.add_vline(x=FLAG_BELOW, line_dash="dash", line_color="firebrick",
                  annotation_text="flagged below: most evidence outside the lungs", annotation_position="top right",
                  annotation={"yshift": 24})
    uniform = df["lung_fraction"].median()
    if uniform == uniform:  # not NaN
        fig.add_vline(x=uniform, line_dash="dot", line_color="gray", annotation_text="a uniform map",
                      annotation_position="top left", annotation={"yshift": 24})
    fig.update_layout(height=max(320, 46 * len(order) + 120), margin={"l": 10, "r": 10, "t": 70, "b": 40},
                      xaxis={"title": "lung focus (share of the map inside the lung fields)", "range": [0, 1],
                             "tickformat": ".0%"}, title=f"{method}: lung focus per film")
    return fig


splits = focus_splits(run)
if not splits:
    stop(f"No lung-focus figures in run `{plain(run.id)}` yet. Compute them (a few minutes on a CPU):\n\n"
         f"```\npython -m trainer focus --run {run.dir} --split test --n 120\n```")
c1, c2 = st.columns(2)
split = c1.selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0, key="wl_split")
with guard(f"lung focus on {split}"):
    df, problems = read_focus(run, split)
    methods = sorted(df["method"].dropna().unique())
    if not methods:
        stop(f"No model of run `{plain(run.id)}` has lung-focus figures for `{plain(split)}`.")
    method = c2.selectbox("CAM method", methods, index=methods.index("Grad-CAM") if "Grad-CAM" in methods else 0,
                          key="wl_method")
    table = ranking(df, method)
    uniform = df["lung_fraction"].median()
    best, worst = table.iloc[0], table.iloc[-1]
    st.markdown(
        f"**{plain(best['model'])}** looks at the lungs most (median lung focus {best['median lung focus']:.0%}); "
        f"**{plain(worst['model'])}** least ({worst['median lung focus']:.0%}). "
        f"{(table['median lung focus'] < FLAG_BELOW).sum()} of {len(table)} models put most of a typical map "
        f"outside the lungs. For scale: the lungs cover about {uniform:.0%} of these films, so a map spread "
        "evenly over the film (one that shows nothing) would score that much; a model that looks at the lungs "
        f"scores well above it. {(table['median lung focus'] >= uniform + UNIFORM_MARGIN).sum()} of "
        f"{len(table)} models score at least {UNIFORM_MARGIN:.0%} above it.")
    st.plotly_chart(focus_figure(df, list(table["model"]), method), key="wl_box")
    shares = ["median lung focus", "q25", "q75", "median border mass", "flagged"]
    st.container(key="wl_table").dataframe(
        table.assign(**{c: 100 * table[c] for c in shares}), hide_index=True, height="content",
        column_config={c: st.column_config.NumberColumn(format="%.0f%%") for c in shares})
    st.caption(f"n = films per model ({plain(split)} split, the same seeded sample for every model); flagged = "
               f"share of that model's maps with lung focus under {FLAG_BELOW:.0%}. Maps target PNEUMONIA. "
               + lung_model_line())
    skipped = {k: v for k, v in problems.items() if not is_ensemble(run.model(k))}
    if skipped:
        st.caption("Not shown: " + "; ".join(f"{plain(k)} ({plain(v)})" for k, v in skipped.items()))
