"""Class activation maps on top of pytorch-grad-cam, and overlays on the film.

``explain`` is cheap enough for an interactive page: gradient methods need only the gradient at the CAM layer, so
the backward pass is cut there (all parameters frozen, and the layer's output re-enters the graph as a fresh
leaf). Grad-CAM then costs little more than the forward pass instead of a full backward to the input.

``explain`` borrows the model: it leaves no hooks behind and restores train/eval mode and every parameter's
``requires_grad``, so one cached model can serve many sessions. It is not thread-safe; callers that share a model
across threads hold a lock around it.

One scale: pytorch-grad-cam stretches every map to its own full range, so a film with P(PNEUMONIA) = 0.003 can
show a saturated hotspot. ``raw_maps`` keeps the values before that stretch; ``on_shared_scale`` divides them by a
per-model reference fixed on validation films (``REFERENCE_PERCENTILE`` of that model's raw maps, stored in
``<model>/cam_reference.json`` by ``python -m trainer explain``) and weight them by the model's calibrated
probability of the class, so a colour means the same on every film. Weak evidence gets no colour, and ``overlay``
always draws the colour bar with its units.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from core.data.labels import POSITIVE
from core.explain.fast_cams import FastEigenCAM, FastScoreCAM

CAM_METHODS: dict[str, type] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "HiResCAM": HiResCAM,
    "XGradCAM": XGradCAM,
    "LayerCAM": LayerCAM,
    "EigenCAM": FastEigenCAM,  # same maps as pytorch-grad-cam's, faster (core/explain/fast_cams.py)
    "Score-CAM": FastScoreCAM,
}
GRADIENT_FREE = {"EigenCAM", "Score-CAM"}
SCORE_CAM_BATCH = 64  # Score-CAM runs one masked forward pass per channel; larger batches amortise the overhead


def _cut_backward(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the layer's output as a new leaf, so backward stops here. The clone keeps in-place ops that
    follow the layer (DenseNet's ``F.relu(inplace=True)``) off the leaf itself."""
    return output.detach().requires_grad_(True).clone()


def explain(model: nn.Module, spec, input_tensor: torch.Tensor, method: str = "Grad-CAM",
            target: int = POSITIVE) -> np.ndarray:
    """The ``method`` map of class ``target`` for one normalised input (1, 3, S, S): float32 (S, S) in [0, 1],
    stretched to its own full range (pytorch-grad-cam's output). For a colour that means the same on every film use
    ``raw_maps`` and ``on_shared_scale``."""
    if input_tensor.dim() != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one image as (1, 3, S, S), got {tuple(input_tensor.shape)}")
    return _run_cam(model, spec, input_tensor, method, target)[0][0]


def explain_with_raw(model: nn.Module, spec, input_tensor: torch.Tensor, method: str = "Grad-CAM",
                     target: int = POSITIVE) -> tuple[np.ndarray, np.ndarray]:
    """``explain`` and the raw map of the same single input, from one pass: ((S, S) stretched, (S, S) raw)."""
    if input_tensor.dim() != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one image as (1, 3, S, S), got {tuple(input_tensor.shape)}")
    stretched, raw = _run_cam(model, spec, input_tensor, method, target)
    return stretched[0], raw[0]


def raw_maps(model: nn.Module, spec, inputs: torch.Tensor, method: str = "Grad-CAM",
             target: int = POSITIVE) -> np.ndarray:
    """Maps of a batch (B, 3, S, S) before any per-image stretching: float32 (B, S, S) >= 0 in the CAM layer's own
    units (the ReLU'd weighted activations, resized like pytorch-grad-cam resizes them)."""
    if inputs.dim() != 4:
        raise ValueError(f"expected a batch as (B, 3, S, S), got {tuple(inputs.shape)}")
    return _run_cam(model, spec, inputs, method, target)[1]


