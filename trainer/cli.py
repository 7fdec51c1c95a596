"""``python -m trainer models | train | evaluate`` (docs/trainer.md)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from core import data
from core.artifacts import ArtifactError, ModelWriter, Run, default_root, now_iso, write_csv, write_json, SCHEMA_VERSION
from core.data import DataError
from core.labels import CLASSES
from trainer import config as cfgmod
from trainer import ensemble
from trainer.prepare import build_cache, check_usable, prepare, rows_for

EXIT_DATA, EXIT_CONFIG, EXIT_INTERRUPTED = 2, 3, 130


def _versions() -> dict:
    import timm
    import torch
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "platform": platform.platform()}


def cmd_models(args) -> int:
    from core.models import count_params, list_specs
    from core.weights import resolve_weights
    print(f"{'name':<18} {'params':>11} {'input':>5}  ImageNet weights on this machine")
    for spec in list_specs():
        model = spec.build()
        if spec.weights is None:
            where = "none known (trains from scratch)"
        else:
            _, info = resolve_weights(spec.weights, weights_dir=args.weights_dir, allow_download=False)
            where = info.source if info.pretrained else "not found here (download when online, else from scratch)"
        print(f"{spec.name:<18} {count_params(model):>11,} {spec.input_size:>5}  {where}")
    return 0


def _flags(args) -> dict:
    keys = ["data", "run", "artifacts", "models", "seed", "val_fraction", "test_fraction", "subset", "cache_dir",
            "workers", "device", "threads", "epochs", "batch_size", "lr", "input_size", "augment", "pretrained",
            "freeze_epochs", "label_smoothing", "balanced_sampler", "max_train_batches", "tta", "half_checkpoint"]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_train(args) -> int:
    import torch
    from trainer.train import pick_device, train_entry

    file_values = cfgmod.load_file(args.config) if args.config else {}
    cfg = cfgmod.build(file_values, _flags(args))
    if not cfg.data:
        raise cfgmod.ConfigError("no data folder: give --data DIR (or 'data:' in --config)")
    recipes = cfgmod.entries(cfg)
    from core.models import get_spec
    for r in recipes:  # an unknown architecture fails before any work
        try:
            get_spec(r.arch)
        except (KeyError, ValueError) as e:
            raise cfgmod.ConfigError(f"model entry {r.name!r}: {e.args[0] if e.args else e}") from None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(cfg.artifacts) if cfg.artifacts else default_root()
    run_id = cfg.run or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = root / run_id
    if (run_dir / "run.json").exists() and not args.resume:
        raise cfgmod.ConfigError(f"{run_dir} already exists: add --resume to continue it, or choose another --run")

    print(f"data: {cfg.data}")
    prepared = prepare(cfg.data, seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       subset=cfg.subset)
    if args.resume and (run_dir / "split.csv").exists():
        _reuse_split(prepared, Run(run_dir))
    check_usable(prepared)
    sizes = sorted({r.input_size or get_spec(r.arch).input_size for r in recipes})
    caches = {size: build_cache(prepared, size, cache_dir=cfg.cache_dir, workers=cfg.workers) for size in sizes}
    check_usable(prepared)  # files that failed to decode are gone now
    counts = data.split_counts(prepared.samples)
    _print_counts(counts, prepared.skipped)

    write_csv(run_dir / "split.csv", [{"path": s.path, "label": s.label, "patient_id": s.patient_id,
                                       "split": s.split} for s in prepared.samples], ["path", "label", "patient_id", "split"])
    write_csv(run_dir / "skipped.csv", [{"path": p, "reason": r} for p, r in prepared.skipped], ["path", "reason"])
    created = Run(run_dir).info.get("created") if (run_dir / "run.json").exists() else None
    write_json(run_dir / "run.json", {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "created": created or now_iso(),
        "updated": now_iso(), "data_root": prepared.root, "data_root_given": str(cfg.data),
        "data_layout": prepared.layout, "data_fingerprint": data.fingerprint(prepared.samples),
        "command": "python -m trainer " + " ".join(shlex.quote(a) for a in args.argv),
        "config": cfgmod.as_dict(cfg), "versions": _versions(), "split_counts": counts,
        "split_rule": "val/test carved from train by patient, stratified by label (an existing test/ folder is "
                      "kept as test); the official 16-image val is kept aside as 'official_val', scored only",
        "models": [r.name for r in recipes], "n_skipped": len(prepared.skipped)})

    device = pick_device(cfg.device)
    print(f"device: {device}; artifacts: {run_dir}")
    labels_all = prepared.labels()
    paths_all = [s.path for s in prepared.samples]
    failed: list[str] = []
    for recipe in recipes:
        writer = ModelWriter(run_dir, recipe.name)
        if args.resume and _finished(writer):
            print(f"== {recipe.name}: finished earlier, skipped")
            continue
        cache = caches[recipe.input_size or get_spec(recipe.arch).input_size]
        cache_rows = rows_for(prepared, cache)
        rows, labels, paths = {}, {}, {}
        for split in prepared.splits():
            idx = prepared.indices(split)
            rows[split], labels[split], paths[split] = cache_rows[idx], labels_all[idx], [paths_all[i] for i in idx]
        print(f"== {recipe.name} ({recipe.arch}, {cache.size}px, {recipe.epochs} epochs)")
        try:
            st = train_entry(recipe, cache, rows, labels, paths, writer, seed=cfg.seed, device=device,
                             resume=args.resume, weights_dir=args.weights_dir)
        except KeyboardInterrupt:
            writer.status("stopped", message="stopped by the user; continue with --resume")
            print(f"\nstopped. Continue with: python -m trainer train --resume --run {run_id} ... (same flags)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:  # one broken entry must not cost the rest of the lineup
            writer.status("failed", message=f"{type(e).__name__}: {e}")
            traceback.print_exc()
            print(f"   {recipe.name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(recipe.name)
            continue
        m = Run(run_dir).model(recipe.name).metrics("test")
        at = m["at"]["youden"]
        print(f"   test AUC {m['auc']:.4f} [{m['auc_ci'][0]:.4f}, {m['auc_ci'][1]:.4f}]  sens {at['sensitivity']:.3f}"
              f"  spec {at['specificity']:.3f}  at val-chosen threshold {at['threshold']:.3f}"
              f"  ({st['train_seconds']:.0f}s)")
    for ens in cfg.ensembles:
        try:
            m = ensemble.build(Run(run_dir), ens["name"], list(ens["members"]))
            print(f"== ensemble {ens['name']} = mean of {', '.join(ens['members'])}: val AUC {m['auc']:.4f}")
        except (ArtifactError, KeyError, TypeError) as e:
            print(f"   ensemble {ens!r} not built: {e}", file=sys.stderr)
            failed.append(str(ens.get("name", ens)) if isinstance(ens, dict) else str(ens))
    from trainer.explain import explain_run  # CAM references and calibration of what just finished
    failed += explain_run(run_dir, [m.name for m in Run(run_dir).models if m.name not in failed], log=print)
    if failed:
        print(f"done with failures ({', '.join(failed)}): {run_dir}", file=sys.stderr)
        return 1
    print(f"done: {run_dir}")
    return 0


def _finished(writer: ModelWriter) -> bool:
    try:
        from core.artifacts import read_json
        return read_json(writer.dir / "status.json").get("state") == "finished"
    except ArtifactError:
        return False


def _reuse_split(prepared, run: Run) -> None:
    """On resume, the recorded split wins: a changed seed or folder must not move images between splits."""
    table = run.split_table()
    split_of = dict(zip(table["path"], table["split"]))
    from dataclasses import replace
    prepared.samples = [replace(s, split=split_of[s.path]) for s in prepared.samples if s.path in split_of]


def _print_counts(counts: dict, skipped: list) -> None:
    print(f"{'split':<10}" + "".join(f"{c:>11}" for c in CLASSES) + f"{'total':>8}")
    for split, c in counts.items():
        print(f"{split:<10}" + "".join(f"{c.get(k, 0):>11}" for k in CLASSES) + f"{sum(c.values()):>8}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable files (listed in skipped.csv), e.g. {skipped[0][0]}: {skipped[0][1]}")


def cmd_ensemble(args) -> int:
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    m = ensemble.build(Run(Path(args.run)), args.name, members)
    print(f"ensemble {args.name} = mean of {', '.join(members)}: val AUC {m['auc']:.4f}")
    return 0


def cmd_report(args) -> int:
    from trainer import report
    run = Run(Path(args.run))
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.update:
        changed = report.update(args.update, run, splits)
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
    else:
        print(report.block(run, splits))
    return 0


def cmd_evaluate(args) -> int:
    from trainer.evaluate import evaluate_run
    return evaluate_run(args.run, args.data, split_name=args.split_name, only_split=args.split,
                        cache_dir=args.cache_dir, workers=args.workers, command=args.argv)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list the model lineup and where its ImageNet weights come from")
    m.add_argument("--weights-dir", default=os.environ.get("CXR_WEIGHTS_DIR"))
    m.set_defaults(func=cmd_models)

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
    t.add_argument("--weights-dir", default=os.environ.get("CXR_WEIGHTS_DIR"))
    t.set_defaults(func=cmd_train)

    n = sub.add_parser("ensemble", help="add an ensemble (mean probability) of finished models to a run")
    n.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    n.add_argument("--members", required=True, help="comma-separated model names of the run")
    n.add_argument("--name", default="ensemble")
    n.set_defaults(func=cmd_ensemble)

    r = sub.add_parser("report", help="print the results table of a run (or rewrite it in the README)")
    r.add_argument("--run", required=True)
    r.add_argument("--splits", default="test,official_val", help="comma-separated splits, one table each")
    r.add_argument("--update", metavar="README", help="rewrite the table between the results markers of this file")
    r.set_defaults(func=cmd_report)

    e = sub.add_parser("evaluate", help="score every model of a run on another data set")
    e.add_argument("--run", required=True, help="the run folder, e.g. artifacts/NAME")
    e.add_argument("--data", required=True, help="any supported layout; images the run has never seen")
    e.add_argument("--split-name", required=True, help="name to store it under, e.g. external")
    e.add_argument("--split", help="only this split of the data set (e.g. test); default: all images")
    e.add_argument("--cache-dir")
    e.add_argument("--workers", type=int)
    e.set_defaults(func=cmd_evaluate)

    from trainer.explain import add_commands
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
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
