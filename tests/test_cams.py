"""CAMs: every method gives a map, the borrowed model is returned as it was, and the cut backward is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from core.explain.cams import (
    CAM_METHODS,
    GRADIENT_FREE,
    explain,
    explain_with_raw,
    on_shared_scale,
    overlay,
    raw_maps,
    raw_maps_many,
    reference_value,
)
from core.models.registry import create_model, get_spec


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


def test_overlay_is_transparent_without_evidence_and_always_has_its_colour_bar():
    gray = np.full((50, 80), 100, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0  # full evidence on the right half, none on the left
    out = overlay(gray, heat, alpha=0.4, units="evidence for PNEUMONIA")
    assert out.dtype == np.uint8 and out.shape[1] == 80 and out.shape[0] > 50  # the bar is under the film
    film, bar = out[:50], out[50:]
    np.testing.assert_array_equal(film[25, 5], [100, 100, 100])  # no evidence: no colour at all
    right = film[25, 75].astype(int)
    assert right[0] > right[2] + 40  # jet: hot is red (RGB order)
    # the bar holds the colour ramp: blue on the left, red on the right, on one row through its middle
    chroma = bar.max(axis=2).astype(int) - bar.min(axis=2)
    row = bar[np.argmax((chroma > 60).sum(axis=1))]
    colored = np.flatnonzero(row.max(axis=1).astype(int) - row.min(axis=1) > 60)
    assert len(colored) > 40
    lo, hi = row[colored[0] + 5].astype(int), row[colored[-1] - 2].astype(int)
    assert lo[2] > lo[0] and hi[0] > hi[2]
    # stretched maps colour everything when asked to (transparent_below=0)
    plain = overlay(gray, heat, alpha=0.4, units="x", transparent_below=0.0)[:50]
    assert not np.array_equal(plain[25, 5], [100, 100, 100])
    np.testing.assert_array_equal(overlay(gray, heat, alpha=0.0, units="x")[:50], np.dstack([gray] * 3))


def test_overlay_refuses_a_map_without_units():
    with pytest.raises(ValueError, match="units"):
        overlay(np.zeros((10, 10), np.uint8), np.zeros((4, 4), np.float32), 0.5, "  ")


def test_raw_maps_are_the_unstretched_maps():
    model, spec = _model("small_cnn")
    x = torch.randn(3, 3, 64, 64)
    raw = raw_maps(model, spec, x, "Grad-CAM")
    assert raw.shape == (3, 64, 64) and raw.min() >= 0
    for i in range(3):
        stretched, raw_one = explain_with_raw(model, spec, x[i:i + 1], "Grad-CAM")
        np.testing.assert_allclose(raw_one, raw[i], rtol=1e-4, atol=1e-9)
        r = raw[i]
        np.testing.assert_allclose(stretched, (r - r.min()) / (r.max() - r.min() + 1e-7), atol=1e-3)
    # the absolute level differs between films; stretching hides exactly that
    assert raw.reshape(3, -1).max(axis=1).std() > 0


def test_many_gradient_methods_from_one_pass_equal_each_method_alone():
    model, spec = _model("small_cnn")
    x = torch.randn(2, 3, 64, 64)
    methods = [m for m in CAM_METHODS if m not in GRADIENT_FREE]
    many = raw_maps_many(model, spec, x, methods, target=1)
    for m in methods:
        np.testing.assert_allclose(many[m], raw_maps(model, spec, x, m, 1), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="gradient methods"):
        raw_maps_many(model, spec, x, ["EigenCAM"])


def test_shared_scale_and_reference():
    raw = np.array([[0.0, 0.5], [1.0, 4.0]], np.float32)
    np.testing.assert_allclose(on_shared_scale(raw, 2.0), [[0, 0.25], [0.5, 1.0]])
    assert on_shared_scale(raw, 0.0).max() == 0  # a model with no evidence on validation draws nothing
    stack = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    assert reference_value(stack, 99) == pytest.approx(np.percentile(stack, 99))
