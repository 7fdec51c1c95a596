"""The typed recipe (core/models/recipe.py, trainer/config.py), the generated flags, the command modules and the
trainer's
logging (trainer/logs.py): cheap checks, no training."""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import fields
from pathlib import Path

import pytest

from core.models.recipe import ModelConfig, Recipe
from core.store import ArtifactError, Run
from trainer import commands, logs
from trainer import config as cfgmod
from trainer.cli import main, parser
from trainer.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "artifacts").glob("*/*/config.json"))


def test_every_key_has_its_rule_and_help_beside_it_and_a_flag_unless_config_only():
    for f in fields(cfgmod.RunConfig) + fields(Recipe):
        if f.name == "recipe":
            continue
        assert isinstance(f.metadata["rule"], cfgmod.Rule) and f.metadata["help"], f.name
    p = argparse.ArgumentParser()
    cfgmod.add_flags(p)
    flags = {a.dest for a in p._actions} - {"help"}
    assert flags == set(cfgmod.FLAG_KEYS)
    assert {"weight_decay", "optimizer", "stop_on", "in_chans", "distill_from", "compile", "weights_dir"} <= flags
    assert not flags & {"name", "arch", "ensembles", "sources"}  # per-entry identity and lists: config only


def test_generated_flags_reach_the_recipe_and_are_checked():
    args = parser().parse_args(["train", "--data", "d", "--weight-decay", "0.01", "--no-augment", "--stop-on",
                                "val_loss", "--compile", "--weights-dir", "w"])
    cfg = cfgmod.build({}, cfgmod.flag_values(args))
    assert (cfg.recipe.weight_decay, cfg.recipe.augment, cfg.recipe.stop_on) == (0.01, False, "val_loss")
    assert (cfg.compile, cfg.weights_dir) == (True, "w")
    recorded = cfgmod.as_dict(cfg)  # what run.json's "config" holds
    assert recorded["compile"] is True and recorded["weights_dir"] == "w"
    with pytest.raises(SystemExit):  # a choice argparse knows: its usage error, as for --duplicates before
        parser().parse_args(["train", "--optimizer", "sgd"])


def test_an_input_size_the_models_cannot_take_is_refused_at_the_config_check(tmp_path, capsys):
    with pytest.raises(cfgmod.ConfigError, match="input_size=24"):
        cfgmod.build({"data": "d", "input_size": 24}, {})
    argv = ["train", "--data", str(tmp_path), "--artifacts", str(tmp_path / "a"), "--run", "r", "--models",
            "vit_tiny", "--input-size", "40"]  # >= 32, but the ViT takes multiples of its patch only
    assert main(argv) == 3
    assert "vit_tiny" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_the_docs_table_of_keys_is_the_generated_one():
    text = (REPO / "docs" / "trainer.md").read_text()
    table = re.search(r"<!-- keys:start -->\n(.*?)\n<!-- keys:end -->", text, re.S)
    assert table and table.group(1) == cfgmod.keys_table(), "regenerate it from trainer.config.keys_table()"


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.parent.name}/{p.parent.name}" for p in COMMITTED])
def test_every_committed_config_reads_back_typed(path):
    raw = json.loads(path.read_text())
    cfg = ModelConfig.from_dict(raw, str(path))
    assert cfg.extra == {} and cfg.arch == raw["arch"] and cfg.is_ensemble == (raw["arch"] == "ensemble")
    assert cfg.members == tuple(raw.get("members", ())) and cfg.input_size == raw.get("input_size")


def test_an_older_or_newer_config_reads_with_defaults_and_extras_and_a_bad_value_is_named():
    cfg = ModelConfig.from_dict({"arch": "small_cnn", "input_size": 64, "preprocess": None, "from_v9": 1})
    assert (cfg.preprocess, cfg.framing, cfg.tta, cfg.in_chans, cfg.threshold_rule) == ("none", "none", 1, 3, "youden")
    assert cfg.extra == {"from_v9": 1} and Recipe.from_dict({"lr": 0.1, "from_v9": 1}).lr == 0.1
    with pytest.raises(ArtifactError, match=r"m/config.json: tta=0"):
        ModelConfig.from_dict({"arch": "small_cnn", "tta": 0}, "m/config.json")
    with pytest.raises(ArtifactError, match="members"):
        ModelConfig.from_dict({"arch": "ensemble", "members": ["a", "../b"]})


def test_the_split_name_is_checked_in_one_place(tmp_path):
    run = REPO / "artifacts" / "kermany-lineup"
    with pytest.raises(ArtifactError, match="own splits"):  # the same rule whoever calls it
        evaluate_run(run, tmp_path, split_name="test")
    with pytest.raises(cfgmod.ConfigError, match="usable name"):
        cfgmod.check_new_split(Run(run), "a b")


def test_every_command_is_one_module_with_the_same_two_functions():
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) == len(commands.COMMANDS) == 15
    for module in commands.COMMANDS:
        assert callable(module.add_parser) and callable(module.run), module.__name__
        assert module.__name__.rsplit(".", 1)[1] in sub.choices
        assert sub.choices[module.__name__.rsplit(".", 1)[1]].get_default("func") is module.run


def test_logging_levels_quiet_verbose_and_other_ranks(capsys):
    log = logging.getLogger("trainer.some_module")
    try:
        logs.configure(0)
        log.info("epoch line")
        log.debug("debug line")
        err = capsys.readouterr().err
        assert "epoch line" in err and "debug line" not in err
        logs.configure(-1)
        log.info("epoch line")
        log.warning("a warning")
        assert capsys.readouterr().err == "a warning\n"
        logs.configure(1)
        log.debug("debug line")
        assert capsys.readouterr().err == "DEBUG trainer.some_module: debug line\n"
        logs.configure(0)
        logs.only_warnings()  # a DDP rank other than 0
        log.info("epoch line")
        logging.getLogger("core.x").warning("disk nearly full")
        assert capsys.readouterr().err == "disk nearly full\n"
        assert len(logging.getLogger("trainer").handlers) == 1  # configured four times, one handler
    finally:
        logs.configure(0)


def test_quiet_after_the_command_and_report_output_on_stdout(capsys):
    run = REPO / "artifacts" / "kermany-lineup"
    assert main(["report", "--run", str(run), "--splits", "test", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "| small_cnn" in out and err == ""
