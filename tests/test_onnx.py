"""ONNX Runtime backend: same probabilities as eager torch for every architecture, the backend switch and its
fallback, the export cache keyed by checkpoint, ``trainer export``, batched TTA, and the fast CAM methods."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import EigenCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from core import store
from core.data.transforms import (
    TTA_VIEWS,
    _affine_grid,
    normalize,
    to_float,
    tta_batch,
    tta_views,
)
from core.explain.cams import explain
from core.models import onnx_backend
from core.models.inference import (
    LoadedModel,
    load_trained,
    predict_loaded,
    predict_probabilities,
)
from core.models.registry import create_model, get_spec, list_specs
from core.store import Run
from tests.conftest import REPO

TOL = 1e-4
SIZE = 64


def _random_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A registry network whose outputs spread over films (not all ≈ 0.5): batch-norm statistics measured on the
    test films (at random init they saturate MobileNet's ReLU6, and every film gets the same output), and a
    strong head."""
    torch.manual_seed(seed)
    spec = get_spec(arch)
    model, _ = create_model(arch, pretrained=False, input_size=SIZE)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    head = [m for m in spec.head(model).modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(head.weight, std=10.0 / head.in_features ** 0.5)
    with torch.no_grad():
        model.train()(normalize(to_float(torch.from_numpy(_films(16, seed=99))), spec.mean, spec.std))
    return model.eval().to(memory_format=torch.channels_last)


def _loaded(arch: str, tta: int = 1) -> LoadedModel:
    spec = get_spec(arch)
    return LoadedModel(name=arch, spec=spec, model=_random_model(arch), input_size=SIZE, mean=spec.mean,
                       std=spec.std, tta=tta)


def _films(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Blocky random films with fine noise: coarse structure that differs between films, so outputs differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4)).repeat(size // 4, axis=1).repeat(size // 4, axis=2)
    return np.clip(coarse + rng.normal(0, 20, (n, size, size)), 0, 255).astype(np.uint8)


@pytest.mark.integration
@pytest.mark.parametrize("arch", [s.name for s in list_specs()])
def test_onnx_probabilities_match_eager_torch_for_every_architecture(arch):
    loaded = _loaded(arch, tta=3)
    films = _films(7)
    ref = predict_loaded(loaded, films, backend="torch", batch_size=4)
    got = predict_loaded(loaded, films, backend="onnx", batch_size=4)  # dynamic batch: 4 and 3 films x 3 views
    assert isinstance(loaded.forward("onnx"), onnx_backend.OnnxModel)
    assert ref.std() > 0.005, "the check is only meaningful if the probabilities differ between films"
    assert np.abs(ref - got).max() <= TOL
    one = predict_loaded(loaded, films[:1], backend="onnx", tta=1)  # batch of one
    assert abs(float(one[0]) - float(predict_loaded(loaded, films[:1], backend="torch", tta=1)[0])) <= TOL


def test_export_is_checked_opset_fixed_and_batch_dynamic():
    import onnx

    proto = onnx.load_from_string(onnx_backend.export_bytes(_random_model("small_cnn"), SIZE, {"arch": "x"}))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [onnx_backend.OPSET]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key: p.value for p in proto.metadata_props}["input_size"] == str(SIZE)


def test_backend_switch_env_argument_and_errors(monkeypatch):
    loaded = _loaded("small_cnn")
    monkeypatch.setenv(onnx_backend.ENV_BACKEND, "torch")
    assert loaded.forward() is loaded.model
    assert isinstance(loaded.forward("onnx"), onnx_backend.OnnxModel)  # the argument wins over the variable
    monkeypatch.setenv(onnx_backend.ENV_BACKEND, "onnx")
    assert isinstance(loaded.forward(), onnx_backend.OnnxModel)
    monkeypatch.setenv(onnx_backend.ENV_BACKEND, "tensorrt")
    with pytest.raises(ValueError, match="torch"):
        loaded.forward()


