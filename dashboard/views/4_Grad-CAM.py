"""Grad-CAM: where did each model look? The sidebar's chosen models side by side on uploaded films, on films of
the run's test split or, until the user gives one, on a committed example film (``dashboard.explain.EXAMPLES``).

Uploads stay in memory (bytes go straight to ``core.data.images``); preprocessing is the trainer's own. Models are
cached
once per process and locked while a map is computed (``dashboard.explain``).
"""

from pathlib import Path

import streamlit as st

from core.data.images import ImageError
from core.data.labels import CLASSES, POSITIVE
from core.explain import faithfulness
from core.explain.cams import CAM_METHODS
from core.store import ArtifactError, read_faithfulness
from dashboard import explain as ex
from dashboard import population as pp
from dashboard.common import choice, guard, plain, stop

MAX_IMAGES = 8
MAX_PICKED = 4  # test films picked at once ("Select N matches" would otherwise pick hundreds)
PER_ROW = 3  # film + maps per row: about 350 px each at 1440 px
UPLOAD_TYPES = ["png", "jpg", "jpeg", "dcm", "dicom"]

ctx = choice()
run, site = ctx.run, ctx.site
st.title("Grad-CAM: where the models look")
chosen = [e.model.name for e in ctx.nets]  # the sidebar's choice: ensembles have no map of their own
ensembles = [e.label for e in ctx.own if e.model.is_ensemble]
st.caption("Class activation maps of the models chosen in the sidebar on your films or on films of the run's test "
           "split. Warm colours mark the regions that raised the chosen class's score. A map shows what a model "
           "used, not whether it was right. Probabilities are calibrated on validation (temperature and bias). "
           + (f"{', '.join(ensembles)}: an ensemble averages its members' outputs and has no map of its own. "
              if ensembles else "") + "**Research use only — not for diagnosis.**")

if not chosen:
    stop("Choose at least one model with a network of its own in the sidebar.")

st.sidebar.header("Grad-CAM")
sanity = None
with guard("faithfulness figures"):
    sanity = read_faithfulness(run.dir)


def _method_label(m: str) -> str:
    bad = [n for n in chosen if faithfulness.failing(sanity, n, m) is not None]
    return f"{m} ⚠ fails sanity check ({len(bad)} of the chosen models)" if bad else m


method = st.sidebar.selectbox("CAM method", list(CAM_METHODS), key="cam_method", format_func=_method_label,
                              help="⚠: the map barely changes when the model's top layer is re-initialised "
                                   "(Faithfulness page), so it shows the film's structure, not the decision")
if method == "Score-CAM":
    st.sidebar.warning("Score-CAM scores one masked film per cluster of alike feature channels (256 clusters of "
                       "MobileNetV2's 1280): measured about 5 s per film and model on this 2-core CPU (BENCHMARKS.md), "
                       "with a progress bar; other sessions using the same model wait meanwhile.")
target_name = st.sidebar.radio("Explain the score of", CLASSES, index=POSITIVE, key="cam_target", horizontal=True)
target = CLASSES.index(target_name)
alpha = st.sidebar.slider("Heatmap opacity", 0.0, 1.0, ex.DEFAULT_ALPHA, 0.05, key="cam_alpha")
scale = st.sidebar.radio("Colour scale", list(ex.SCALES), format_func=ex.SCALES.get, key="cam_scale",
                         help="One scale: a colour means the same evidence on every film (the model's raw map "
                              "divided by a reference fixed on validation films; weak evidence gets no colour). "
                              "Contrast-stretched: each map stretched to its own range, so even a film with no "
                              "evidence shows a hot spot: colours cannot be compared between films.")
per_row = 2 if st.sidebar.toggle("Larger maps (2 per row)", key="cam_large") else PER_ROW

# --- which films ---------------------------------------------------------------------------------------------------

upload_col, pick_col = st.columns(2)  # side by side: the maps start higher on the screen
uploads = upload_col.file_uploader("Chest X-rays (PNG, JPEG or DICOM); nothing is stored", type=UPLOAD_TYPES,
                                   accept_multiple_files=True, key="cam_uploads") or []

