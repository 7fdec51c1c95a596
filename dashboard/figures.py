"""Figure builders: pure functions of DataFrames and dicts that return plotly figures. No Streamlit, no files.

Colours are fixed per model (``model_colors`` over the run's model order), so a model keeps its colour on
every page. Training curves: train solid, validation dashed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.data.labels import CLASSES
from dashboard import tables
from dashboard.colors import ENSEMBLE_COLOR, PALETTE, model_colors  # noqa: F401  (re-exported)

HEIGHT = 340


def _color(colors: dict | None, name: str, i: int) -> str:
    return (colors or {}).get(name) or PALETTE[i % len(PALETTE)]


def _dash(dashes: dict | None, name: str) -> str:
    return (dashes or {}).get(name) or "solid"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = HEIGHT, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x, yaxis_title=y,
                      legend=dict(font=dict(size=11), tracegroupgap=2), hovermode="closest", **kw)
    return fig


LEGEND_BELOW = dict(legend_orientation="v", legend_y=-0.16, legend_yanchor="top", legend_x=0, legend_xanchor="left")


def _height_with_legend(items: int, plot: int = 430) -> int:
    """Room for a square-ish plot plus a legend of ``items`` rows below it (both ROC and PR get the same, so
    they line up side by side)."""
    return plot + 20 * items + 40


def curves_height(models: int) -> int:
    """ROC and PR side by side: a plot about as tall as it is wide plus one legend row per model (and two more:
    chance and the published point)."""
    return _height_with_legend(models + 2, plot=380)


def empty_figure(message: str, height: int = 200) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, "", "", "", height=height)


# --- training curves -------------------------------------------------------------------------------------

def history_figure(histories: dict[str, pd.DataFrame], series: list[tuple[str, str]], *, title: str,
                   y_title: str, smoothing: float = 0.0, colors: dict | None = None, mark_best: bool = True,
                   log_y: bool = False, height: int = HEIGHT) -> go.Figure:
    """Per-epoch curves of several models. ``series`` lists (history column, "train" | "val"): train is drawn
    solid, val dashed (each curve's ``meta`` says which). One legend entry per model (clicking it hides all of
    that model's curves) plus a grey key for the two line styles. EMA-smoothed when ``smoothing`` > 0 (the raw
    values stay as a faint line). The best epoch (max val_auc) is starred on every val curve."""
    fig = go.Figure()
    kinds = [k for _, k in series]
    for i, (name, h) in enumerate(histories.items()):
        color = _color(colors, name, i)
        best = tables.best_epoch(h) if mark_best else None
        x = h["epoch"].to_numpy()
        first = True
        for col, kind in series:
            if col not in h:
                continue
            raw = pd.to_numeric(h[col], errors="coerce").to_numpy()
            dash = "dash" if kind == "val" else "solid"
            if smoothing > 0:
                fig.add_trace(go.Scatter(x=x, y=raw, mode="lines", line=dict(color=color, dash=dash, width=1),
                                         opacity=0.25, legendgroup=name, showlegend=False, hoverinfo="skip",
                                         meta=f"{kind} raw"))
            y = tables.ema(raw, smoothing)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=name,
                                     legendgroup=name, showlegend=first, meta=kind,
                                     line=dict(color=color, dash=dash, width=2), marker=dict(size=5),
                                     hovertemplate=f"{name} · {kind}<br>epoch %{{x}}<br>{col} %{{y:.4g}}"
                                                   "<extra></extra>"))
            first = False
            if best is not None and kind == "val":
                j = int(np.flatnonzero(x == best)[0])
                fig.add_trace(go.Scatter(x=[best], y=[y[j]], mode="markers", legendgroup=name, showlegend=False,
                                         meta="best", marker=dict(symbol="star", size=14, color=color,
                                                                  line=dict(color="black", width=1)),
                                         hovertemplate=f"{name}: best epoch {best} (max val AUC)<extra></extra>"))
    if histories and len(set(kinds)) > 1:
        for kind, dash in (("train", "solid"), ("val", "dash")):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"<i>{kind}</i>", meta="key",
                                     line=dict(color="grey", dash=dash, width=2), hoverinfo="skip"))
    fig.update_xaxes(dtick=1 if max((len(h) for h in histories.values()), default=0) <= 15 else None)
    if log_y:
        fig.update_yaxes(type="log")
    return _layout(fig, title, "epoch", y_title, height=height)


def history_grid(histories: dict[str, pd.DataFrame], series: list[tuple[str, str]], *, title: str, y_title: str,
                 smoothing: float = 0.0, colors: dict | None = None, columns: int = 4,
                 row_height: int = 230) -> go.Figure:
    """Small multiples: one panel per model (train solid, val dashed, best epoch starred), shared y axis, so a
    dozen models stay readable. ``series`` as in ``history_figure``."""
    names = list(histories)
    rows = max(1, math.ceil(len(names) / columns))
    fig = make_subplots(rows=rows, cols=columns, shared_yaxes=True, subplot_titles=names, horizontal_spacing=0.02,
                        vertical_spacing=0.5 / (rows * 2 + 1) + 0.04)
    for i, name in enumerate(names):
        h, color = histories[name], _color(colors, name, i)
        r, c = i // columns + 1, i % columns + 1
        x = h["epoch"].to_numpy()
        best = tables.best_epoch(h)
        for col, kind in series:
            if col not in h:
                continue
            y = tables.ema(pd.to_numeric(h[col], errors="coerce").to_numpy(), smoothing)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers" if len(x) < 30 else "lines", name=name,
                                     meta=kind, showlegend=False, marker=dict(size=4),
                                     line=dict(color=color, dash="dash" if kind == "val" else "solid", width=2),
                                     hovertemplate=f"{name} · {kind}<br>epoch %{{x}}<br>{col} %{{y:.4g}}"
                                                   "<extra></extra>"), row=r, col=c)
            if best is not None and kind == "val":
                j = int(np.flatnonzero(x == best)[0])
                fig.add_trace(go.Scatter(x=[best], y=[y[j]], mode="markers", showlegend=False, meta="best",
                                         marker=dict(symbol="star", size=12, color=color,
                                                     line=dict(color="black", width=1)),
                                         hovertemplate=f"{name}: best epoch {best}<extra></extra>"), row=r, col=c)
        fig.update_xaxes(dtick=1 if len(x) <= 12 else None, row=r, col=c)
    fig.update_annotations(font_size=12)
    title += "  <span style='font-size:12px;color:grey'>train solid, validation dashed, ★ best epoch</span>"
    _layout(fig, title, "", "", height=row_height * rows + 70)
    fig.update_yaxes(title_text=y_title, col=1)
    fig.update_xaxes(title_text="epoch", row=rows)
    return fig


def gap_figure(histories: dict[str, pd.DataFrame], *, smoothing: float = 0.0, colors: dict | None = None,
               height: int = 260) -> go.Figure:
    """Generalisation gap val_loss - train_loss per epoch, with the zero line: rising means over-fitting."""
    fig = go.Figure()
    for i, (name, h) in enumerate(histories.items()):
        gap = tables.ema(tables.generalisation_gap(h).to_numpy(), smoothing)
        fig.add_trace(go.Scatter(x=h["epoch"], y=gap, mode="lines+markers", name=name,
                                 line=dict(color=_color(colors, name, i)),
                                 hovertemplate=f"{name}<br>epoch %{{x}}<br>gap %{{y:.4f}}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="grey", dash="dot"))
    fig.update_xaxes(dtick=1 if max((len(h) for h in histories.values()), default=0) <= 15 else None)
    return _layout(fig, "Generalisation gap (val loss − train loss)", "epoch", "gap", height=height)


# --- ROC / PR / confusion --------------------------------------------------------------------------------

def zoom_box(curves: dict[str, dict], points: dict[str, dict] | None = None, reach: float = 0.99) -> dict:
    """The informative corner of ROC and PR plots of good models: FPR from 0 to where every curve has reached
    ``reach`` sensitivity, sensitivity (= recall) from where the curves are at a tenth of that FPR, precision
    from its lowest value over that recall range. Operating points and Kermany et al.'s point stay inside.
    Returns ``fpr_max``, ``tpr_min``, ``precision_min`` (rounded outwards to 0.05)."""
    fpr_max, tpr_min, prec_min = 0.05, 1.0, 1.0
    for c in curves.values():
        fpr, tpr = np.asarray(c["fpr"], float), np.asarray(c["tpr"], float)
        hit = np.flatnonzero(tpr >= reach)
        fpr_max = max(fpr_max, float(fpr[hit[0]]) if len(hit) else 1.0)
    k = tables.KERMANY_2018
    pts = [p for p in (points or {}).values() if math.isfinite(p.get("fpr", math.nan))]
    fpr_max = min(1.0, math.ceil(max([fpr_max * 1.1, k["fpr"] * 1.15] + [p["fpr"] * 1.1 for p in pts]) * 20) / 20)
    for c in curves.values():
        fpr, tpr = np.asarray(c["fpr"], float), np.asarray(c["tpr"], float)
        tpr_min = min(tpr_min, float(np.interp(fpr_max / 10, fpr, tpr)))
    tpr_min = min([tpr_min, k["sensitivity"]] + [p["sensitivity"] for p in pts if math.isfinite(p["sensitivity"])])
    tpr_min = max(0.0, math.floor((tpr_min - 0.01) * 20) / 20)
    for c in curves.values():
        rec, prec = np.asarray(c.get("recall", []), float), np.asarray(c.get("precision", []), float)
        keep = rec >= tpr_min
        if keep.any():
            prec_min = min(prec_min, float(np.nanmin(prec[keep])))
    prec_min = min([prec_min] + [p["ppv"] for p in pts if math.isfinite(p.get("ppv", math.nan))])
    return {"fpr_max": fpr_max, "tpr_min": tpr_min, "precision_min": max(0.0, math.floor((prec_min - 0.01) * 20) / 20)}


def _point_trace(x: float, y: float, name: str, color: str, hover: str) -> go.Scatter:
    return go.Scatter(x=[x], y=[y], mode="markers", legendgroup=name, showlegend=False, hovertemplate=hover,
                      marker=dict(size=13, color=color, line=dict(color="white", width=2)))


def roc_figure(curves: dict[str, dict], *, labels: dict[str, str] | None = None,
               points: dict[str, dict] | None = None, colors: dict | None = None, dashes: dict | None = None,
               reference: bool = True, zoom: dict | None = None, height: int | None = None) -> go.Figure:
    """ROC curves (``curves[name]`` has ``fpr`` and ``tpr``), each model's current operating point
    (``points[name]`` has ``fpr``, ``sensitivity``, ``threshold``) and Kermany et al. 2018's published point.
    With ``zoom`` (from ``zoom_box``) the axes show that corner; without, the full 0-1 square."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="lightgrey", dash="dot"),
                             name="chance", hoverinfo="skip"))
    for i, (name, c) in enumerate(curves.items()):
        color = _color(colors, name, i)
        fig.add_trace(go.Scatter(x=c["fpr"], y=c["tpr"], mode="lines", name=(labels or {}).get(name, name),
                                 legendgroup=name, line=dict(color=color, width=2, dash=_dash(dashes, name)),
                                 customdata=c.get("thresholds"),
                                 hovertemplate=f"{name}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}"
                                               + ("<br>threshold %{customdata:.4f}" if c.get("thresholds") is not None
                                                  else "") + "<extra></extra>"))
        pt = (points or {}).get(name)
        if pt and math.isfinite(pt.get("fpr", math.nan)) and math.isfinite(pt.get("sensitivity", math.nan)):
            fig.add_trace(_point_trace(pt["fpr"], pt["sensitivity"], name, color,
                                       f"{name} at threshold {pt['threshold']:.4f}<br>sensitivity "
                                       f"{pt['sensitivity']:.3f}<br>specificity {1 - pt['fpr']:.3f}<extra></extra>"))
    if reference:
        k = tables.KERMANY_2018
        fig.add_trace(go.Scatter(x=[k["fpr"]], y=[k["sensitivity"]], mode="markers+text", name=k["label"],
                                 text=["Kermany 2018"], textposition="bottom right",
                                 marker=dict(symbol="x", size=12, color="black"),
                                 hovertemplate=k["label"] + "<br>published operating point on their own test "
                                                            "set, for reference<extra></extra>"))
    title = _zoom(fig, "ROC", zoom and ([-0.002, zoom["fpr_max"]], [zoom["tpr_min"], 1.005]), "top-left")
    return _layout(fig, title, "false positive rate (1 − specificity)", "true positive rate (sensitivity)",
                   height=height or _height_with_legend(len(curves) + 2), **LEGEND_BELOW)


