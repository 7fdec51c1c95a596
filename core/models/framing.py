"""Input framing: which part of the film a model sees (its config.json ``framing``).

- ``none``: the whole film, squared (as every model before issue 9).
- ``lungs``: the film cropped to its lung fields and resized back to the model's square. The box is the committed
  lung model's mask (``core.models.lungs``) grown by ``LUNG_MARGIN`` of its size on each side, so consolidations the
  mask
  misses at the lung edge stay in; what lies outside (neck, arms, abdomen, film borders, most side markers and the
  collimation that differs between batches and sites) never reaches the classifier. A box smaller than
  ``MIN_BOX_FRACTION`` of the film means the mask failed (not a chest film, a blank image): the whole film is kept.

Framing works on the uint8 squares at the model's input size, before augmentation and intensity standardisation,
so training (``framed_cache``), evaluation and the dashboard (``core.models.inference``) crop the same film the same
way.
Maps computed on a framed input are put back on the whole film with ``unframe`` (zero outside the box: the model
saw nothing there), so overlays, the shared colour scale and lung focus read them like any other model's.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace

import cv2
import numpy as np

from core.data.images import FRAMINGS, resize_square
from core.models import lungs

log = logging.getLogger(__name__)

LUNG_MARGIN = 0.1
MIN_BOX_FRACTION = 0.15
BATCH = 64


def whole_boxes(n: int, size: int) -> np.ndarray:
    """(n, 4) boxes (top, bottom, left, right) covering the whole (size, size) square."""
    return np.tile(np.array([0, size, 0, size], dtype=np.int64), (n, 1))


def lung_boxes(squares_u8: np.ndarray, margin: float = LUNG_MARGIN) -> np.ndarray:
    """(N, 4) lung boxes (top, bottom, left, right) of (N, S, S) uint8 squares; the whole square where the mask
    failed. The lung model runs in batches of ``BATCH`` at its own input size."""

    squares = np.asarray(squares_u8)
    n, size = len(squares), squares.shape[-1]
    boxes = whole_boxes(n, size)
    model = lungs.load_model()
    for start in range(0, n, BATCH):
        chunk = squares[start:start + BATCH]
        proba = lungs.predict_proba(model, np.stack([resize_square(s, lungs.INPUT_SIZE) for s in chunk]))
        for i, p in enumerate(proba):
            top, bottom, left, right = lungs.lung_box(lungs.mask_from_proba(p, (size, size)), margin)
            if (bottom - top) * (right - left) >= MIN_BOX_FRACTION * size * size:
                boxes[start + i] = (top, bottom, left, right)
    return boxes


def crop(squares_u8: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each square cropped to its box and resized back to (S, S) (area interpolation: no aliasing)."""
    squares = np.asarray(squares_u8)
    size = squares.shape[-1]
    out = np.empty(squares.shape, dtype=np.uint8)
    for i, (img, (top, bottom, left, right)) in enumerate(zip(squares, boxes)):
        out[i] = cv2.resize(np.ascontiguousarray(img[top:bottom, left:right]), (size, size),
                            interpolation=cv2.INTER_AREA)
    return out


def frame(squares_u8: np.ndarray, framing: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 squares → (what the model sees, the (N, 4) boxes it was cut from)."""
    squares = np.asarray(squares_u8)
    if framing in (None, "", "none"):
        return squares, whole_boxes(len(squares), squares.shape[-1])
    if framing == "lungs":
        boxes = lung_boxes(squares)
        return crop(squares, boxes), boxes
    raise ValueError(f"framing {framing!r}: expected one of {', '.join(FRAMINGS)}")


def unframe(maps: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, S, S) maps over framed inputs → the same maps over the whole squares: each resized into its box, zero
    outside it. Whole-square boxes return the maps unchanged."""
    maps = np.asarray(maps, dtype=np.float32)
    size = maps.shape[-1]
    if (boxes == whole_boxes(len(maps), size)).all():
        return maps
    out = np.zeros_like(maps)
    for i, (top, bottom, left, right) in enumerate(boxes):
        out[i, top:bottom, left:right] = cv2.resize(maps[i], (int(right - left), int(bottom - top)),
                                                    interpolation=cv2.INTER_LINEAR)
    return out


def framed_cache(cache, framing: str):
    """The training cache as ``framing`` shows it: the same ImageCache with its images framed, computed once and
    stored beside the cache (``framed-<framing>-<lung model sha>.npy``, atomic); kept in memory when the cache
    folder is not writable. ``framing`` none returns the cache itself."""
    if framing in (None, "", "none"):
        return cache

    path = cache.dir / f"framed-{framing}-{lungs.lung_model_sha256()[:12]}.npy"  # a new lung model: new file
    if path.exists():
        return replace(cache, images=np.load(path, mmap_mode="r"))
    log.info(f"  framing {len(cache.images)} cached {cache.size}px films to their lungs (once per cache)")
    images, _ = frame(cache.images, framing)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=cache.dir, prefix=".framed-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            np.save(f, images)
        os.chmod(tmp, 0o644)  # as readable as the image cache beside it (mkstemp makes 0600)
        os.replace(tmp, path)
    except OSError as e:
        log.info(f"  (framed films kept in memory: {e})")
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return replace(cache, images=images)
