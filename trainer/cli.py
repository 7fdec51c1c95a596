"""``python -m trainer models | train | evaluate`` (docs/trainer.md)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import platform
import shlex
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from core import data, distributed
from core.artifacts import (
    ArtifactError,
    ModelArtifacts,
    ModelWriter,
    Run,
    RunWriter,
    default_root,
    read_json,
    stored_path,
)
from core.cache import ImageCache
from core.data import DataError
from core.framing import framed_cache
from core.labels import CLASSES
from core.locks import run_lock
from core.metrics import headline_rule
from core.models import input_size_for
from trainer import config as cfgmod
from trainer import ensemble, report
from trainer.prepare import Prepared, Source, build_cache, check_usable, prepare, prepare_sources, split_data

EXIT_DATA, EXIT_CONFIG, EXIT_INTERRUPTED = 2, 3, 130
SPLIT_RULE = ("val/test carved from train by patient, stratified by label (an existing test/ folder is kept as "
              "test); the official 16-image val is kept aside as 'official_val', scored only")


def _versions() -> dict:
    import timm
    import torch
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform()}


def cmd_models(args) -> int:
    from core.models import count_params, list_specs
    from core.weights import WeightsError, resolve_weights
    print(f"{'name':<18} {'params':>11} {'input':>5}  ImageNet weights on this machine")
    for spec in list_specs():
        model = spec.build()
        if spec.weights is None:
            where = "none known (trains from scratch)"
        else:
            try:
                _, info = resolve_weights(spec.weights, weights_dir=args.weights_dir, allow_download=False)
                where = info.source if info.pretrained else "not found here (download when online, else from scratch)"
            except WeightsError as e:  # a wrong-hash or broken file: say so on its line, list the others
                where = f"REFUSED: {e}"
        print(f"{spec.name:<18} {count_params(model):>11,} {spec.input_size:>5}  {where}")
    return 0


def _flags(args) -> dict:
    keys = ["data", "run", "artifacts", "models", "seed", "val_fraction", "test_fraction", "subset", "cache_dir",
            "workers", "device", "threads", "epochs", "batch_size", "lr", "input_size", "augment", "pretrained",
            "freeze_epochs", "label_smoothing", "balanced_sampler", "max_train_batches", "tta", "half_checkpoint",
            "duplicates"]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def _load_recipes(args) -> tuple[cfgmod.RunConfig, list[cfgmod.Recipe]]:
    """The run config (file, then flags) and one recipe per entry; an unknown architecture fails here."""
    from core.models import get_spec

    cfg = cfgmod.build(cfgmod.load_file(args.config) if args.config else {}, _flags(args))
    if not cfg.data and not cfg.sources:
        raise cfgmod.ConfigError("no data folder: give --data DIR (or 'data:' or 'sources:' in --config)")
    recipes = cfgmod.entries(cfg)
    for r in recipes:
        try:
            get_spec(r.arch)
        except (KeyError, ValueError) as e:
            raise cfgmod.ConfigError(f"model entry {r.name!r}: {e.args[0] if e.args else e}") from None
    return cfg, recipes


def _prepare_run(cfg, recipes, run_dir: Path, resume: bool) -> tuple[Prepared, dict[int, ImageCache]]:
    """Scan and split the data (the recorded split wins on resume) and cache it at every size the lineup needs."""
    if cfg.sources:
        sources = [Source(s["name"], s["data"]) for s in cfg.sources]
        print("data: " + ", ".join(f"{s.name} = {s.data}" for s in sources))
        prepared = prepare_sources(sources, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                   test_fraction=cfg.test_fraction, subset=cfg.subset)
    else:
        print(f"data: {cfg.data}")
        prepared = prepare(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                           subset=cfg.subset)
    if resume and (run_dir / "split.csv").exists():
        cfgmod.check_nothing_vanished(run_dir, prepared.samples)
        _reuse_split(prepared, Run(run_dir))
    check_usable(prepared)
    duplicates = data.check_duplicates(prepared.samples, cfg.duplicates)  # a DataError under "refuse"
    if duplicates:
        print(f"warning: {duplicates}", file=sys.stderr)
    sizes = sorted({input_size_for(r.arch, r.input_size) for r in recipes})
    caches = {size: build_cache(prepared, size, cache_dir=cfg.cache_dir, workers=cfg.workers) for size in sizes}
    check_usable(prepared)  # files that failed to decode are gone now
    return prepared, caches


def _write_run(writer: RunWriter, cfg, recipes, prepared: Prepared, argv: list[str]) -> None:
    """split.csv, skipped.csv and run.json, before any model trains."""
    counts = data.split_counts(prepared.samples)
    _print_counts(counts, prepared.skipped)
    writer.split(prepared.samples)
    writer.skipped(prepared.skipped)
    sources = [{"name": s["name"], "data": stored_path(s["data"], prepared.root)} for s in cfg.sources]
    writer.info(data_layout=prepared.layout, data_fingerprint=data.fingerprint(prepared.samples),
                **({"sources": sources} if sources else {}),
                command=_command(argv), config=cfgmod.as_dict(cfg), versions=_versions(), split_counts=counts,
                split_rule=SPLIT_RULE, models=[r.name for r in recipes], n_skipped=len(prepared.skipped))


def _command(argv) -> str:
    return "python -m trainer " + " ".join(shlex.quote(a) for a in argv or [])


def cmd_train(args) -> int:
    """Train every entry; under torchrun, as one DDP process of several (docs/scaling.md)."""
    cfg, recipes = _load_recipes(args)
    world, device = distributed.init(cfg.device)
    try:
        run_id = distributed.same_on_all(cfg.run or time.strftime("run-%Y%m%d-%H%M%S"))
        run_dir = (Path(cfg.artifacts) if cfg.artifacts else default_root()) / run_id
        if args.resume:
            cfgmod.check_resume(run_dir)
        # one writer per run folder: under DDP that is rank 0, which holds the lock for all
        with run_lock(run_dir, _command(args.argv)) if distributed.is_main() else contextlib.nullcontext():
            return _train_run(args, cfg, recipes, run_dir, world, device)
    finally:
        distributed.shutdown()


def _train_run(args, cfg, recipes, run_dir: Path, world: distributed.World, device) -> int:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not distributed.is_main():  # one process speaks for the run
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
        os.environ["TQDM_DISABLE"] = "1"
    if (run_dir / "run.json").exists() and not args.resume:
        raise cfgmod.ConfigError(f"{run_dir} already exists: add --resume to continue it, or choose another --run")
    if world.local_rank != 0:
        distributed.barrier()  # local rank 0 builds this machine's image cache first
    prepared, caches = _prepare_run(cfg, recipes, run_dir, args.resume)
    if world.local_rank == 0:
        distributed.barrier()
    writer = RunWriter(run_dir, prepared.root)
    if distributed.is_main():
        _write_run(writer, cfg, recipes, prepared, args.argv)
    print(f"device: {device}" + (f" x {world.size} processes ({world.backend})" if world.enabled else "")
          + f"; artifacts: {run_dir}")
    failed = []
    for recipe in recipes:
        cache = caches[input_size_for(recipe.arch, recipe.input_size)]
        outcome = _train_recipe(recipe, writer.model(recipe.name), cache, split_data(prepared, cache), cfg, args,
                                device)
        if outcome == "stopped":
            return EXIT_INTERRUPTED
        if outcome == "failed":
            failed.append(recipe.name)
            if world.enabled:  # the ranks may now be out of step: end the run, --resume continues it
                break
    if distributed.is_main():
        failed += _build_ensembles(run_dir, cfg.ensembles)
        from trainer.explain import explain_run  # CAM references and calibration: best effort, training stands
        if missed := explain_run(run_dir, [m.name for m in Run(run_dir).models if m.name not in failed]):
            print(f"explanations not stored for {', '.join(missed)}: python -m trainer explain --run {run_dir}",
                  file=sys.stderr)
    if failed:
        print(f"done with failures ({', '.join(failed)}): {run_dir}", file=sys.stderr)
        return 1
    print(f"done: {run_dir}")
    return 0


def _train_recipe(recipe, writer: ModelWriter, cache: ImageCache, split_rows, cfg, args, device) -> str:
    """Train one entry: ``finished``, ``skipped`` (finished earlier), ``failed`` or ``stopped`` (Ctrl-C)."""
    from trainer.train import train_entry

    writer = distributed.main_writer(writer)  # under DDP, rank 0 alone writes artifacts
    if args.resume and _finished(writer):
        print(f"== {recipe.name}: finished earlier, skipped")
        return "skipped"
    print(f"== {recipe.name} ({recipe.arch}, {cache.size}px, {recipe.epochs} epochs"
          + (f", framed to the {recipe.framing})" if recipe.framing != "none" else ")"))
    try:
        cache = framed_cache(cache, recipe.framing)
        st = train_entry(recipe, cache, split_rows, writer, seed=cfg.seed, device=device, resume=args.resume,
                         weights_dir=args.weights_dir, compile=args.compile)
    except KeyboardInterrupt as e:  # Ctrl-C, or torchrun stopping this process (core.distributed.Terminated)
        writer.status("stopped", message=f"{str(e) or 'stopped by the user'}; continue with --resume")
        print(f"\nstopped. Continue with: python -m trainer train --resume --run {writer.dir.parent.name} ... "
              "(same flags)", file=sys.stderr)
        return "stopped"
    except Exception as e:  # one broken entry must not cost the rest of the lineup
        if isinstance(e, OSError) and e.errno in OS_HINTS:  # a full disk, a read-only folder: the run stops
            with contextlib.suppress(OSError):
                writer.status("stopped", message=f"{os_error_line(e)}; continue with --resume")
            raise
        if distributed.world().enabled and distributed.is_peer_failure(e):
            writer.status("stopped", message=distributed.peer_failure_message(e))
            print(f"\nstopped: {distributed.peer_failure_message(e)}", file=sys.stderr)
            return "stopped"
        writer.status("failed", message=f"{type(e).__name__}: {e}")
        traceback.print_exc()
        print(f"   {recipe.name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return "failed"
    test = ModelArtifacts(writer.dir.parent, recipe.name).metrics("test")
    print(f"   {report.headline(test, headline_rule(asdict(recipe)))}  ({st['train_seconds']:.0f}s)")
    return "finished"


def _build_ensembles(run_dir: Path, ensembles) -> list[str]:
    """Build the config's ensembles; returns the names of those that could not be built."""
    failed = []
    for ens in ensembles:
        try:
            m = ensemble.build(Run(run_dir), ens["name"], list(ens["members"]))
            print(f"== ensemble {ens['name']} = mean of {', '.join(ens['members'])}: val AUC {m['auc']:.4f}")
        except (ArtifactError, KeyError, TypeError) as e:
            print(f"   ensemble {ens!r} not built: {e}", file=sys.stderr)
            failed.append(str(ens.get("name", ens)) if isinstance(ens, dict) else str(ens))
    return failed


