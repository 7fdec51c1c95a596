"""What the Grad-CAM, Errors and Consensus pages share: cached models, per-model locks, CAMs, films, overlays.

Caches (the dashboard's one approach, ``dashboard.common``):

* ``cached_model``: a trained model, loaded once per process (``st.cache_resource``: shared, never copied), keyed
  by run folder, model name and the best checkpoint's mtime, so a retrained model is picked up and an unchanged
  one is never loaded twice. Its ONNX Runtime session lives on the ``LoadedModel`` (``core.models.inference``).
* Every cached model carries its own ``threading.Lock``: ``core.explain.cams`` hooks the model and flips
``requires_grad``
  while it works, so two sessions computing maps on one model at once would mix their activations.
  ``explain_one`` holds the lock around the prediction and the CAM; hooks are released inside it.
* ``explain_one``: heatmaps in ``st.cache_data`` (key: model, image pixels, method, target), so moving the opacity
  slider or switching pages redraws without running the network again; each hit is a copy (pickled), so no
  caller can change another's map.
* ``decoded``: a film decoded once per content (``st.cache_resource``: it fills itself lazily per input size).
* ``test_films``: the run's test-split files found on this machine (``st.cache_data``): resolving 871 paths
  took 2 s on every rerun of the Grad-CAM and Consensus pages.
* Uploads are never written to disk: the pages hand bytes to ``core.data.images`` directly.

Preprocessing is exactly the trainer's: ``core.data.images.load_for_model`` → ``LoadedModel.frame`` → ``inputs`` →
model,
and the probability comes from ``core.models.inference.predict_framed`` on the same framed film the map is drawn from
(test-time augmentation included when the recipe used it).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from streamlit.runtime.scriptrunner import add_script_run_ctx

from core.data.images import load_for_model, load_xray
from core.data.labels import CLASSES, POSITIVE
from core.evaluate import calibration
from core.explain import fast_cams
from core.explain.cams import (
    CAM_METHODS,
    NO_EVIDENCE,
    STRETCHED_UNITS,
    explain_with_raw,
    on_shared_scale,
    overlay,
    shared_units,
)
from core.explain.focus import film_focus
from core.models import lungs
from core.models.framing import unframe
from core.models.inference import LoadedModel, load_trained, predict_framed
from core.store import ENV_ALLOW, ArtifactError, ModelArtifacts, Run, read_cam_reference

DEFAULT_ALPHA = 0.45  # the overlays' opacity until a user moves the slider (Grad-CAM, Errors, Consensus)
DISPLAY_SIDE = 768  # longest side of the film under an overlay (and of the downloadable PNG)
MIN_OVERLAY_SIDE = 512  # smaller films are enlarged to this before the overlay and its colour bar are drawn
HEATMAP_CACHE_ENTRIES = 256
DECODED_CACHE_ENTRIES = 12  # films kept decoded across reruns and sessions (each holds its source bytes)
MODEL_CACHE_ENTRIES = 12


# --- the model cache ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelKey:
    """What identifies one trained model's weights on disk."""

    run_dir: str
    name: str
    mtime_ns: int


@dataclass(eq=False)
class CachedModel:
    """A loaded model and the lock that every user of it holds while it runs."""

    key: ModelKey
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def model_key(artifacts: ModelArtifacts) -> ModelKey:
    """Raises ``ArtifactError`` (naming the file) when the model has no best checkpoint."""
    ckpt = artifacts.best_checkpoint()
    try:
        mtime = ckpt.stat().st_mtime_ns
    except OSError as e:
        raise ArtifactError(f"{ckpt}: cannot stat checkpoint ({e})") from None
    return ModelKey(str(Path(artifacts.run_dir).resolve()), artifacts.name, mtime)


def load_cached_model(key: ModelKey) -> CachedModel:
    """Build and load the model for ``key`` (uncached; ``cached_model`` wraps it)."""
    return CachedModel(key=key, loaded=load_trained(ModelArtifacts(Path(key.run_dir), key.name)))


@st.cache_resource(show_spinner="Loading model…", max_entries=MODEL_CACHE_ENTRIES)
def _cached_model(key: ModelKey) -> CachedModel:
    return load_cached_model(key)


def cached_model(artifacts: ModelArtifacts) -> CachedModel:
    """The process-wide cached model (loaded on first use); ``ArtifactError`` when it cannot be loaded."""
    return _cached_model(model_key(artifacts))


def clear_model_cache() -> None:
    _cached_model.clear()
    _cached_explanation.clear()


