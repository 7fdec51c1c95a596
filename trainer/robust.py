"""Training-loop pieces of the robust recipes (docs/recipes.md): weight averaging and mixup.

Kept out of ``trainer/train.py`` so the loop reads the same with or without them: each is a no-op at its
default (``ema_decay: 0``, ``mixup_alpha: 0``).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F


class WeightAverage:
    """Exponential moving average of a model's weights (and batch-norm statistics), updated every step.

    The average of the last few hundred steps sits in a flatter part of the loss surface than the last step's
    weights, which is what tends to carry over to shifted data (Izmailov et al. 2018, SWA; Cha et al. 2021,
    SWAD, for domain generalisation). The decay warms up as ``(1 + t) / (10 + t)``, so the first steps are not
    dominated by the random head.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.steps = float(decay), 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur.detach(), 1 - d)
            else:
                avg.copy_(cur)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator):
    """Mix each image with another of the batch (Zhang et al. 2018). Returns the mixed batch, the partner labels
    and the weight ``lam`` of the original; ``alpha`` <= 0 returns the batch unchanged with ``lam`` = 1."""
    if alpha <= 0 or len(y) < 2:
        return x, y, 1.0
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(y), generator=generator).to(y.device)
    return x.mul(lam).add_(x[perm], alpha=1 - lam), y[perm], lam


def mixed_loss(logits, y, y_partner, lam: float, weight, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy against both labels of a mixed batch, weighted like the images were."""
    loss = F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)
    if lam >= 1.0:
        return loss
    return lam * loss + (1 - lam) * F.cross_entropy(logits, y_partner, weight=weight, label_smoothing=label_smoothing)
