"""Training config: one ``RunConfig`` per run and one ``Recipe`` per model entry (``core/models/recipe.py``), built from
defaults, a config file and command-line flags.

A config file (YAML or JSON) has run-level keys, recipe keys that apply to every model, and a ``models`` list
whose items are architecture names or mappings that override recipe keys for one entry, for example::

    data: ../shared/data/kermany224
    run: lineup
    epochs: 8
    models:
      - small_cnn
      - {name: mobilenet_v2_scratch, arch: mobilenet_v2, pretrained: false}

Flags given on the command line win over the file; per-entry keys win over both. Every key is declared once, as a
field with its default, rule and help (``core.models.recipe.key``); the ``train`` flags are generated from those fields
(``add_flags``), and the whole ``RunConfig`` is recorded in run.json.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from core.data.layouts import DataError
from core.models import recipe as core_recipe
from core.models.recipe import NAME_RULE, ConfigError, Recipe, Rule, key, rules_of
from core.store import (
    RUN_FILE,
    ArtifactError,
    ModelArtifacts,
    Run,
    is_ensemble,
    is_run,
    name_problem,
    read_text,
    stored_path,
)

__all__ = ["ConfigError", "Recipe", "RunConfig", "Rule", "RULES", "RUN_KEYS", "RECIPE_KEYS", "add_flags",
           "flag_values", "check_value", "load_file", "build", "entries", "as_dict", "keys_table", "check_split_name",
           "check_new_split", "check_ensemble_name", "check_resume", "check_nothing_vanished"]


def _device_problem(value) -> str | None:
    v = str(value).lower()
    if v in ("auto", "cpu", "mps") or re.fullmatch(r"cuda(:\d+)?", v):
        return None
    return "is not a device: use auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class RunConfig:
    """Run-level keys: the data, where the run goes, the split, and how this machine runs it (all recorded)."""

    data: str = key("", Rule(str), "Kermany tree, flat NORMAL/PNEUMONIA folder, or CSV manifest")
    run: str = key("", NAME_RULE, "run name (folder under the artifacts root)")
    artifacts: str | None = key(None, Rule(str, optional=True),
                                "artifacts root (default $CXR_ARTIFACTS or ./artifacts)")
    models: tuple = key(("small_cnn",), Rule(tuple), "comma-separated registry names (see 'models')")
    seed: int = key(0, Rule(int, 0, 2**31 - 1), "seed of the split, the initialisation and the batch order")
    val_fraction: float = key(0.15, Rule(float, 0, 1, hi_open=True), "share of patients carved out for validation")
    test_fraction: float = key(0.15, Rule(float, 0, 1, hi_open=True),
                               "share of patients carved out for test (when the data has no test split)")
    subset: int | None = key(None, Rule(int, 1, 10**9, optional=True),
                             "keep about N images per class and split (whole patients): quick runs")
    cache_dir: str | None = key(None, Rule(str, optional=True),
                                "image cache folder (default $CXR_CACHE_DIR or ~/.cache/cxr-compare)")
    workers: int | None = key(None, Rule(int, 1, 256, optional=True), "decoding processes for the cache build")
    device: str = key("auto", Rule(str, check=_device_problem), "auto (CUDA when present), cpu or cuda")
    threads: int | None = key(None, Rule(int, 1, 1024, optional=True), "torch CPU threads")
    duplicates: str = key("warn", Rule(str, choices=("warn", "refuse")),
                          "byte-identical files in two splits: warn (default) or refuse to train")
    compile: bool = key(False, Rule(bool), "torch.compile the model (long runs on a GPU)")
    weights_dir: str | None = key(None, Rule(str, optional=True),
                                  "a folder of ImageNet weights files (default $CXR_WEIGHTS_DIR)")
    ensembles: tuple = key((), Rule(tuple), "({name: ..., members: [...]}, ...): built after training",
                           flag=False)
    sources: tuple = key((), Rule(tuple), "({name: ..., data: ...}, ...): several data sources instead of data",
                         flag=False)
    recipe: Recipe = field(default_factory=Recipe)


RUN_KEYS = frozenset(f.name for f in fields(RunConfig)) - {"recipe"}
RECIPE_KEYS = core_recipe.RECIPE_KEYS
STRUCTURED = frozenset({"models", "ensembles", "sources"})  # checked by their own functions below
RULES = rules_of(RunConfig, Recipe)  # key -> Rule, generated from the fields (one place per key)
FLAG_KEYS = tuple(f.name for f in fields(RunConfig) + fields(Recipe) if f.metadata.get("flag"))
MAX_CONFIG_BYTES = 2**20


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (``--batch-size`` for ``batch_size``), typed and helped from its field; a flag left
    out is None, so the config file's value (or the default) stands."""
    for f in fields(RunConfig) + fields(Recipe):
        if not f.metadata.get("flag"):
            continue
        rule, flag = f.metadata["rule"], "--" + f.name.replace("_", "-")
        if rule.kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            kind = rule.kind if rule.kind in (int, float) else str
            parser.add_argument(flag, type=kind, choices=rule.choices or None, help=f.metadata["help"])