def _finished(writer: ModelWriter) -> bool:
    try:
        return read_json(writer.dir / "status.json").get("state") == "finished"
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


def _print_counts(counts: dict, skipped: list) -> None:
    print(f"{'split':<10}" + "".join(f"{c:>11}" for c in CLASSES) + f"{'total':>8}")
    for split, c in counts.items():
        print(f"{split:<10}" + "".join(f"{c.get(k, 0):>11}" for k in CLASSES) + f"{sum(c.values()):>8}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed in skipped.csv), e.g. {skipped[0][0]}: {skipped[0][1]}")


def cmd_env(args) -> int:
    from core.accel import environment_lines

    print("\n".join(environment_lines(args.device)))
    return 0


def cmd_ensemble(args) -> int:
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    run = Run(Path(args.run))
    _ = run.info  # a missing or broken run is an error before anything is written
    cfgmod.check_ensemble_name(run, args.name)
    with run_lock(run.dir, _command(args.argv)):
        m = ensemble.build(run, args.name, members)
    print(f"ensemble {args.name} = mean of {', '.join(members)}: val AUC {m['auc']:.4f}")
    return 0


def cmd_report(args) -> int:
    run = Run(Path(args.run))
    _ = run.info  # a missing or broken run is an error here (exit 2), not an empty table
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.update:
        changed = report.update(args.update, run, splits)
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
    else:
        print(report.table(run, splits))
    return 0


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate_run

    run = Run(Path(args.run))
    _ = run.info  # a missing or broken run is an error before any work
    cfgmod.check_new_split(run, args.split_name, force=args.force)
    with run_lock(run.dir, _command(args.argv)):
        return evaluate_run(args.run, args.data, split_name=args.split_name, only_split=args.split,
                            cache_dir=args.cache_dir, workers=args.workers, command=_command(args.argv))


