"""The model registry: every model builds, runs at a small size, and its CAM layer gives a usable map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.explain.cams import explain
from core.models.registry import (
    MIN_INPUT_SIZE,
    REGISTRY,
    check_input_size,
    count_params,
    create_model,
    get_spec,
    list_specs,
    set_backbone_trainable,
    vit_tokens_to_map,
)

LINEUP = ["small_cnn", "deep_cnn", "mobilenet_v2", "resnet18", "resnet50", "densenet121", "efficientnet_lite0",
          "vit_tiny"]
# Small sizes keep the whole lineup under a few seconds on 2 CPU cores; each is one the architecture accepts.
TEST_SIZE = {"small_cnn": 64, "deep_cnn": 64, "mobilenet_v2": 96, "resnet18": 96, "resnet50": 64,
             "densenet121": 64, "efficientnet_lite0": 96, "vit_tiny": 128}


def test_lineup_and_lookup():
    assert list(REGISTRY) == LINEUP
    assert [s.name for s in list_specs()] == LINEUP
    assert get_spec("resnet18").name == "resnet18"
    with pytest.raises(KeyError) as e:
        get_spec("resnet19")
    assert isinstance(e.value, ValueError)
    assert "resnet19" in str(e.value) and "mobilenet_v2" in str(e.value)


@pytest.mark.parametrize("name", LINEUP)
def test_builds_runs_and_explains(name):
    spec = get_spec(name)
    size = TEST_SIZE[name]
    torch.manual_seed(0)
    model, info = create_model(name, pretrained=False, input_size=size)
    assert not info.pretrained and info.source == "none"
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2) and torch.isfinite(out).all()

    x = torch.randn(1, 3, size, size)
    maps = [explain(model, spec, x, "Grad-CAM", target=t) for t in (1, 0)]
    for m in maps:
        assert m.shape == (size, size) and m.dtype == np.float32
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    # Grad-CAM's ReLU may blank one class of a random network, never both.
    assert max(float(m.std()) for m in maps) > 0


def test_spec_metadata():
    for spec in list_specs():
        assert spec.description and spec.input_size >= MIN_INPUT_SIZE
        assert len(spec.mean) == 3 and len(spec.std) == 3
    assert get_spec("small_cnn").weights is None and get_spec("deep_cnn").weights is None
    assert "seed" in get_spec("small_cnn").description and "seed" in get_spec("deep_cnn").description
    assert get_spec("vit_tiny").mean == (0.5, 0.5, 0.5)  # what its augreg weights were trained with


@pytest.mark.parametrize("name", ["small_cnn", "deep_cnn"])
@pytest.mark.parametrize("size", [64, 100, 257])
def test_small_cnns_take_any_size(name, size):
    model, _ = create_model(name, pretrained=False)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 2)


@pytest.mark.parametrize("size", [160, 224])
def test_vit_other_sizes_and_token_grid(size):
    spec = get_spec("vit_tiny")
    model, _ = create_model("vit_tiny", pretrained=False, input_size=size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 2)
    assert explain(model, spec, x).shape == (size, size)


def test_vit_tokens_to_map():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = vit_tokens_to_map(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2])  # patch 1 (token 2, after the class token) at row 0, col 1
    with pytest.raises(ValueError):
        vit_tokens_to_map(torch.zeros(1, 11, 3))


def test_input_size_checks():
    check_input_size(get_spec("vit_tiny"), 128)
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("vit_tiny", pretrained=False, input_size=150)
    with pytest.raises(ValueError):
        create_model("resnet18", pretrained=False, input_size=16)


def test_models_without_weights_train_from_scratch_quietly():
    _, info = create_model("small_cnn", pretrained=True)
    assert (info.pretrained, info.source, info.warning) == (False, "none", None)
    with pytest.raises(ValueError):
        create_model("small_cnn", weights_path="x.pth")


def test_set_backbone_trainable_and_count_params():
    spec = get_spec("resnet18")
    model, _ = create_model("resnet18", pretrained=False)
    head = {id(p) for p in spec.head(model).parameters()}
    set_backbone_trainable(model, spec, False)
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    set_backbone_trainable(model, spec, True)
    assert all(p.requires_grad for p in model.parameters())
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 11_000_000


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_new_head_on_pretrained_backbone_starts_at_even_odds(name):
    """A fresh 2-class head must not start with huge logits (timm's default init did: AUC 0.75 after a
    frozen-backbone epoch of EfficientNet-Lite0)."""
    model, info = create_model(name, pretrained=True, input_size=128)
    assert info.pretrained
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.eval()(x)
    assert logits.abs().max() < 1.0
