"""Prediction with a trained model: the trainer's evaluation, the dashboard and the benchmarks share it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.artifacts import ArtifactError, ModelArtifacts, is_ensemble
from core.checkpoints import load_best
from core.models import ModelSpec, create_model, get_spec
from core.transforms import normalize, to_float, tta_views


@dataclass
class LoadedModel:
    """A trained network in eval mode, with what is needed to feed it and to read its output."""

    name: str
    spec: ModelSpec
    model: torch.nn.Module
    input_size: int
    mean: tuple
    std: tuple
    tta: int = 1

    def inputs(self, batch_u8) -> torch.Tensor:
        """uint8 (B, S, S) at ``input_size`` → normalised model input."""
        return normalize(to_float(torch.as_tensor(np.asarray(batch_u8))), self.mean, self.std)


def load_trained(artifacts: ModelArtifacts) -> LoadedModel:
    """Build the architecture named in the model's config.json and load its best checkpoint."""
    cfg = artifacts.config
    if is_ensemble(cfg):
        raise ArtifactError(f"{artifacts.name} is an ensemble (mean of {', '.join(cfg['members'])}); it has no "
                            "network of its own: explain its members instead")
    try:
        arch, size = cfg["arch"], int(cfg["input_size"])
        spec = get_spec(arch)
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{artifacts.dir / 'config.json'}: cannot tell the architecture ({e})") from None
    model, _ = create_model(arch, pretrained=False, input_size=size)
    load_best(model, artifacts.best_checkpoint())
    model.eval().to(memory_format=torch.channels_last)
    return LoadedModel(name=artifacts.name, spec=spec, model=model, input_size=size,
                       mean=tuple(cfg.get("mean", spec.mean)), std=tuple(cfg.get("std", spec.std)),
                       tta=int(cfg.get("tta", 1) or 1))


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images_u8, mean, std, *, batch_size: int = 64,
                          tta: int = 1, device: str | torch.device = "cpu", indices=None) -> np.ndarray:
    """P(PNEUMONIA) for each image of a uint8 (N, S, S) array (a memory map is fine).

    ``tta`` > 1 averages the probability over that many fixed views (see ``core.transforms.tta_views``).
    """
    model.eval()
    idx = np.arange(len(images_u8)) if indices is None else np.asarray(indices)
    out = np.empty(len(idx), dtype=np.float32)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        x = to_float(torch.from_numpy(np.ascontiguousarray(images_u8[chunk]))).to(device)
        probs = torch.zeros(len(chunk), device=device)
        views = tta_views(x, tta)
        for view in views:
            logits = model(normalize(view, mean, std))
            probs += torch.softmax(logits.float(), dim=1)[:, 1]
        out[start : start + len(chunk)] = (probs / len(views)).cpu().numpy()
    return out


def predict_loaded(loaded: LoadedModel, images_u8, *, batch_size: int = 64) -> np.ndarray:
    return predict_probabilities(loaded.model, images_u8, loaded.mean, loaded.std, batch_size=batch_size,
                                 tta=loaded.tta)