def _add_models(sub) -> None:
    m = sub.add_parser("models", help="list the model lineup and where its ImageNet weights come from")
    m.add_argument("--weights-dir", default=os.environ.get("CXR_WEIGHTS_DIR"))
    m.set_defaults(func=cmd_models)


def _add_env(sub) -> None:
    v = sub.add_parser("env", help="what training would use here: device, mixed precision, compile, torchrun backend")
    v.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    v.set_defaults(func=cmd_env)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train models on a data folder and write artifacts")
    t.add_argument("--config", help="YAML/JSON file with the same keys as the flags (flags win)")
    t.add_argument("--data", help="Kermany tree, flat NORMAL/PNEUMONIA folder, or CSV manifest")
    t.add_argument("--models", help="comma-separated registry names (see 'models')")
    t.add_argument("--run", help="run name (folder under the artifacts root)")
    t.add_argument("--artifacts", help="artifacts root (default $CXR_ARTIFACTS or ./artifacts)")
    t.add_argument("--resume", action="store_true", help="continue a run from its last finished epoch")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--input-size", type=int)
    t.add_argument("--freeze-epochs", type=int)
    t.add_argument("--label-smoothing", type=float)
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--balanced-sampler", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--half-checkpoint", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--tta", type=int, help="views averaged at evaluation (1 = none)")
    t.add_argument("--seed", type=int)
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--test-fraction", type=float)
    t.add_argument("--subset", type=int, help="keep about N images per class and split (whole patients): quick runs")
    t.add_argument("--max-train-batches", type=int, help="cap batches per epoch: quick runs")
    t.add_argument("--cache-dir", help="image cache folder (default $CXR_CACHE_DIR or ~/.cache/cxr-compare)")
    t.add_argument("--workers", type=int, help="decoding processes for the cache build")
    t.add_argument("--device", help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--compile", action="store_true", help="torch.compile the model (long runs on a GPU)")
    t.add_argument("--duplicates", choices=["warn", "refuse"],
                   help="byte-identical files in two splits: warn (default) or refuse to train")
    t.add_argument("--weights-dir", default=os.environ.get("CXR_WEIGHTS_DIR"))
    t.set_defaults(func=cmd_train)


def _add_ensemble(sub) -> None:
    n = sub.add_parser("ensemble", help="add an ensemble (mean probability) of finished models to a run")
    n.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    n.add_argument("--members", required=True, help="comma-separated model names of the run")
    n.add_argument("--name", default="ensemble")
    n.set_defaults(func=cmd_ensemble)


def _add_report(sub) -> None:
    r = sub.add_parser("report", help="print the results table of a run (or rewrite it in the README)")
    r.add_argument("--run", required=True)
    r.add_argument("--splits", default="test,official_val", help="comma-separated splits, one table each")
    r.add_argument("--update", metavar="README", help="rewrite the table between the results markers of this file")
    r.set_defaults(func=cmd_report)


def cmd_shift(args) -> int:
    from trainer.shift import shift_run, table
    shifts = [s.strip() for s in args.shifts.split(",") if s.strip()] if args.shifts else None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    result = shift_run(args.run, shifts=shifts, limit=args.limit, cache_dir=args.cache_dir, workers=args.workers,
                       command=_command(args.argv), models=models)
    print(table(result, args.rule))
    return 0


def _add_shift(sub) -> None:
    h = sub.add_parser("shift", help="score every model of a run under synthetic shifts of its test split")
    h.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    h.add_argument("--shifts", help="comma-separated names from core/shift.py (default: all)")
    h.add_argument("--limit", type=int, help="score a fixed random subset of this many test images (quick look)")
    h.add_argument("--rule", help="print the table at this validation threshold rule (default: each model's own)")
    h.add_argument("--models", help="score only these models (comma-separated), keeping the others' results in "
                                    "shift.json (made with the same --shifts and --limit)")
    h.add_argument("--cache-dir")
    h.add_argument("--workers", type=int)
    h.set_defaults(func=cmd_shift)


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="score every model of a run on another data set")
    e.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    e.add_argument("--data", required=True, help="any supported layout; images the run has never seen")
    e.add_argument("--split-name", required=True, help="name to store it under, e.g. external")
    e.add_argument("--split", help="only this split of the data set (e.g. test); default: all images")
    e.add_argument("--cache-dir")
    e.add_argument("--workers", type=int)
    e.add_argument("--force", action="store_true", help="replace a split of this name evaluated before")
    e.set_defaults(func=cmd_evaluate)


