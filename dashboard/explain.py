"""What the Grad-CAM and Errors pages share: cached trained models, per-model locks and CAM orchestration.

* A trained model is loaded once per process (``cached_model``; Streamlit's ``st.cache_resource`` under the hood,
  the only Streamlit use in this module) and keyed by run folder, model name and the best checkpoint's mtime, so a
  retrained model is picked up and an unchanged one is never loaded twice.
* Every cached model carries its own ``threading.Lock``: ``core.cams.explain`` hooks the model and flips
  ``requires_grad`` while it works, so two sessions computing maps on one model at once would mix their
  activations. ``explain_one`` holds the lock around the prediction and the CAM; hooks are released inside it.
* Heatmaps are kept in a small in-process LRU (key: model, image pixels, method, target), so moving the opacity
  slider or switching pages redraws without running the network again.
* Uploads are never written to disk: the pages hand bytes to ``core.images`` directly.

Preprocessing is exactly the trainer's: ``core.images.load_for_model`` → ``LoadedModel.inputs`` → model, and the
probability comes from ``core.inference.predict_loaded`` (test-time augmentation included when the recipe used it).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.artifacts import ArtifactError, ModelArtifacts, Run
from core.cams import CAM_METHODS, explain, overlay
from core.images import load_for_model, load_xray
from core.inference import LoadedModel, load_trained, predict_loaded
from core.labels import CLASSES, POSITIVE

DISPLAY_SIDE = 768  # longest side of the film under an overlay (and of the downloadable PNG)
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


_cached_loader = None
_cached_loader_guard = threading.Lock()


def _loader():
    """``load_cached_model`` wrapped in ``st.cache_resource`` (created once; Streamlit imported only here)."""
    global _cached_loader
    with _cached_loader_guard:
        if _cached_loader is None:
            import streamlit as st

            @st.cache_resource(show_spinner="Loading model…", max_entries=MODEL_CACHE_ENTRIES)
            def _load(key: ModelKey) -> CachedModel:
                return load_cached_model(key)

            _cached_loader = _load
        return _cached_loader


def cached_model(artifacts: ModelArtifacts) -> CachedModel:
    """The process-wide cached model (loaded on first use); ``ArtifactError`` when it cannot be loaded."""
    return _loader()(model_key(artifacts))


def clear_model_cache() -> None:
    _loader().clear()
    _HEATMAPS.clear()


# --- heatmaps ----------------------------------------------------------------------------------------------------

class _LRU:
    def __init__(self, size: int):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
            return None

    def put(self, key, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


_HEATMAPS = _LRU(HEATMAP_CACHE_ENTRIES)


@dataclass(frozen=True)
class Explanation:
    probability: float  # P(PNEUMONIA)
    heatmap: np.ndarray  # float32 (S, S) in [0, 1]
    method: str
    target: int


def explain_one(cm: CachedModel, image_u8: np.ndarray, method: str = "Grad-CAM", target: int = POSITIVE,
                *, use_cache: bool = True) -> Explanation:
    """Probability and CAM of one uint8 (S, S) image already at the model's input size."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    image_u8 = np.array(image_u8, dtype=np.uint8, copy=True, order="C")  # writable: torch warns on read-only
    size = cm.loaded.input_size
    if image_u8.shape != (size, size):
        raise ValueError(f"{cm.key.name} expects a ({size}, {size}) image, got {image_u8.shape}")
    key = (cm.key, hashlib.sha1(image_u8.tobytes()).hexdigest(), method, int(target))
    if use_cache and (hit := _HEATMAPS.get(key)) is not None:
        return hit
    with cm.lock:
        prob = float(predict_loaded(cm.loaded, image_u8[None])[0])
        x = cm.loaded.inputs(image_u8[None])
        heat = explain(cm.loaded.model, cm.loaded.spec, x, method, target=int(target))
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0).clip(0, 1)
    heat.setflags(write=False)
    out = Explanation(probability=prob, heatmap=heat, method=method, target=int(target))
    if use_cache:
        _HEATMAPS.put(key, out)
    return out


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


_DECODED = _LRU(DECODED_CACHE_ENTRIES)


def decoded(source, name: str) -> DecodedImage:
    """The ``DecodedImage`` of ``source``, shared while its content is unchanged: a rerun (a slider moved) or
    another session showing the same film reuses its decodes instead of paying for them again. Uploads (bytes)
    are keyed by a hash of their content, files by path, size and modification time."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        key = ("bytes", hashlib.sha256(source).hexdigest(), name)
    else:
        try:
            st = os.stat(source)
        except OSError:
            return DecodedImage(source, name)  # the loader reports the problem
        key = ("file", str(source), st.st_size, st.st_mtime_ns, name)
    image = _DECODED.get(key)
    if image is None:
        image = DecodedImage(source, name)
        _DECODED.put(key, image)
    return image


def overlay_image(gray_display: np.ndarray, heatmap: np.ndarray, alpha: float) -> np.ndarray:
    """The heatmap (model-input grid) stretched over the whole film: the model saw the film squashed to a square,
    so stretching the square map back onto the film puts each cell where it came from."""
    return overlay(gray_display, heatmap, float(alpha))


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def label_at(probability: float, threshold: float) -> str:
    """The predicted class when ``p >= threshold`` means PNEUMONIA (as ``core.metrics.confusion_at``)."""
    return CLASSES[POSITIVE] if probability >= threshold else CLASSES[1 - POSITIVE]


# --- data files of a run -----------------------------------------------------------------------------------------

def resolve_image_path(path: str, run: Run | None = None) -> Path | None:
    """The file a predictions/split path points to on this machine, or ``None`` (see ``Run.locate``)."""
    if run is None:
        p = Path(str(path))
        return p if p.is_file() else None
    return run.locate(path)


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
