"""What Score-CAM's map loses when its work is cut: ``python -m bench.scorecam_loss [--n 12] [--models ...]``.

Not part of ``python -m bench`` (minutes per model): on ``--n`` validation films of the default run (stratified
by source and class, seeded), the full Score-CAM (one masked forward pass per channel of the CAM layer) is
computed once per film, and every cheaper variant is compared with it:

* channel subsets: the top 256 channels by mean activation or 256 at random, the rest dropped (the library's
  softmax over the scored channels only) or given the scored channels' mean score;
* channel clusters (``core.explain.fast_cams.channel_clusters``): k-means on the channels' [0, 1] masks (at the CAM
  layer's resolution), one scored member per cluster (the one nearest its centre), its score shared by the cluster;
* lower resolution: every channel's masked film scored at half the input size (a quarter of the pixels).

Per variant and film: Spearman's rho with the full map over pixels, IoU of the top 20 % regions, the largest
absolute difference on the [0, 1] scale, and the ROAD of both maps (``core.explain.faithfulness``, 3 levels). Subset and
cluster variants reuse the full run's per-channel scores (the same numbers a cut run computes); their time is the
number of forward passes they need, and the time of the chosen one is measured by ``bench/cam.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.stats import spearmanr

from bench import REPO
from core.data.labels import POSITIVE
from core.explain import faithfulness
from core.explain.faithfulness import bootstrap_ci
from core.explain.fast_cams import SCORE_CAM_BATCH, channel_clusters, layer_activations, masked_scores
from core.models.inference import load_trained
from core.models.onnx_backend import OnnxModel
from core.store import Run, default_run, list_runs
from trainer.explain import load_films

KS = (64, 128, 256)  # channel clusters
SUBSET = 256  # channel subsets (the variants tried and rejected before, for comparison)
TOP = 0.2  # the region compared by IoU: the top 20 % of pixels


def _maps_from_scores(acts: np.ndarray, scores: np.ndarray, size: int, keep=None) -> np.ndarray:
    """The library's Score-CAM map from per-channel scores: softmax weights (over ``keep`` only when given),
    weighted sum of activations, ReLU, min-max stretch, resize."""
    s = np.asarray(scores, dtype=np.float64)
    idx = np.arange(len(s)) if keep is None else np.asarray(keep)
    w = np.exp(s[idx] - s[idx].max())
    w /= w.sum()
    cam = np.maximum(np.tensordot(w, acts[idx], axes=1), 0)
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    return cv2.resize(np.float32(cam), (size, size))


def variants(acts: np.ndarray, scores: np.ndarray, size: int, seed: int = 0) -> dict:
    """{variant name: (map, forward passes)} computed from the full run's scores."""
    rng = np.random.default_rng(seed)
    c = len(scores)
    out = {"full": (_maps_from_scores(acts, scores, size), c)}
    top = np.argsort(-acts.reshape(c, -1).mean(1))[:SUBSET]
    rand = rng.choice(c, SUBSET, replace=False)
    filled = np.full(c, scores[rand].mean())
    filled[rand] = scores[rand]
    out[f"top {SUBSET} by mean activation, rest dropped"] = (_maps_from_scores(acts, scores, size, top), SUBSET)
    out[f"random {SUBSET}, rest dropped"] = (_maps_from_scores(acts, scores, size, rand), SUBSET)
    out[f"random {SUBSET}, rest given their mean score"] = (_maps_from_scores(acts, filled, size), SUBSET)
    for k in KS:
        reps, labels = channel_clusters(torch.from_numpy(acts), k, seed)
        out[f"{k} clusters, one scored per cluster"] = (_maps_from_scores(acts, scores[reps][labels], size), k)
    return out


def compare(full: np.ndarray, other: np.ndarray) -> dict:
    a, b = full.ravel(), other.ravel()
    n = int(round(TOP * a.size))
    ta, tb = set(np.argsort(-a)[:n]), set(np.argsort(-b)[:n])
    return {"rho": float(spearmanr(a, b).statistic), "iou_top20": len(ta & tb) / len(ta | tb),
            "max_abs": float(np.abs(a - b).max())}


