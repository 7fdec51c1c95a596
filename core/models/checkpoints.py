"""Checkpoints hold tensors and plain values only, so loading never unpickles arbitrary objects.

* ``best.safetensors``: the best epoch's state dict (optionally float16, for a compact committed run).
* ``last.pt`` and ``epoch_NNN.pt``: resume state (model, optimizer, scheduler, AMP scaler, the weight average
  when the recipe keeps one, and the progress: epoch, history, best epoch), loaded with
  ``torch.load(weights_only=True)``. No RNG state is needed for the batches: their order and augmentation draws
  are derived from (seed, epoch) (``trainer/train.py``), so a resumed run sees the batches an uninterrupted one does
  (dropout draws from torch's global generator, which is not saved, so those masks differ).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from core.store import ArtifactError, atomic_write_bytes


def save_best(model: torch.nn.Module, path: str | Path, *, half: bool = False) -> None:
    """Write the model's state dict as safetensors (atomically); ``half`` stores floats as float16."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    atomic_write_bytes(path, save(state))


def _not_special(path: str | Path) -> None:
    """A named pipe or device in a run folder would block or never end the load: refuse it before opening."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ArtifactError(f"{p}: is not a file (a pipe, device or folder); refusing to open it")


def load_best(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a safetensors state dict into ``model``, converting dtypes to the model's own."""
    _not_special(path)
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: checkpoint missing") from None
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise ArtifactError(f"{path}: unreadable checkpoint ({e})") from None
    own = model.state_dict()
    try:
        state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path}: does not match the model's architecture ({str(e)[:300]})") from None
    return model


def save_resume(path: str | Path, state: dict) -> None:
    """Atomically write a resume checkpoint (tensors, numbers, strings, lists and dicts only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_resume(path: str | Path) -> dict:
    _not_special(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: resume checkpoint missing") from None
    except Exception as e:
        raise ArtifactError(f"{path}: unreadable resume checkpoint ({e})") from None