def test_auto_takes_the_backend_measured_faster_per_architecture_and_size(tmp_path, caplog):
    table = onnx_backend._load_table()
    assert table and set(table) == {s.name for s in list_specs()}, table  # every registry architecture measured
    for arch in ("small_cnn", "resnet18"):
        loaded, want = _loaded(arch), onnx_backend.measured_backend(arch, SIZE)
        got = loaded.forward("auto")
        assert isinstance(got, onnx_backend.OnnxModel) if want == "onnx" else got is loaded.model
        assert isinstance(loaded.forward("onnx"), onnx_backend.OnnxModel)  # still there when asked for
    fake = {"x": {96: "torch", 224: "onnx"}}
    assert [onnx_backend.measured_backend("x", s, fake) for s in (64, 96, 150, 160, 300)] == \
        ["torch", "torch", "torch", "onnx", "onnx"]  # nearest measured size; a tie goes to the larger
    assert onnx_backend.measured_backend("unmeasured", 224, fake) is None  # then ModelSpec.onnx_faster decides
    bad = tmp_path / "table.json"
    bad.write_text('{"entries": [{"arch": "x", "size": 96, "backend": "tensorrt"}]}')
    assert onnx_backend._load_table(bad) == {} and "unreadable" in caplog.text


def test_auto_falls_back_to_torch_when_the_export_fails_and_onnx_forced_says_why(monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_backend, "export_bytes", broken)
    forced = _loaded("small_cnn")
    with pytest.raises(onnx_backend.OnnxError, match="exporter exploded"):
        forced.forward("onnx")
    loaded = _loaded("small_cnn")
    films = _films(3)
    probs = predict_loaded(loaded, films, backend="auto")
    assert "exporter exploded" in caplog.text and loaded.forward("auto") is loaded.model  # a logged warning
    np.testing.assert_array_equal(probs, predict_loaded(loaded, films, backend="torch"))


def test_onnx_graph_is_cached_by_checkpoint_and_rebuilt_when_it_changes(tiny_run, tmp_path):
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", run_dir)
    art = Run(run_dir).model("small_cnn")
    first = load_trained(art)
    om = first.forward("onnx")
    cached = list((onnx_backend.default_cache_root() / "onnx").glob("small_cnn-*.onnx"))
    assert any(om.metadata["checkpoint_sha256"][:32] in p.name for p in cached)
    assert load_trained(art).forward("onnx") is om  # one session per file, shared
    # A retrained checkpoint (other weights) gets its own graph, never the stale one.
    from core.models.checkpoints import save_best
    with torch.no_grad():
        for p in first.model.parameters():
            p.mul_(1.5)
    save_best(first.model, art.best_checkpoint(), half=True)
    again = load_trained(art)
    om2 = again.forward("onnx")
    assert om2 is not om and om2.metadata["checkpoint_sha256"] != om.metadata["checkpoint_sha256"]
    films = _films(4, again.input_size)
    ref = predict_loaded(again, films, backend="torch")
    assert np.abs(predict_loaded(again, films, backend="onnx") - ref).max() <= TOL


@pytest.mark.integration
def test_trainer_export_writes_checked_graphs_beside_the_checkpoints(tiny_run, tmp_path, capsys):
    from trainer.cli import main

    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", run_dir)
    assert main(["export", "--run", str(run_dir), "--models", "small_cnn"]) == 0
    out = capsys.readouterr().out
    assert "small_cnn" in out and "ok" in out and "mobilenet_v2" not in out
    beside = run_dir / "small_cnn" / "checkpoints" / "model.onnx"
    assert beside.is_file() and not (run_dir / "mobilenet_v2" / "checkpoints" / "model.onnx").exists()
    loaded = load_trained(Run(run_dir).model("small_cnn"))
    assert loaded.forward("onnx").session._model_path == str(beside)  # used in preference to the cache
    assert main(["export", "--run", str(run_dir), "--models", "nope"]) == 2


def test_a_graph_beside_the_checkpoint_from_other_weights_is_not_used(tiny_run, tmp_path):
    run_dir = tmp_path / "tiny"
    shutil.copytree(tiny_run / "tiny", run_dir)
    art = Run(run_dir).model("small_cnn")
    loaded = load_trained(art)
    stale = onnx_backend.export_bytes(_random_model("small_cnn"), loaded.input_size,
                                      {"checkpoint_sha256": "0" * 64, "arch": "small_cnn"})
    store.onnx_beside(art.best_checkpoint()).write_bytes(stale)
    films = _films(5, loaded.input_size)
    got = predict_loaded(loaded, films, backend="onnx")
    assert np.abs(got - predict_loaded(loaded, films, backend="torch")).max() <= TOL


