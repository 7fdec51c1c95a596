"""ONNX Runtime as the fast CPU backend for scoring: export, a per-file session cache, and the backend switch.

On this project's 2-core CPU, ONNX Runtime runs the lineup's networks several times faster than eager PyTorch
(BENCHMARKS.md). A trained model is exported once (legacy TorchScript exporter, fixed opset, dynamic batch,
checked with ``onnx.checker``) and either stored beside its checkpoint (``trainer export``) or built on first use
into a cache folder keyed by the checkpoint's sha256, so a retrained model never reuses a stale graph and a
read-only run folder still works. ``CXR_BACKEND`` (``torch``, ``onnx`` or ``auto``, the default) picks the
backend; ``auto`` takes, per architecture and input size, the backend ``python -m bench --only infer`` measured
faster on this project's machine (``core/models/backend_table.json``, written by ``python -m bench.infer
--write-table``;
the nearest measured size decides for another size; ``ModelSpec.onnx_faster`` for an architecture not in the
table) and falls back to eager torch, with a warning, when the export or ONNX Runtime fails.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from core.data.cache import default_cache_root
from core.models.weights import sha256_of
from core.store import atomic_write_bytes, onnx_beside

log = logging.getLogger(__name__)

OPSET = 17
EXPORT_VERSION = "1"  # bump when the export itself changes: cached graphs of an older version are rebuilt
ENV_BACKEND = "CXR_BACKEND"
BACKENDS = ("auto", "onnx", "torch")


class OnnxError(RuntimeError):
    """The model could not be exported or run by ONNX Runtime."""


class BackendError(ValueError):
    """An unknown backend name (argument or ``$CXR_BACKEND``)."""


def choose_backend(backend: str | None = None) -> str:
    """The argument, else ``$CXR_BACKEND``, else ``auto``; a clear error on anything else."""
    choice = (backend or os.environ.get(ENV_BACKEND) or "auto").strip().lower()
    if choice not in BACKENDS:
        shown = choice[:40].encode("ascii", "backslashreplace").decode()  # an environment value can hold anything
        raise BackendError(f"backend {shown!r} (argument or ${ENV_BACKEND}): choose one of {', '.join(BACKENDS)}")
    return choice


BACKEND_TABLE = Path(__file__).with_name("backend_table.json")
_TABLE: dict | None = None


def _load_table(path: Path = BACKEND_TABLE) -> dict:
    """{arch: {size: backend}} from the committed table; an absent or malformed file is an empty table (``auto``
    then falls back to ``ModelSpec.onnx_faster``), with a logged warning when malformed."""
    try:
        rows = json.loads(path.read_text())["entries"]
        out: dict = {}
        for r in rows:
            if r["backend"] not in ("onnx", "torch") or int(r["size"]) <= 0:
                raise ValueError(f"bad entry {r!r}")
            out.setdefault(str(r["arch"]), {})[int(r["size"])] = r["backend"]
        return out
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning(f"{path.name}: unreadable ({str(e)[:120]}); CXR_BACKEND=auto uses the registry's "
                    "defaults")
        return {}


def measured_backend(arch: str, size: int, table: dict | None = None) -> str | None:
    """What ``auto`` takes for ``arch`` at ``size`` px by measurement: the table's entry at that size, else at the
    nearest measured size (the larger one on a tie); ``None`` when the architecture was not measured."""
    global _TABLE
    if table is None:
        if _TABLE is None:
            _TABLE = _load_table()
        table = _TABLE
    sizes = table.get(arch)
    if not sizes:
        return None
    best = min(sizes, key=lambda s: (abs(s - int(size)), -s))
    return sizes[best]


def auto_uses_onnx(spec, size: int) -> bool:
    """``CXR_BACKEND=auto``'s choice for a registry spec at ``size`` px: the measured table, else the spec's flag."""
    measured = measured_backend(spec.name, size)
    return spec.onnx_faster if measured is None else measured == "onnx"


def _exportable(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """A copy of ``model`` fixed to ``size`` where the graph would otherwise resample on every call: a timm ViT
    with ``dynamic_img_size`` resamples its position embedding in forward (an antialiased bicubic the ONNX
    exporter lacks); resampling it once at the export size gives the same numbers."""
    if hasattr(model, "set_input_size") and getattr(model, "dynamic_img_size", False):
        model = copy.deepcopy(model)
        model.set_input_size(img_size=size)
    return model


def export_bytes(model: torch.nn.Module, size: int, metadata: dict | None = None) -> bytes:
    """The model (eval mode, float32) as an ONNX graph: input ``input`` (B, 3, size, size), output ``logits``."""
    import onnx

    model = _exportable(model, size).float().eval()
    buf = io.BytesIO()
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    meta = {"input_size": str(size), "export_version": EXPORT_VERSION, **(metadata or {})}
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
    return proto.SerializeToString()


def session_options():
    """Intra-op threads = torch's, one inter-op thread, sequential execution, no spinning: spin-waiting threads
    fight every other process on a shared CPU (the reason for ``OMP_WAIT_POLICY=PASSIVE`` in ``core``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


class OnnxModel:
    """An ONNX Runtime session that a caller uses like the eval-mode torch model: logits of a normalised batch."""

    def __init__(self, model_bytes_or_path, size: int):
        import onnxruntime as ort

        source = str(model_bytes_or_path) if isinstance(model_bytes_or_path, Path) else model_bytes_or_path
        try:
            self.session = ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise OnnxError(f"ONNX Runtime cannot load the model ({e})") from None
        self.size = size
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S), C-contiguous → logits (B, 2)."""
        return self.session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            raise ValueError(f"this ONNX graph takes {self.size} px inputs, got {tuple(x.shape)}")
        return torch.from_numpy(self.run(x.detach().float().contiguous().cpu().numpy()))

    @classmethod
    def from_module(cls, model: torch.nn.Module, size: int) -> OnnxModel:
        """Export an in-memory model (nothing written to disk)."""
        return cls(export_bytes(model, size), size)


_TWINS: weakref.WeakKeyDictionary[torch.nn.Module, OnnxModel] = weakref.WeakKeyDictionary()


def register_twin(model: torch.nn.Module, om: OnnxModel) -> None:
    """Remember that ``om`` computes what ``model`` computes, so code holding only the torch model (Score-CAM's
    masked passes in ``core.explain.fast_cams``) can use the faster session."""
    _TWINS[model] = om


def twin_of(model: torch.nn.Module) -> OnnxModel | None:
    return _TWINS.get(model)


# --- files: beside the checkpoint, or built on first use into the cache ------------------------------------------

def cache_path(checkpoint_sha256: str, arch: str, size: int) -> Path:
    return default_cache_root() / "onnx" / f"{arch}-{size}px-{checkpoint_sha256[:32]}-v{EXPORT_VERSION}.onnx"


def write_export(model: torch.nn.Module, size: int, path: Path, metadata: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, export_bytes(model, size, metadata))
    return path


_SESSIONS: dict[tuple, OnnxModel] = {}
_SESSIONS_LOCK = threading.Lock()


def cached_session(path: Path, size: int) -> OnnxModel:
    """One session per file (and its mtime/size), shared by every caller in the process; sessions are
    thread-safe for ``run``."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, size, torch.get_num_threads())
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = OnnxModel(path, size)
        return _SESSIONS[key]