# --- heatmaps ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Explanation:
    probability: float  # raw P(PNEUMONIA), as in the predictions files
    heatmap: np.ndarray  # float32 (S, S) in [0, 1], stretched to this film's own range
    method: str
    target: int
    raw: np.ndarray | None = None  # float32 (S, S) >= 0, before stretching: what the shared scale divides
    seconds: float = 0.0  # time to compute it
    cached: bool = False  # served from the heatmap cache (then ``seconds`` is the original computation's)


def explain_one(cm: CachedModel, image_u8: np.ndarray, method: str = "Grad-CAM", target: int = POSITIVE,
                *, use_cache: bool = True, progress=None) -> Explanation:
    """Probability and CAM of one uint8 (S, S) image already at the model's input size. ``progress(done, total)``:
    Score-CAM's masked passes so far, called in this (the page's) thread while the work runs in a worker thread
    (``core.explain.fast_cams.run_with_progress``: a page cannot draw from inside the cached computation)."""
    if progress is not None:
        return fast_cams.run_with_progress(lambda: explain_one(cm, image_u8, method, target, use_cache=use_cache),
                                           progress, prepare=add_script_run_ctx)
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    image_u8 = np.array(image_u8, dtype=np.uint8, copy=True, order="C")  # writable: torch warns on read-only
    size = cm.loaded.input_size
    if image_u8.shape != (size, size):
        raise ValueError(f"{cm.key.name} expects a ({size}, {size}) image, got {image_u8.shape}")
    if not use_cache:
        return _explain(cm, image_u8, method, int(target))
    computed: list[bool] = []
    out = _cached_explanation((cm.key.run_dir, cm.key.name, cm.key.mtime_ns),
                              hashlib.sha1(image_u8.tobytes()).hexdigest(), method, int(target), cm, image_u8,
                              computed)
    return out if computed else replace(out, cached=True)


@st.cache_data(show_spinner=False, max_entries=HEATMAP_CACHE_ENTRIES)
def _cached_explanation(model: tuple, digest: str, method: str, target: int, _cm: CachedModel,
                        _image: np.ndarray, _computed: list) -> Explanation:
    """``_explain``, cached by model, pixels, method and target (the underscored arguments are not hashed)."""
    _computed.append(True)
    return _explain(_cm, _image, method, target)


def _explain(cm: CachedModel, image_u8: np.ndarray, method: str, target: int) -> Explanation:
    t0 = time.perf_counter()
    with cm.lock:
        framed, boxes = cm.loaded.frame(image_u8[None])
        prob = float(predict_framed(cm.loaded, framed)[0])
        heat, raw = explain_with_raw(cm.loaded.model, cm.loaded.spec, cm.loaded.inputs(framed), method,
                                     target=target)
        heat, raw = unframe(np.asarray(heat)[None], boxes)[0], unframe(raw[None], boxes)[0]  # on the whole film
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0).clip(0, 1)
    return Explanation(probability=prob, heatmap=heat, method=method, target=target,
                       raw=np.asarray(raw, dtype=np.float32), seconds=time.perf_counter() - t0)


# --- images ------------------------------------------------------------------------------------------------------

class DecodedImage:
    """One film decoded once: a display copy and the model inputs at each size, made on demand."""

    def __init__(self, source, name: str):
        self.source, self.name = source, name
        self._inputs: dict[int, np.ndarray] = {}
        self._display: np.ndarray | None = None

    def for_model(self, size: int) -> np.ndarray:
        if size not in self._inputs:
            self._inputs[size] = load_for_model(self.source, size, name=self.name)
        return self._inputs[size]

    def display(self, side: int = DISPLAY_SIDE) -> np.ndarray:
        """The film in gray, aspect ratio kept, longest side at most ``side``."""
        if self._display is None:
            gray = load_xray(self.source, name=self.name, draft_size=side)
            h, w = gray.shape
            scale = side / max(h, w)
            if scale < 1:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR,
                                                               reducing_gap=3.0), dtype=np.uint8)
            self._display = gray
        return self._display