def raw_maps_many(model: nn.Module, spec, inputs: torch.Tensor, methods, target: int = POSITIVE) -> dict:
    """``raw_maps`` of several gradient methods from one forward and backward pass: each of them reads only the CAM
    layer's activations and gradients, so each method's own ``get_cam_image`` runs on the same captured pair."""
    methods = list(methods)
    if any(m in GRADIENT_FREE or m not in CAM_METHODS for m in methods):
        raise ValueError(f"raw_maps_many takes gradient methods only ({', '.join(CAM_METHODS)} minus "
                         f"{', '.join(sorted(GRADIENT_FREE))}), got {methods}")
    calls: list = []
    out = {"Grad-CAM": _run_cam(model, spec, inputs, "Grad-CAM", target, calls)[1]}
    size = (inputs.shape[-1], inputs.shape[-2])
    for m in methods:
        if m not in out:
            cls = CAM_METHODS[m]
            # the method's own functions on a bare stand-in (they read nothing from self but get_cam_weights)
            shim = SimpleNamespace()
            shim.get_cam_weights = partial(cls.get_cam_weights, shim)
            out[m] = _resize_raw(cls.get_cam_image(shim, *calls[0]), size)
    return {m: out[m] for m in methods}


def _resize_raw(maps, size) -> np.ndarray:
    raw = np.stack([cv2.resize(np.float32(np.maximum(m, 0)), size) for m in np.asarray(maps)])
    return np.maximum(np.nan_to_num(raw, nan=0.0), 0)


def _run_cam(model: nn.Module, spec, input_tensor: torch.Tensor, method: str, target: int, calls=None):
    """(stretched (B, S, S), raw (B, S, S)): one pytorch-grad-cam call, its ``get_cam_image`` output captured (and
    its arguments appended to ``calls`` when given)."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    layer = spec.cam_layer(model)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    handles, cam, captured = [], None, []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        if method not in GRADIENT_FREE:  # registered first, so pytorch-grad-cam's hooks see the new leaf
            handles.append(layer.register_forward_hook(_cut_backward))
        # A caller inside torch.inference_mode() or torch.no_grad() would get no gradients: switch both off here.
        with torch.inference_mode(False), torch.enable_grad():
            x = input_tensor.clone() if input_tensor.is_inference() else input_tensor
            cam = CAM_METHODS[method](model=model, target_layers=[layer], reshape_transform=spec.reshape_transform)
            cam.batch_size = SCORE_CAM_BATCH
            _capture_raw(cam, captured, calls)
            heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x))
    finally:
        # Not `with cam:`: its __exit__ swallows IndexError, which would hide a failure as a None map.
        if cam is not None:
            cam.activations_and_grads.release()
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    size = (input_tensor.shape[-1], input_tensor.shape[-2])
    return heatmap.astype(np.float32), _resize_raw(captured[0], size)


def _capture_raw(cam, into: list, calls=None) -> None:
    """Keep what the method's ``get_cam_image`` returns (before pytorch-grad-cam stretches it per image)."""
    original = cam.get_cam_image

    def capture(*args, **kwargs):
        out = original(*args, **kwargs)
        into.append(np.asarray(out))
        if calls is not None:
            calls.append(args)
        return out

    cam.get_cam_image = capture


# --- one scale for every film, and overlays that always carry their colour bar --------------------------------

REFERENCE_PERCENTILE = 99.0  # of a model's raw maps over validation films: the value drawn as full colour
NO_EVIDENCE = 0.05  # below this share of the reference a pixel gets no colour at all
FADE_IN = 0.25  # above it, opacity grows over this much of the scale: weak evidence stays faint
STRETCHED_UNITS = "contrast-stretched: relative within this film only, colours not comparable between films"


def reference_value(raw: np.ndarray, percentile: float = REFERENCE_PERCENTILE) -> float:
    """The ``percentile`` of all pixels of a stack of raw maps (a model's validation maps): one number per model,
    method and target that fixes what full colour means."""
    return float(np.percentile(np.asarray(raw, dtype=np.float32), percentile))


