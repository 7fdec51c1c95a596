"""Prediction with a trained model: the trainer's evaluation, the dashboard and the benchmarks share it.

Scoring runs on the fastest backend at hand (``core.models.onnx_backend``: under ``CXR_BACKEND=auto``, the default, ONNX
Runtime for the architectures it was measured faster on, ``ModelSpec.onnx_faster``, eager torch for the others;
``onnx`` or ``torch`` force one), with eager torch as the fallback; both give the same probabilities to 1e-4
(tests/test_onnx.py). Test-time augmentation feeds all views of a batch to the model in one forward pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.data.transforms import normalize, to_float, tta_batch
from core.models import framing as framing_mod
from core.models import lungs, onnx_backend
from core.models.checkpoints import load_best
from core.models.recipe import model_config
from core.models.registry import ModelSpec, create_model, get_spec
from core.models.weights import sha256_of
from core.store import CONFIG_FILE, ArtifactError, ModelArtifacts

log = logging.getLogger(__name__)


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
    preprocess: str = "none"  # intensity standardisation the model was trained with (core.data.transforms.standardize)
    # what part of the film it sees (core.models.framing): applied to uint8 squares before ``inputs``
    framing: str = "none"
    checkpoint: Path | None = None  # best.safetensors it was loaded from; None for an in-memory model
    _onnx: object = field(default=None, init=False, repr=False)
    _onnx_failed: str | None = field(default=None, init=False, repr=False)

    def frame(self, batch_u8) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (B, S, S) squares → (the squares as this model sees them, their boxes); see core.models.framing."""
        return framing_mod.frame(np.asarray(batch_u8), self.framing)

    def inputs(self, batch_u8) -> torch.Tensor:
        """uint8 (B, S, S) at ``input_size``, already framed (``frame``) → normalised model input."""
        return normalize(to_float(torch.as_tensor(np.asarray(batch_u8))), self.mean, self.std, self.preprocess)

    def onnx_model(self) -> onnx_backend.OnnxModel:
        """The ONNX Runtime session of this model (exported on first use, then cached); ``OnnxError`` if not."""
        if self._onnx is None:
            try:
                if self.checkpoint is None:
                    self._onnx = onnx_backend.OnnxModel.from_module(self.model, self.input_size)
                else:
                    self._onnx = onnx_backend.onnx_for_checkpoint(
                        self.model, self.checkpoint, sha256_of(self.checkpoint), self.spec.name, self.input_size)
            except onnx_backend.OnnxError:
                raise
            except Exception as e:  # the exporter and onnxruntime raise many types; all mean "no ONNX here"
                raise onnx_backend.OnnxError(f"{self.name}: ONNX export failed ({type(e).__name__}: {e})") from e
            onnx_backend.register_twin(self.model, self._onnx)
        return self._onnx

    def forward(self, backend: str | None = None):
        """What maps a normalised batch to logits: the ONNX session or the torch model (see module docstring).
        ``auto`` takes what was measured faster for this architecture and size (``onnx_backend.auto_uses_onnx``)."""
        choice = onnx_backend.choose_backend(backend)
        auto_torch = choice == "auto" and not onnx_backend.auto_uses_onnx(self.spec, self.input_size)
        if choice == "torch" or auto_torch or self._onnx_failed:
            return self.model
        try:
            return self.onnx_model()
        except onnx_backend.OnnxError as e:
            if choice == "onnx":
                raise
            self._onnx_failed = str(e)
            log.warning(f"warning: {e}; scoring {self.name} with eager torch")
            return self.model


