"""Faithfulness figures: ROAD's imputation equals the library's, removal takes exactly the stated share, ROAD
rewards a map of what the model uses, intervals and the ranking that only cuts where they separate; the fast
Score-CAM (clusters of channels, progress reported) against the full one on a committed model and a real film."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from core.data.images import load_for_model
from core.explain import faithfulness, fast_cams
from core.explain.cams import explain
from tests.conftest import KERMANY224, REPO, need

FILM = KERMANY224 / "train" / "PNEUMONIA"


def _film(size: int = 64, i: int = 0) -> np.ndarray:
    path = sorted(need(FILM).iterdir())[i]
    return load_for_model(path, size).astype(np.float32) / 255


def _smooth_map(size: int, seed: int = 0) -> np.ndarray:
    import cv2

    return cv2.resize(np.random.default_rng(seed).random((7, 7)).astype(np.float32), (size, size))


def test_imputation_equals_the_library_imputer_on_a_real_film():
    film = _film()
    img = np.stack([(film - m) / s for m, s in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))])
    cam = _smooth_map(64)
    for p in (30, 50, 70):
        keep = cam < np.percentile(cam, p)  # the library's own mask
        ref = NoisyLinearImputer(noise=0)(torch.from_numpy(img), torch.from_numpy(np.float32(keep))).numpy()
        ours = faithfulness.impute(img, keep, noise=0)
        assert np.abs(ours - ref).max() < 1e-5
        assert np.array_equal(ours[:, keep], img[:, keep])  # kept pixels untouched
    noisy = faithfulness.impute(img, keep, rng=np.random.default_rng(1))
    assert 0.005 < np.std(noisy[:, ~keep] - ref[:, ~keep]) < 0.02  # the library's noise, sd 0.01


def test_nothing_known_fills_with_the_mean_and_nothing_removed_is_the_image():
    img = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    assert np.array_equal(faithfulness.impute(img, np.ones((16, 16), bool)), img)
    assert np.abs(faithfulness.impute(img, np.zeros((16, 16), bool), noise=0)).max() == 0


def test_removal_takes_exactly_the_stated_share_even_with_ties():
    cam = _smooth_map(50)
    cam[:, :20] = 0  # 40 % ties at zero, as a ReLU'd Grad-CAM has
    rng = np.random.default_rng(0)
    for p in (30, 50, 70):
        keep_morf, keep_lerf = faithfulness.removal_masks(cam, p, rng)
        assert keep_morf.sum() == keep_lerf.sum() == round(cam.size * p / 100)
        assert cam[keep_morf].max() <= cam[~keep_morf].min()  # most relevant removed
        assert cam[keep_lerf].min() >= cam[~keep_lerf].max()  # least relevant removed
    assert not (cam < np.percentile(cam, 30)).any()  # the library's rule would remove the whole film here


class LeftDetail(torch.nn.Module):
    """A real (if tiny) classifier: its PNEUMONIA logit is the fine detail (mean absolute difference between
    neighbouring pixels) of the left half of the film, centred on ``level``. ROAD's imputation is smooth: it takes
    detail away, not brightness."""

    def __init__(self, level: float = 0.0):
        super().__init__()
        self.level = level

    def detail(self, x):
        left = x[:, 0, :, : x.shape[-1] // 2]
        return (left[:, :, 1:] - left[:, :, :-1]).abs().mean(dim=(1, 2))

    def forward(self, x):
        z = 20 * (self.detail(x) - self.level) / max(self.level, 1e-6)
        return torch.stack([-z, z], dim=1) / 2


def test_road_rewards_the_map_of_what_the_model_uses():
    x = torch.from_numpy(np.stack([np.repeat(_film(48, i)[None], 3, axis=0) for i in range(4)]))
    model = LeftDetail(float(LeftDetail().detail(x).mean()))
    left = np.zeros((48, 48), np.float32)
    left[:, :24] = 1
    left += np.random.default_rng(0).random((48, 48)).astype(np.float32) * 0.01
    right = left[:, ::-1].copy()
    good = faithfulness.road_levels(model, x, np.stack([left] * 4), percentiles=(30, 50, 70))
    bad = faithfulness.road_levels(model, x, np.stack([right] * 4), percentiles=(30, 50, 70))
    assert good.shape == (4, 3)
    assert good.mean() > 0.05 and (good.mean(1) > bad.mean(1)).all(), (good, bad)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_films():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.1, 0.05, 10), rng.normal(0.1, 0.05, 200)
    for v in (few, many):
        lo, hi = faithfulness.bootstrap_ci(v)
        assert lo < v.mean() < hi
    assert np.diff(faithfulness.bootstrap_ci(many)) < np.diff(faithfulness.bootstrap_ci(few))
    assert faithfulness.bootstrap_ci([0.2]) == [0.2, 0.2]


def _entry(mean, lo, hi):
    return {"road": mean, "road_ci": [lo, hi]}


def test_ranking_cuts_only_where_intervals_separate():
    entries = {"A": _entry(0.10, 0.08, 0.12), "B": _entry(0.09, 0.07, 0.11), "C": _entry(0.02, 0.00, 0.04),
               "D": _entry(-0.05, -0.07, -0.03), "E": {"road": 0.5}, "seconds": 3.0}
    assert faithfulness.rank_methods(entries) == [["A", "B"], ["C"], ["D"]]
    # a chain of overlaps (A~B, B~C) is one group even though A and C alone would separate
    chain = {"A": _entry(0.10, 0.07, 0.13), "B": _entry(0.06, 0.03, 0.09), "C": _entry(0.02, -0.01, 0.05)}
    assert faithfulness.rank_methods(chain) == [["A", "B", "C"]]
    assert faithfulness.rank_methods({}) == []
    text = faithfulness.ranking_text(entries)
    assert text.startswith("A +0.100 [+0.080, +0.120] ≈ B") and text.count(" > ") == 2
    assert faithfulness.ranking_text(chain).startswith("no ranking")


# --- Score-CAM with clusters of channels, and its progress -------------------------------------------------------

def _committed(name: str):
    from core.models.inference import load_trained
    from core.store import Run

    run_dir = REPO / "artifacts" / "kermany-lineup"
    if not (run_dir / name).is_dir():
        pytest.skip("no committed kermany-lineup run")
    return load_trained(Run(run_dir).model(name))


def _score_cams(name: str, size: int, clusters: int):
    """(full map, clustered map, progress calls) of a committed model on one real film."""
    loaded = _committed(name)
    loaded.forward("onnx")  # the ONNX twin the masked passes use, as in the dashboard
    x = loaded.inputs((_film(size, 3) * 255).astype(np.uint8)[None])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast_cams.FastScoreCAM, "clusters", None)
        full = explain(loaded.model, loaded.spec, x, "Score-CAM")
        mp.setattr(fast_cams.FastScoreCAM, "clusters", clusters)
        seen = []
        with fast_cams.reporting(lambda done, total: seen.append((done, total))):
            fast = explain(loaded.model, loaded.spec, x, "Score-CAM")
    return full, fast, seen


def test_clustered_score_cam_scores_one_channel_per_cluster_and_reports_progress():
    from scipy.stats import spearmanr

    full, fast, seen = _score_cams("small_cnn", 128, 16)  # 64 channels: cheap
    done, total = seen[-1]
    assert done == total and 8 <= total <= 16 and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert fast.shape == full.shape and 0 <= fast.min() and fast.max() <= 1
    assert spearmanr(full.ravel(), fast.ravel()).statistic > 0.8


@pytest.mark.slow  # 1,280 masked passes: about 5 s on a quiet core
def test_clustered_score_cam_is_close_to_the_full_map_on_mobilenet():
    from scipy.stats import spearmanr

    full, fast, seen = _score_cams("mobilenet_v2_96", 96, fast_cams.SCORE_CAM_CLUSTERS or 256)
    assert seen[-1][1] <= (fast_cams.SCORE_CAM_CLUSTERS or 256)
    assert spearmanr(full.ravel(), fast.ravel()).statistic > 0.95 and np.abs(full - fast).max() < 0.2


def test_run_with_progress_reports_in_the_calling_thread_and_raises_what_the_work_raises():
    import threading

    caller, calls = threading.get_ident(), []

    def work():
        for i in range(1, 4):
            fast_cams._REPORT.callback(i, 3)
            threading.Event().wait(0.05)
        return "done"

    out = fast_cams.run_with_progress(work, lambda d, t: calls.append((d, t, threading.get_ident())), poll=0.01)
    assert out == "done" and calls and calls[-1][:2] == (3, 3) and {c[2] for c in calls} == {caller}

    def broken():
        raise ValueError("no film")

    with pytest.raises(ValueError, match="no film"):
        fast_cams.run_with_progress(broken, lambda d, t: None)


def test_faithfulness_page_ranks_the_default_run_only_where_intervals_separate(monkeypatch):
    from core.store import read_faithfulness
    from dashboard.common import RUN_KEY
    from tests.dashboard_app import page_app

    run_dir = REPO / "artifacts" / "populations"
    figures = read_faithfulness(run_dir) if run_dir.is_dir() else None
    if not figures:
        pytest.skip("the default run has no faithfulness figures")
    monkeypatch.setenv("CXR_ARTIFACTS", str(run_dir.parent))
    at = page_app("9_Faithfulness.py", timeout=120, **{RUN_KEY: run_dir.name}).run()
    assert not at.exception, [e.value for e in at.exception]
    lines = [m.value.replace("\\", "") for m in at.markdown]
    for model, methods in figures["models"].items():
        groups = faithfulness.rank_methods(methods)
        line = next(t for t in lines if t.startswith(f"**{model}**"))
        assert line.count(" > ") == len(groups) - 1 and all(m in line for g in groups for m in g)
        assert len(groups) > 1  # 52 films: the default run's intervals do separate some methods