test_rows = {}  # path -> (resolved Path, true label)
has_test = False  # does any model have test predictions (the trainer writes them after training)?
with guard("Test split"):
    source = next((e.model for e in ctx.own if "test" in e.model.splits()), None)
    source = source or next((m for m in run.models if "test" in m.splits()), None)
    if source is not None:
        has_test = True
        test_rows = ex.test_films(run, source)  # cached: resolving every path took seconds per rerun
picked: list[str] = []
if test_rows:
    picked = pick_col.multiselect(f"…or pick up to {MAX_PICKED} films of the run's test split ({len(test_rows)} on "
                                  "this machine)", list(test_rows), key="cam_test_pick", max_selections=MAX_PICKED,
                                  format_func=lambda p: f"{CLASSES[test_rows[p][1]]} · {Path(p).name}")
elif not has_test:
    pick_col.caption("No model of this run has test-split predictions yet (the trainer writes them after "
                     "training), so only uploads can be explained here.")
else:
    pick_col.caption(f"The test split's files are not on this machine (data folder {plain(ex.data_root_of(run))} "
                     "absent), so only uploads can be explained here.")

items = [(f.name, f.getvalue(), None) for f in uploads]  # (name, bytes or path, true label)
items += [(Path(p).name, test_rows[p][0], test_rows[p][1]) for p in picked]
example = None
if not items:  # open on something: a committed example film, said to be one
    labels = [e.label for e in ex.EXAMPLES]
    shown = st.segmented_control("Example film", labels, default=labels[0], key="cam_example") or labels[0]
    example = next(e for e in ex.EXAMPLES if e.label == shown)
    st.info(f"**Example film** — {example.about} (`{example.file}`). Upload films or pick test films above to "
            "see your own.")
    items = [(example.file, example.path, example.truth)]
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
    if method == "Score-CAM":  # seconds per film: show its masked passes (drawn here, computed in a worker)
        bar = st.progress(0.0, text=f"Score-CAM for {name}…")
        result = ex.explain_one(cm, pixels, method, target, progress=lambda done, total: bar.progress(
            min(1.0, done / total), text=f"Score-CAM for {name}: {done} of {total} masked films"))
        bar.empty()
    else:
        with st.spinner(f"{method} for {name}…"):
            result = ex.explain_one(cm, pixels, method, target)
    ma = run.model(name)
    p, thr = result.probability, thresholds[name]
    scaling = site.scaling(ma)
    on_scale = (lambda v: v) if scaling is None else (lambda v: float(scaling(v)))
    view = ex.map_view(result, ma.dir, name, scale, scaling)
    png = ex.overlay_png(image.display(), view, alpha)  # encoded once (and cached): shown and downloadable
    when = "cached" if result.cached else f"{result.seconds:.2f} s"
    st.image(png, caption=f"{method} of {CLASSES[target]} · {when}", width="stretch")  # level with the film
    st.metric(f"P({CLASSES[POSITIVE]})", f"{on_scale(p):.3f}",
              help="calibrated: temperature and bias fitted on validation" if scaling else "raw model output")
    if isinstance(thr, str):
        st.warning(f"{name}: {plain(thr)}; no label shown.")
    else:
        st.markdown(f"Label at the {'site' if site.profile(ma) else 'validation'}-chosen threshold "
                    f"{on_scale(thr):.3f}: **{ex.label_at(p, thr)}**")
    st.caption(f"{site.describe(ma)}; " + (f"calibrated on validation, i.e. to the training batch's share of "
                                           f"pneumonia (raw {p:.3f})" if scaling else
                                           "raw (this run has no calibration)"))
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
    st.download_button("Download PNG", png,
                       file_name=f"{Path(image.name).stem}_{name}_{method}.png".replace(" ", "_"),
                       mime="image/png", key=f"{key}-dl", on_click="ignore", help="the overlay with its colour bar")


def rows_of(cells: list, n: int) -> list[list]:
    return [cells[i:i + n] for i in range(0, len(cells), n)]


for i, (name, source, truth) in enumerate(items):
    if i:
        st.divider()
    st.subheader(plain(name))  # a test-split name comes from a predictions file: plain text
    if truth is not None:
        st.caption(f"{'Example' if example else 'Test-split'} film, true label: {CLASSES[truth]}")
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
