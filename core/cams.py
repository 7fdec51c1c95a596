"""Class activation maps on top of pytorch-grad-cam, and overlays on the film.

``explain`` is cheap enough for an interactive page: gradient methods need only the gradient at the CAM layer, so
the backward pass is cut there (all parameters frozen, and the layer's output re-enters the graph as a fresh
leaf). Grad-CAM then costs little more than the forward pass instead of a full backward to the input.

``explain`` borrows the model: it leaves no hooks behind and restores train/eval mode and every parameter's
``requires_grad``, so one cached model can serve many sessions. It is not thread-safe; callers that share a model
across threads hold a lock around it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from core.fast_cams import FastEigenCAM, FastScoreCAM
from core.labels import POSITIVE

CAM_METHODS: dict[str, type] = {
    "Grad-CAM": GradCAM,
    "Grad-CAM++": GradCAMPlusPlus,
    "HiResCAM": HiResCAM,
    "XGradCAM": XGradCAM,
    "LayerCAM": LayerCAM,
    "EigenCAM": FastEigenCAM,  # same maps as pytorch-grad-cam's, faster (core/fast_cams.py)
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
    """The ``method`` map of class ``target`` for one normalised input (1, 3, S, S): float32 (S, S) in [0, 1]."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(CAM_METHODS)}")
    if input_tensor.dim() != 4 or input_tensor.shape[0] != 1:
        raise ValueError(f"expected one image as (1, 3, S, S), got {tuple(input_tensor.shape)}")
    layer = spec.cam_layer(model)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    handles, cam = [], None
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
            heatmap = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
    finally:
        # Not `with cam:`: its __exit__ swallows IndexError, which would hide a failure as a None map.
        if cam is not None:
            cam.activations_and_grads.release()
        for h in handles:
            h.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return heatmap[0].astype(np.float32)


def overlay(gray_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The film in gray with the heatmap in the jet colormap on top: RGB uint8 of the film's size."""
    h, w = gray_uint8.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    base = gray_uint8 if gray_uint8.ndim == 3 else np.repeat(gray_uint8[..., None], 3, axis=2)
    mixed = (1 - alpha) * base.astype(np.float32) + alpha * colored.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
