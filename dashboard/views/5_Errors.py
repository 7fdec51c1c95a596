"""Errors: the false positives and false negatives of one model on one split, most confident first, with CAMs.

Counts come from ``predictions_<split>.csv`` at a threshold chosen on validation (``p >= threshold`` means
PNEUMONIA, as everywhere). CAMs need the film files; without them the page shows the tables only.
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.data.images import ImageError
from core.data.labels import CLASSES, POSITIVE
from core.evaluate import metrics as cm
from core.explain.cams import CAM_METHODS
from core.store import CONFIG_FILE, ArtifactError
from dashboard import explain as ex
from dashboard.common import cached_predictions, guard, model_names, model_page, plain, stop

PAIRS_PER_ROW = 2  # each error as plain film + map side by side: four columns of about 260 px at 1440 px
THUMB_SIDE = 512

ctx = model_page("Errors: false positives and false negatives",
                 "Films the model got wrong at the operating threshold chosen on validation, most confident first, "
                 "each as the plain film beside its map. Probabilities are calibrated on validation when the run "
                 "has a calibration.")
run, site = ctx.run, ctx.site
names = model_names(ctx)

st.sidebar.header("Errors")
if st.session_state.get("err_model") not in names:  # a one-model page starts on the sidebar's first choice
    st.session_state["err_model"] = ctx.first_model() or names[0]
model_name = st.sidebar.selectbox("Model", names, key="err_model",
                                  help="one model at a time; it starts on the first model chosen above")
ma = run.model(model_name)
splits: list[str] = []
with guard(model_name):
    splits = ma.splits()
if not splits:
    st.warning(f"{model_name} has no predictions yet (the trainer writes them after the last epoch).")
    stop()
split = st.sidebar.selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0, key="err_split")
rules = [cm.YOUDEN, cm.DEFAULT_RULE]
with guard(f"{model_name}: validation thresholds"):
    rules = list(ma.metrics("val")["thresholds"])  # every rule the trainer chose on validation, by its own name
own = cm.HEADLINE_RULE
with guard(f"{model_name}: {CONFIG_FILE}"):  # a broken config is an error here, the thresholds still show
    own = cm.headline_rule(ma.config)
rule = st.sidebar.selectbox("Threshold (chosen on validation)", rules, index=rules.index(own) if own in rules else 0,
                            format_func=cm.rule_label, key="err_rule")
per_kind = st.sidebar.slider("Films per kind", 1, 24, 2, key="err_n")
show_cams = st.sidebar.toggle("Show CAMs", value=True, key="err_cams")
# Score-CAM (masked forward passes, about 5 s per film and model on this CPU: BENCHMARKS.md) is left to the
# Grad-CAM page.
GALLERY_METHODS = [m for m in CAM_METHODS if m != "Score-CAM"]
method = st.sidebar.selectbox("CAM method", GALLERY_METHODS, key="err_method", disabled=not show_cams,
                              help="Score-CAM is too slow for a gallery; use it on the Grad-CAM page.")
alpha = st.sidebar.slider("Heatmap opacity", 0.0, 1.0, ex.DEFAULT_ALPHA, 0.05, key="err_alpha",
                          disabled=not show_cams)
scale = st.sidebar.radio("Colour scale", list(ex.SCALES), format_func=ex.SCALES.get, key="err_scale",
                         disabled=not show_cams, help="One scale: the same colour means the same evidence on every "
                         "film. Contrast-stretched: each map stretched to its own range (not comparable).")

preds = threshold = None
with guard(f"{model_name}, {split} split"):
    preds = cached_predictions(ma, split)
    threshold = site.threshold(ma, rule)  # the site's own when the rule is the profile's
if preds is None or threshold is None:
    stop()

fp, fn = ex.errors_of(preds, threshold)
scaling = None
with guard(f"{model_name}: calibration"):
    scaling = site.scaling(ma)


def shown_probability(p: float) -> float:
    """Calibrated when the model has a calibration (validation-fitted), else raw; labels never change."""
    return float(p) if scaling is None else float(scaling(p))


c = st.columns(4)
c[0].metric(f"Films ({split})", len(preds))
c[1].metric("Threshold", f"{threshold:.3f}", help=f"{cm.rule_label(rule)}; {site.describe(ma)}")
st.caption(site.describe(ma))
c[2].metric("False positives", len(fp), help="NORMAL films called PNEUMONIA")
c[3].metric("False negatives", len(fn), help="PNEUMONIA films called NORMAL")
if split == "val":
    st.info("The threshold was chosen on this very split, so these errors are optimistic.")

# The films: are they on this machine at all?
shown = pd.concat([fp.head(per_kind), fn.head(per_kind)])
resolved = {p: ex.resolve_image_path(p, run) for p in shown["path"]}
have_files = any(v is not None for v in resolved.values())
cm = None
if show_cams and not shown.empty:
    if not have_files:
        st.info(f"The data folder ({plain(ex.data_root_of(run))}) is absent on this machine, so no CAMs can be drawn: "
                "showing the tables only.")
    else:
        try:
            cm = ex.cached_model(ma)
        except ArtifactError as e:
            st.error(f"{model_name}: {e}; showing the tables only.")
        except Exception as e:
            st.error(f"{model_name}: cannot load ({type(e).__name__}: {e}); showing the tables only.")


def gallery(rows: pd.DataFrame, kind: str) -> None:
    for first in range(0, len(rows), PAIRS_PER_ROW):
        cols = st.columns(2 * PAIRS_PER_ROW)
        for k, row in enumerate(rows.iloc[first:first + PAIRS_PER_ROW].itertuples(index=False)):
            film_col, map_col = cols[2 * k], cols[2 * k + 1]
            name = Path(str(row.path)).name
            label = f"{name} · true {CLASSES[int(row.label)]} · P={shown_probability(row.probability):.3f}"
            path = resolved.get(row.path)
            if path is None:
                film_col.caption(f"{plain(label)}: file not on this machine")  # the name comes from a predictions file
                continue
            with map_col, guard(f"{model_name} on {name}"):
                image = ex.decoded(path, name)
                try:
                    result = ex.explain_one(cm, image.for_model(cm.loaded.input_size), method, POSITIVE)
                    view = ex.map_view(result, ma.dir, model_name, scale, scaling)
                    png = ex.overlay_png(image.display(THUMB_SIDE), view, alpha)  # cached per film, map, alpha
                except ImageError as e:
                    st.error(f"Cannot read {plain(name)}: {plain(e)}")
                    continue
                film_col.image(image.display(THUMB_SIDE), caption=label, width="stretch")
                st.image(png, caption=f"{method} of PNEUMONIA", width="stretch")
                if view.note:
                    st.caption(view.note)
                if view.coloured and (focus := ex.lung_focus(image.display(THUMB_SIDE), result)) is not None:
                    (st.warning if focus.flagged else st.caption)(focus.caption())


for kind, rows, what in (("False positives", fp, "NORMAL films the model called PNEUMONIA, highest probability first"),
                         ("False negatives", fn, "PNEUMONIA films the model called NORMAL, lowest probability first")):
    st.subheader(f"{kind} ({len(rows)})")
    st.caption(what)
    if rows.empty:
        st.success(f"No {kind.lower()} on the {split} split at this threshold.")
        continue
    top = rows.head(per_kind)
    if len(rows) > per_kind:
        st.caption(f"Showing the {per_kind} most confident of {len(rows)}.")
    table = pd.DataFrame({"file": [Path(str(p)).name for p in top["path"]],
                          "true label": [CLASSES[int(v)] for v in top["label"]],
                          f"P({CLASSES[POSITIVE]})": [round(shown_probability(v), 4) for v in top["probability"]],
                          "path": top["path"]})
    st.dataframe(table, hide_index=True, width="stretch")
    if cm is not None:
        with st.spinner(f"{method} for {len(top)} films…"):
            gallery(top, kind)
