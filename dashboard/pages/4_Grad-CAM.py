"""Grad-CAM: where did each model look? Upload films (or pick test-split films) and compare models side by side.

Uploads stay in memory (bytes go straight to ``core.images``); preprocessing is the trainer's own. Models are cached
once per process and locked while a map is computed (``dashboard.explain``).
"""

from pathlib import Path

import streamlit as st

from core import faithfulness
from core.artifacts import ArtifactError
from core.cams import CAM_METHODS
from core.images import ImageError
from core.labels import CLASSES, POSITIVE
from dashboard import explain as ex
from dashboard import population as pp
from dashboard.common import cached_predictions, choose_site, footer, guard, model_names, plain, start, stop

MAX_IMAGES = 8
MAX_PICKED = 4  # test films picked at once ("Select N matches" would otherwise pick hundreds)
PER_ROW = 3  # film + maps per row: about 350 px each at 1440 px
UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]

run = start("Grad-CAM")
site = choose_site(run)
st.title("Grad-CAM: where the models look")
st.caption("Class activation maps of the run's trained models on your films or on films of the run's test split. "
           "Warm colours mark the regions that raised the chosen class's score. A map shows what a model used, "
           "not whether it was right. Probabilities are calibrated on validation (temperature and bias). "
           "**Research use only — not for diagnosis.**")

names = model_names(run)

st.sidebar.header("Grad-CAM")
chosen = st.sidebar.multiselect("Models (side by side)", names, default=names[: min(2, len(names))],
                                key="cam_models")
sanity = None
with guard("faithfulness figures"):
    sanity = faithfulness.read(run.dir)


def _method_label(m: str) -> str:
    bad = [n for n in chosen if faithfulness.failing(sanity, n, m) is not None]
    return f"{m} ⚠ fails sanity check ({len(bad)} of the chosen models)" if bad else m


method = st.sidebar.selectbox("CAM method", list(CAM_METHODS), key="cam_method", format_func=_method_label,
                              help="⚠: the map barely changes when the model's top layer is re-initialised "
                                   "(Faithfulness page), so it shows the film's structure, not the decision")
if method == "Score-CAM":
    st.sidebar.warning("Score-CAM runs one forward pass per feature channel: on a CPU that is about a minute or more "
                       "per film and model (MobileNetV2: 1280 channels), and other sessions using the same model "
                       "wait meanwhile. Try it on one film and one model.")
target_name = st.sidebar.radio("Explain the score of", CLASSES, index=POSITIVE, key="cam_target", horizontal=True)
target = CLASSES.index(target_name)
alpha = st.sidebar.slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="cam_alpha")
scale = st.sidebar.radio("Colour scale", list(ex.SCALES), format_func=ex.SCALES.get, key="cam_scale",
                         help="One scale: a colour means the same evidence on every film (the model's raw map "
                              "divided by a reference fixed on validation films; weak evidence gets no colour). "
                              "Contrast-stretched: each map stretched to its own range, so even a film with no "
                              "evidence shows a hot spot: colours cannot be compared between films.")
per_row = 2 if st.sidebar.toggle("Larger maps (2 per row)", key="cam_large") else PER_ROW

# --- which films ---------------------------------------------------------------------------------------------------

uploads = st.file_uploader("Chest X-rays (PNG, JPEG or DICOM); nothing is stored", type=UPLOAD_TYPES,
                           accept_multiple_files=True, key="cam_uploads") or []

test_rows = {}  # path -> (resolved Path, true label)
n_test = None  # rows of the first predictions_test.csv found; None: no model has test predictions yet
with guard("Test split"):
    for name in chosen or names:
        ma = run.model(name)
        if "test" in ma.splits():
            preds = cached_predictions(ma, "test")
            n_test = len(preds)
            for path, label in zip(preds["path"], preds["label"]):
                found = ex.resolve_image_path(path, run)
                if found is not None:
                    test_rows[str(path)] = (found, int(label))
            break
picked: list[str] = []
if test_rows:
    picked = st.multiselect(f"…or pick up to {MAX_PICKED} films of the run's test split ({len(test_rows)} on this "
                            "machine)", list(test_rows), key="cam_test_pick", max_selections=MAX_PICKED,
                            format_func=lambda p: f"{CLASSES[test_rows[p][1]]} · {Path(p).name}")
elif n_test is None:
    st.caption("No model of this run has test-split predictions yet (the trainer writes them after training), "
               "so only uploads can be explained here.")
else:
    st.caption(f"The test split's files are not on this machine (data folder {plain(ex.data_root_of(run))} absent), "
               "so only uploads can be explained here.")

items = [(f.name, f.getvalue(), None) for f in uploads]  # (name, bytes or path, true label)
items += [(Path(p).name, test_rows[p][0], test_rows[p][1]) for p in picked]
if not chosen:
    st.info("Choose at least one model in the sidebar.")
    stop()
if not items:
    st.info("Upload one or more chest X-rays, or pick films of the test split, to see each model's prediction and "
            "its class activation map.")
    stop()