def _zoom(fig: go.Figure, title: str, ranges: tuple | None, corner: str) -> str:
    """Set the axes to ``ranges`` (x, y) when zoomed, else the full 0-1 square; the title says which."""
    x, y = ranges or ([-0.01, 1.01], [-0.01, 1.01])
    fig.update_xaxes(range=x)
    fig.update_yaxes(range=y)
    return title + (f"  <span style='font-size:12px;color:grey'>(zoomed: {corner} corner)</span>" if ranges else "")


def pr_figure(curves: dict[str, dict], *, labels: dict[str, str] | None = None,
              points: dict[str, dict] | None = None, colors: dict | None = None, dashes: dict | None = None,
              prevalence: float | None = None, zoom: dict | None = None, height: int | None = None) -> go.Figure:
    """Precision-recall curves (``curves[name]`` has ``precision`` and ``recall``) with each model's current
    point (``points[name]``: ``sensitivity``, ``ppv``, ``threshold``) and the chance line at the prevalence."""
    fig = go.Figure()
    if prevalence is not None and math.isfinite(prevalence):
        fig.add_hline(y=prevalence, line=dict(color="lightgrey", dash="dot"),
                      annotation_text=f"chance (prevalence {prevalence:.2f})", annotation_position="bottom left")
    for i, (name, c) in enumerate(curves.items()):
        color = _color(colors, name, i)
        fig.add_trace(go.Scatter(x=c["recall"], y=c["precision"], mode="lines", name=(labels or {}).get(name, name),
                                 legendgroup=name, line=dict(color=color, width=2, dash=_dash(dashes, name)),
                                 hovertemplate=f"{name}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}<extra></extra>"))
        pt = (points or {}).get(name)
        if pt and math.isfinite(pt.get("ppv", math.nan)):
            fig.add_trace(_point_trace(pt["sensitivity"], pt["ppv"], name, color,
                                       f"{name} at threshold {pt['threshold']:.4f}<br>recall {pt['sensitivity']:.3f}"
                                       f"<br>precision {pt['ppv']:.3f}<extra></extra>"))
    title = _zoom(fig, "Precision–recall",
                  zoom and ([zoom["tpr_min"], 1.005], [zoom["precision_min"], 1.005]), "top-right")
    return _layout(fig, title, "recall (sensitivity)", "precision (PPV)",
                   height=height or _height_with_legend(len(curves) + 2), **LEGEND_BELOW)


