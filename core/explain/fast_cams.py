"""Score-CAM and EigenCAM at interactive speed, as drop-in subclasses of pytorch-grad-cam's classes.

* Score-CAM scores one masked copy of the input per channel of the CAM layer (1,280 for MobileNetV2). Here the
  masked copies are built one batch at a time (the library builds all of them at once: 770 MB for MobileNetV2 at
  224 px), channels whose map is constant (all give the same all-zero mask) are scored once, and the batches go
  through the model's ONNX Runtime twin when one exists (``core.models.onnx_backend.twin_of``), else through the torch
  model. The weights are the library's softmax over the target scores of every channel, but channels are first
  grouped into ``SCORE_CAM_CLUSTERS`` clusters of similar masks (k-means on the masks at the CAM layer's own
  resolution) and only each cluster's most central member is scored; its score stands for the cluster. Measured
  on 12 validation films for each of the default run's two MobileNetV2s (``python -m bench.scorecam_loss``): 256
  clusters give rho 0.998 and 1.000 (min 0.997) with the full map, top-20 % IoU 0.95 and 0.96, and the same ROAD,
  at a fifth of the passes; every plain subset of 256 channels (top by activation, random, random with the others
  given the mean score) moved the map by up to 0.15 to 0.34 of its [0, 1] scale. ``reporting`` and
  ``run_with_progress`` hand the passes done so far to a progress bar.
* EigenCAM's map is the activations projected on their first principal component. The library takes a full SVD
  (``full_matrices=True``: a C × C matrix for C channels) on every BLAS thread; the first right singular vector
  needs only the thin SVD of the (H·W) × C matrix, which on one BLAS thread takes a few milliseconds and does not
  fight other processes for the cores.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, ScoreCAM
from threadpoolctl import threadpool_limits

from core.models import onnx_backend

__all__ = ["SCORE_CAM_BATCH", "SCORE_CAM_CLUSTERS", "FastEigenCAM", "FastScoreCAM", "channel_clusters",
           "first_component_projection", "layer_activations", "masked_scores", "reporting", "run_with_progress"]

SCORE_CAM_BATCH = 64  # masked copies per forward pass
# channels grouped into this many clusters, one scored each (None: every channel). 256 of MobileNetV2's 1,280: rho
# >= 0.997 with the full map, top-20 % IoU 0.95, ROAD unchanged; 5.0 s vs 18.5 s (BENCHMARKS.md, issue 20)
SCORE_CAM_CLUSTERS: int | None = 256
_REPORT = threading.local()


@contextmanager
def reporting(callback):
    """Within this block, Score-CAM in this thread calls ``callback(done, total)`` after each batch of masked
    films (thread-local: other sessions' maps report nothing here)."""
    before = getattr(_REPORT, "callback", None)
    _REPORT.callback = callback
    try:
        yield
    finally:
        _REPORT.callback = before


def run_with_progress(fn, on_progress, *, prepare=None, poll: float = 0.1):
    """``fn()`` in a worker thread, its Score-CAM progress handed to ``on_progress(done, total)`` in the calling
    thread (a Streamlit page draws its progress bar there, never from inside a cached function); ``prepare(thread)``
    before it starts (Streamlit: ``add_script_run_ctx``). Returns what ``fn`` returns, raises what it raises."""
    state, box = {"done": 0, "total": 0}, {}

    def work():
        with reporting(lambda done, total: state.update(done=done, total=total)):
            try:
                box["out"] = fn()
            except BaseException as e:  # re-raised in the calling thread
                box["error"] = e

    worker = threading.Thread(target=work, name="score-cam", daemon=True)
    if prepare is not None:
        prepare(worker)
    worker.start()
    shown = None
    while worker.is_alive():
        worker.join(poll)
        now = (state["done"], state["total"])
        if now != shown and now[1]:
            on_progress(*now)
            shown = now
    if "error" in box:
        raise box["error"]
    return box["out"]


def channel_clusters(acts: torch.Tensor, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(representatives (k,), cluster of each channel (C,)): k-means on the channels' masks at the CAM layer's own
    resolution, each scaled to [0, 1] as Score-CAM scales them; a cluster's representative is the member nearest
    its centre. Masks that look alike give masked films that score alike, so one score per cluster stands for all."""
    from sklearn.cluster import KMeans

    flat = acts.detach().float().flatten(1).cpu().numpy().astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    masks = (flat - lo) / (hi - lo + 1e-8)
    k = min(int(k), len(masks))
    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(masks)
    reps = np.empty(k, dtype=np.int64)
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        reps[c] = members[np.argmin(((masks[members] - km.cluster_centers_[c]) ** 2).sum(1))]
    return reps, km.labels_.astype(np.int64)


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
    clusters: int | None = SCORE_CAM_CLUSTERS

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        forward = _fast_forward(self.model, input_tensor)
        batch = int(getattr(self, "batch_size", SCORE_CAM_BATCH))
        progress = getattr(_REPORT, "callback", None)
        with torch.no_grad():
            scores = [self._scores(forward, x, acts.to(x.device), target, batch, progress)
                      for x, acts, target in zip(input_tensor, torch.from_numpy(activations), targets)]
        return torch.softmax(torch.stack(scores), dim=-1).numpy()

    def _scores(self, forward, x, acts, target, batch, progress) -> torch.Tensor:
        """Every channel's score, or (``clusters``) each cluster's representative's score shared by its members."""
        if not self.clusters or self.clusters >= len(acts):
            return masked_scores(forward, x, acts, target, batch, progress=progress)
        reps, labels = channel_clusters(acts, self.clusters)
        scored = masked_scores(forward, x, acts, target, batch, channels=reps, progress=progress)
        return scored[torch.from_numpy(reps)][torch.from_numpy(labels)]


def masked_scores(forward, x: torch.Tensor, acts: torch.Tensor, target, batch: int, channels=None,
                   progress=None) -> torch.Tensor:
    """Target score of ``x`` times each channel's map (upsampled, scaled to [0, 1]: the library's masks), built
    and scored one batch at a time; channels whose map is constant all give the zero mask, scored once.
    ``channels``: score only these (the others are left NaN); ``progress(done, total)`` after each batch."""
    flat = acts.flatten(1)
    varying = flat.max(dim=1)[0] > flat.min(dim=1)[0]
    scores = torch.full((len(acts),), float("nan"))
    wanted = torch.ones(len(acts), dtype=torch.bool) if channels is None else torch.zeros(len(acts), dtype=torch.bool)
    if channels is not None:
        wanted[torch.as_tensor(channels, dtype=torch.long)] = True
    idx = torch.nonzero(varying & wanted).flatten()
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        # align_corners=True: what the library's UpsamplingBilinear2d does
        up = torch.nn.functional.interpolate(acts[chunk][None], size=x.shape[-2:], mode="bilinear",
                                             align_corners=True)[0]
        lo, hi = up.flatten(1).min(dim=1)[0], up.flatten(1).max(dim=1)[0]
        masks = (up - lo[:, None, None]) / (hi - lo + 1e-8)[:, None, None]
        scores[chunk] = _target_scores(forward, x[None] * masks[:, None], target)
        if progress is not None:
            progress(min(start + batch, len(idx)), len(idx))
    if bool((~varying & wanted).any()):
        scores[~varying & wanted] = _target_scores(forward, torch.zeros_like(x)[None], target)[0]
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


def layer_activations(model, spec, x: torch.Tensor) -> torch.Tensor:
    """The CAM layer's activations of a batch (B, C, h, w) (ViT tokens reshaped by the spec), from one forward
    pass of the torch model."""
    captured = []
    handle = spec.cam_layer(model).register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            model(x.contiguous(memory_format=torch.channels_last))
    finally:
        handle.remove()
    acts = captured[0]
    return (spec.reshape_transform(acts) if spec.reshape_transform is not None else acts).float()
