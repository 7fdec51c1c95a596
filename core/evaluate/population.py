"""Is this film from a population the model was trained on? A distance check on the model's own features.

A model's features are the input of its classifier (``ModelSpec.head``): the pooled penultimate layer, what the
decision is a linear function of, each value square-rooted (sign kept: ``stabilise``; pooled activations are
skewed, and on mobilenet_v2_lungs_plain the root flagged 92 % of adult films against 71 % raw at the same
false-flag rate). Per training source (``kermany``, ``nih_adult``, a user's hospital) the train films' features
are summarised by a mean and a low-rank covariance (the top ``COMPONENTS`` principal axes, plus one shared
variance for the rest: probabilistic PCA, a shrunk covariance that fits in a small JSON file), and a film's
distance to the source is its Mahalanobis distance under that covariance, divided by √dim so that it reads the
same for every architecture. The source's *limit* is the ``QUANTILE`` quantile of its validation films'
distances: by construction about 1 % of the source's own films fall outside it. A film under no source's limit is
outside every population the model was trained on; its prediction has no measured figures behind it.

Distance alone lets some pictures through on some models (EfficientNet-Lite0 passed a smooth gray gradient), so
``image_problems`` adds a cheap check on the picture itself: colour (every film measured has none). The
measurements behind these choices are in docs/population.md. Pure functions: no file I/O (callers read films and
write population.json).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

COMPONENTS = 32  # principal axes kept per source (docs/population.md: 16-64 measured alike)
QUANTILE = 0.99  # the limit: this quantile of the source's validation distances
FEATURE_BATCH = 32
MIN_FIT = 20  # fewer train films than this: no reference (a covariance of a handful of films means nothing)
MAX_COLOUR = 0.08  # mean chroma (max - min of R, G, B, over 255) above this: a colour picture, not a film
ROUND = 6  # significant digits kept in population.json


class PopulationError(ValueError):
    """A reference that cannot be fitted or used (too few films, mismatched feature sizes)."""


@torch.inference_mode()
def features(loaded, squares_u8, *, batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """(N, D) float64 classifier inputs of a ``core.models.inference.LoadedModel`` for uint8 (N, S, S) squares at its
    input size, framed as the model frames them (one view, no TTA). Hooks the model: callers sharing a model
    across threads hold its lock."""
    squares = np.asarray(squares_u8)
    head = loaded.spec.head(loaded.model)
    grabbed: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: grabbed.append(args[0].detach().flatten(1).float()))
    try:
        loaded.model.eval()
        for start in range(0, len(squares), batch_size):
            framed, _ = loaded.frame(squares[start:start + batch_size])
            loaded.model(loaded.inputs(framed))
    finally:
        hook.remove()
    if not grabbed:
        return np.zeros((0, 0))
    return torch.cat(grabbed).cpu().numpy().astype(np.float64)


def stabilise(feats: np.ndarray) -> np.ndarray:
    """The signed square root of raw classifier inputs: what references are fitted and measured on."""
    x = np.asarray(feats, dtype=np.float64)
    return np.sign(x) * np.sqrt(np.abs(x))


@dataclass(frozen=True)
class Reference:
    """One training source in a model's feature space: mean, principal axes and their variances, the variance
    left off the axes, and the limit set on validation."""

    source: str
    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (k, D) orthonormal rows
    variances: np.ndarray  # (k,)
    rest_variance: float
    limit: float = float("inf")
    n_fit: int = 0
    n_limit: int = 0

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, feats: np.ndarray) -> np.ndarray:
        """Mahalanobis distance / √D of each row of raw ``feats`` (N, D); about 1 for a typical train film."""
        x = stabilise(np.atleast_2d(feats))
        if x.shape[1] != self.dim:
            raise PopulationError(f"{self.source}: features have {x.shape[1]} values, the reference {self.dim}")
        centred = x - self.mean
        proj = centred @ self.axes.T
        rest = np.maximum((centred ** 2).sum(1) - (proj ** 2).sum(1), 0.0)
        return np.sqrt(((proj ** 2) / self.variances).sum(1) / self.dim + rest / (self.rest_variance * self.dim))


def fit(source: str, train_feats: np.ndarray, *, components: int = COMPONENTS) -> Reference:
    """The reference of one source from its train films' raw features (limit not yet set: ``with_limit``)."""
    x = stabilise(train_feats)
    if x.ndim != 2 or len(x) < MIN_FIT:
        raise PopulationError(f"{source}: {len(x)} train films; at least {MIN_FIT} are needed for a reference")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    eig = s ** 2 / (len(x) - 1)
    k = int(min(components, len(eig) - 1))
    rest = eig[k:].sum() / max(x.shape[1] - k, 1)  # the PPCA noise variance: the mean of the dropped eigenvalues
    floor = max(float(eig[0]) * 1e-6, 1e-12)
    return Reference(source=source, mean=mean, axes=vt[:k], variances=np.maximum(eig[:k], floor),
                     rest_variance=max(float(rest), floor), n_fit=len(x))


