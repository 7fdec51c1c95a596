"""Training recipes: one ``Recipe`` per model entry, built from defaults, a config file and command-line flags.

A config file (YAML or JSON) has run-level keys, recipe keys that apply to every model, and a ``models`` list
whose items are architecture names or mappings that override recipe keys for one entry, for example::

    data: ../shared/data/kermany224
    run: lineup
    epochs: 8
    models:
      - small_cnn
      - {name: mobilenet_v2_scratch, arch: mobilenet_v2, pretrained: false}

Flags given on the command line win over the file; per-entry keys win over both.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Recipe:
    """How one model entry is trained. Defaults follow the seed projects (Adam-family, lr 1e-4, batch 32)."""

    name: str = ""
    arch: str = ""
    pretrained: bool = True
    weights: str | None = None  # explicit weights file
    input_size: int | None = None  # None: the registry's default
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    backbone_lr_factor: float = 1.0  # backbone lr = lr * factor once unfrozen (lower for gentle fine-tuning)
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adam | adamw
    warmup_epochs: float = 0.5
    freeze_epochs: int = 0  # epochs with a frozen backbone (pretrained models only)
    label_smoothing: float = 0.0
    class_weights: bool = True
    balanced_sampler: bool = False
    augment: bool = True
    hflip: bool = False
    blur_prob: float = 0.0
    patience: int = 4  # early stopping on validation AUC
    keep_last: int = 2
    tta: int = 1  # views averaged at evaluation
    half_checkpoint: bool = False  # store best.safetensors as float16
    target_sensitivity: float = 0.95
    max_train_batches: int | None = None  # cap per epoch: for quick runs only
    # robust-recipe keys (docs/recipes.md); each default leaves training as it was
    preprocess: str = "none"  # none | equalize | clahe: intensity standardisation, also applied at inference
    crop_area_min: float = 1.0  # < 1: random-resized crops covering [crop_area_min, 1] of the film
    photometric_scale: float = 1.0  # multiplies the brightness/contrast/gamma augmentation ranges
    noise_std: float = 0.0  # > 0: Gaussian noise augmentation, std up to this (pixel units)
    ema_decay: float = 0.0  # > 0: keep, validate and save an exponential moving average of the weights
    mixup_alpha: float = 0.0  # > 0: mixup with Beta(alpha, alpha) weights
    threshold_rule: str = "youden"  # headline operating point: youden | sens<target%> | default


@dataclass(frozen=True)
class RunConfig:
    data: str = ""
    run: str = ""
    artifacts: str | None = None
    models: tuple = ("small_cnn",)
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    subset: int | None = None  # keep about this many images per class (by patient) for quick runs
    cache_dir: str | None = None
    workers: int | None = None
    device: str = "auto"
    threads: int | None = None
    ensembles: tuple = ()  # ({name: ..., members: [...]}, ...): built after training (trainer/ensemble.py)
    recipe: Recipe = field(default_factory=Recipe)


RUN_KEYS = {f.name for f in fields(RunConfig)} - {"recipe"}
RECIPE_KEYS = {f.name for f in fields(Recipe)}


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message says which key and why."""


def load_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, found {type(data).__name__}")
    return data


def build(file_values: dict, flag_values: dict) -> RunConfig:
    """Merge file and flags (flags win) into a RunConfig; unknown keys are an error, not silently ignored."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    unknown = set(merged) - RUN_KEYS - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(unknown)}; known: {sorted(RUN_KEYS | RECIPE_KEYS)}")
    recipe = _typed_recipe(Recipe(), {k: v for k, v in merged.items() if k in RECIPE_KEYS}, "defaults")
    run = {k: v for k, v in merged.items() if k in RUN_KEYS}
    models = run.get("models", RunConfig.models)
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    run["models"] = tuple(models)
    return RunConfig(**run, recipe=recipe)


def _typed_recipe(base: Recipe, values: dict, where: str) -> Recipe:
    out = {}
    for f in fields(Recipe):
        if f.name not in values:
            continue
        v, default = values[f.name], getattr(Recipe(), f.name)
        try:
            if v is None:
                out[f.name] = None
            elif isinstance(default, bool):
                out[f.name] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")
            elif f.name in ("input_size", "max_train_batches"):
                out[f.name] = int(v)
            elif isinstance(default, (int, float)):
                out[f.name] = type(default)(v)
            else:
                out[f.name] = v
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {f.name}={v!r} is not a valid {type(default).__name__}") from None
    recipe = replace(base, **out)
    if recipe.preprocess not in PREPROCESS:
        raise ConfigError(f"{where}: preprocess={recipe.preprocess!r}; expected one of {', '.join(PREPROCESS)}")
    if not re.fullmatch(r"youden|default|sens\d{1,2}", str(recipe.threshold_rule)):
        raise ConfigError(f"{where}: threshold_rule={recipe.threshold_rule!r}; expected youden, default or "
                          "sens<NN> (e.g. sens95, which needs target_sensitivity: 0.95)")
    return recipe


PREPROCESS = ("none", "equalize", "clahe")  # = core.transforms.PREPROCESS (kept free of the torch import)


def entries(cfg: RunConfig) -> list[Recipe]:
    """One Recipe per model entry, names unique."""
    out, seen = [], set()
    for item in cfg.models:
        if isinstance(item, str):
            item = {"arch": item}
        if not isinstance(item, dict) or not (item.get("arch") or item.get("name")):
            raise ConfigError(f"models: each item must be a name or a mapping with 'arch', got {item!r}")
        unknown = set(item) - RECIPE_KEYS
        if unknown:
            raise ConfigError(f"models: entry {item!r} has unknown keys {sorted(unknown)}")
        arch = item.get("arch") or item["name"]
        recipe = _typed_recipe(cfg.recipe, {**item, "arch": arch, "name": item.get("name") or arch}, arch)
        if recipe.name in seen:
            raise ConfigError(f"models: entry name {recipe.name!r} appears twice; give each a distinct 'name'")
        seen.add(recipe.name)
        out.append(recipe)
    return out


def as_dict(cfg: RunConfig) -> dict:
    return asdict(cfg)
