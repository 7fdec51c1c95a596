"""Score-CAM and EigenCAM at interactive speed, as drop-in subclasses of pytorch-grad-cam's classes.

* Score-CAM scores one masked copy of the input per channel of the CAM layer (1,280 for MobileNetV2). Here the
  masked copies are built one batch at a time (the library builds all of them at once: 770 MB for MobileNetV2 at
  224 px), channels whose map is constant (all give the same all-zero mask) are scored once, and the batches go
  through the model's ONNX Runtime twin when one exists (``core.onnx_backend.twin_of``), else through the torch
  model. The weights are the library's: a softmax over the target scores of every channel, so the map is the same.
  Scoring only some channels was tried and rejected: on the lineup's MobileNetV2 the softmax weights are nearly
  flat (the top 256 of 1,280 channels carry 27 to 42 % of the weight), so any subset (by activation variance, by
  Grad-CAM weight, or at random) moved the map by up to 0.2 on its [0, 1] scale.
* EigenCAM's map is the activations projected on their first principal component. The library takes a full SVD
  (``full_matrices=True``: a C × C matrix for C channels) on every BLAS thread; the first right singular vector
  needs only the thin SVD of the (H·W) × C matrix, which on one BLAS thread takes a few milliseconds and does not
  fight other processes for the cores.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, ScoreCAM
from threadpoolctl import threadpool_limits

from core import onnx_backend

SCORE_CAM_BATCH = 64  # masked copies per forward pass


def first_component_projection(activations: np.ndarray) -> np.ndarray:
    """(B, C, H, W) → (B, H, W): each image's centred activations projected on their first right singular vector
    (what ``pytorch_grad_cam.utils.svd_on_activations.get_2d_projection`` computes, with a thin SVD)."""
    out = []
    with threadpool_limits(limits=1, user_api="blas"):
        for act in np.nan_to_num(np.asarray(activations, dtype=np.float32)):
            flat = act.reshape(act.shape[0], -1).T
            flat = flat - flat.mean(axis=0)
            _, _, vt = np.linalg.svd(flat, full_matrices=False)
            out.append((flat @ vt[0]).reshape(act.shape[1:]))
    return np.float32(out)


class FastEigenCAM(EigenCAM):
    def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
        return first_component_projection(activations)


class FastScoreCAM(ScoreCAM):
    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        forward = _fast_forward(self.model, input_tensor)
        batch = int(getattr(self, "batch_size", SCORE_CAM_BATCH))
        with torch.no_grad():
            scores = [_masked_scores(forward, x, acts.to(x.device), target, batch)
                      for x, acts, target in zip(input_tensor, torch.from_numpy(activations), targets)]
        return torch.softmax(torch.stack(scores), dim=-1).numpy()


def _masked_scores(forward, x: torch.Tensor, acts: torch.Tensor, target, batch: int) -> torch.Tensor:
    """Target score of ``x`` times each channel's map (upsampled, scaled to [0, 1]: the library's masks), built
    and scored one batch at a time; channels whose map is constant all give the zero mask, scored once."""
    flat = acts.flatten(1)
    varying = flat.max(dim=1)[0] > flat.min(dim=1)[0]
    scores = torch.empty(len(acts))
    idx = torch.nonzero(varying).flatten()
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        # align_corners=True: what the library's UpsamplingBilinear2d does
        up = torch.nn.functional.interpolate(acts[chunk][None], size=x.shape[-2:], mode="bilinear",
                                             align_corners=True)[0]
        lo, hi = up.flatten(1).min(dim=1)[0], up.flatten(1).max(dim=1)[0]
        masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        scores[chunk] = _target_scores(forward, x[None] * masks[:, None], target)
    if len(idx) < len(acts):
        scores[~varying] = _target_scores(forward, torch.zeros_like(x)[None], target)[0]
    return scores


def _target_scores(forward, batch: torch.Tensor, target) -> torch.Tensor:
    if isinstance(forward, torch.nn.Module):
        batch = batch.contiguous(memory_format=torch.channels_last)
    return torch.tensor([float(target(o)) for o in forward(batch)])


def _fast_forward(model, input_tensor: torch.Tensor):
    """The model's ONNX Runtime twin when there is one for this input size (and the torch backend is not
    forced), else the torch model itself."""
    twin = None if onnx_backend.choose_backend() == "torch" else onnx_backend.twin_of(model)
    if twin is not None and input_tensor.shape[-1] == twin.size and input_tensor.shape[-2] == twin.size:
        return twin
    return model
