"""Batch augmentation: the fast affine grid equals torch's, and augmentation keeps images valid."""

import torch
import torch.nn.functional as F

from core.data.transforms import AugmentConfig, _affine_grid, augment, normalize, tta_views


def test_fast_affine_grid_equals_torch():
    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    for h, w in ((224, 224), (96, 128)):
        ref = F.affine_grid(theta, [5, 1, h, w], align_corners=False)
        assert torch.allclose(_affine_grid(theta, h, w), ref, atol=1e-5)


def test_augment_keeps_range_and_shape_and_is_seeded():
    x = torch.rand(8, 1, 64, 64)
    cfg = AugmentConfig(blur_prob=0.5)
    a = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    b = augment(x.clone(), cfg, torch.Generator().manual_seed(1))
    c = augment(x.clone(), cfg, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, x, atol=1e-3)


def test_identity_augmentation_changes_nothing():
    x = torch.rand(4, 1, 32, 32)
    cfg = AugmentConfig(rotate_deg=0, scale=(1, 1), translate=0, brightness=0, contrast=0, gamma=0)
    assert torch.allclose(augment(x.clone(), cfg), x, atol=1e-5)
    assert torch.allclose(tta_views(x, 1)[0], x)


def test_normalize_gives_three_channels_channels_last():
    out = normalize(torch.full((2, 1, 8, 8), 0.5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.shape == (2, 3, 8, 8) and torch.allclose(out, torch.zeros_like(out))
    assert out.is_contiguous(memory_format=torch.channels_last)