if len(items) > MAX_IMAGES:
    st.warning(f"{len(items)} films chosen; showing the first {MAX_IMAGES} to keep the page responsive.")
    items = items[:MAX_IMAGES]

# --- the models (an error here hits that model's column only) ------------------------------------------------------

models: dict[str, ex.CachedModel | str] = {}
thresholds: dict[str, float | str] = {}
for name in chosen:
    try:
        ma = run.model(name)
        models[name] = ex.cached_model(ma)
    except ArtifactError as e:
        models[name] = str(e)
    except Exception as e:  # a broken model must not take the page down
        models[name] = f"cannot load: {type(e).__name__}: {e}"
    try:
        thresholds[name] = site.threshold(run.model(name))  # at the model's own rule, the chosen profile's
    except (ArtifactError, KeyError, TypeError, ValueError) as e:
        thresholds[name] = f"no validation threshold ({e})"


def show_model(name: str, image: ex.DecodedImage, key: str) -> None:
    st.markdown(f"**{name}**")
    cm = models[name]
    if isinstance(cm, str):
        st.error(f"{name}: {plain(cm)}")
        return
    try:
        pixels = image.for_model(cm.loaded.input_size)
    except ImageError as e:
        st.error(f"Cannot use {plain(image.name)} for {name}: {plain(e)}")
        return
    with st.spinner(f"{method} for {name}…"):
        result = ex.explain_one(cm, pixels, method, target)
    ma = run.model(name)
    p, thr = result.probability, thresholds[name]
    scaling = site.scaling(ma)
    on_scale = (lambda v: v) if scaling is None else (lambda v: float(scaling(v)))
    view = ex.map_view(result, ma.dir, name, scale, scaling)
    rgb = ex.overlay_image(image.display(), view, alpha)
    when = "cached" if result.cached else f"{result.seconds:.2f} s"
    st.image(rgb, caption=f"{method} of {CLASSES[target]} · {when}", width="stretch")  # level with the film
    st.metric(f"P({CLASSES[POSITIVE]})", f"{on_scale(p):.3f}",
              help="calibrated: temperature and bias fitted on validation" if scaling else "raw model output")
    if isinstance(thr, str):
        st.warning(f"{name}: {plain(thr)}; no label shown.")
    else:
        st.markdown(f"Label at the {'site' if site.profile(ma) else 'validation'}-chosen threshold "
                    f"{on_scale(thr):.3f}: **{ex.label_at(p, thr)}**")
    st.caption(site.describe(ma))
    st.caption(f"calibrated on validation, i.e. to the training batch's share of pneumonia (raw {p:.3f})" if scaling
               else "raw (this run has no calibration)")
    with guard(f"population check of {name}"):
        pp.show(pp.check(ma, cm.loaded, cm.lock, pixels, image.source))
    if view.note:
        st.info(view.note)
    if cm.loaded.framing == "lungs":
        st.caption("This model sees only the lung box of each film (recipe: lung crop); no colour outside it "
                   "means it saw nothing there, not that nothing is there.")
    with guard(f"lung focus of {name}"):
        if view.coloured and (focus := ex.lung_focus(image.display(), result)) is not None:
            (st.warning if focus.flagged else st.caption)(focus.caption())
    if (rho := faithfulness.failing(sanity, name, method)) is not None:
        st.warning(f"{method} fails the randomisation sanity check for {name}: re-initialising its top layer "
                   f"leaves the map nearly unchanged (rank correlation {rho:.2f}), so this map shows the film's "
                   "structure rather than the model's decision. See the Faithfulness page.")
    st.download_button("Download PNG", ex.png_bytes(rgb),
                       file_name=f"{Path(image.name).stem}_{name}_{method}.png".replace(" ", "_"),
                       mime="image/png", key=f"{key}-dl", on_click="ignore", help="the overlay with its colour bar")


def rows_of(cells: list, n: int) -> list[list]:
    return [cells[i:i + n] for i in range(0, len(cells), n)]


for i, (name, source, truth) in enumerate(items):
    st.divider()
    st.subheader(plain(name))  # a test-split name comes from a predictions file: plain text
    if truth is not None:
        st.caption(f"Test-split film, true label: {CLASSES[truth]}")
    image = ex.decoded(source, name)  # decoded once per content, not on every rerun (opacity slider...)
    try:
        original = image.display()
    except ImageError as e:
        st.error(f"Could not read this file: {plain(e)}")
        continue
    except Exception as e:  # anything else from a decoder is still this file's problem
        st.error(f"Could not read {plain(name)}: {type(e).__name__}: {plain(e)}")
        continue
    for row in rows_of([None] + list(chosen), per_row):
        cols = st.columns(per_row)
        for col, model_name in zip(cols, row):
            with col:
                if model_name is None:
                    st.markdown("**film**")
                    st.image(original, caption=f"{original.shape[1]}×{original.shape[0]} shown", width="stretch")
                    continue
                with guard(f"{model_name} on {name}"):
                    show_model(model_name, image, key=f"cam-{i}-{model_name}")

footer()
