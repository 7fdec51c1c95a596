"""Batch tensor operations between the uint8 cache and a model.

Augmentation runs on whole batches of tensors (one ``affine_grid``/``grid_sample`` call per batch), not per
image in Python, so it costs little next to the model's own step. Images stay one-channel until the last step.
Horizontal flips are off by default: a chest film has a side (the heart is on the left).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.data.images import PREPROCESS


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """(B, S, S) or (B, 1, S, S) uint8 → (B, 1, S, S) float in [0, 1]."""
    if batch_u8.dim() == 3:
        batch_u8 = batch_u8.unsqueeze(1)
    return batch_u8.float().div_(255.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-image global histogram equalisation of a (B, 1, H, W) batch in [0, 1] (256 grey levels).

    Any increasing change of the grey levels (gamma, contrast, brightness, a scanner's look-up table) gives the
    same output, so the model cannot learn a site's exposure or processing: it sees only the rank of each pixel.
    """
    b = x.shape[0]
    q = (x.clamp(0, 1) * 255).round_().long().view(b, -1)
    hist = torch.zeros(b, 256, dtype=torch.float32, device=x.device).scatter_add_(
        1, q, torch.ones(q.shape, dtype=torch.float32, device=x.device))
    cdf = hist.cumsum(1)
    cdf_min = cdf.gather(1, q.min(1, keepdim=True).values)
    lut = (cdf - cdf_min) / (cdf[:, -1:] - cdf_min).clamp_min(1)
    return lut.gather(1, q).view_as(x).to(x.dtype)


def clahe(x: torch.Tensor, clip_limit: float = 2.0, tiles: int = 8) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation (OpenCV, 8x8 tiles, clip 2): equalises each region of
    the film, the usual chest X-ray standardisation; like ``equalize`` it removes most of a site's grey-level look."""
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    out = np.stack([op.apply(np.ascontiguousarray(img[0]))[None] for img in u8])
    return torch.from_numpy(out).to(x.device, x.dtype).div_(255.0)


def standardize(x: torch.Tensor, preprocess: str = "none") -> torch.Tensor:
    """A model's intensity standardisation (its config.json ``preprocess``), applied after any augmentation."""
    if preprocess in (None, "", "none"):
        return x
    if preprocess == "equalize":
        return equalize(x)
    if preprocess == "clahe":
        return clahe(x)
    raise ValueError(f"preprocess {preprocess!r}: expected one of {', '.join(PREPROCESS)}")


