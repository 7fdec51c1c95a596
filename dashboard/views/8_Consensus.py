"""Consensus: one film, every chosen model: calibrated probabilities, labels at validation thresholds, agreement,
and the maps side by side on the shared scale; the case exports as one self-contained HTML file and a CSV table."""

from pathlib import Path

import streamlit as st

from core.data.images import ImageError
from core.data.labels import CLASSES, POSITIVE
from core.explain import faithfulness
from core.explain.cams import CAM_METHODS, GRADIENT_FREE
from core.store import best_checkpoint, read_faithfulness
from dashboard import consensus as cs
from dashboard import explain as ex
from dashboard import population as pp
from dashboard.common import CITATION, NOTICE, guard, model_page, plain, stop

PER_ROW = 3
ALPHA = ex.DEFAULT_ALPHA

ctx = model_page("One film, every model",
                 "What each model chosen in the sidebar says about one film: its calibrated P(PNEUMONIA), its label "
                 "at the threshold chosen on validation, and where it looks, all maps on the same colour scale.")
run, site = ctx.run, ctx.site

chosen = [e.model.name for e in ctx.nets if best_checkpoint(e.model.dir).is_file()]
if any(e.model.is_ensemble for e in ctx.own):
    st.caption("An ensemble averages its members' outputs and has no map of its own: its members speak here.")
if not chosen:
    stop("Choose at least one model with a network of its own in the sidebar.")

st.sidebar.header("Consensus")
methods = [m for m in CAM_METHODS if m not in GRADIENT_FREE]
method = st.sidebar.selectbox("CAM method", methods, key="con_method")
per_row = 2 if st.sidebar.toggle("Larger maps (2 per row)", key="con_large") else PER_ROW

upload_col, pick_col = st.columns(2)  # side by side: the verdicts start higher on the screen
upload = upload_col.file_uploader("A chest X-ray (PNG, JPEG or DICOM); nothing is stored",
                                  type=["png", "jpg", "jpeg", "dcm", "dicom"], key="con_upload")
test_rows = {}
with guard("Test split"):
    first = run.model(chosen[0])
    if "test" in first.splits():
        test_rows = ex.test_films(run, first)  # cached: resolving every path took seconds per rerun
picked = None
if test_rows:
    picked = pick_col.selectbox(f"…or one film of the run's test split ({len(test_rows)} here)", list(test_rows),
                                index=None, key="con_pick", placeholder="choose a test film",
                                format_func=lambda p: f"{CLASSES[test_rows[p][1]]} · {Path(p).name}")
example = None
if upload is not None:
    name, source, truth = upload.name, upload.getvalue(), None
elif picked:
    name, source, truth = Path(picked).name, test_rows[picked][0], test_rows[picked][1]
else:  # open on something: a committed example film, said to be one
    labels = [e.label for e in ex.EXAMPLES]
    shown = st.segmented_control("Example film", labels, default=labels[0], key="con_example") or labels[0]
    example = next(e for e in ex.EXAMPLES if e.label == shown)
    st.info(f"**Example film** — {example.about} (`{example.file}`). Upload a chest X-ray or pick a test film to "
            "see what every chosen model says about your own.")
    name, source, truth = example.file, example.path, example.truth

image = ex.decoded(source, name)  # once per content, not on every rerun
try:
    film = image.display()
except ImageError as e:
    st.error(f"Could not read {plain(name)}: {plain(e)}")
    stop()

sanity = None
with guard("faithfulness figures"):
    sanity = read_faithfulness(run.dir)


