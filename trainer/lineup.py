"""The training run: the config checked, the data prepared once, every entry of the lineup trained, then the
run's ensembles, CAM references and calibration (``python -m trainer train``; docs/trainer.md).

Under torchrun each process runs this; rank 0 holds the run's lock, writes its files and logs for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from core.data import layouts as data
from core.data.cache import ImageCache
from core.data.labels import CLASSES
from core.evaluate.metrics import headline_rule
from core.models.framing import framed_cache
from core.models.registry import check_input_size, get_spec, input_size_for
from core.store import (
    SKIPPED_FILE,
    ArtifactError,
    ModelArtifacts,
    ModelWriter,
    Run,
    RunWriter,
    default_root,
    is_run,
    stored_path,
)
from trainer import config as cfgmod
from trainer import distributed, ensemble, logs, report
from trainer.exits import EXIT_FAILED, EXIT_INTERRUPTED, OS_HINTS, command_line, os_error_line
from trainer.explain import explain_run
from trainer.locks import run_lock
from trainer.prepare import Prepared, Source, build_cache, check_usable, prepare, prepare_sources, split_data
from trainer.train import train_entry

__all__ = ["SPLIT_RULE", "load_recipes", "train_run"]

log = logging.getLogger(__name__)

SPLIT_RULE = ("val/test carved from train by patient, stratified by label (an existing test/ folder is kept as "
              "test); the official 16-image val is kept aside as 'official_val', scored only")


def load_recipes(config_file: str | None, flags: dict) -> tuple[cfgmod.RunConfig, list[cfgmod.Recipe]]:
    """The run config (file, then flags) and one recipe per entry; an unknown architecture, or an input size it
    cannot take, fails here, before any work."""
    cfg = cfgmod.build(cfgmod.load_file(config_file) if config_file else {}, flags)
    if not cfg.data and not cfg.sources:
        raise cfgmod.ConfigError("no data folder: give --data DIR (or 'data:' or 'sources:' in --config)")
    recipes = cfgmod.entries(cfg)
    for r in recipes:
        try:
            check_input_size(get_spec(r.arch), input_size_for(r.arch, r.input_size))
        except (KeyError, ValueError) as e:
            raise cfgmod.ConfigError(f"model entry {r.name!r}: {e.args[0] if e.args else e}") from None
    return cfg, recipes


def train_run(cfg: cfgmod.RunConfig, recipes: list[cfgmod.Recipe], *, resume: bool, argv: list[str]) -> int:
    """Train every entry; under torchrun, as one DDP process of several (docs/scaling.md). Returns the exit code."""
    world, device = distributed.init(cfg.device)
    try:
        run_id = distributed.same_on_all(cfg.run or time.strftime("run-%Y%m%d-%H%M%S"))
        run_dir = (Path(cfg.artifacts) if cfg.artifacts else default_root()) / run_id
        if resume:
            cfgmod.check_resume(run_dir)
        # one writer per run folder: under DDP that is rank 0, which holds the lock for all
        with run_lock(run_dir, command_line(argv)) if distributed.is_main() else contextlib.nullcontext():
            return _train_all(cfg, recipes, run_dir, world, device, resume=resume, argv=argv)
    finally:
        distributed.shutdown()


def _train_all(cfg, recipes, run_dir: Path, world: distributed.World, device, *, resume: bool, argv) -> int:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not distributed.is_main():  # one process speaks for the run
        logs.only_warnings()
        os.environ["TQDM_DISABLE"] = "1"
    if is_run(run_dir) and not resume:
        raise cfgmod.ConfigError(f"{run_dir} already exists: add --resume to continue it, or choose another --run")
    if world.local_rank != 0:
        distributed.barrier()  # local rank 0 builds this machine's image cache first
    prepared, caches = _prepare_run(cfg, recipes, run_dir, resume)
    if world.local_rank == 0:
        distributed.barrier()
    writer = RunWriter(run_dir, prepared.root)
    if distributed.is_main():
        _write_run(writer, cfg, recipes, prepared, argv)
    log.info(f"device: {device}" + (f" x {world.size} processes ({world.backend})" if world.enabled else "")
             + f"; artifacts: {run_dir}")
    failed = []
    for recipe in recipes:
        cache = caches[input_size_for(recipe.arch, recipe.input_size)]
        outcome = _train_recipe(recipe, writer.model(recipe.name), cache, split_data(prepared, cache), cfg, device,
                                resume=resume)
        if outcome == "stopped":
            return EXIT_INTERRUPTED
        if outcome == "failed":
            failed.append(recipe.name)
            if world.enabled:  # the ranks may now be out of step: end the run, --resume continues it
                break
    if distributed.is_main():
        failed += _build_ensembles(run_dir, cfg.ensembles)
        # CAM references and calibration: best effort, training stands
        if missed := explain_run(run_dir, [m.name for m in Run(run_dir).models if m.name not in failed]):
            log.warning(f"explanations not stored for {', '.join(missed)}: python -m trainer explain --run {run_dir}")
    if failed:
        log.error(f"done with failures ({', '.join(failed)}): {run_dir}")
        return EXIT_FAILED
    log.info(f"done: {run_dir}")
    return 0


def _prepare_run(cfg, recipes, run_dir: Path, resume: bool) -> tuple[Prepared, dict[int, ImageCache]]:
    """Scan and split the data (the recorded split wins on resume) and cache it at every size the lineup needs."""
    if cfg.sources:
        sources = [Source(s["name"], s["data"]) for s in cfg.sources]
        log.info("data: " + ", ".join(f"{s.name} = {s.data}" for s in sources))
        prepared = prepare_sources(sources, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                   test_fraction=cfg.test_fraction, subset=cfg.subset)
    else:
        log.info(f"data: {cfg.data}")
        prepared = prepare(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                           subset=cfg.subset)
    if resume and Run(run_dir).has_split_table():
        cfgmod.check_nothing_vanished(run_dir, prepared.samples)
        _reuse_split(prepared, Run(run_dir))
    check_usable(prepared)
    duplicates = data.check_duplicates(prepared.samples, cfg.duplicates)  # a DataError under "refuse"
    if duplicates:
        log.warning(f"warning: {duplicates}")
    sizes = sorted({input_size_for(r.arch, r.input_size) for r in recipes})
    caches = {size: build_cache(prepared, size, cache_dir=cfg.cache_dir, workers=cfg.workers) for size in sizes}
    check_usable(prepared)  # files that failed to decode are gone now
    return prepared, caches


def _write_run(writer: RunWriter, cfg, recipes, prepared: Prepared, argv: list[str]) -> None:
    """split.csv, skipped.csv and run.json (with every setting of the run: ``cfgmod.RunConfig``), before any model
    trains."""
    counts = data.split_counts(prepared.samples)
    _log_counts(counts, prepared.skipped)
    writer.split(prepared.samples)
    writer.skipped(prepared.skipped)
    sources = [{"name": s["name"], "data": stored_path(s["data"], prepared.root)} for s in cfg.sources]
    writer.info(data_layout=prepared.layout, data_fingerprint=data.fingerprint(prepared.samples),
                **({"sources": sources} if sources else {}),
                command=command_line(argv), config=cfgmod.as_dict(cfg), versions=_versions(), split_counts=counts,
                split_rule=SPLIT_RULE, models=[r.name for r in recipes], n_skipped=len(prepared.skipped))


def _versions() -> dict:
    import timm
    import torch
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform()}


def _train_recipe(recipe, writer: ModelWriter, cache: ImageCache, split_rows, cfg, device, *, resume: bool) -> str:
    """Train one entry: ``finished``, ``skipped`` (finished earlier), ``failed`` or ``stopped`` (Ctrl-C)."""
    writer = distributed.main_writer(writer)  # under DDP, rank 0 alone writes artifacts
    if resume and _finished(writer):
        log.info(f"== {recipe.name}: finished earlier, skipped")
        return "skipped"
    log.info(f"== {recipe.name} ({recipe.arch}, {cache.size}px, {recipe.epochs} epochs"
             + (f", framed to the {recipe.framing})" if recipe.framing != "none" else ")"))
    try:
        cache = framed_cache(cache, recipe.framing)
        st = train_entry(recipe, cache, split_rows, writer, seed=cfg.seed, device=device, resume=resume,
                         weights_dir=cfg.weights_dir, compile=cfg.compile)
    except KeyboardInterrupt as e:  # Ctrl-C, or torchrun stopping this process (trainer.distributed.Terminated)
        writer.status("stopped", message=f"{str(e) or 'stopped by the user'}; continue with --resume")
        log.warning(f"\nstopped. Continue with: python -m trainer train --resume --run {writer.dir.parent.name} ... "
                    "(same flags)")
        return "stopped"
    except Exception as e:  # one broken entry must not cost the rest of the lineup
        if isinstance(e, OSError) and e.errno in OS_HINTS:  # a full disk, a read-only folder: the run stops
            with contextlib.suppress(OSError):
                writer.status("stopped", message=f"{os_error_line(e)}; continue with --resume")
            raise
        if distributed.world().enabled and distributed.is_peer_failure(e):
            writer.status("stopped", message=distributed.peer_failure_message(e))
            log.warning(f"\nstopped: {distributed.peer_failure_message(e)}")
            return "stopped"
        writer.status("failed", message=f"{type(e).__name__}: {e}")
        log.error(f"   {recipe.name} FAILED: {type(e).__name__}: {e}", exc_info=True)
        return "failed"
    test = ModelArtifacts(writer.dir.parent, recipe.name).metrics("test")
    log.info(f"   {report.headline(test, headline_rule(asdict(recipe)))}  ({st['train_seconds']:.0f}s)")
    return "finished"


def _build_ensembles(run_dir: Path, ensembles) -> list[str]:
    """Build the config's ensembles; returns the names of those that could not be built."""
    failed = []
    for ens in ensembles:
        try:
            m = ensemble.build(Run(run_dir), ens["name"], list(ens["members"]))
            log.info(f"== ensemble {ens['name']} = mean of {', '.join(ens['members'])}: val AUC {m['auc']:.4f}")
        except (ArtifactError, KeyError, TypeError) as e:
            log.error(f"   ensemble {ens!r} not built: {e}")
            failed.append(str(ens.get("name", ens)) if isinstance(ens, dict) else str(ens))
    return failed


def _finished(writer: ModelWriter) -> bool:
    try:
        return ModelArtifacts.at(writer.dir).status().get("state") == "finished"
    except ArtifactError:
        return False


def _reuse_split(prepared: Prepared, run: Run) -> None:
    """On resume, the recorded split wins: a changed seed or folder must not move images between splits."""
    table = run.split_table()
    split_of = dict(zip(table["path"], table["split"]))
    root = run.info.get("data_root")
    kept = []
    for s in prepared.samples:
        key = stored_path(s.path, root)
        if key in split_of:
            kept.append(replace(s, split=split_of[key]))
    prepared.samples = kept


def _log_counts(counts: dict, skipped: list) -> None:
    log.info(f"{'split':<10}" + "".join(f"{c:>11}" for c in CLASSES) + f"{'total':>8}")
    for split, c in counts.items():
        log.info(f"{split:<10}" + "".join(f"{c.get(k, 0):>11}" for k in CLASSES) + f"{sum(c.values()):>8}")
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable files (listed in {SKIPPED_FILE}), e.g. {skipped[0][0]}: "
                    f"{skipped[0][1]}")