def with_limit(ref: Reference, val_feats: np.ndarray, quantile: float = QUANTILE) -> Reference:
    """``ref`` with its limit: the ``quantile`` quantile of its validation films' distances."""
    d = ref.distance(val_feats)
    if len(d) == 0:
        raise PopulationError(f"{ref.source}: no validation films to set the limit on")
    return Reference(**{**ref.__dict__, "limit": float(np.quantile(d, quantile)), "n_limit": len(d)})


@dataclass(frozen=True)
class Verdict:
    """Where one film lies: its distance to each source (and that source's limit), and the sources it is in."""

    distances: dict[str, tuple[float, float]]  # source -> (distance, limit)
    problems: tuple[str, ...] = ()  # what the picture itself shows (``image_problems``)

    @property
    def inside(self) -> list[str]:
        """The sources the film lies within, nearest first (empty when the picture fails ``image_problems``)."""
        if self.problems:
            return []
        near = [(d / lim, s) for s, (d, lim) in self.distances.items() if d <= lim]
        return [s for _, s in sorted(near)]

    @property
    def nearest(self) -> str | None:
        return min(self.distances, key=lambda s: self.distances[s][0] / self.distances[s][1], default=None)


def judge(refs: list[Reference], feats: np.ndarray, problems=()) -> list[Verdict]:
    """One ``Verdict`` per row of ``feats``."""
    if not refs:
        raise PopulationError("no reference to judge against")
    dist = {r.source: r.distance(feats) for r in refs}
    n = len(next(iter(dist.values())))
    return [Verdict({r.source: (float(dist[r.source][i]), r.limit) for r in refs}, tuple(problems))
            for i in range(n)]


def outside_rate(refs: list[Reference], feats: np.ndarray, problems_per_film=None) -> float:
    """The share of films inside no source (what docs/population.md reports for each set)."""
    verdicts = judge(refs, feats)
    if problems_per_film is not None:
        verdicts = [Verdict(v.distances, tuple(p)) for v, p in zip(verdicts, problems_per_film)]
    return float(np.mean([not v.inside for v in verdicts])) if verdicts else float("nan")


def colourfulness(rgb: np.ndarray) -> float:
    """Mean chroma of an (H, W, 3) uint8 picture in [0, 1]: 0 for any gray film, tenths for a photograph."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] < 3:
        return 0.0
    a = a[..., :3].astype(np.int16)
    return float((a.max(2) - a.min(2)).mean() / 255.0)


def thumbnail_rgb(data: bytes, side: int = 128) -> np.ndarray | None:
    """An (h, w, 3) uint8 thumbnail of a JPEG or PNG given as bytes (what ``image_problems`` looks at); ``None``
    for anything else (DICOM, unreadable): those are judged by distance alone. Decodes from memory only."""


    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("JPEG", "PNG", "MPO"):
                return None
            img.draft("RGB", (side, side))
            img.thumbnail((side, side))
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def image_problems(rgb: np.ndarray | None) -> tuple[str, ...]:
    """What the picture shows before any model sees it: films are gray, so colour means a photograph, a retinal
    scan or a screenshot (measured in docs/population.md). ``None`` (a DICOM, no colour to check): nothing."""
    if rgb is None:
        return ()
    c = colourfulness(rgb)
    return (f"a colour picture (mean chroma {c:.2f}; X-ray films are gray)",) if c > MAX_COLOUR else ()


# --- population.json's shape (core.store.read_population checks files against it) ---------------------------

def _rounded(a) -> list:
    return [float(f"{v:.{ROUND}g}") for v in np.asarray(a, dtype=np.float64).ravel()]


def to_json(ref: Reference) -> dict:
    return {"n_fit": ref.n_fit, "n_limit": ref.n_limit, "limit": ref.limit, "rest_variance": ref.rest_variance,
            "mean": _rounded(ref.mean), "variances": _rounded(ref.variances),
            "axes": [_rounded(row) for row in ref.axes]}


def from_json(source: str, obj: dict) -> Reference:
    """A ``Reference`` from a checked population.json entry (``core.store.read_population``)."""
    return Reference(source=source, mean=np.asarray(obj["mean"], dtype=np.float64),
                     axes=np.asarray(obj["axes"], dtype=np.float64).reshape(len(obj["axes"]), -1),
                     variances=np.asarray(obj["variances"], dtype=np.float64),
                     rest_variance=float(obj["rest_variance"]), limit=float(obj["limit"]),
                     n_fit=int(obj["n_fit"]), n_limit=int(obj["n_limit"]))