def confusion_figure(point: dict, *, title: str = "", height: int = 280) -> go.Figure:
    """2×2 heatmap: rows the true class, columns the predicted class (``point`` from ``confusion_at``)."""
    z = [[point["tn"], point["fp"]], [point["fn"], point["tp"]]]
    names = [["TN", "FP"], ["FN", "TP"]]
    total = max(sum(map(sum, z)), 1)
    text = [[f"{names[r][c]} <b>{z[r][c]}</b><br>{z[r][c] / total:.1%}" for c in range(2)] for r in range(2)]
    fig = go.Figure(go.Heatmap(z=z, x=list(CLASSES), y=list(CLASSES), text=text, texttemplate="%{text}",
                               textfont=dict(size=14), colorscale="Blues", showscale=False, xgap=2, ygap=2,
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="true")
    fig.update_xaxes(side="top", title="predicted")
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=height,
                      margin=dict(l=10, r=10, t=60 if title else 30, b=10))
    return fig


# --- model comparison ------------------------------------------------------------------------------------

def comparison_bars(long: pd.DataFrame, *, colors: dict | None = None, height: int = 420) -> go.Figure:
    """Grouped bars (metric × model) with 95% intervals as error bars (none where ``lo``/``hi`` are NaN)."""
    fig = go.Figure()
    for i, (name, g) in enumerate(long.groupby("model", sort=False)):
        v, lo, hi = g["value"].to_numpy(float), g["lo"].to_numpy(float), g["hi"].to_numpy(float)
        fig.add_trace(go.Bar(
            x=g["metric"], y=v, name=name, marker_color=_color(colors, name, i),
            error_y=dict(type="data", symmetric=False, array=hi - v, arrayminus=v - lo,  # NaN: no bar drawn
                         thickness=1.5, width=4),
            customdata=np.stack([lo, hi, g["interval"].to_numpy(object)], axis=1),
            hovertemplate=f"{name}<br>%{{x}} %{{y:.3f}}<br>95% CI [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                          " (%{customdata[2]})<extra></extra>"))
    lows = long["lo"].where(long["lo"].notna(), long["value"])
    ymin = float(np.nanmin(lows)) if len(long) and lows.notna().any() else 0.0
    bottom = max(0.0, math.floor(ymin * 10) / 10 - 0.05)
    fig.update_yaxes(range=[bottom, 1.0])
    title = "Metrics at the validation-chosen threshold (95% intervals)"
    if bottom > 0:
        title += f"  <span style='font-size:11px;color:grey'>y axis starts at {bottom:.2f}</span>"
    return _layout(fig, title, "", "value", height=height, barmode="group")


def pvalue_heatmap(matrix: pd.DataFrame, height: int = 360) -> go.Figure:
    z = matrix.to_numpy(float)
    text = [["" if not np.isfinite(v) else (f"{v:.3f}" + (" *" if v < 0.05 else "")) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=list(matrix.columns), y=list(matrix.index), text=text, texttemplate="%{text}",
                               zmin=0, zmax=1, colorscale="RdBu", reversescale=False,
                               colorbar=dict(title="p"),
                               hovertemplate="%{y} vs %{x}: p = %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "DeLong p-values, every pair (* p < 0.05)", "", "", height=height)


# --- calibration -----------------------------------------------------------------------------------------

def reliability_figure(bins: dict[str, dict], *, labels: dict[str, str] | None = None, colors: dict | None = None,
                       height: int = 600) -> go.Figure:
    """Reliability diagram: mean predicted probability vs observed fraction of PNEUMONIA per bin; marker area
    grows with the bin's count; the diagonal is perfect calibration."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="lightgrey", dash="dot"),
                             name="perfectly calibrated", hoverinfo="skip"))
    for i, (name, b) in enumerate(bins.items()):
        mp = np.asarray([math.nan if v is None else v for v in b["mean_pred"]], float)
        fp = np.asarray([math.nan if v is None else v for v in b["frac_pos"]], float)
        count = np.asarray(b.get("count") or [1] * len(mp), float)
        keep = np.isfinite(mp) & np.isfinite(fp) & (count > 0)
        size = 6 + 18 * np.sqrt(count[keep] / max(count.max(), 1))
        fig.add_trace(go.Scatter(x=mp[keep], y=fp[keep], mode="lines+markers", name=(labels or {}).get(name, name),
                                 line=dict(color=_color(colors, name, i)), marker=dict(size=size),
                                 customdata=count[keep],
                                 hovertemplate=f"{name}<br>mean predicted %{{x:.3f}}<br>observed %{{y:.3f}}"
                                               "<br>%{customdata:.0f} images<extra></extra>"))
    fig.update_xaxes(range=[-0.01, 1.01], constrain="domain")
    fig.update_yaxes(range=[-0.01, 1.01], scaleanchor="x", scaleratio=1, constrain="domain")
    return _layout(fig, "Reliability diagram", "mean predicted P(PNEUMONIA)", "observed fraction PNEUMONIA",
                   height=height, legend_orientation="h", legend_y=-0.2, legend_yanchor="top", legend_x=0,
                   legend_xanchor="left")


def probability_histogram(preds: dict[str, pd.DataFrame], *, colors: dict | None = None, bins: int = 20,
                          height: int = 300) -> go.Figure:
    """How each model spreads its predicted probabilities (overlaid step histograms)."""
    fig = go.Figure()
    edges = np.linspace(0, 1, bins + 1)
    mids = (edges[:-1] + edges[1:]) / 2
    for i, (name, df) in enumerate(preds.items()):
        counts, _ = np.histogram(df["probability"].to_numpy(float), bins=edges)
        fig.add_trace(go.Scatter(x=mids, y=counts, mode="lines", line=dict(shape="hvh", color=_color(colors, name, i)),
                                 name=name, hovertemplate=f"{name}<br>p≈%{{x:.3f}}: %{{y}} images<extra></extra>"))
    fig.update_xaxes(range=[0, 1])
    return _layout(fig, "Predicted probabilities", "P(PNEUMONIA)", "images", height=height)


# --- populations ---------------------------------------------------------------------------------------------

def population_forest(table: pd.DataFrame, *, colors: dict | None = None) -> go.Figure:
    """AUC with its 95% interval for each population (rows) and model (colours), with chance (0.5) marked: a
    model good on one population and at chance on another looks like that at a glance."""
    fig = go.Figure()
    populations = list(dict.fromkeys(table["population"]))
    for i, (name, g) in enumerate(table.groupby("model", sort=False)):
        v, lo, hi = g["AUC"].to_numpy(float), g["lo"].to_numpy(float), g["hi"].to_numpy(float)
        fig.add_trace(go.Scatter(
            x=v, y=g["population"], mode="markers", name=name, orientation="h", offsetgroup=name,
            marker=dict(size=10, color=_color(colors, name, i)),
            error_x=dict(type="data", symmetric=False, array=hi - v, arrayminus=v - lo, thickness=1.5, width=4),
            customdata=np.stack([lo, hi, g["films"].to_numpy(object)], axis=1),
            hovertemplate=f"{name}<br>%{{y}}: AUC %{{x:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}], "
                          "%{customdata[2]} films<extra></extra>"))
    fig.add_vline(x=0.5, line_dash="dot", line_color="grey", annotation_text="chance", annotation_position="top")
    fig.update_xaxes(range=[0.2, 1.0])
    fig.update_yaxes(categoryorder="array", categoryarray=populations[::-1])
    height = max(280, 34 * len(populations) * max(1, min(3, table["model"].nunique())) // 2 + 100)
    return _layout(fig, "AUC per population (95% bootstrap intervals)", "AUC", "", height=height,
                   scattermode="group")