def decoded(source, name: str) -> DecodedImage:
    """The ``DecodedImage`` of ``source``, shared while its content is unchanged: a rerun (a slider moved) or
    another session showing the same film reuses its decodes instead of paying for them again. Uploads (bytes)
    are keyed by a hash of their content, files by path, size and modification time."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        key = ("bytes", hashlib.sha256(source).hexdigest(), name)
    else:
        try:
            st_ = os.stat(source)
        except OSError:
            return DecodedImage(source, name)  # the loader reports the problem
        key = ("file", str(source), st_.st_size, st_.st_mtime_ns, name)
    return _decoded(key, source, name)


@st.cache_resource(show_spinner=False, max_entries=DECODED_CACHE_ENTRIES)
def _decoded(key: tuple, _source, _name: str) -> DecodedImage:
    return DecodedImage(_source, _name)


SHARED, STRETCHED = "shared", "stretched"
SCALES = {SHARED: "One scale (validation reference)", STRETCHED: "Contrast-stretched per film"}


@dataclass(frozen=True)
class MapView:
    """What an overlay shows: values in [0, 1], the colour bar's units, and a plain-words note when needed."""

    values: np.ndarray
    units: str
    shared: bool
    note: str = ""

    @property
    def coloured(self) -> bool:
        """Whether any pixel gets colour (where the evidence lies is only worth saying then)."""
        top = float(self.values.max()) if self.values.size else 0.0
        return top >= NO_EVIDENCE if self.shared else top > 0


def map_view(result: Explanation, model_dir, model_name: str, scale: str = SHARED,
             scaling: calibration.Scaling | None = None) -> MapView:
    """The map on the shared scale (raw / the model's validation reference × its calibrated probability of the
    target class) or, when asked or when the run has no reference for this method, contrast-stretched and labelled
    so. Empty maps are said to be empty."""
    target_name = CLASSES[result.target]
    p = result.probability if scaling is None else float(scaling(result.probability))
    p_target = p if result.target == POSITIVE else 1.0 - p
    reference = read_cam_reference(model_dir, result.method, target_name) if scale == SHARED else None
    raw = result.raw if result.raw is not None else result.heatmap
    empty = not float(np.max(raw)) > 0
    if reference is None:
        note = "" if scale != SHARED else (f"No validation reference for {result.method} in this run (EigenCAM and "
                                           "Score-CAM have none; older runs: `python -m trainer explain --run …`), "
                                           "so this map is contrast-stretched.")
        view = MapView(result.heatmap, STRETCHED_UNITS, False, note)
    else:
        view = MapView(on_shared_scale(raw, reference, p_target), shared_units(target_name, model_name, result.method),
                       True)
    if empty:
        return replace(view, note=f"Empty map: {result.method} found nothing in {model_name}'s last layer that "
                                  f"raises the {target_name} score on this film (every weighted activation is "
                                  "≤ 0 before the ReLU). This is what the model does, not a drawing failure.")
    if view.shared and float(view.values.max()) < NO_EVIDENCE:
        return replace(view, note=f"No colour: {model_name}'s {target_name} evidence on this film, weighted by its "
                                  f"P({target_name}) = {p_target:.3f}, stays below {NO_EVIDENCE:.0%} of its "
                                  "validation reference.")
    return view


def overlay_image(gray_display: np.ndarray, view: MapView, alpha: float) -> np.ndarray:
    """The map (model-input grid) stretched over the whole film, with its colour bar: the model saw the film
    squashed to a square, so stretching the square map back onto the film puts each cell where it came from.
    Contrast-stretched maps colour every pixel (no "no evidence" level exists on a per-film scale)."""
    h, w = gray_display.shape[:2]
    if max(h, w) < MIN_OVERLAY_SIDE:  # small films (224 px copies): enlarge, so the colour bar's text is sharp
        scale = MIN_OVERLAY_SIDE / max(h, w)
        size = (round(w * scale), round(h * scale))
        gray_display = np.asarray(Image.fromarray(gray_display).resize(size, Image.Resampling.BILINEAR))
    return overlay(gray_display, view.values, float(alpha), view.units,
                   transparent_below=NO_EVIDENCE if view.shared else 0.0)


def overlay_png(gray_display: np.ndarray, view: MapView, alpha: float) -> bytes:
    """``png_bytes(overlay_image(...))``, cached (``st.cache_data``) by the film's and the map's pixels, the units
    and the opacity: a rerun that changes none of them (another widget, a page switch, another session on the same
    film, the example films after the warm-up) draws and encodes nothing. Both cost 120 ms a map on a loaded core."""
    film = np.ascontiguousarray(gray_display)
    values = np.ascontiguousarray(view.values)
    return _overlay_png(_digest(film), _digest(values), view.units, view.shared, round(float(alpha), 4), film, view)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(f"{a.shape}{a.dtype}".encode() + a.tobytes()).hexdigest()


