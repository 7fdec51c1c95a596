"""The training recipe, typed once: each key's default, rule (type, bounds, choices) and help sit beside its field.

The trainer builds a ``Recipe`` from defaults, a config file and flags (``trainer/config.py``, whose flags are
generated from these fields), writes it into each model's ``config.json`` together with the facts of training
(``ModelConfig``), and everything that reads a model back (inference, the trainer's commands, the dashboard) reads
the same typed ``ModelConfig`` (``ModelConfig.from_dict``): a key an older run lacks takes its default, a key this
version does not know is kept in ``extra``, and a value that breaks its rule is an ``ArtifactError`` naming it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from core.data.images import FRAMINGS, MAX_INPUT_SIZE, MIN_INPUT_SIZE, PREPROCESS
from core.store import CONFIG_FILE, ArtifactError, is_ensemble, name_problem

__all__ = ["ConfigError", "Rule", "key", "Recipe", "ModelConfig", "RECIPE_KEYS", "rules_of", "check_value",
           "threshold_rule_problem", "model_config"]


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class Rule:
    """How one key is checked before any work: type, bounds (inclusive unless ``*_open``), choices, None allowed.

    ``check`` returns a problem description or None, for what bounds cannot say (names, device strings);
    ``kind=tuple`` is a list of ``items`` (JSON has no tuples)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    optional: bool = False
    check: Callable[[object], str | None] | None = None
    items: type = str


def key(default, rule: Rule, help: str, *, flag: bool = True):  # noqa: A002 (argparse's word)
    """A config key: its default, its rule and its help (the flag's help text), in one place.
    ``flag=False``: settable in a config file only (per-entry identity, structured values, recorded facts)."""
    return field(default=default, metadata={"rule": rule, "help": help, "flag": flag})


def threshold_rule_problem(value) -> str | None:
    if re.fullmatch(r"youden|default|sens\d{1,2}", str(value)):
        return None
    return "is not a threshold rule: use youden, default or sens<NN> (e.g. sens95)"


NAME_RULE = Rule(str, check=name_problem)


@dataclass(frozen=True)
class Recipe:
    """How one model entry is trained. Defaults follow the seed projects (Adam-family, lr 1e-4, batch 32); each
    key added after the first lineup defaults to training as it was."""

    name: str = key("", NAME_RULE, "the entry's name (its folder in the run)", flag=False)
    arch: str = key("", Rule(str), "registry name (python -m trainer models)", flag=False)
    pretrained: bool = key(True, Rule(bool), "start from ImageNet weights when the architecture has them")
    weights: str | None = key(None, Rule(str, optional=True), "an explicit ImageNet weights file")
    input_size: int | None = key(None, Rule(int, MIN_INPUT_SIZE, MAX_INPUT_SIZE, optional=True),
                                 "model input side in pixels (default: the registry's)")
    epochs: int = key(10, Rule(int, 1, 10_000), "epochs per model entry")
    batch_size: int = key(32, Rule(int, 1, 4096), "films per optimiser step")
    lr: float = key(1e-4, Rule(float, 0, 10, lo_open=True), "peak learning rate")
    backbone_lr_factor: float = key(1.0, Rule(float, 0, 100),
                                    "backbone lr = lr * factor once unfrozen (lower for gentle fine-tuning)")
    weight_decay: float = key(1e-4, Rule(float, 0, 10), "optimiser weight decay")
    optimizer: str = key("adamw", Rule(str, choices=("adam", "adamw")), "adam or adamw")
    warmup_epochs: float = key(0.5, Rule(float, 0, 10_000), "linear learning-rate warmup, in epochs")
    freeze_epochs: int = key(0, Rule(int, 0, 10_000), "epochs with a frozen backbone (pretrained models only)")
    label_smoothing: float = key(0.0, Rule(float, 0, 1, hi_open=True), "cross-entropy label smoothing")
    class_weights: bool = key(True, Rule(bool), "weight the loss by inverse class frequency")
    balanced_sampler: bool = key(False, Rule(bool), "draw classes equally instead of weighting the loss")
    augment: bool = key(True, Rule(bool), "batch augmentation (rotation, scale, shift, photometric)")
    hflip: bool = key(False, Rule(bool), "horizontal flips (off: a chest film has a side)")
    blur_prob: float = key(0.0, Rule(float, 0, 1), "probability of a blur augmentation")
    patience: int = key(4, Rule(int, 1, 10_000), "epochs without improvement (see stop_on) before stopping early")
    keep_last: int = key(2, Rule(int, 0, 10_000), "epoch checkpoints kept")
    tta: int = key(1, Rule(int, 1, 64), "views averaged at evaluation (1 = none)")
    half_checkpoint: bool = key(False, Rule(bool), "store the best checkpoint as float16")
    target_sensitivity: float = key(0.95, Rule(float, 0, 1, True, True),
                                    "sensitivity the sens<NN> operating point is chosen for on validation")
    max_train_batches: int | None = key(None, Rule(int, 1, 10**9, optional=True),
                                        "cap batches per epoch: quick runs")
    # robust-recipe keys (docs/recipes.md)
    preprocess: str = key("none", Rule(str, choices=PREPROCESS),
                          "intensity standardisation, also applied at inference")
    framing: str = key("none", Rule(str, choices=FRAMINGS),
                       "what part of the film the model sees (core.models.framing), also at inference")
    crop_area_min: float = key(1.0, Rule(float, 0.05, 1),
                               "below 1: random-resized crops covering [crop_area_min, 1] of the film")
    photometric_scale: float = key(1.0, Rule(float, 0, 4),
                                   "multiplies the brightness/contrast/gamma augmentation ranges")
    noise_std: float = key(0.0, Rule(float, 0, 0.5), "above 0: Gaussian noise augmentation, std up to this")
    ema_decay: float = key(0.0, Rule(float, 0, 1, hi_open=True),
                           "above 0: validate, save and score an exponential moving average of the weights")
    mixup_alpha: float = key(0.0, Rule(float, 0, 10), "above 0: mixup with Beta(alpha, alpha) weights")
    threshold_rule: str = key("youden", Rule(str, check=threshold_rule_problem),
                              "headline operating point: youden, sens<NN> or default")
    # multi-source runs (docs/recipes.md, "Populations")
    source_balance: float = key(0.5, Rule(float, 0, 1),
                                "several sources: each source's share of the draws is proportional to (its "
                                "training films)^(1 - source_balance); 0 natural proportions, 1 equal shares")
    # fair-architecture keys (docs/recipes.md, "Seed architectures")
    stop_on: str = key("val_auc", Rule(str, choices=("val_auc", "val_loss")),
                       "what picks the best epoch and what patience waits on")
    in_chans: int = key(3, Rule(int, choices=(1, 3)),
                        "1: a one-channel stem fed the film's grey level (the seeds' grayscale ResNet-18)")
    distill_from: str | None = key(None, Rule(str, optional=True),
                                   "run/model under the artifacts root: a teacher whose soft labels are mixed in")
    distill_weight: float = key(0.5, Rule(float, 0, 1),
                                "share of the loss given to matching the teacher (distill_from only)")
    distill_temperature: float = key(2.0, Rule(float, 0.1, 20),
                                     "softens both distributions before they are matched")

    @classmethod
    def from_dict(cls, values: dict, where: str = CONFIG_FILE):
        """A stored recipe (or ``ModelConfig``) read back: missing (or null) keys take their defaults, unknown keys go
        to ``extra`` where the class has it (else are ignored), a value breaking its rule is an ArtifactError."""
        if not isinstance(values, dict):
            raise ArtifactError(f"{where}: expected an object of keys, found {type(values).__name__}")
        known = {f.name: f.metadata["rule"] for f in fields(cls) if "rule" in f.metadata}
        typed, extra = {}, {}
        for k, v in values.items():
            if k not in known:
                extra[k] = v
                continue
            if v is None and not known[k].optional:  # written as null by an older version: the default
                continue
            try:
                typed[k] = check_value(k, v, where, known[k])
            except ConfigError as e:
                raise ArtifactError(str(e)) from None
        if "extra" in {f.name for f in fields(cls)}:
            typed["extra"] = extra
        return cls(**typed)