def normalize(x: torch.Tensor, mean, std, preprocess: str = "none") -> torch.Tensor:
    """(B, 1, S, S) in [0, 1] → (B, 3, S, S) normalised with the model's ImageNet-style mean/std.

    Every path into a model passes here (training, evaluation, test-time views, CAMs), so the model's intensity
    ``preprocess`` is applied here and nowhere else.
    """
    x = standardize(x, preprocess)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    # channels-last: CPU convolutions and batch norm in this torch build run several times faster in it
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random geometry and intensity changes, each drawn per image."""

    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06  # fraction of the image side
    brightness: float = 0.15  # additive, in [0, 1] pixel units
    contrast: float = 0.2  # multiplicative around the image mean
    gamma: float = 0.25  # log-uniform in [1/(1+g), 1+g]: mimics films exposed or processed differently
    blur_prob: float = 0.0  # probability of a light Gaussian blur (sharpness differs between scanners)
    hflip: bool = False
    crop_area_min: float = 1.0  # < 1: random-resized crop of [crop_area_min, 1] of the film, aspect 3/4 to 4/3
    noise_std: float = 0.0  # > 0: Gaussian noise, std drawn per image in [0, noise_std] (quantum noise, low dose)

    def scaled(self, photometric_scale: float) -> "AugmentConfig":
        """The same geometry with brightness/contrast/gamma ranges multiplied (2 = twice as wide)."""
        k = float(photometric_scale)
        return replace(self, brightness=self.brightness * k, contrast=min(0.9, self.contrast * k),
                       gamma=self.gamma * k)


@lru_cache(maxsize=8)
def _pixel_centres(n: int) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1] for ``align_corners=False``."""
    return (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1


def _affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Same as ``F.affine_grid(theta, (B, C, h, w), align_corners=False)``, about 10x faster on CPU here:
    two broadcast multiply-adds per output instead of a batched matmul over a freshly built base grid."""
    xs = _pixel_centres(w).to(theta).view(1, 1, w)
    ys = _pixel_centres(h).to(theta).view(1, h, 1)
    a = theta.view(-1, 2, 3, 1, 1)
    grid = torch.empty(theta.shape[0], h, w, 2, dtype=theta.dtype, device=theta.device)
    grid[..., 0] = a[:, 0, 0] * xs + a[:, 0, 1] * ys + a[:, 0, 2]
    grid[..., 1] = a[:, 1, 0] * xs + a[:, 1, 1] * ys + a[:, 1, 2]
    return grid


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine + intensity augmentation of a (B, 1, S, S) float batch in [0, 1]."""
    b, _, h, w = x.shape

    def uniform(lo, hi):
        return torch.rand(b, generator=generator) * (hi - lo) + lo

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180
    scale = uniform(*cfg.scale)
    tx, ty = uniform(-cfg.translate, cfg.translate) * 2, uniform(-cfg.translate, cfg.translate) * 2
    cw, ch = torch.ones(b), torch.ones(b)
    if cfg.crop_area_min < 1:  # (no extra draws otherwise: old recipes keep their random stream)
        cw, ch = _crop_sides(b, cfg.crop_area_min, uniform)
        tx, ty = tx + uniform(-1, 1) * (1 - cw), ty + uniform(-1, 1) * (1 - ch)  # crop centre anywhere inside
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip * cw, -sin * ch, tx], 1),
                         torch.stack([sin * flip * cw, cos * ch, ty], 1)], 1)
    x = F.grid_sample(x, _affine_grid(theta.to(x), h, w), mode="bilinear", padding_mode="border",
                      align_corners=False)

    if cfg.blur_prob > 0:  # blur only the images drawn for it
        pick = torch.nonzero(torch.rand(b, generator=generator) < cfg.blur_prob).flatten().to(x.device)
        if len(pick):
            x[pick] = F.avg_pool2d(F.pad(x[pick], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    g = torch.exp(uniform(-math.log1p(cfg.gamma), math.log1p(cfg.gamma))).view(b, 1, 1, 1).to(x)
    x = x.clamp_(0, 1).pow_(g)
    mean = x.mean(dim=(2, 3), keepdim=True)
    c = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(b, 1, 1, 1).to(x)
    br = uniform(-cfg.brightness, cfg.brightness).view(b, 1, 1, 1).to(x)
    # (x - mean) * c + mean + br, in place
    x = x.sub_(mean).mul_(c).add_(mean + br)
    if cfg.noise_std > 0:
        x = x.add_(torch.randn(x.shape, generator=generator).to(x) * uniform(0, cfg.noise_std).view(b, 1, 1, 1).to(x))
    return x.clamp_(0, 1)


def _crop_sides(b: int, area_min: float, uniform) -> tuple[torch.Tensor, torch.Tensor]:
    """Width and height (fractions of the side) of a random-resized crop: area in [area_min, 1], aspect ratio
    log-uniform in [3/4, 4/3], clipped to the film."""
    area = uniform(area_min, 1.0)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    return (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)


TTA_VIEWS = ((1.0, 0.0, 0.0), (1.06, 0.0, 0.0), (0.94, 0.0, 0.0), (1.0, 0.03, 0.03), (1.0, -0.03, -0.03))


def tta_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """``n`` deterministic views (identity first) of a (B, 1, S, S) batch for test-time augmentation."""
    return list(tta_batch(x, n).unflatten(0, (-1, x.shape[0])))


def tta_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` views of ``tta_views`` as one (n·B, 1, S, S) batch, view-major (rows ``v·B .. v·B+B-1`` are view
    ``v``), made by one ``grid_sample``, so that the model sees them in one forward pass: TTA then costs about n
    times one view, not n separate calls plus their overheads."""
    params = TTA_VIEWS[: max(1, n)]
    if len(params) == 1:
        return x
    b, _, h, w = x.shape
    rows = [[1 / scale, 0, tx * 2, 0, 1 / scale, ty * 2] for scale, tx, ty in params[1:]]
    theta = torch.tensor(rows, dtype=x.dtype, device=x.device).view(-1, 1, 2, 3).expand(-1, b, 2, 3)
    grid = _affine_grid(theta.reshape(-1, 2, 3), h, w)
    moved = F.grid_sample(x.repeat(len(params) - 1, 1, 1, 1), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    return torch.cat([x, moved])
