"""CAMs: every method gives a map, the borrowed model is returned as it was, and the cut backward is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from core.cams import CAM_METHODS, explain, overlay
from core.models import create_model, get_spec


def _model(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name, pretrained=False)[0], get_spec(name)


def _no_hooks_left(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, m
        assert not m._backward_hooks and not m._backward_pre_hooks, m


def test_methods_listed():
    assert list(CAM_METHODS) == ["Grad-CAM", "Grad-CAM++", "HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM",
                                 "Score-CAM"]


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_on_small_cnn_and_model_state_restored(method):
    model, spec = _model("small_cnn")
    model.train()
    frozen = spec.head(model)[-1].weight
    frozen.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(1, 3, 64, 64)

    heat = explain(model, spec, x, method)

    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    _no_hooks_left(model)


@pytest.mark.parametrize("name, size", [("mobilenet_v2", 224), ("densenet121", 64), ("vit_tiny", 128)])
def test_cut_backward_equals_full_backward(name, size):
    """Stopping the backward at the CAM layer changes nothing: the layer's gradient is all Grad-CAM reads.
    DenseNet checks an in-place op after the layer; the ViT checks the token reshape."""
    model, spec = _model(name)
    x = torch.randn(1, 3, size, size)
    for target in (0, 1):
        fast = explain(model, spec, x, "Grad-CAM", target)
        with GradCAM(model=model, target_layers=[spec.cam_layer(model)],
                     reshape_transform=spec.reshape_transform) as cam:  # plain use: backward through everything
            full = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
        np.testing.assert_allclose(fast, full, atol=1e-5)
    assert fast.std() > 0 or full.std() > 0


def test_backward_never_reaches_the_stem():
    model, spec = _model("mobilenet_v2")
    seen = []
    handle = model.features[0].register_forward_hook(lambda m, i, out: seen.append(out.requires_grad))
    try:
        explain(model, spec, torch.randn(1, 3, 96, 96))
    finally:
        handle.remove()
    assert seen == [False]  # no autograd graph before the CAM layer


def test_works_inside_inference_mode_and_no_grad():
    model, spec = _model("small_cnn")
    x = torch.randn(1, 3, 64, 64)
    expected = explain(model, spec, x)
    with torch.inference_mode():
        np.testing.assert_allclose(explain(model, spec, torch.randn(1, 3, 64, 64).copy_(x)), expected, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(explain(model, spec, x), expected, atol=1e-6)


def test_hooks_released_and_state_restored_when_it_fails():
    model, spec = _model("small_cnn")
    model.train()

    def broken(t):
        raise IndexError("boom")  # pytorch-grad-cam's own __exit__ would swallow this one

    with pytest.raises(IndexError):
        explain(model, dataclasses.replace(spec, reshape_transform=broken), torch.randn(1, 3, 64, 64))
    assert model.training and all(p.requires_grad for p in model.parameters())
    _no_hooks_left(model)


def test_bad_arguments():
    model, spec = _model("small_cnn")
    with pytest.raises(ValueError, match="Grad-CAM"):
        explain(model, spec, torch.randn(1, 3, 64, 64), "GradCAM")
    with pytest.raises(ValueError):
        explain(model, spec, torch.randn(2, 3, 64, 64))


def test_overlay():
    gray = np.full((50, 80), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0  # hot on the right half
    out = overlay(gray, heat, alpha=0.4)
    assert out.shape == (50, 80, 3) and out.dtype == np.uint8
    left, right = out[25, 5].astype(int), out[25, 75].astype(int)
    assert left[2] > left[0] and right[0] > right[2]  # jet: cold is blue, hot is red (RGB order)
    np.testing.assert_array_equal(overlay(gray, heat, alpha=0.0), np.dstack([gray] * 3))
