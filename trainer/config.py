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
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from core.artifacts import ArtifactError, is_ensemble, name_problem, read_csv, read_json, read_text, stored_path
from core.data import DataError
from core.images import MAX_INPUT_SIZE, MIN_INPUT_SIZE


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
    framing: str = "none"  # none | lungs: what part of the film the model sees (core.framing), also at inference
    crop_area_min: float = 1.0  # < 1: random-resized crops covering [crop_area_min, 1] of the film
    photometric_scale: float = 1.0  # multiplies the brightness/contrast/gamma augmentation ranges
    noise_std: float = 0.0  # > 0: Gaussian noise augmentation, std up to this (pixel units)
    ema_decay: float = 0.0  # > 0: keep, validate and save an exponential moving average of the weights
    mixup_alpha: float = 0.0  # > 0: mixup with Beta(alpha, alpha) weights
    threshold_rule: str = "youden"  # headline operating point: youden | sens<target%> | default
    # multi-source runs (docs/recipes.md, "Populations"): each source's share of the training draws is
    # proportional to (its training films) ** (1 - source_balance): 0 keeps the sources' natural proportions, 1
    # gives every source the same share; classes are balanced within each source. One source: no effect.
    source_balance: float = 0.5


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
    duplicates: str = "warn"  # byte-identical files in two splits: warn | refuse
    ensembles: tuple = ()  # ({name: ..., members: [...]}, ...): built after training (trainer/ensemble.py)
    sources: tuple = ()  # ({name: ..., data: ...}, ...): several data sources instead of one ``data`` folder
    recipe: Recipe = field(default_factory=Recipe)


RUN_KEYS = {f.name for f in fields(RunConfig)} - {"recipe"}
RECIPE_KEYS = {f.name for f in fields(Recipe)}


MAX_CONFIG_BYTES = 2**20


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class Rule:
    """How one key is checked before any work: type, bounds (inclusive unless ``*_open``), choices, None allowed.

    ``check`` returns a problem description or None, for what bounds cannot say (names, device strings)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    optional: bool = False
    check: Callable[[object], str | None] | None = None


def _device_problem(value) -> str | None:
    v = str(value).lower()
    if v in ("auto", "cpu", "mps") or re.fullmatch(r"cuda(:\d+)?", v):
        return None
    return "is not a device: use auto, cpu, cuda, cuda:N or mps"


# One line per key: adding a recipe key means adding its rule here. A key without a rule is still type-checked
# against its default (bool, int, float finite, str); the rule adds the bounds.
RULES: dict[str, Rule] = {
    # run level
    "data": Rule(str), "run": Rule(str, check=name_problem), "artifacts": Rule(str, optional=True),
    "seed": Rule(int, 0, 2**31 - 1), "val_fraction": Rule(float, 0, 1, hi_open=True),
    "test_fraction": Rule(float, 0, 1, hi_open=True), "subset": Rule(int, 1, 10**9, optional=True),
    "cache_dir": Rule(str, optional=True), "workers": Rule(int, 1, 256, optional=True),
    "device": Rule(str, check=_device_problem), "threads": Rule(int, 1, 1024, optional=True),
    "duplicates": Rule(str, choices=("warn", "refuse")),
    # recipe
    "name": Rule(str, check=name_problem), "arch": Rule(str), "pretrained": Rule(bool),
    "weights": Rule(str, optional=True), "input_size": Rule(int, MIN_INPUT_SIZE, MAX_INPUT_SIZE, optional=True),
    "epochs": Rule(int, 1, 10_000), "batch_size": Rule(int, 1, 4096), "lr": Rule(float, 0, 10, lo_open=True),
    "backbone_lr_factor": Rule(float, 0, 100), "weight_decay": Rule(float, 0, 10),
    "optimizer": Rule(str, choices=("adam", "adamw")), "warmup_epochs": Rule(float, 0, 10_000),
    "freeze_epochs": Rule(int, 0, 10_000), "label_smoothing": Rule(float, 0, 1, hi_open=True),
    "class_weights": Rule(bool), "balanced_sampler": Rule(bool), "augment": Rule(bool), "hflip": Rule(bool),
    "blur_prob": Rule(float, 0, 1), "patience": Rule(int, 1, 10_000), "keep_last": Rule(int, 0, 10_000),
    "tta": Rule(int, 1, 64), "half_checkpoint": Rule(bool), "target_sensitivity": Rule(float, 0, 1, True, True),
    "max_train_batches": Rule(int, 1, 10**9, optional=True),
    "preprocess": Rule(str, choices=("none", "equalize", "clahe")),  # = core.transforms.PREPROCESS
    "framing": Rule(str, choices=("none", "lungs")),  # = core.framing.FRAMINGS
    "crop_area_min": Rule(float, 0.05, 1), "photometric_scale": Rule(float, 0, 4), "noise_std": Rule(float, 0, 0.5),
    "ema_decay": Rule(float, 0, 1, hi_open=True), "mixup_alpha": Rule(float, 0, 10),
    "source_balance": Rule(float, 0, 1),
    "threshold_rule": Rule(str, check=lambda v: None if re.fullmatch(r"youden|default|sens\d{1,2}", v) else
                           "is not a threshold rule: use youden, default or sens<NN> (e.g. sens95)"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _rule(key: str) -> Rule:
    if key in RULES:
        return RULES[key]
    default = {f.name: f.default for f in fields(Recipe) + fields(RunConfig)}.get(key)
    kind = type(default) if isinstance(default, (bool, int, float, str)) else object
    return Rule(kind, optional=default is None)


def check_value(key: str, value, where: str = "config"):
    """``value`` converted to the key's type and checked against its rule; ConfigError naming key and value."""
    rule = _rule(key)
    if value is None:
        if rule.optional:
            return None
        raise ConfigError(f"{where}: {key} must be given a value (null is not allowed)")
    v = _convert(value, rule.kind)
    if v is None:
        raise ConfigError(f"{where}: {key}={value!r} is not a valid {rule.kind.__name__}")
    problem = _bounds_problem(v, rule)
    if problem:
        raise ConfigError(f"{where}: {key}={value!r} {problem}")
    return v