def _matches(om: OnnxModel, checkpoint_sha256: str, size: int) -> bool:
    meta = om.metadata
    return (meta.get("checkpoint_sha256") == checkpoint_sha256 and meta.get("input_size") == str(size)
            and meta.get("export_version") == EXPORT_VERSION)


def graph_digest(path: Path) -> str:
    """sha256 of what an ONNX file computes: its graph, nodes and weights (initializers), metadata left out. The
    export is deterministic, so two exports of one checkpoint on one machine have the same digest."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own types on a damaged file
        raise OnnxError(f"{path}: not a readable ONNX graph ({type(e).__name__})") from None
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def _verified_marker(graph: Path, checkpoint_sha256: str) -> Path:
    st = graph.stat()
    key = (str(graph.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _FILE_SHA:
        _FILE_SHA[key] = sha256_of(graph)
    name = f"{_FILE_SHA[key][:32]}-{checkpoint_sha256[:32]}-v{EXPORT_VERSION}"
    return default_cache_root() / "onnx" / "verified" / name


def mark_verified(graph: Path, checkpoint_sha256: str) -> None:
    """Remember (in this user's cache, not in the run folder) that ``graph`` holds this checkpoint: exported here
    from it (``trainer export``) or found equal to such an export. Best effort: a read-only cache re-checks."""
    try:
        marker = _verified_marker(graph, checkpoint_sha256)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass


def _holds_checkpoint(beside: Path, local: Path, checkpoint_sha256: str) -> bool:
    """Whether the graph beside a checkpoint computes what this machine's own export of it computes. Its metadata
    is only a claim (any graph can carry the checkpoint's hash), so its graph and weights are compared with the
    local export's, once per file content; the answer is remembered in the cache."""
    if _verified_marker(beside, checkpoint_sha256).is_file():
        return True
    if graph_digest(beside) != graph_digest(local):
        return False
    mark_verified(beside, checkpoint_sha256)
    return True


_FILE_SHA: dict[tuple, str] = {}


def onnx_for_checkpoint(model: torch.nn.Module, checkpoint: Path, checkpoint_sha256: str, arch: str,
                        size: int) -> OnnxModel:
    """The session for a trained model: ``checkpoints/model.onnx`` when it holds this very checkpoint (checked on
    its weights, not its word: ``_holds_checkpoint``), else the cached export (built now if missing). A graph ONNX
    Runtime refuses, or one from other weights, is passed over with a warning."""
    beside = onnx_beside(checkpoint)
    path = cache_path(checkpoint_sha256, arch, size)
    if beside.is_file():
        try:
            om = cached_session(beside, size)
            if _matches(om, checkpoint_sha256, size):
                if _verified_marker(beside, checkpoint_sha256).is_file():
                    return om
                _ensure_export(model, path, checkpoint_sha256, arch, size)
                if _holds_checkpoint(beside, path, checkpoint_sha256):
                    return om
                log.warning(f"warning: {beside}: claims to be this checkpoint's graph but its weights differ from the "
                            "checkpoint's; not used (a fresh export is)")
        except OnnxError as e:
            log.warning(f"warning: {beside}: not used ({e}); a fresh export is")
    _ensure_export(model, path, checkpoint_sha256, arch, size)
    om = cached_session(path, size)
    if not _matches(om, checkpoint_sha256, size):
        raise OnnxError(f"{path}: does not belong to this checkpoint; delete it to rebuild")
    return om


def _ensure_export(model: torch.nn.Module, path: Path, checkpoint_sha256: str, arch: str, size: int) -> None:
    if not path.is_file():
        write_export(model, size, path, {"checkpoint_sha256": checkpoint_sha256, "arch": arch})
