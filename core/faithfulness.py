"""Can a map be trusted? Two checks per model and CAM method, on a fixed sample of films.

* **ROAD** (Rong et al., ICML 2022), pytorch-grad-cam's own ``ROADCombined``: pixels are removed (noisy linear
  imputation) most-relevant-first and least-relevant-first at several percentiles; the score is
  (drop of P(target) when removing the least relevant − drop when removing the most relevant) / 2, averaged.
  Higher is better: a faithful map points at what the model's output depends on. Units: probability.
* **Model-randomisation sanity check** (Adebayo et al., NeurIPS 2018): the classifier head (the model's top layer)
  is re-initialised and the map computed again; the Spearman rank correlation between the two maps over pixels
  should be low. A method whose map barely changes (mean rho above ``SANITY_MAX_RHO``) shows the image's
  structure, not the model's decision, and is marked as failing.

The figures for a run are computed once (``python -m trainer faithfulness``) and stored in ``faithfulness.json``
at the run's top level, so the dashboard page only reads them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from scipy.stats import spearmanr

from core.artifacts import read_json
from core.cams import explain
from core.labels import POSITIVE

FAITHFULNESS_FILE = "faithfulness.json"
ROAD_PERCENTILES = (30, 70)  # of pixels removed; 224 px imputations take seconds each on a CPU, so two levels
SANITY_MAX_RHO = 0.5


def stretched_maps(model, spec, inputs: torch.Tensor, method: str, target: int = POSITIVE) -> np.ndarray:
    """(B, S, S) maps in [0, 1] as pytorch-grad-cam gives them (what ROAD's percentiles are taken of)."""
    return np.stack([explain(model, spec, inputs[i:i + 1], method, target) for i in range(len(inputs))])


def road(model, inputs: torch.Tensor, maps: np.ndarray, target: int = POSITIVE,
         percentiles=ROAD_PERCENTILES) -> np.ndarray:
    """ROADCombined score of each film (probability units; higher = more faithful)."""
    model.eval()
    targets = [ClassifierOutputSoftmaxTarget(target) for _ in range(len(inputs))]
    with torch.no_grad():
        scores = ROADCombined(percentiles=list(percentiles))(inputs, np.asarray(maps, np.float32), targets, model)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


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


def check(model, spec, inputs: torch.Tensor, method: str, target: int = POSITIVE,
          percentiles=ROAD_PERCENTILES, random_model=None) -> dict:
    """Both checks for one model and method on a batch of films (``random_model``: reuse one head-randomised twin)."""
    maps = stretched_maps(model, spec, inputs, method, target)
    twin = random_model if random_model is not None else with_random_head(model, spec)
    rho = rank_correlations(maps, stretched_maps(twin, spec, inputs, method, target))
    scores = road(model, inputs, maps, target, percentiles)
    return {"road": float(scores.mean()), "road_sd": float(scores.std()), "road_per_film": scores.tolist(),
            "sanity_rho": float(rho.mean()), "sanity_rho_per_film": rho.tolist(),
            "sanity_pass": bool(rho.mean() <= SANITY_MAX_RHO)}


def _entry_ok(f) -> bool:
    """One model x method entry: ROAD a probability difference in [-1, 1], rho a correlation in [-1, 1], a verdict."""
    def number(v, lo=-1.0, hi=1.0):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and lo <= v <= hi
    return (isinstance(f, dict) and number(f.get("road")) and number(f.get("sanity_rho"))
            and isinstance(f.get("sanity_pass"), bool) and (f.get("road_sd") is None or number(f["road_sd"], 0, 1)))


FAITHFULNESS_FIELDS = {
    "models": ("an object {model: {method: {road, sanity_rho in [-1, 1], sanity_pass}}}", lambda v: isinstance(v, dict)
               and all(isinstance(ms, dict) and all(_entry_ok(f) for f in ms.values() if isinstance(f, dict))
                       for ms in v.values())),
    "n": ("a non-negative integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "sanity_max_rho": ("a number in [-1, 1]", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                       and -1 <= v <= 1),
    "road_percentiles": ("a list of numbers in [0, 100]", lambda v: isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 100 for x in v)),
    "sanity": ("a string", lambda v: isinstance(v, str)), "road": ("a string", lambda v: isinstance(v, str)),
}


def read(run_dir) -> dict | None:
    """The run's stored figures, or ``None`` when it has none; every field the pages use is checked for type and
    range (``FAITHFULNESS_FIELDS``), so a malformed file is one ``ArtifactError``, never a crashed page."""
    path = Path(run_dir) / FAITHFULNESS_FILE
    return read_json(path, FAITHFULNESS_FIELDS) if path.exists() else None


def failing(figures: dict | None, model: str, method: str) -> float | None:
    """The mean rho when ``method`` failed the sanity check on ``model``, else ``None``."""
    entry = ((figures or {}).get("models", {}).get(model, {}) or {}).get(method)
    if entry and entry.get("sanity_pass") is False:
        return float(entry.get("sanity_rho", float("nan")))
    return None