def load_trained(artifacts: ModelArtifacts) -> LoadedModel:
    """Build the architecture named in the model's config.json and load its best checkpoint."""
    cfg = model_config(artifacts)
    if cfg.is_ensemble:
        raise ArtifactError(f"{artifacts.name} is an ensemble (mean of {', '.join(cfg.members)}); it has no "
                            "network of its own: explain its members instead")
    try:
        arch, size = cfg.arch, int(cfg.input_size)
        spec = get_spec(arch)
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{artifacts.dir / CONFIG_FILE}: cannot tell the architecture ({e})") from None
    check_lung_model(artifacts)
    model, _ = create_model(arch, pretrained=False, input_size=size, in_chans=cfg.in_chans)
    load_best(model, artifacts.best_checkpoint())
    model.eval().to(memory_format=torch.channels_last)
    return LoadedModel(name=artifacts.name, spec=spec, model=model, input_size=size,
                       mean=cfg.mean or spec.mean, std=cfg.std or spec.std, tta=cfg.tta, preprocess=cfg.preprocess,
                       framing=cfg.framing, checkpoint=artifacts.best_checkpoint())


def check_lung_model(artifacts: ModelArtifacts) -> None:
    """A lung-framed model sees what the lung model crops: refuse it when the lung model here is not the one it was
    trained with (its config's ``lung_model_sha256``; models trained before that was recorded are not checked)."""

    cfg = model_config(artifacts)
    recorded = cfg.lung_model_sha256
    if cfg.framing != "lungs" or not recorded:
        return
    try:
        here = lungs.lung_model_sha256()
    except OSError as e:
        raise ArtifactError(f"{artifacts.name}: frames films with the lung model, which is unreadable here "
                            f"({e.strerror or e})") from None
    if here != recorded:
        raise ArtifactError(f"{artifacts.dir / CONFIG_FILE}: trained with lung model {recorded[:12]}, but "
                            f"{lungs.WEIGHTS.name} here is {here[:12]}; its framing (and so its probabilities) "
                            "would differ: restore that lung model or retrain")


@torch.inference_mode()
def predict_probabilities(model, images_u8, mean, std, *, batch_size: int = 64, tta: int = 1,
                          device: str | torch.device = "cpu", indices=None, preprocess: str = "none") -> np.ndarray:
    """P(PNEUMONIA) for each image of a uint8 (N, S, S) array (a memory map is fine).

    ``model`` is a torch module or anything that maps a normalised batch to logits (``OnnxModel``). ``tta`` > 1
    averages the probability over that many fixed views (``core.data.transforms.tta_batch``), all in one forward pass
    of at most ``batch_size`` inputs; ``preprocess`` is the model's intensity standardisation, applied to each view.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    idx = np.arange(len(images_u8)) if indices is None else np.asarray(indices)
    out = np.empty(len(idx), dtype=np.float32)
    views = max(1, int(tta))
    step = max(1, batch_size // views)
    for start in range(0, len(idx), step):
        chunk = idx[start : start + step]
        x = to_float(torch.from_numpy(np.ascontiguousarray(images_u8[chunk]))).to(device)
        logits = model(normalize(tta_batch(x, views), mean, std, preprocess))
        probs = torch.softmax(logits.float(), dim=1)[:, 1].view(views, len(chunk)).mean(0)
        out[start : start + len(chunk)] = probs.cpu().numpy()
    return out


def predict_loaded(loaded: LoadedModel, images_u8, *, batch_size: int = 64, backend: str | None = None,
                   tta: int | None = None) -> np.ndarray:
    """``predict_probabilities`` with the model's own recipe (framing, normalisation, TTA) on the chosen backend."""
    return predict_framed(loaded, loaded.frame(images_u8)[0], batch_size=batch_size, backend=backend, tta=tta)


def predict_framed(loaded: LoadedModel, framed_u8, *, batch_size: int = 64, backend: str | None = None,
                   tta: int | None = None) -> np.ndarray:
    """``predict_loaded`` for squares already framed (``LoadedModel.frame``): callers that also draw a map frame
    once."""
    return predict_probabilities(loaded.forward(backend), framed_u8, loaded.mean, loaded.std, batch_size=batch_size,
                                 tta=loaded.tta if tta is None else tta, preprocess=loaded.preprocess)