def _convert(value, kind):
    """value as ``kind`` or None when it is not one (no silent truncation, no NaN, no bool posing as a number)."""
    if kind is object:
        return value if isinstance(value, (str, int, float, bool)) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        return True if text in _TRUE else False if text in _FALSE else None
    if isinstance(value, (bool, list, dict, tuple, set)):
        return None
    if kind is str:
        return str(value) if isinstance(value, (str, int)) else None
    try:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, (int, float)) or not math.isfinite(number):
            return None
        if kind is int:
            return int(number) if float(number).is_integer() else None
        return float(number)
    except (TypeError, ValueError, OverflowError):
        return None


def _bounds_problem(v, rule: Rule) -> str | None:
    if rule.choices and v not in rule.choices:
        return f"must be one of {', '.join(map(str, rule.choices))}"
    if rule.lo is not None and (v <= rule.lo if rule.lo_open else v < rule.lo):
        return f"must be {'>' if rule.lo_open else '>='} {rule.lo}"
    if rule.hi is not None and (v >= rule.hi if rule.hi_open else v > rule.hi):
        return f"must be {'<' if rule.hi_open else '<='} {rule.hi}"
    return rule.check(v) if rule.check else None


def load_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = read_text(path, MAX_CONFIG_BYTES)  # never a pipe or device: one line, not a hang
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except ArtifactError as e:
        raise ConfigError(f"cannot read config: {e}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, found {type(data).__name__}")
    return data


def build(file_values: dict, flag_values: dict) -> RunConfig:
    """Merge file and flags (flags win) into a RunConfig; unknown keys are an error, not silently ignored.

    Every value is type- and bounds-checked here, before any work starts."""
    merged = {**file_values, **{k: v for k, v in flag_values.items() if v is not None}}
    unknown = set(merged) - RUN_KEYS - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(map(str, unknown))}; known: {sorted(RUN_KEYS | RECIPE_KEYS)}")
    recipe = _typed_recipe(Recipe(), {k: v for k, v in merged.items() if k in RECIPE_KEYS}, "config")
    run = {k: check_value(k, v) for k, v in merged.items() if k in RUN_KEYS - {"models", "ensembles", "sources"}}
    run["models"] = _models(merged.get("models", RunConfig.models))
    run["ensembles"] = _ensembles(merged.get("ensembles", ()))
    run["sources"] = _sources(merged.get("sources", ()))
    if run["sources"] and run.get("data"):
        raise ConfigError("give either data (one source) or sources (several), not both")
    return RunConfig(**run, recipe=recipe)


