"""Where and how a model trains: device, mixed precision, memory layout, compilation (``python -m trainer env``).

Choices, and why:

* CUDA: automatic mixed precision in bfloat16 where the GPU supports it (Ampere and newer: float32's range, so
  no loss scaling), else float16 with a ``GradScaler`` (float16 gradients underflow without it). Host batches go
  to pinned memory and are copied with ``non_blocking=True``, so the copy overlaps the GPU's work.
* CPU: float32. CPU autocast to bfloat16 is slower than float32 on CPUs without bfloat16 matrix units, and
  changes results; nothing is pinned (there is no device to copy to).
* Channels-last everywhere: CPU convolutions in this torch build and GPU tensor cores both run faster in it
  (``core.data.transforms.normalize`` already produces it).
* ``torch.compile`` only when asked: it spends minutes compiling before the first step, which pays off on long
  GPU runs only. Its inductor backend needs a C compiler on CPU and Triton on GPU.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch


class DeviceError(ValueError):
    """A device this machine does not have (``--device cuda`` without a GPU): one clear error before any model."""


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU. A GPU asked for by name must be here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                              "use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from 0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {name}: Apple's MPS is not available here; use --device cpu or auto")
    return dev


@dataclass(frozen=True)
class Accel:
    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: float32 throughout
    channels_last: bool = True
    pin_memory: bool = False
    compile: bool = False

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.needs_scaler)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A host batch on the device; pinned and non-blocking on CUDA."""
        if self.device.type != "cuda":
            return x.to(self.device)
        if self.pin_memory:
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device in the chosen layout (in place; returns it)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(self.device, memory_format=fmt)

    def maybe_compile(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.compile(model) if self.compile else model

    def describe(self) -> dict:
        amp = {None: "off (float32)", torch.bfloat16: "bfloat16 autocast",
               torch.float16: "float16 autocast + GradScaler"}[self.amp_dtype]
        return {"device": str(self.device), "mixed precision": amp,
                "memory layout": "channels-last" if self.channels_last else "contiguous",
                "host batches": "pinned, non-blocking copies" if self.pin_memory else "pageable (CPU: no copy)",
                "torch.compile": "on" if self.compile else "off"}


def choose(device: str = "auto", *, amp: bool = True, compile: bool = False) -> Accel:
    """The settings for ``device`` (see the module docstring); ``amp=False`` forces float32."""
    dev = pick_device(device)
    if dev.type != "cuda":
        return Accel(dev, None, compile=compile)
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if amp else None
    return Accel(dev, dtype, pin_memory=True, compile=compile)


def compile_support(device: torch.device) -> str:
    """Whether torch.compile's default backend can work here, and why not."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
            return "available (Triton found)"
        except ImportError:
            return "unavailable: Triton is not installed"
    cc = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return f"available (C++ compiler {cc})" if cc else "unavailable: no C++ compiler on PATH"


def environment_lines(device: str = "auto") -> list[str]:
    """What ``python -m trainer train`` would use on this machine, one fact per line."""
    accel = choose(device)
    lines = [f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})",
             f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            bf16 = "yes" if torch.cuda.is_bf16_supported() else "no"
            lines.append(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, "
                         f"{p.total_memory / 2**30:.0f} GiB, bfloat16 {bf16}")
    else:
        lines.append("GPU: none visible (torch.cuda.is_available() is False)")
    lines += [f"{k}: {v}" for k, v in accel.describe().items()]
    lines[-1] += f" (--compile turns it on; here: {compile_support(accel.device)})"
    import torch.distributed as dist
    backends = [b for b, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
    lines.append(f"distributed backends: {', '.join(backends) or 'none'} "
                 f"(torchrun uses {'nccl' if accel.device.type == 'cuda' else 'gloo'} here)")
    if "RANK" in os.environ:
        lines.append(f"this process: rank {os.environ['RANK']} of {os.environ.get('WORLD_SIZE', '?')} "
                     f"(local rank {os.environ.get('LOCAL_RANK', '?')})")
    return lines