def cmd_export(args) -> int:
    from trainer.export import export_run
    return export_run(args.run, [m.strip() for m in (args.models or "").split(",") if m.strip()])


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="write each model's ONNX graph beside its best checkpoint")
    x.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    x.add_argument("--models", help="comma-separated model names (default: all)")
    x.set_defaults(func=cmd_export)


def _add_lungs_and_focus(sub) -> None:
    from trainer import focus, lungs  # imported when the parser is built: their commands live with their code

    lungs.add_parser(sub)
    focus.add_parser(sub)


def _add_explain(sub) -> None:
    from trainer import explain  # explain (CAM references, calibration) and faithfulness

    explain.add_commands(sub)


def _add_site(sub) -> None:
    from trainer import card, site  # site profiles and model cards (issue 18)
    site.add_parser(sub), card.add_parser(sub)


def _add_population(sub) -> None:
    from trainer import population  # the population check (core/population.py)

    population.add_parser(sub)


# One function a subcommand (or group), each adding its parser; a new command adds its function to this list.
COMMANDS = [_add_models, _add_env, _add_train, _add_ensemble, _add_report, _add_evaluate, _add_shift, _add_export,
            _add_lungs_and_focus, _add_explain, _add_site, _add_population]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m trainer -- train ...: keeps torchrun from reading --run as its own
        argv = argv[1:]
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        if os.environ.get("CXR_BACKEND"):  # a typo there fails now, not after the data is cached
            from core.onnx_backend import choose_backend
            choose_backend()
        return args.func(args)
    except (DataError, ArtifactError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DATA
    except cfgmod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("\nstopped.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a full disk, a read-only run folder, a folder not ours: one line naming the file
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_DATA
    except Exception as e:
        from core.accel import DeviceError
        from core.onnx_backend import BackendError, OnnxError
        if isinstance(e, (DeviceError, BackendError)):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        if isinstance(e, OnnxError):
            print(f"error: {e} (CXR_BACKEND=torch scores without ONNX Runtime)", file=sys.stderr)
            return EXIT_DATA
        raise


OS_HINTS = {errno.ENOSPC: "the disk is full: free some space, then run the command again (train: add --resume)",
            errno.EDQUOT: "the disk quota is used up: free some space, then run the command again",
            errno.EFBIG: "the file grew past the size this process may write (ulimit -f): the disk is full for it",
            errno.EROFS: "the folder is read-only: use a writable copy of the run, or another --artifacts",
            errno.EACCES: "permission denied: this user may not write (or read) there",
            errno.EPERM: "not permitted: this user may not write (or read) there"}


def os_error_line(e: OSError) -> str:
    """One line for a failed read or write: the file, what happened, what to do; never a traceback."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
    return f"{where}: {OS_HINTS.get(e.errno, e.strerror or type(e).__name__)}"
