"""Synthetic acquisition shifts of a film batch: a shift proxy we can see (docs/recipes.md).

The carved test split comes from the training batch, so it is easy. Films from another batch, hospital or
scanner differ in exposure and processing (contrast, gamma, sharpening), sharpness, noise, resolution and
compression, and in what surrounds the lungs (markers, borders, framing). Each shift below changes one of these,
by a fixed amount chosen before any model was scored; a model whose figures hold under all of them has at least
not learnt those shortcuts. It is a proxy, not a substitute for a real external set.

Every function maps uint8 (N, S, S) to uint8 (N, S, S), deterministic (noise is seeded), and sizes its
kernels relative to S so that a 128 px and a 224 px model see the same shift.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np


def _per_image(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(batch: np.ndarray) -> np.ndarray:
        return np.stack([fn(np.ascontiguousarray(img)) for img in batch]).astype(np.uint8)
    return apply


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def contrast(factor: float):
    def fn(img):
        f = img.astype(np.float32)
        return _to_u8((f - f.mean()) * factor + f.mean())
    return _per_image(fn)


def gamma(g: float):
    lut = _to_u8(255.0 * (np.arange(256) / 255.0) ** g)
    return _per_image(lambda img: lut[img])


def blur(sigma_at_224: float):
    def fn(img):
        s = sigma_at_224 * img.shape[0] / 224
        return cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REPLICATE)
    return _per_image(fn)


def sharpen(amount: float, sigma_at_224: float = 2.0):
    """Unsharp masking, the edge enhancement many X-ray vendors apply by default."""
    def fn(img):
        s = sigma_at_224 * img.shape[0] / 224
        f = img.astype(np.float32)
        return _to_u8(f + amount * (f - cv2.GaussianBlur(f, (0, 0), sigmaX=s, sigmaY=s)))
    return _per_image(fn)


def noise(std: float, seed: int = 0):
    def apply(batch):
        rng = np.random.default_rng(seed)
        return _to_u8(batch.astype(np.float32) + rng.normal(0, std * 255, batch.shape))
    return apply


def low_resolution(factor: int):
    def fn(img):
        s = img.shape[0]
        small = cv2.resize(img, (max(8, s // factor),) * 2, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    return _per_image(fn)


def jpeg(quality: int):
    def fn(img):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return _per_image(fn)


def border_crop(fraction: float):
    """Cut ``fraction`` of each side and resize back: markers, labels and collimation edges near the border go,
    and the chest fills more of the frame (another framing)."""
    def fn(img):
        s = img.shape[0]
        k = int(round(s * fraction))
        return cv2.resize(img[k : s - k, k : s - k], (s, s), interpolation=cv2.INTER_AREA)
    return _per_image(fn)


# name -> (what it mimics, function). Amounts fixed before any model was scored; see docs/recipes.md.
SHIFTS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "none": ("the test split as it is", lambda b: np.asarray(b, dtype=np.uint8)),
    "contrast_low": ("contrast x0.6 around the mean (flatter processing)", contrast(0.6)),
    "contrast_high": ("contrast x1.4 around the mean", contrast(1.4)),
    "gamma_dark": ("gamma 1.6 (darker mid-tones)", gamma(1.6)),
    "gamma_bright": ("gamma 0.6 (brighter mid-tones)", gamma(0.6)),
    "blur": ("Gaussian blur, sigma 1.5 px at 224 px (softer detector)", blur(1.5)),
    "sharpen": ("unsharp mask, amount 1 (vendor edge enhancement)", sharpen(1.0)),
    "noise": ("Gaussian noise, std 4% of full scale (low dose)", noise(0.04)),
    "low_res": ("down to 1/3 of the side and back up (low-resolution source)", low_resolution(3)),
    "jpeg": ("JPEG quality 15 (heavy compression)", jpeg(15)),
    "border_crop": ("10% of each side cut away, resized back (markers and borders gone, tighter framing)",
                    border_crop(0.10)),
}


def apply_shift(name: str, batch_u8: np.ndarray) -> np.ndarray:
    """One named shift of a uint8 (N, S, S) batch."""
    if name not in SHIFTS:
        raise KeyError(f"unknown shift {name!r}; known: {', '.join(SHIFTS)}")
    return SHIFTS[name][1](np.asarray(batch_u8, dtype=np.uint8))
