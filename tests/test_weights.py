"""Resolving ImageNet weights offline first, with the real offline packages; the internet is the one thing mocked."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
import torchvision
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from core.models import weights as W
from core.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    create_model,
    get_spec,
    remap_efficientnet_lite0,
    remap_torchvision_densenet,
)
from core.models.weights import WeightsError, load_backbone, resolve_weights

MOBILENET_SHA = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
LITE0_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(autouse=True)
def _empty_caches(tmp_path, monkeypatch):
    """No user cache takes part: torch hub and Hugging Face caches are empty folders, no weights dir is set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(W.ENV_WEIGHTS_DIR, raising=False)


def _package_file(name):
    spec = get_spec(name)
    return W._package_file(spec.weights.packages[0], spec.weights.filename)


def _save_random(path, arch=torchvision.models.resnet18):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = arch().state_dict()
    torch.save(state, path)
    return state


@pytest.mark.parametrize("name, sha, first_key", [
    ("mobilenet_v2", MOBILENET_SHA, "features.0.0.weight"),
    ("efficientnet_lite0", LITE0_SHA, "conv_stem.weight"),
])
def test_offline_packages_load_verified(name, sha, first_key):
    spec = get_spec(name)
    assert spec.weights.sha256 == sha
    assert W.sha256_of(_package_file(name)) == sha
    model, info = create_model(name, pretrained=True)
    assert info.pretrained and info.source == f"package:{spec.weights.packages[0]}"
    assert info.sha256 == sha and info.warning is None
    state, _ = resolve_weights(spec.weights)
    assert torch.equal(model.state_dict()[first_key], state[first_key])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)  # the 1000-class head was replaced


def test_corrupted_file_is_refused(tmp_path):
    data = bytearray(_package_file("mobilenet_v2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as e:
        create_model("mobilenet_v2", weights_path=bad)
    message = str(e.value)
    assert MOBILENET_SHA in message and hashlib.sha256(data).hexdigest() in message and str(bad) in message


def test_unloadable_or_missing_file(tmp_path):
    junk = tmp_path / "resnet18-f37072fd.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load"):
        create_model("resnet18", weights_path=junk)
    with pytest.raises(WeightsError, match="does not exist"):
        create_model("resnet18", weights_path=tmp_path / "nowhere.pth")


def test_resnet18_offline_falls_back_with_a_warning():
    model, info = create_model("resnet18", pretrained=True)  # conftest sets CXR_OFFLINE=1
    assert (info.pretrained, info.source, info.sha256) == (False, "none", None)
    assert "resnet18-f37072fd.pth" in info.warning and "random init" in info.warning
    assert "CXR_OFFLINE" in info.warning and "CXR_WEIGHTS_DIR" in info.warning


def test_unreachable_host_falls_back(monkeypatch):
    monkeypatch.delenv(W.ENV_OFFLINE)
    asked = []
    monkeypatch.setattr(W, "is_reachable", lambda url, timeout=2.0: asked.append(url) or False)
    _, info = resolve_weights(get_spec("resnet18").weights)
    assert asked == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert not info.pretrained and "not reachable" in info.warning
    _, info = resolve_weights(get_spec("resnet18").weights, allow_download=False)
    assert len(asked) == 1 and "not allowed" in info.warning


def test_download_lands_in_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_OFFLINE)
    monkeypatch.setattr(W, "is_reachable", lambda url, timeout=2.0: True)
    served = tmp_path / "served.pth"
    state = _save_random(served)

    def fake_download(url, dst, hash_prefix=None, progress=True):
        assert url.endswith("/resnet18-f37072fd.pth") and hash_prefix is None
        dst_path = W.hub_checkpoint_path("resnet18-f37072fd.pth")
        assert str(dst_path) == dst
        dst_path.write_bytes(served.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model, info = create_model("resnet18")
    assert info.pretrained and info.source == "download:https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    _, again = create_model("resnet18")  # the second time it comes from the cache, offline
    assert again.source.startswith("torch-hub-cache:")


def test_torch_hub_cache_is_found(tmp_path):
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    state = _save_random(path)
    model, info = create_model("resnet18")
    assert info.pretrained and info.source == f"torch-hub-cache:{path}"
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.fc.out_features == 2  # the 1000-class head of the file was left out


def test_weights_dir_comes_first(tmp_path, monkeypatch):
    _save_random(tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    mine = _save_random(tmp_path / "mine" / "resnet18-f37072fd.pth")
    model, info = create_model("resnet18", weights_dir=tmp_path / "mine")
    assert info.source == f"weights-dir:{tmp_path / 'mine' / 'resnet18-f37072fd.pth'}"
    assert torch.equal(model.conv1.weight, mine["conv1.weight"])
    monkeypatch.setenv(W.ENV_WEIGHTS_DIR, str(tmp_path / "mine"))
    assert create_model("resnet18")[1].source.startswith("weights-dir:")


def test_known_sha_is_checked_in_every_place(tmp_path):
    _save_random(tmp_path / "w" / "mobilenet_v2-b0353104.pth", torchvision.models.mobilenet_v2)
    with pytest.raises(WeightsError, match=MOBILENET_SHA):
        create_model("mobilenet_v2", weights_dir=tmp_path / "w")


def test_hugging_face_cache_is_found(tmp_path):
    """A timm file in the HF cache layout (refs/main → snapshots/<rev>, file a link to blobs/<sha256>)."""
    repo = tmp_path / "hf-cache" / "models--timm--resnet18.tv_in1k"
    state = torchvision.models.resnet18().state_dict()
    (repo / "blobs").mkdir(parents=True)
    tmp_file = repo / "blobs" / "tmp"
    save_file(state, str(tmp_file))
    blob = tmp_file.rename(repo / "blobs" / W.sha256_of(tmp_file))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").symlink_to(blob)
    model, info = create_model("resnet18")
    assert info.source.startswith("hf-cache:") and info.sha256 == blob.name
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # damaged: no longer matches its blob name
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        create_model("resnet18")


def test_load_backbone_is_strict_except_the_head():
    model = torchvision.models.resnet18(num_classes=2)
    full = torchvision.models.resnet18().state_dict()
    load_backbone(model, full, "fc.")
    assert torch.equal(model.conv1.weight, full["conv1.weight"])
    with pytest.raises(WeightsError, match="unexpected"):
        load_backbone(model, {**full, "extra.weight": torch.zeros(1)}, "fc.")
    with pytest.raises(WeightsError, match="missing"):
        load_backbone(model, {k: v for k, v in full.items() if k != "conv1.weight"}, "fc.")
    with pytest.raises(WeightsError):
        load_backbone(model, {**full, "conv1.weight": torch.zeros(1, 1, 1, 1)}, "fc.")


def test_densenet_download_keys_are_renamed():
    """torchvision's densenet121-a639ec97.pth predates `norm1` names and `num_batches_tracked`."""
    own = torchvision.models.densenet121().state_dict()
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in own.items()
           if not k.endswith("num_batches_tracked")}
    assert remap_torchvision_densenet(old).keys() <= own.keys()
    model = torchvision.models.densenet121(num_classes=2)
    load_backbone(model, remap_torchvision_densenet(old), "classifier.")
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       own["features.denseblock1.denselayer1.norm1.weight"])


