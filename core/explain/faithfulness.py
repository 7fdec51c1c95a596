"""Can a map be trusted? Two checks per model and CAM method, on a fixed sample of films, with intervals.

* **ROAD** (Rong et al., ICML 2022; pytorch-grad-cam's ``ROADCombined``): at each level p, the (100 − p) % most
  relevant pixels are removed (noisy linear imputation) and, separately, the (100 − p) % least relevant; the score
  is the mean over levels of (P(target) after removing the least relevant − P after removing the most relevant) / 2.
  Higher is better: a faithful map points at what the model's output depends on. Units: probability. Computed here
  with the library's imputation equations (``impute``: same solution, ``tests/test_faithfulness.py``) but faster
  (the sparse system is built in one vectorised step, the masked films of a film scored in one batch, through the
  model's ONNX Runtime twin when given), and with one deliberate difference: the library removes every pixel at
  or above the p-th percentile, so a map with ties (a Grad-CAM that is 0 on 40 % of the film) loses all of the
  film at p = 30; here exactly the stated share is removed, ties broken in a fixed random order.
* **Model-randomisation sanity check** (Adebayo et al., NeurIPS 2018): the classifier head (the model's top layer)
  is re-initialised and the map computed again; the Spearman rank correlation between the two maps over pixels
  should be low. A method whose map barely changes (mean rho above ``SANITY_MAX_RHO``) shows the image's
  structure, not the model's decision, and is marked as failing.
* **Intervals and ranking**: 95 % percentile-bootstrap intervals over films (``bootstrap_ci``); ``rank_methods``
  orders methods only where those intervals separate, so a few hundredths of noise never read as a ranking.

The figures for a run are computed once (``python -m trainer faithfulness``) and stored at the run's top level
(``core.store.write_faithfulness``), so the dashboard page only reads them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from scipy.stats import spearmanr

from core.data.labels import POSITIVE
from core.explain.cams import explain

__all__ = ["ROAD_PERCENTILES", "SANITY_MAX_RHO", "bootstrap_ci", "check", "failing", "impute", "rank_correlations",
           "rank_methods", "ranking_text", "removal_masks", "road", "road_levels", "stretched_maps", "summarise",
           "with_random_head"]

# levels p: (100 - p) % of the pixels removed; 30, 50, 70 = 70, 50, 30 % removed (one imputation each way per film
# and level, about 0.3 s at 224 px on one core)
ROAD_PERCENTILES = (30, 50, 70)
SANITY_MAX_RHO = 0.5
ROAD_NOISE = 0.01  # the library's imputation noise (absolute, in normalised input units)
CI_LEVEL = 0.95
BOOTSTRAP = 2000
# the library's neighbour weights of the linear imputation: ((dy, dx), weight), summing to 1
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
              ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def stretched_maps(model, spec, inputs: torch.Tensor, method: str, target: int = POSITIVE) -> np.ndarray:
    """(B, S, S) maps in [0, 1] as pytorch-grad-cam gives them (what ROAD's percentiles are taken of)."""
    return np.stack([explain(model, spec, inputs[i:i + 1], method, target) for i in range(len(inputs))])


def impute(img: np.ndarray, keep: np.ndarray, noise: float = ROAD_NOISE, rng=None) -> np.ndarray:
    """ROAD's noisy linear imputation of one (C, H, W) image: every pixel where ``keep`` is False becomes the
    weighted mean of its 8 neighbours (``NEIGHBOURS``), solved jointly as one sparse system (the library's
    ``NoisyLinearImputer`` equations), plus Gaussian noise of sd ``noise``. Nothing known: the removed pixels become
    0 (the data set's mean in normalised units) plus noise."""
    img = np.asarray(img, dtype=np.float32)
    c, h, w = img.shape
    keep = np.asarray(keep, dtype=bool).reshape(h, w)
    out = img.reshape(c, -1).copy()
    unknown = np.flatnonzero(~keep.ravel())
    if len(unknown) == 0:
        return img.copy()
    rng = np.random.default_rng(0) if rng is None else rng
    if keep.any():
        solved = _solve_infill(img.reshape(c, -1), keep.ravel(), unknown, h, w)
    else:
        solved = np.zeros((len(unknown), c))
    out[:, unknown] = (solved.T + noise * rng.standard_normal((c, len(unknown)))).astype(np.float32)
    return out.reshape(c, h, w)


def _solve_infill(flat: np.ndarray, keep: np.ndarray, unknown: np.ndarray, h: int, w: int) -> np.ndarray:
    n = len(unknown)
    var = np.full(h * w, -1)
    var[unknown] = np.arange(n)
    y, x = np.divmod(unknown, w)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    diag = np.zeros(n)
    b = np.zeros((n, flat.shape[0]))
    for (dy, dx), wt in NEIGHBOURS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[inside] += wt
        idx = ny[inside] * w + nx[inside]
        eq = np.flatnonzero(inside)
        known = keep[idx]
        b[eq[known]] -= wt * flat[:, idx[known]].T
        rows.append(eq[~known])
        cols.append(var[idx[~known]])
        vals.append(np.full(int((~known).sum()), wt))
    vals.insert(0, -diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
    return np.asarray(spsolve(a, b), dtype=np.float64).reshape(n, -1)


def removal_masks(cam: np.ndarray, percentile: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(keep for most-relevant-first, keep for least-relevant-first) at level ``percentile``: exactly
    round(N·p/100) pixels kept each way (the least relevant ones, resp. the most relevant), ties in ``cam`` broken
    by a random order from ``rng``."""
    flat = np.asarray(cam, dtype=np.float64).ravel()
    order = np.lexsort((rng.permutation(flat.size), flat))  # ascending relevance, ties in random order
    rank = np.empty(flat.size, dtype=np.int64)
    rank[order] = np.arange(flat.size)
    kept = int(round(flat.size * float(percentile) / 100))
    shape = np.shape(cam)
    return (rank < kept).reshape(shape), (rank >= flat.size - kept).reshape(shape)


def _probabilities(forward, batch: np.ndarray, target: int) -> np.ndarray:
    with torch.no_grad():
        logits = forward(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return torch.softmax(torch.as_tensor(logits).float(), dim=-1)[:, target].numpy().astype(np.float64)


def road_levels(forward, inputs: torch.Tensor, maps: np.ndarray, target: int = POSITIVE,
                percentiles=ROAD_PERCENTILES, seed: int = 0) -> np.ndarray:
    """(films, levels) ROAD scores, (P after removing least − P after removing most relevant) / 2, at each level.
    ``forward`` maps a normalised batch to logits (a torch model in eval mode or its ONNX Runtime twin)."""
    rng = np.random.default_rng(seed)
    x = inputs.detach().float().cpu().numpy()
    out = np.empty((len(x), len(percentiles)))
    for i, (img, cam) in enumerate(zip(x, np.asarray(maps))):
        batch = []
        for p in percentiles:
            keep_morf, keep_lerf = removal_masks(cam, p, rng)
            batch += [impute(img, keep_lerf, rng=rng), impute(img, keep_morf, rng=rng)]
        prob = _probabilities(forward, np.stack(batch), target)
        out[i] = (prob[0::2] - prob[1::2]) / 2
    return out


def road(model, inputs: torch.Tensor, maps: np.ndarray, target: int = POSITIVE,
         percentiles=ROAD_PERCENTILES, seed: int = 0) -> np.ndarray:
    """ROAD score of each film, averaged over the levels (probability units; higher = more faithful)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    return road_levels(model, inputs, maps, target, percentiles, seed).mean(axis=1)


def with_random_head(model, spec, seed: int = 0):
    """A copy of ``model`` whose classifier head is re-initialised (its other weights untouched)."""
    twin = copy.deepcopy(model)
    torch.manual_seed(seed)
    reset = 0
    for m in spec.head(twin).modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            reset += 1
    if not reset:
        raise ValueError(f"{spec.name}: the head has no parameters to re-initialise")
    return twin.eval()


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between paired maps, over pixels; a constant map correlates with nothing (rho 0)."""
    out = []
    for x, y in zip(a, b):
        x, y = np.ravel(x), np.ravel(y)
        out.append(0.0 if x.std() == 0 or y.std() == 0 else float(spearmanr(x, y).statistic))
    return np.asarray(out)


def bootstrap_ci(values, level: float = CI_LEVEL, n_boot: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile-bootstrap interval of the mean over films (resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return [float(v.mean()), float(v.mean())] if len(v) else [float("nan")] * 2
    means = v[np.random.default_rng(seed).integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]


def summarise(road_by_level: np.ndarray, rho: np.ndarray, percentiles, seconds: float | None = None) -> dict:
    """One model x method entry of ``faithfulness.json`` from per-film figures: means, intervals, per level."""
    per_film = road_by_level.mean(axis=1)
    out = {"road": float(per_film.mean()), "road_sd": float(per_film.std()), "road_ci": bootstrap_ci(per_film),
           "road_per_film": per_film.tolist(),
           "road_by_level": {str(p): float(road_by_level[:, j].mean()) for j, p in enumerate(percentiles)},
           "road_by_level_ci": {str(p): bootstrap_ci(road_by_level[:, j]) for j, p in enumerate(percentiles)},
           "sanity_rho": float(rho.mean()), "sanity_rho_ci": bootstrap_ci(rho), "sanity_rho_per_film": rho.tolist(),
           "sanity_pass": bool(rho.mean() <= SANITY_MAX_RHO), "n": int(len(per_film))}
    if seconds is not None:
        out["seconds"] = round(float(seconds), 1)
    return out


def check(model, spec, inputs: torch.Tensor, method: str, target: int = POSITIVE,
          percentiles=ROAD_PERCENTILES, random_model=None, forward=None, seed: int = 0) -> dict:
    """Both checks for one model and method on a batch of films (``random_model``: reuse one head-randomised twin;
    ``forward``: what scores ROAD's imputed films, the model's ONNX Runtime twin when given)."""
    maps = stretched_maps(model, spec, inputs, method, target)
    twin = random_model if random_model is not None else with_random_head(model, spec)
    rho = rank_correlations(maps, stretched_maps(twin, spec, inputs, method, target))
    model.eval()
    levels = road_levels(forward if forward is not None else model, inputs, maps, target, percentiles, seed)
    return summarise(levels, rho, percentiles)


def rank_methods(entries: dict) -> list[list[str]]:
    """Methods of one model in ordered groups, best ROAD first, cut only where the intervals separate: a cut falls
    between two methods (in order of mean ROAD) only when every method above it has its interval's lower end above
    the upper end of every method below it. Entries without an interval (``road_ci``) are left out."""
    rows = []
    for method, f in entries.items():
        ci = f.get("road_ci") if isinstance(f, dict) else None
        if (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(v) for v in ci) and _finite(f.get("road"))
                and ci[0] <= ci[1]):
            rows.append((float(f["road"]), float(ci[0]), float(ci[1]), method))
    rows.sort(key=lambda r: (-r[0], r[3]))
    groups: list[list[str]] = []
    for i, (_, _, _, method) in enumerate(rows):
        if i and min(r[1] for r in rows[:i]) > max(r[2] for r in rows[i:]):
            groups.append([])
        if not groups:
            groups.append([])
        groups[-1].append(method)
    return groups


def ranking_text(entries: dict) -> str:
    """``rank_methods`` in words, each method with its mean ROAD and interval: groups joined by " > ", methods
    within a group (intervals overlapping) by " ≈ "."""
    groups = rank_methods(entries)
    if not groups:
        return "no figures with intervals"

    def one(m):
        f = entries[m]
        return f"{m} {f['road']:+.3f} [{f['road_ci'][0]:+.3f}, {f['road_ci'][1]:+.3f}]"
    text = " > ".join(" ≈ ".join(one(m) for m in g) for g in groups)
    return text if len(groups) > 1 else f"no ranking (every interval overlaps another): {text}"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def failing(figures: dict | None, model: str, method: str) -> float | None:
    """The mean rho when ``method`` failed the sanity check on ``model``, else ``None``."""
    entry = ((figures or {}).get("models", {}).get(model, {}) or {}).get(method)
    if entry and entry.get("sanity_pass") is False:
        return float(entry.get("sanity_rho", float("nan")))
    return None