@st.cache_data(show_spinner=False, max_entries=HEATMAP_CACHE_ENTRIES)
def _overlay_png(film: str, values: str, units: str, shared: bool, alpha: float, _film: np.ndarray,
                 _view: MapView) -> bytes:
    return png_bytes(overlay_image(_film, _view, alpha))


def lung_focus(gray_display: np.ndarray, result: Explanation):
    """Where the map's evidence lies on this film (``core.explain.focus``: lung focus, border mass, a plain-words flag);
    ``None`` when this checkout has no lung-model weights."""
    if not lungs.WEIGHTS.is_file():
        return None
    return film_focus(gray_display, result.raw if result.raw is not None else result.heatmap)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1: 4× faster than the default level 6 for an overlay with its colour bar (0.11
    against 0.49 s on a loaded core; 10 % larger), and each map is encoded on every rerun."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def label_at(probability: float, threshold: float) -> str:
    """The predicted class when ``p >= threshold`` means PNEUMONIA (as ``core.evaluate.metrics.confusion_at``)."""
    return CLASSES[POSITIVE] if probability >= threshold else CLASSES[1 - POSITIVE]


# --- example films ----------------------------------------------------------------------------------------------

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


@dataclass(frozen=True)
class Example:
    """A committed film the Grad-CAM and Consensus pages open on (dashboard/examples/README.md: all test-split)."""

    label: str  # on the chooser
    file: str
    truth: int
    about: str  # which film it is, in a sentence

    @property
    def path(self) -> Path:
        return EXAMPLES_DIR / self.file


EXAMPLES = (
    Example("child · PNEUMONIA", "person1001_bacteria_2932.jpeg", POSITIVE,
            "a child's film (Kermany, bacterial pneumonia), from the test split of every committed run"),
    Example("child · NORMAL", "IM-0119-0001.jpeg", 1 - POSITIVE,
            "a child's film (Kermany, normal), from the test split of every committed run"),
    Example("adult · PNEUMONIA", "00000468_040.png", POSITIVE,
            "an adult's film (NIH ChestX-ray14, 31 years, PA view, labelled pneumonia), from the test split of the "
            "populations run; the children-only runs never saw an adult"),
)


# --- data files of a run -----------------------------------------------------------------------------------------

def resolve_image_path(path: str, run: Run | None = None) -> Path | None:
    """The file a predictions/split path points to on this machine, or ``None`` (see ``Run.locate``)."""
    if run is None:
        p = Path(str(path))
        return p if p.is_file() else None
    return run.locate(path)


def test_films(run: Run, model: ModelArtifacts) -> dict[str, tuple[str, int]]:
    """The run's test-split films on this machine, {stored path: (file found, true label)}, from ``model``'s
    predictions_test.csv (every model of a run shares the split); cached by that file's stamp and the data root
    it resolves against. ``ArtifactError`` when the predictions cannot be read."""
    path = model.predictions_path("test")
    try:
        stamp = (path.stat().st_mtime_ns, path.stat().st_size)
    except OSError:
        stamp = None
    return _test_films(str(run.dir), model.name, stamp, str(run.data_dir()), os.environ.get(ENV_ALLOW, ""),
                       tuple(str(a) for a in run.allow))


@st.cache_data(show_spinner=False, max_entries=32)
def _test_films(run_dir: str, model: str, stamp, data_root: str, allow_env: str, allow: tuple) -> dict:
    run = Run(Path(run_dir), allow=allow)
    preds = run.model(model).predictions("test")
    out = {}
    for p, label in zip(preds["path"], preds["label"]):
        if (found := run.locate(p)) is not None:
            out[str(p)] = (str(found), int(label))  # strings: unpickled on every rerun, far faster than Paths
    return out


def data_root_of(run: Run) -> str:
    """The run's data root as recorded (text from run.json: pages show it through ``plain``)."""
    try:
        return str(run.info.get("data_root") or "?")
    except ArtifactError:
        return "?"


def errors_of(predictions: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """False positives (most confident, i.e. highest probability, first) and false negatives (lowest first)."""
    pred = predictions["probability"].to_numpy() >= threshold
    y = predictions["label"].to_numpy()
    fp = predictions[pred & (y == 0)].sort_values("probability", ascending=False, kind="stable")
    fn = predictions[~pred & (y == 1)].sort_values("probability", ascending=True, kind="stable")
    return fp.reset_index(drop=True), fn.reset_index(drop=True)
