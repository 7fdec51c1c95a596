"""Lung fields on a chest film: the small segmentation model that ships with the project, and its helpers.

API
- ``lung_mask(gray_uint8) -> bool array`` of the film's size: True inside the lung fields. The committed model
  (``lungmodel/``, see its README for the data, the held-out Dice/IoU and the citations) runs at
  ``INPUT_SIZE`` px on the film resized to a square (as the classifiers see it); its probability map is resized
  back to the film, thresholded at 0.5, and cleaned: the two largest components are kept and holes are filled.
  Results are cached per image content (a hash of the pixels), so asking twice for the same film is free.
- ``lung_box(mask, margin) -> (top, bottom, left, right)``: the bounding box of the mask, grown by ``margin``
  (a fraction of the box's height/width on each side) and clipped to the image; the whole image when the mask is
  empty. ``gray[top:bottom, left:right]`` crops the lung fields.
- ``LungUNet``: a U-Net decoder on the ImageNet-pretrained MobileNetV2 encoder (torchvision), 1 output logit.
  ``predict_proba`` runs it on a batch of films; ``dice`` / ``iou`` score masks.

The masks follow two conventions (see ``trainer/lungs.py``): SCR (JSRT) leaves out the lung behind the heart,
the others include it. The model learns a mixture; lung focus (core/explain/focus.py) does not need that detail.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from core.data.images import resize_square
from core.models.checkpoints import load_best
from core.models.registry import IMAGENET_MEAN, IMAGENET_STD
from core.models.weights import sha256_of

INPUT_SIZE = 128  # Novikov et al. 2018 reach lung Dice 0.97 on JSRT at 128 px; 4x cheaper than 256 on CPU
MODEL_DIR = Path(__file__).resolve().parents[2] / "lungmodel"
WEIGHTS = MODEL_DIR / "lung_unet.safetensors"
METRICS = MODEL_DIR / "metrics.json"
SKIPS = (1, 3, 6, 13)  # MobileNetV2 ``features`` indices whose outputs feed the decoder (strides 2, 4, 8, 16)
SKIP_CHANNELS = (16, 24, 32, 96)
ENCODER_END = 17  # features[:18]: stride 32, 320 channels (the 1x1 conv to 1280 is left out)
DECODER = (96, 48, 32, 24)  # decoder channels at strides 16, 8, 4, 2
CACHE_SIZE = 256


class _Up(nn.Module):
    """Upsample x2, concatenate the encoder's skip, two 3x3 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in + c_skip, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class LungUNet(nn.Module):
    """MobileNetV2 encoder (ImageNet weights loadable under ``encoder.``), U-Net decoder, one lung logit per pixel."""

    def __init__(self):
        super().__init__()
        self.encoder = torchvision.models.mobilenet_v2().features[:ENCODER_END + 1]
        ups, c_in = [], 320
        for c_skip, c_out in zip(reversed(SKIP_CHANNELS), DECODER):
            ups.append(_Up(c_in, c_skip, c_out))
            c_in = c_out
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(c_in, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, skips = x.shape[-2:], []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in SKIPS:
                skips.append(x)
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


def to_input(gray_uint8_square: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 films (or floats in [0, 1]) → the normalised (N, 3, S, S) batch the model takes."""
    x = torch.as_tensor(gray_uint8_square)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict_proba(model: nn.Module, squares: np.ndarray) -> np.ndarray:
    """Lung probability per pixel for (N, S, S) uint8 square films: float32 (N, S, S)."""
    model.eval()
    return torch.sigmoid(model(to_input(squares))[:, 0]).numpy().astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_model(path: str | None = None) -> LungUNet:
    """The committed lung model (or the one at ``path``), float32, in eval mode. Loaded once per process."""
    model = load_best(LungUNet(), Path(path) if path else WEIGHTS)
    return model.eval()


_SHA: dict[tuple, str] = {}


def lung_model_sha256(path: str | Path | None = None) -> str:
    """sha256 of the committed lung model's weights (or of the file at ``path``), once per file version.

    A lung-framed classifier records it in its config.json (``lung_model_sha256``) when it trains; loading it
    (``core.models.inference.load_trained``) refuses a lung model other than the one it was trained with, and the framed
    training cache is keyed by it, so a replaced lung model can never silently change what a model sees."""

    path = Path(path) if path else WEIGHTS
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _SHA:
        _SHA[key] = sha256_of(path)
    return _SHA[key]


def postprocess(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components (the two lungs) and fill their holes."""
    mask = np.asarray(mask, dtype=bool)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.copy()
    keep = 1 + np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2]
    mask = np.isin(labels, keep)
    # holes: background components that do not touch the image border
    _, bg = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([bg[0], bg[-1], bg[:, 0], bg[:, -1]]))
    return mask | (~np.isin(bg, border) & (bg > 0))


def mask_from_proba(proba_square: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A square probability map → the cleaned boolean mask at the film's (height, width)."""
    h, w = shape
    proba = cv2.resize(np.asarray(proba_square, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return postprocess(proba > 0.5)


_MASKS: OrderedDict[str, np.ndarray] = OrderedDict()


def _content_key(gray: np.ndarray) -> str:
    return hashlib.blake2b(gray.tobytes(), digest_size=16, person=str(gray.shape).encode()[:16]).hexdigest()


def lung_mask(gray_uint8: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
    """Boolean lung-field mask of a 2-D uint8 film, same size; cached per image content (committed model only)."""
    gray = np.asarray(gray_uint8)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"lung_mask expects a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    key = _content_key(gray) if model is None else None
    if key is not None and key in _MASKS:
        _MASKS.move_to_end(key)
        return _MASKS[key].copy()
    proba = predict_proba(model or load_model(), resize_square(gray, INPUT_SIZE)[None])[0]
    mask = mask_from_proba(proba, gray.shape)
    if key is not None:
        _MASKS[key] = mask
        while len(_MASKS) > CACHE_SIZE:
            _MASKS.popitem(last=False)
    return mask.copy()


def lung_box(mask: np.ndarray, margin: float = 0.05) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the mask's bounding box, grown by ``margin`` x its size on each side and
    clipped to the image; the whole image when the mask is empty. Crop with ``img[top:bottom, left:right]``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"lung_box expects a 2-D mask, got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, h, 0, w
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = round(margin * (bottom - top)), round(margin * (right - left))
    return max(0, top - dy), min(h, bottom + dy), max(0, left - dx), min(w, right + dx)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|A∩B| / (|A| + |B|); 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU = |A∩B| / |A∪B|; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = (pred | truth).sum()
    return 1.0 if union == 0 else float((pred & truth).sum() / union)
