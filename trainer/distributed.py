"""Several processes training one model with PyTorch's DistributedDataParallel, as started by ``torchrun``.

``torchrun`` puts RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process's environment.
Without them (plain ``python -m trainer``) the world has one process, nothing is initialised, and every helper
here returns its input unchanged, so the single-process trainer behaves exactly as before.

Choices, and why (docs/scaling.md):

* ``gloo`` on CPU, ``nccl`` on CUDA, one process per GPU (device ``cuda:LOCAL_RANK``).
* Each global step trains on exactly the batch one process would use at that step (same seeded epoch order);
  rank r takes every ``world``-th image of it. ``loss_scale`` makes DDP's gradient average equal the gradient
  of the whole batch's mean loss, so a 2-process run follows the single-process run (up to batch-norm
  statistics, which each rank computes on its part of the batch, and augmentation draws).
* Validation is split the same way and the probabilities are gathered in the original order, so every metric
  is computed on the whole split, on every rank, exactly as one process would.
* Only rank 0 writes artifacts (``main_writer``). Batch-norm buffers are copied from rank 0 before scoring, so
  the scored weights are the ones rank 0 saves.
* A rank that dies makes torchrun stop the others with SIGTERM; ``init`` turns that signal into ``Terminated``
  (a KeyboardInterrupt), so the trainer's stop path runs and rank 0 records the stop in status.json.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from core.models.accel import pick_device

ENV_TIMEOUT = "CXR_DIST_TIMEOUT_MIN"  # a cache build on rank 0 of 100k+ films can take longer than torch's 30 min


class Terminated(KeyboardInterrupt):
    """torchrun (or the user) ended this process: another rank failed, or the job was cancelled."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"  # where collectives' tensors live (nccl needs CUDA tensors)

    @property
    def enabled(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    return _WORLD


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the one process that writes artifacts."""
    return _WORLD.rank == 0


def launched_by_torchrun(env=None) -> bool:
    env = os.environ if env is None else env
    return "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> tuple[World, torch.device]:
    """Join the process group torchrun described, or return a world of one. Returns (world, device)."""
    global _WORLD
    chosen = pick_device(device)
    if not launched_by_torchrun():
        return _WORLD, chosen
    rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0"))
    if chosen.type == "cuda":
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    minutes = float(os.environ.get(ENV_TIMEOUT) or 120)
    dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    _WORLD = World(rank, size, local, backend, str(dev))
    signal.signal(signal.SIGTERM, _on_sigterm)
    return _WORLD, dev


def _on_sigterm(signum, frame):
    raise Terminated(f"rank {_WORLD.rank} was stopped by torchrun (another rank failed, or the job was cancelled)")


def shutdown() -> None:
    """Leave the process group (safe to call when none was joined, or after a peer died)."""
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # a dead peer can make the teardown fail; we are ending anyway
            dist.destroy_process_group()
    _WORLD = World()


def same_on_all(value):
    """Rank 0's ``value`` on every rank (a run name made from the clock must not differ between processes)."""
    if not _WORLD.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _WORLD.enabled:
        dist.barrier()


# --------------------------------------------------------------------------------------- training data split


def rank_part(batch: np.ndarray, w: World | None = None) -> np.ndarray:
    """This rank's images of one global batch: every ``size``-th, from ``rank``.

    Every rank must run every step (DDP averages gradients at each one), so a last batch smaller than the
    world lends its first images to the ranks that would get none.
    """
    w = w or _WORLD
    if not w.enabled:
        return batch
    part = batch[w.rank :: w.size]
    return part if len(part) else batch[w.rank % len(batch) :][:1]


def loss_scale(part_len: int, batch_len: int, w: World | None = None) -> float:
    """Factor on this rank's mean loss so that DDP's average of gradients is the whole batch's mean gradient."""
    w = w or _WORLD
    return 1.0 if not w.enabled else part_len * w.size / batch_len


def epoch_seed(seed: int, epoch: int, w: World | None = None) -> int:
    """Seed of the augmentation generator: the single-process one on rank 0, distinct draws on other ranks."""
    w = w or _WORLD
    return seed * 100003 + epoch + 1_000_003 * w.rank


# -------------------------------------------------------------------------------------- evaluation gathering


def shard(n: int, w: World | None = None) -> np.ndarray:
    """Positions (0..n-1) this rank scores: every ``size``-th, from ``rank``."""
    w = w or _WORLD
    return np.arange(w.rank, n, w.size)


def gather(local: np.ndarray, n: int, w: World | None = None) -> np.ndarray:
    """Inverse of ``shard``: every rank's values put back in the original order, on every rank."""
    w = w or _WORLD
    local = np.asarray(local)
    if not w.enabled:
        return local
    m = -(-n // w.size)
    buf = torch.zeros(m, dtype=torch.float64, device=w.device)
    buf[: len(local)] = torch.from_numpy(local.astype(np.float64))
    parts = [torch.empty_like(buf) for _ in range(w.size)]
    dist.all_gather(parts, buf)
    out = np.empty(n, dtype=local.dtype)
    for r, part in enumerate(parts):
        count = len(range(r, n, w.size))
        out[r :: w.size] = part[:count].cpu().numpy().astype(local.dtype)
    return out


def sum_across(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (epoch loss and accuracy totals), on every rank."""
    if not _WORLD.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_WORLD.device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank, so all score the saved weights."""
    if _WORLD.enabled:
        for b in model.buffers():
            dist.broadcast(b.data, src=0)


# ---------------------------------------------------------------------------------------------- model, writer


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` in a world of several processes; ``model`` itself otherwise."""
    if not _WORLD.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside torch.compile's and DDP's wrappers: its state dict has the checkpoint's keys."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def rewrap(model: torch.nn.Module, device: torch.device, change, *, compile: bool = False) -> torch.nn.Module:
    """Apply ``change`` to the bare module, and (re)wrap it when needed: the first time, and under DDP whenever
    the set of trainable parameters changed (DDP fixes the parameters it averages when it is built, so an
    unfrozen backbone would otherwise train on rank-local gradients)."""
    net = unwrap(model)
    before = [p.requires_grad for p in net.parameters()]
    change(net)
    changed = before != [p.requires_grad for p in net.parameters()]
    if model is not net and not (changed and _WORLD.enabled):
        return model
    if model is net and not (_WORLD.enabled or compile):
        return net
    wrapped = wrap(net, device)
    return torch.compile(wrapped) if compile else wrapped


class _SilentWriter:
    """Stands in for a ModelWriter on ranks other than 0: same ``dir`` to read from, every write a no-op."""

    def __init__(self, real):
        self.dir = real.dir

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def main_writer(writer):
    """``writer`` on rank 0, a writer that writes nothing elsewhere: artifacts are written once."""
    return writer if is_main() else _SilentWriter(writer)


def is_peer_failure(error: BaseException) -> bool:
    """An error raised by a collective because another process went away (gloo: connection closed or reset)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        w in text for w in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl"))


def peer_failure_message(error: BaseException) -> str:
    """What status.json says when another process went away: the reason without gloo's source path and advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0] if str(error).strip() else "")
    text = text.split(". This is typically")[0].rstrip(".")
    return f"another training process stopped ({text or type(error).__name__}); continue with --resume"