# --- TTA in one batch ---------------------------------------------------------------------------------------------

def _reference_views(x, n):
    """The views one at a time, as the code did before they were batched."""
    views = []
    for scale, tx, ty in TTA_VIEWS[:n]:
        theta = torch.tensor([[1 / scale, 0, tx * 2], [0, 1 / scale, ty * 2]]).expand(x.shape[0], 2, 3)
        views.append(F.grid_sample(x, _affine_grid(theta, x.shape[2], x.shape[3]), mode="bilinear",
                                   padding_mode="border", align_corners=False))
    return views


def test_tta_batch_holds_the_same_views_view_major():
    x = torch.rand(3, 1, 32, 32)
    batch = tta_batch(x, 5)
    assert batch.shape == (15, 1, 32, 32)
    for v, ref in enumerate(_reference_views(x, 5)):
        torch.testing.assert_close(batch[3 * v: 3 * v + 3], ref, atol=1e-6, rtol=0)
    assert tta_batch(x, 1) is x and len(tta_views(x, 4)) == 4


def test_tta_probability_is_the_mean_over_views_of_single_view_probabilities():
    loaded = _loaded("deep_cnn")
    films = _films(5)
    per_view = []
    x = torch.from_numpy(films).float().div(255).unsqueeze(1)
    for view in _reference_views(x, 5):
        u8 = view.squeeze(1).mul(255)  # a float "film" is fine for predict_probabilities' to_float
        with torch.inference_mode():
            logits = loaded.model(normalize(u8.div(255).unsqueeze(1), loaded.mean, loaded.std))
        per_view.append(torch.softmax(logits, 1)[:, 1].numpy())
    expected = np.mean(per_view, axis=0)
    for backend in ("torch", "onnx"):
        got = predict_probabilities(loaded.forward(backend), films, loaded.mean, loaded.std, tta=5, batch_size=8)
        assert np.abs(got - expected).max() <= TOL


# --- fast Score-CAM and EigenCAM ------------------------------------------------------------------------------------

def _library_map(cls, model, spec, x):
    cam = cls(model=model, target_layers=[spec.cam_layer(model)])
    cam.batch_size = 64
    try:
        return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(1)])[0]
    finally:
        cam.activations_and_grads.release()


@pytest.mark.parametrize("arch", ["small_cnn", "mobilenet_v2"])
def test_eigencam_matches_pytorch_grad_cam(arch):
    loaded = _loaded(arch)
    x = loaded.inputs(_films(1, seed=3))
    ours = explain(loaded.model, loaded.spec, x, "EigenCAM")
    ref = _library_map(EigenCAM, loaded.model, loaded.spec, x)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_scorecam_matches_pytorch_grad_cam_on_either_backend(backend, monkeypatch):
    monkeypatch.setenv(onnx_backend.ENV_BACKEND, backend)
    loaded = _loaded("deep_cnn")
    loaded.forward(backend)  # registers the ONNX twin when onnx
    x = loaded.inputs(_films(1, seed=4))
    ours = explain(loaded.model, loaded.spec, x, "Score-CAM")
    ref = _library_map(ScoreCAM, loaded.model, loaded.spec, x)
    assert ref.std() > 0.05 and np.abs(ours - ref).max() < 1e-3


@pytest.mark.slow
def test_committed_run_test_split_onnx_matches_torch_for_every_model():
    """Every model of the committed run on the whole test split: ONNX Runtime vs eager torch, TTA as recorded."""
    from core.data.images import load_for_model

    run_dir = REPO / "artifacts" / "kermany-lineup"
    if not (run_dir / "run.json").exists():
        pytest.skip("no committed run")
    run = Run(run_dir)
    for art in run.models:
        if art.is_ensemble:
            continue
        loaded = load_trained(art)
        files = [run.locate(p) for p in art.predictions("test")["path"]]
        if None in files:
            pytest.skip("the run's data folder is not on this machine")
        films = np.stack([load_for_model(f, loaded.input_size) for f in files])
        diff = np.abs(predict_loaded(loaded, films, backend="onnx") - predict_loaded(loaded, films, backend="torch"))
        assert diff.max() <= TOL, f"{art.name}: {diff.max():.2e}"