def on_shared_scale(raw: np.ndarray, reference: float, probability: float = 1.0) -> np.ndarray:
    """Raw map(s) divided by the model's validation reference, clipped to [0, 1], times the model's (calibrated)
    probability of the target class: 1 means "as strong as the top 1 % of this model's validation evidence, on a
    film the model is sure of". The weight matters: a model can hold strong positive evidence for PNEUMONIA on a
    NORMAL film and cancel it elsewhere (the ReLU'd map shows only the positive part); weighted, a film the model
    calls NORMAL with P(PNEUMONIA) = 0.003 shows no PNEUMONIA colour. A non-positive reference gives an empty map."""
    if not reference > 0:
        return np.zeros_like(np.asarray(raw, dtype=np.float32))
    weight = float(np.clip(probability, 0.0, 1.0))
    return np.clip(np.asarray(raw, dtype=np.float32) / float(reference), 0.0, 1.0) * np.float32(weight)


def shared_units(target_name: str, model_name: str, method: str) -> str:
    return (f"{method} evidence for {target_name} times calibrated P({target_name}), relative to {model_name}'s "
            "validation reference")


def _colors(values01: np.ndarray) -> np.ndarray:
    return cv2.applyColorMap(np.uint8(255 * np.clip(values01, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]


def _blend(gray_uint8: np.ndarray, heatmap: np.ndarray, alpha: float, transparent_below: float) -> np.ndarray:
    h, w = gray_uint8.shape[:2]
    heat = np.clip(cv2.resize(np.asarray(heatmap, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    # no colour below the threshold, then a ramp, so weak evidence stays faint and the film stays readable
    weight = alpha * np.clip((heat - transparent_below) / FADE_IN, 0, 1) if transparent_below > 0 \
        else np.full_like(heat, alpha)
    base = gray_uint8 if gray_uint8.ndim == 3 else np.repeat(gray_uint8[..., None], 3, axis=2)
    mixed = (1 - weight[..., None]) * base.astype(np.float32) + weight[..., None] * _colors(heat).astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def colour_bar(width: int, units: str, transparent_below: float = NO_EVIDENCE) -> np.ndarray:
    """A horizontal colour bar (RGB uint8, ``width`` wide) with ticks 0, 0.5, 1 (the reference) and its units
    written under it."""
    from PIL import Image, ImageDraw, ImageFont

    font_px = max(11, width // 24)  # relative to the width: the image is usually shown smaller than its pixels
    font = ImageFont.load_default(size=font_px)
    pad, bar_h = font_px // 2 + 2, max(10, font_px)
    lines = _wrap(units, font, width - 2 * pad)
    height = pad + bar_h + font_px + 6 + len(lines) * (font_px + 3) + pad
    img = Image.new("RGB", (width, height), (255, 255, 255))
    ramp = np.linspace(0, 1, width - 2 * pad, dtype=np.float32)
    row = _colors(ramp[None, :])[0]
    row[ramp < transparent_below] = 200  # the part drawn as no colour on the film
    img.paste(Image.fromarray(np.repeat(row[None], bar_h, axis=0)), (pad, pad))
    draw = ImageDraw.Draw(img)
    for value, text, anchor in ((0.0, "0", "la"), (0.5, "0.5", "ma"), (1.0, "1 = reference", "ra")):
        x = pad + value * (width - 2 * pad - 1)
        draw.line([(x, pad + bar_h), (x, pad + bar_h + 4)], fill=(0, 0, 0))
        draw.text((x, pad + bar_h + 5), text, fill=(0, 0, 0), font=font, anchor=anchor)
    y = pad + bar_h + font_px + 8
    for line in lines:
        draw.text((pad, y), line, fill=(0, 0, 0), font=font)
        y += font_px + 3
    return np.asarray(img, dtype=np.uint8)


def _wrap(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and font.getlength(trial) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def overlay(gray_uint8: np.ndarray, heatmap: np.ndarray, alpha: float, units: str,
            transparent_below: float = NO_EVIDENCE) -> np.ndarray:
    """The film in gray with the map (values in [0, 1]) in the jet colormap on top, and under it the colour bar with
    ``units``: RGB uint8, the film's width, taller than the film. Pixels below ``transparent_below`` get no colour.
    There is no way to draw a map without its bar: a colour nobody can read is a bug."""
    if not units or not units.strip():
        raise ValueError("an overlay needs the units of its colour bar")
    film = _blend(gray_uint8, heatmap, float(alpha), float(transparent_below))
    return np.concatenate([film, colour_bar(film.shape[1], units, transparent_below)], axis=0)