def verdict(model_name: str) -> cs.Verdict:
    ma = run.model(model_name)
    cm = ex.cached_model(ma)
    result = ex.explain_one(cm, image.for_model(cm.loaded.input_size), method, POSITIVE)
    scaling = site.scaling(ma)  # the chosen profile's calibration and threshold
    scale = (lambda v: v) if scaling is None else (lambda v: float(scaling(v)))
    thr = site.threshold(ma)  # at the model's own rule, as in the README and leaderboard
    view = ex.map_view(result, ma.dir, model_name, ex.SHARED, scaling)
    notes = [view.note] if view.note else []
    if view.coloured and (focus := ex.lung_focus(film, result)) is not None:
        notes.append(focus.caption())
    if (rho := faithfulness.failing(sanity, model_name, method)) is not None:
        notes.append(f"{method} failed the randomisation sanity check for this model (rho {rho:.2f}).")
    where = pp.check(ma, cm.loaded, cm.lock, image.for_model(cm.loaded.input_size), image.source)
    return cs.Verdict(model=model_name, p_raw=result.probability, p_shown=scale(result.probability),
                      calibrated=scaling is not None, threshold_raw=thr, threshold_shown=scale(thr),
                      label=ex.label_at(result.probability, thr),
                      overlay_png=ex.overlay_png(film, view, ALPHA), note=" ".join(notes),
                      figures=cs.split_figures(ma, population=where.inside[0] if where.inside else None),
                      population=where.short(), population_note=where.message(),
                      outside=where.outside)


verdicts = []
with st.spinner(f"{method} for {len(chosen)} models…"):
    for model_name in chosen:
        with guard(model_name):
            verdicts.append(verdict(model_name))
if not verdicts:
    stop()

k, n = cs.agreement(verdicts)
c = st.columns(3)
c[0].metric("Models calling PNEUMONIA", f"{k} of {n}")
c[1].metric("Models calling NORMAL", f"{n - k} of {n}")
if truth is not None:
    c[2].metric(f"True label ({'example film' if example else 'test split'})", CLASSES[truth])
for note in cs.outside_notes(verdicts):
    st.warning(note, icon="⚠️")
st.table(cs.display_table(verdicts).set_index("model"))  # static: a dozen short columns wrap, never scroll
st.caption(site.describe())
st.caption("P(PNEUMONIA) is calibrated on validation (temperature and bias); the threshold is shown on the same "
           "scale, so the label is exactly the trainer's. test: held-out patients of the training data (in a run "
           "with several sources, those of the source the film lies in, per the population column); official_val: "
           "16 children's films of another batch.")

scale_note = ("Every map on one scale: the model's raw map divided by its validation reference, times its "
              "calibrated P(PNEUMONIA); no colour means no evidence. Colours can be compared between films and, "
              "roughly, between models.")
st.subheader("Where each model looks")
st.caption(scale_note)
cells = [("film", None)] + [(v.model, v) for v in verdicts]
for first in range(0, len(cells), per_row):
    cols = st.columns(per_row)
    for col, (_, v) in zip(cols, cells[first:first + per_row]):
        with col:
            if v is None:
                st.image(film, caption=f"{name} · {film.shape[1]}×{film.shape[0]}", width="stretch")
                continue
            st.image(v.overlay_png, caption=f"{v.model}: P {cs.shown_p(v.p_shown)} → {v.label}", width="stretch")
            if v.note:
                st.caption(v.note)



def report() -> bytes:
    """The case as one HTML file, built when the button is clicked (a few MB of base64 pictures: not on every
    rerun)."""
    return cs.report_html(film_name=name, film_png=ex.png_bytes(film), verdicts=verdicts, run_id=run.id,
                          method=method, notice=NOTICE, citation=CITATION, scale_note=scale_note,
                          profile=site.describe().replace("`", "")).encode("utf-8")


d1, d2 = st.columns(2)
d1.download_button("Download report (HTML)", report, file_name=f"{Path(name).stem}_report.html",
                   mime="text/html", key="con_report", on_click="ignore",
                   help="one self-contained file: film, maps with colour bars, probabilities, figures, notice")
d2.download_button("Download table (CSV)", cs.table_csv(verdicts), file_name=f"{Path(name).stem}_models.csv",
                   mime="text/csv", key="con_csv", on_click="ignore")