def flag_values(args: argparse.Namespace) -> dict:
    """The config keys given as flags."""
    return {k: getattr(args, k) for k in FLAG_KEYS if getattr(args, k, None) is not None}


def keys_table() -> str:
    """Every config key as a Markdown table (docs/trainer.md holds it; a test keeps the two equal)."""
    lines = ["| key | flag | default | allowed | what it does |", "|---|---|---|---|---|"]
    for f in fields(RunConfig) + fields(Recipe):
        if "rule" not in f.metadata:
            continue
        flag = f"`--{f.name.replace('_', '-')}`" if f.metadata["flag"] else "config only"
        default = "" if f.default in ("", ()) else f"`{json.dumps(f.default)}`"
        lines.append(f"| `{f.name}` | {flag} | {default} | {_allowed(f.metadata['rule'])} | {f.metadata['help']} |")
    return "\n".join(lines)


def _allowed(rule: Rule) -> str:
    if rule.choices:
        text = " \\| ".join(map(str, rule.choices))
    elif rule.lo is not None or rule.hi is not None:
        lo = "" if rule.lo is None else f"{_number(rule.lo)} {'<' if rule.lo_open else '≤'} "
        hi = "" if rule.hi is None else f" {'<' if rule.hi_open else '≤'} {_number(rule.hi)}"
        text = f"{lo}{rule.kind.__name__}{hi}"
    else:
        text = {tuple: "list"}.get(rule.kind, rule.kind.__name__)
    return text + (" or null" if rule.optional else "")


def _number(x) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _rule(name: str) -> Rule:
    if name in RULES:
        return RULES[name]
    default = {f.name: f.default for f in fields(Recipe) + fields(RunConfig)}.get(name)
    kind = type(default) if isinstance(default, (bool, int, float, str)) else object
    return Rule(kind, optional=default is None)


def check_value(name: str, value, where: str = "config"):
    """``value`` converted to the key's type and checked against its rule; ConfigError naming key and value."""
    return core_recipe.check_value(name, value, where, _rule(name))


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


def build(file_values: dict, flags: dict) -> RunConfig:
    """Merge file and flags (flags win) into a RunConfig; unknown keys are an error, not silently ignored.

    Every value is type- and bounds-checked here, before any work starts."""
    merged = {**file_values, **{k: v for k, v in flags.items() if v is not None}}
    unknown = set(merged) - RUN_KEYS - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"unknown config keys: {sorted(map(str, unknown))}; known: {sorted(RUN_KEYS | RECIPE_KEYS)}")
    recipe = _typed_recipe(Recipe(), {k: v for k, v in merged.items() if k in RECIPE_KEYS}, "config")
    run = {k: check_value(k, v) for k, v in merged.items() if k in RUN_KEYS - STRUCTURED}
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


def check_split_name(name: str) -> None:
    """The one check of a name ``evaluate`` stores a split under: usable as a file-name part (else ConfigError),
    and never one of the run's own splits, whose predictions and metrics it would replace (ArtifactError)."""
    problem = name_problem(name)
    if problem:
        raise ConfigError(f"--split-name {name!r} {problem}")
    if name.lower() in RESERVED_SPLITS:
        raise ArtifactError(f"--split-name {name!r} is one of the run's own splits ({', '.join(RESERVED_SPLITS)}): "
                            "its predictions and metrics would be replaced; choose another name, e.g. external")


def check_new_split(run, name: str, *, force: bool = False) -> None:
    """``evaluate --split-name``: ``check_split_name``, and not an earlier evaluation unless ``force`` (replacing
    predictions that a report may already quote)."""
    check_split_name(name)
    taken = [m.name for m in run.models if m.predictions_path(name).exists()]
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
            existing = ModelArtifacts(run.dir, name).config
        except ArtifactError:
            existing = {}
        if not is_ensemble(existing):
            raise ArtifactError(f"--name {name!r}: {folder} already holds a model that is not an ensemble; "
                              "choose another name")


def check_resume(run_dir: Path) -> None:
    """``train --resume`` needs a run to resume: silently starting a new one would hide a typo in --run."""
    if not is_run(run_dir):
        raise ConfigError(f"--resume: there is no run to resume at {run_dir} (no {RUN_FILE}); drop --resume to "
                          "start a new run")


def check_nothing_vanished(run_dir: Path, samples) -> None:
    """``train --resume``: every image of the recorded split must still be in the data folder."""
    recorded, root = Run(run_dir).split_table(), Run(run_dir).info.get("data_root")
    present = {stored_path(s.path, root) for s in samples}  # split.csv paths are relative to the data root
    used = recorded[recorded["split"] != "excluded"]
    gone = [p for p in used["path"].astype(str) if p not in present]
    if gone:
        raise DataError(f"--resume: {len(gone)} of the {len(used)} images this run was split on are gone from the "
                        f"data folder (e.g. {gone[0]}); restore them, or start a new run")