# --- EfficientNet-Lite0: a foreign checkpoint renamed into timm's layout -----------------------------------------


@pytest.fixture(scope="module")
def lite0_state():
    state, _ = W.load_file(_package_file("efficientnet_lite0"), LITE0_SHA, remap_efficientnet_lite0)
    return state


def test_lite0_remap_loads_strictly(lite0_state):
    model = timm.create_model("tf_efficientnet_lite0")  # 1000 classes: every key of the file, head included
    model.load_state_dict(lite0_state, strict=True)
    assert remap_efficientnet_lite0(lite0_state).keys() == lite0_state.keys()  # native keys pass unchanged
    stats = [m.running_var for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.allclose(v, torch.ones_like(v)) for v in stats)  # real statistics, not defaults


def test_lite0_pretrained_features_are_imagenet_like(lite0_state):
    """On two real photos, the remapped Lite0 and torchvision's MobileNetV2 agree on some of their top-5 classes,
    and are far more certain (lower entropy) than a random network."""
    datasets = pytest.importorskip("sklearn.datasets")
    lite0 = timm.create_model("tf_efficientnet_lite0").eval()
    torch.manual_seed(0)  # the random baseline must not depend on test order
    random_lite0 = timm.create_model("tf_efficientnet_lite0").eval()
    lite0.load_state_dict(lite0_state)
    mobilenet = torchvision.models.mobilenet_v2().eval()
    mobilenet.load_state_dict(resolve_weights(get_spec("mobilenet_v2").weights)[0])
    lite0_spec = get_spec("efficientnet_lite0")

    def prep(img, mean, std):
        x = torch.tensor(img).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    with torch.no_grad():
        for name in ("china.jpg", "flower.jpg"):
            img = datasets.load_sample_image(name)
            x = prep(img, lite0_spec.mean, lite0_spec.std)
            p = lite0(x).softmax(1)
            ref = mobilenet(prep(img, IMAGENET_MEAN, IMAGENET_STD))
            assert set(p.topk(5).indices[0].tolist()) & set(ref.topk(5).indices[0].tolist()), name
            # a network that has learnt ImageNet is far from uniform over the 1000 classes; a random one is not
            def entropy(q):
                return float(-(q * q.clamp_min(1e-12).log()).sum())
            assert entropy(p) < entropy(random_lite0(x).softmax(1)) - 1.0, name


def test_lite0_pretrained_differs_from_random_init():
    pretrained, info = create_model("efficientnet_lite0")
    random_init, _ = create_model("efficientnet_lite0", pretrained=False)
    assert info.pretrained
    assert not torch.equal(pretrained.conv_stem.weight, random_init.conv_stem.weight)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a = pretrained.eval().forward_features(x)
        b = random_init.eval().forward_features(x)
    assert not torch.allclose(a, b, atol=1e-2)


def test_weights_source_remap_must_keep_native_keys():
    """The contract of WeightsSource.remap that lets one source serve the package file and an HF (timm) file."""
    spec = get_spec("densenet121")
    own = torchvision.models.densenet121().state_dict()
    assert spec.weights.remap(own).keys() == own.keys()