RECIPE_KEYS = frozenset(f.name for f in fields(Recipe))


def _optional(kind: type, help: str) -> object:  # noqa: A002
    return key(None, Rule(kind, optional=True), help, flag=False)


@dataclass(frozen=True)
class ModelConfig(Recipe):
    """A model's ``config.json``: its recipe (``input_size`` resolved) and what training found and used. An
    ensemble's holds ``arch: ensemble`` and its ``members``; every other key keeps its default."""

    members: tuple = key((), Rule(tuple, check=lambda v: next(filter(None, map(name_problem, v)), None)),
                         "an ensemble's member models", flag=False)
    mean: tuple | None = key(None, Rule(tuple, optional=True, items=float), "input normalisation mean", flag=False)
    std: tuple | None = key(None, Rule(tuple, optional=True, items=float), "input normalisation std", flag=False)
    pretrained_requested: bool | None = _optional(bool, "what the recipe asked (pretrained: what was loaded)")
    weights_source: str | None = _optional(str, "where the starting weights came from")
    weights_sha256: str | None = _optional(str, "sha256 of the starting weights file")
    weights_warning: str | None = _optional(str, "why no pretrained weights were loaded")
    params: int | None = key(None, Rule(int, 0, None, optional=True), "trainable parameters", flag=False)
    seed: int | None = _optional(int, "the run's seed")
    device: str | None = _optional(str, "the device it trained on")
    n_train: int | None = _optional(int, "training films")
    n_val: int | None = _optional(int, "validation films")
    n_test: int | None = _optional(int, "test films")
    lung_model_sha256: str | None = _optional(str, "the lung model a lung-framed model was trained with")
    schema_version: int | None = _optional(int, "the model config's schema version")
    extra: dict = field(default_factory=dict, compare=False)  # keys this version does not know

    @property
    def is_ensemble(self) -> bool:
        return is_ensemble({"arch": self.arch})  # core.store.is_ensemble: the one test


def rules_of(*classes) -> dict[str, Rule]:
    """Every key of the given dataclasses with its rule."""
    return {f.name: f.metadata["rule"] for c in classes for f in fields(c) if "rule" in f.metadata}


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def check_value(name: str, value, where: str, rule: Rule):
    """``value`` converted to the rule's type and checked against it; ConfigError naming key and value."""
    if value is None:
        if rule.optional:
            return None
        raise ConfigError(f"{where}: {name} must be given a value (null is not allowed)")
    v = _convert(value, rule.kind, rule.items)
    if v is None:
        raise ConfigError(f"{where}: {name}={value!r} is not a valid {rule.kind.__name__}")
    problem = _bounds_problem(v, rule)
    if problem:
        raise ConfigError(f"{where}: {name}={value!r} {problem}")
    return v


def _convert(value, kind, items=str):
    """value as ``kind`` or None when it is not one (no silent truncation, no NaN, no bool posing as a number)."""
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            return None
        out = tuple(_convert(x, items) for x in value)
        return None if any(x is None for x in out) else out
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


def model_config(art) -> ModelConfig:
    """A model's stored config (``art``: a ``core.store.ModelArtifacts``) as a typed ``ModelConfig``."""
    return ModelConfig.from_dict(art.config, str(art.dir / CONFIG_FILE))