def _sources(items) -> tuple:
    """``sources``: a list of {name, data}; names distinct and usable as file-name parts."""
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"sources: expected a list of {{name: ..., data: ...}}, got {items!r}")
    names = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "data"} or not isinstance(item["data"], str):
            raise ConfigError(f"sources: each item needs exactly 'name' and 'data' (a folder or manifest), "
                              f"got {item!r}")
        names.append(check_value("name", item["name"], "sources"))
    if len(set(names)) != len(names):
        raise ConfigError(f"sources: names must be distinct, got {names}")
    return tuple({"name": i["name"], "data": i["data"]} for i in items)


def _models(models) -> tuple:
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, (list, tuple)) or not models:
        raise ConfigError(f"models: expected a non-empty list of names or mappings, got {models!r}")
    return tuple(models)


def _ensembles(items) -> tuple:
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"ensembles: expected a list of {{name: ..., members: [...]}}, got {items!r}")
    for item in items:
        members = item.get("members") if isinstance(item, dict) else None
        if (not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) for m in members)
                or set(item) - {"name", "members"}):
            raise ConfigError(f"ensembles: each item needs 'name' and 'members' (two or more model names), "
                              f"got {item!r}")
        check_value("name", item.get("name"), "ensembles")
    return tuple(items)


def _typed_recipe(base: Recipe, values: dict, where: str) -> Recipe:
    return replace(base, **{k: check_value(k, v, where) for k, v in values.items() if k in RECIPE_KEYS})


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


# --- command-line guards: nothing a command writes may replace what another wrote --------------------------------
# A name that cannot be a name is a ConfigError (exit 3); a name that would replace existing artifacts is an
# ArtifactError (exit 2), like any other conflict with what is on disk.

RESERVED_SPLITS = ("train", "val", "test", "official_val", "excluded")  # the run's own splits


def check_new_split(run, name: str, *, force: bool = False) -> None:
    """``evaluate --split-name``: a usable name, never one of the run's own splits, and not an earlier evaluation
    unless ``force`` (replacing predictions that a report may already quote)."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"--split-name {name!r} {problem}")
    if name.lower() in RESERVED_SPLITS:
        raise ArtifactError(f"--split-name {name!r} is one of the run's own splits ({', '.join(RESERVED_SPLITS)}): "
                          "its predictions and metrics would be replaced; choose another name, e.g. external")
    taken = [m.name for m in run.models if (m.dir / f"predictions_{name}.csv").exists()]
    if taken and not force:
        raise ArtifactError(f"split {name!r} was already evaluated in {run.dir} ({', '.join(taken)}); add --force to "
                          "replace it, or choose another --split-name")


def check_ensemble_name(run, name: str) -> None:
    """``ensemble --name``: a usable folder name that is free or already an ensemble (never a trained model)."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"--name {name!r} {problem}")
    folder = run.dir / name
    if folder.exists():
        try:
            existing = read_json(folder / "config.json")
        except ArtifactError:
            existing = {}
        if not is_ensemble(existing):
            raise ArtifactError(f"--name {name!r}: {folder} already holds a model that is not an ensemble; "
                              "choose another name")


def check_resume(run_dir: Path) -> None:
    """``train --resume`` needs a run to resume: silently starting a new one would hide a typo in --run."""
    if not (run_dir / "run.json").is_file():
        raise ConfigError(f"--resume: there is no run to resume at {run_dir} (no run.json); drop --resume to "
                          "start a new run")


def check_nothing_vanished(run_dir: Path, samples) -> None:
    """``train --resume``: every image of the recorded split must still be in the data folder."""
    recorded = read_csv(run_dir / "split.csv", ["path", "split"])
    root = read_json(run_dir / "run.json").get("data_root")
    present = {stored_path(s.path, root) for s in samples}  # split.csv paths are relative to the data root
    used = recorded[recorded["split"] != "excluded"]
    gone = [p for p in used["path"].astype(str) if p not in present]
    if gone:
        raise DataError(f"--resume: {len(gone)} of the {len(used)} images this run was split on are gone from the "
                        f"data folder (e.g. {gone[0]}); restore them, or start a new run")