def study(run_dir: Path, model_name: str, n: int, seed: int = 0, low_res: bool = True, log=print) -> dict:
    run = Run(run_dir)
    ma = run.model(model_name)
    loaded = load_trained(ma)
    pred = ma.predictions("val")
    strata = pred.groupby([pred.get("source", "all"), "label"], group_keys=False) if "source" in pred else \
        pred.groupby("label", group_keys=False)
    per = max(1, n // strata.ngroups)
    rows = strata.apply(lambda g: g.sample(n=min(per, len(g)), random_state=seed)).reset_index(drop=True)
    x = loaded.inputs(loaded.frame(load_films(run, rows["path"], loaded.input_size))[0])
    size = loaded.input_size
    forward = loaded.onnx_model()
    half = OnnxModel.from_module(loaded.model, size // 2) if low_res else None
    target = ClassifierOutputTarget(POSITIVE)
    per_variant: dict[str, dict[str, list]] = {}
    seconds = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        acts = layer_activations(loaded.model, loaded.spec, xi)[0]
        t0 = time.perf_counter()
        scores = masked_scores(forward, xi[0], acts, target, SCORE_CAM_BATCH).numpy()
        seconds.append(time.perf_counter() - t0)
        found = variants(acts.numpy(), scores, size, seed)
        if half is not None:
            small = torch.nn.functional.interpolate(xi, size=size // 2, mode="bilinear", antialias=True,
                                                    align_corners=False)
            s_half = masked_scores(half, small[0], acts, target, SCORE_CAM_BATCH).numpy()
            found[f"all channels, film at {size // 2} px"] = (_maps_from_scores(acts.numpy(), s_half, size),
                                                              len(scores) / 4)
        maps = np.stack([m for m, _ in found.values()])
        road = faithfulness.road(forward, xi.expand(len(maps), -1, -1, -1), maps, seed=seed)
        for (name, (m, passes)), r in zip(found.items(), road):
            entry = per_variant.setdefault(name, {"passes": passes, "rho": [], "iou_top20": [], "max_abs": [],
                                                  "road": []})
            for key, v in compare(found["full"][0], m).items():
                entry[key].append(v)
            entry["road"].append(float(r))
        log(f"{model_name} film {i + 1}/{len(x)}: full Score-CAM {seconds[-1]:.1f} s")
    return {"model": model_name, "films": [str(p) for p in rows["path"]], "n": len(x), "size": size,
            "channels": int(acts.shape[0]), "full_seconds": seconds, "variants": per_variant}


def table(result: dict) -> str:
    lines = [f"**{result['model']}** ({result['n']} validation films, {result['channels']} channels, "
             f"{result['size']} px; full Score-CAM {np.median(result['full_seconds']):.1f} s per film median)", "",
             "| variant | forward passes | rho with full, mean [min] | IoU top 20 %, mean [min] | max abs diff, mean "
             "[max] | ROAD mean [95 % CI] | ROAD − full's, mean [95 % CI] |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    full_road = np.array(result["variants"]["full"]["road"])
    for name, v in result["variants"].items():
        road = np.array(v["road"])
        lo, hi = bootstrap_ci(road)
        dlo, dhi = bootstrap_ci(road - full_road)
        lines.append(f"| {name} | {v['passes']:.0f} | {np.mean(v['rho']):.3f} [{np.min(v['rho']):.3f}] | "
                     f"{np.mean(v['iou_top20']):.2f} [{np.min(v['iou_top20']):.2f}] | "
                     f"{np.mean(v['max_abs']):.3f} [{np.max(v['max_abs']):.3f}] | "
                     f"{road.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] | {(road - full_road).mean():+.3f} "
                     f"[{dlo:+.3f}, {dhi:+.3f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scorecam_loss", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=None, help="run folder (default: the run the dashboard shows first)")
    p.add_argument("--models", default="mobilenet_v2_pop,mobilenet_v2_pop_lungs")
    p.add_argument("--n", type=int, default=12, help="validation films (stratified by source and class)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the per-film figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = args.run or default_run(list_runs(REPO / "artifacts"), REPO / "artifacts").dir
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results.append(study(run, name, args.n, log=lambda s: print(s, file=sys.stderr, flush=True)))
        print(table(results[-1]) + "\n", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
