"""Training one model entry: a flat loop in the style of torchvision's reference train.py, with resume.

Per epoch: train on the cached training images (batch augmentation on tensors), score validation, append a
row to history.csv, save last.pt (resume state) and, when validation AUC improves, best.safetensors. After the
last epoch (or early stop) the best weights are reloaded, thresholds are chosen on validation, and validation
and test are scored once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core import metrics
from core.artifacts import ModelWriter
from core.cache import ImageCache
from core.checkpoints import load_best, load_resume, prune_epochs, save_best, save_resume
from core.inference import predict_probabilities
from core.models import count_params, create_model, get_spec, set_backbone_trainable
from core.transforms import AugmentConfig, augment, normalize, to_float
from trainer.config import Recipe
from trainer.robust import WeightAverage, mixed_loss, mixup


class Stopped(Exception):
    """Ctrl-C during training: the last finished epoch is saved, ``--resume`` continues from it."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(total_steps: int, warmup_steps: int):
    """Linear warmup, then cosine decay to 1% of the base learning rate."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _param_groups(model, spec, recipe: Recipe):
    head_ids = {id(p) for p in spec.head(model).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [{"params": backbone, "lr": recipe.lr * recipe.backbone_lr_factor, "name": "backbone"},
            {"params": head, "lr": recipe.lr, "name": "head"}]


def _epoch_order(n: int, labels: np.ndarray, recipe: Recipe, seed: int, epoch: int) -> np.ndarray:
    """Deterministic per (seed, epoch), so a resumed run sees the same batches as an uninterrupted one."""
    rng = np.random.default_rng([seed, epoch])
    if recipe.balanced_sampler:
        w = np.where(labels == 1, 1.0 / max(1, labels.sum()), 1.0 / max(1, (labels == 0).sum()))
        return rng.choice(n, size=n, replace=True, p=w / w.sum())
    return rng.permutation(n)


def _class_weights(labels: np.ndarray, recipe: Recipe, device) -> torch.Tensor | None:
    if not recipe.class_weights or recipe.balanced_sampler:
        return None
    counts = np.bincount(labels, minlength=2).astype(float)
    return torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32, device=device)


def evaluate_loss(model, images, rows, labels, mean, std, device, batch_size=64,
                  preprocess="none") -> tuple[float, np.ndarray]:
    """Validation loss (unweighted) and probabilities."""
    probs = predict_probabilities(model, images, mean, std, batch_size=batch_size, device=device, indices=rows,
                                  preprocess=preprocess)
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return loss, probs


def train_entry(recipe: Recipe, cache: ImageCache, rows: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                paths: dict[str, list[str]], writer: ModelWriter, *, seed: int, device: torch.device,
                resume: bool, weights_dir: str | None = None, log=print) -> dict:
    """Train, select and score one model entry. Returns the final status dict."""
    spec = get_spec(recipe.arch)
    size = recipe.input_size or spec.input_size
    torch.manual_seed(seed)
    model, winfo = create_model(recipe.arch, pretrained=recipe.pretrained, weights_path=recipe.weights,
                                weights_dir=weights_dir, input_size=size)
    if winfo.warning:
        log(f"  WARNING [{recipe.name}]: {winfo.warning}")
    model.to(device, memory_format=torch.channels_last)  # matches core.transforms.normalize's output
    mean, std = spec.mean, spec.std
    config = {**asdict(recipe), "input_size": size, "mean": list(mean), "std": list(std),
              "pretrained": winfo.pretrained, "pretrained_requested": recipe.pretrained,
              "weights_source": winfo.source, "weights_sha256": winfo.sha256, "weights_warning": winfo.warning,
              "params": count_params(model), "seed": seed, "device": str(device),
              "n_train": int(len(rows["train"])), "n_val": int(len(rows["val"])),
              "n_test": int(len(rows.get("test", [])))}
    writer.config(config)

    groups = _param_groups(model, spec, recipe)
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(groups, weight_decay=recipe.weight_decay)
    train_rows, train_labels = rows["train"], labels["train"]
    steps_per_epoch = math.ceil(len(train_rows) / recipe.batch_size)
    if recipe.max_train_batches:
        steps_per_epoch = min(steps_per_epoch, recipe.max_train_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps_per_epoch * recipe.epochs,
                                                               int(recipe.warmup_epochs * steps_per_epoch)))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    class_w = _class_weights(train_labels, recipe, device)
    aug = AugmentConfig(hflip=recipe.hflip, blur_prob=recipe.blur_prob, crop_area_min=recipe.crop_area_min,
                        noise_std=recipe.noise_std).scaled(recipe.photometric_scale)
    ema = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    ckpt_dir = writer.dir / "checkpoints"

    history: list[dict] = []
    start_epoch, best_auc, best_loss, best_epoch, bad_epochs = 1, -1.0, math.inf, 0, 0
    if resume and (ckpt_dir / "last.pt").exists():
        state = load_resume(ckpt_dir / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        best_auc, best_loss = float(state["best_auc"]), float(state["best_loss"])
        best_epoch, bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        log(f"  resuming {recipe.name} after epoch {state['epoch']}")

    frozen_stage = recipe.freeze_epochs > 0 and winfo.pretrained
    done_early = bad_epochs >= recipe.patience
    epoch_seconds: list[float] = [h["seconds"] for h in history]
    for epoch in range(start_epoch, recipe.epochs + 1):
        if done_early:
            break
        set_backbone_trainable(model, spec, not (frozen_stage and epoch <= recipe.freeze_epochs))
        model.train()
        t0 = time.perf_counter()
        order = _epoch_order(len(train_rows), train_labels, recipe, seed, epoch)
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"{recipe.name} {epoch}/{recipe.epochs}", unit="batch",
                   leave=False, dynamic_ncols=True, mininterval=1.0)
        for b in bar:
            idx = order[b * recipe.batch_size : (b + 1) * recipe.batch_size]
            x = to_float(torch.from_numpy(cache.images[np.sort(train_rows[idx])]))
            y = torch.from_numpy(train_labels[idx][np.argsort(train_rows[idx], kind="stable")])
            if recipe.augment:
                x = augment(x, aug, gen)
            x, y = normalize(x, mean, std, recipe.preprocess).to(device, non_blocking=True), y.to(device)
            x, y_mix, lam = mixup(x, y, recipe.mixup_alpha, gen)
            with torch.autocast(device.type, enabled=use_amp):
                logits = model(x)
                loss = mixed_loss(logits.float(), y, y_mix, lam, class_w, recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update(model)
            tot_loss += float(loss.detach()) * len(y)
            tot_correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}", img_s=f"{rate:.1f}")
            writer_heartbeat(writer, b, steps_per_epoch, epoch, recipe, epoch_seconds, t0, best_epoch, best_auc)
        bar.close()

        scored = ema.model if ema is not None else model  # with weight averaging, the average is the model
        val_loss, val_p = evaluate_loss(scored, cache.images, rows["val"], labels["val"], mean, std, device,
                                        preprocess=recipe.preprocess)
        val_auc = metrics.auc(labels["val"], val_p)
        val_acc = float(np.mean((val_p >= 0.5) == labels["val"]))
        seconds = time.perf_counter() - t0
        epoch_seconds.append(seconds)
        history.append({"epoch": epoch, "train_loss": tot_loss / seen, "train_acc": tot_correct / seen,
                        "val_loss": val_loss, "val_acc": val_acc, "val_auc": val_auc,
                        "lr": opt.param_groups[-1]["lr"], "seconds": round(seconds, 2)})
        improved = val_auc > best_auc + 1e-4 or (abs(val_auc - best_auc) <= 1e-4 and val_loss < best_loss)
        if improved:
            best_auc, best_loss, best_epoch, bad_epochs = val_auc, val_loss, epoch, 0
            save_best(scored, ckpt_dir / "best.safetensors", half=recipe.half_checkpoint)
        else:
            bad_epochs += 1
        done_early = bad_epochs >= recipe.patience
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict(), "epoch": epoch, "history": history, "best_auc": best_auc,
                 "best_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs}
        if ema is not None:
            state["ema"] = ema.state_dict()
        if recipe.keep_last > 0:
            save_resume(ckpt_dir / f"epoch_{epoch:03d}.pt", state)
            prune_epochs(ckpt_dir, recipe.keep_last)
        save_resume(ckpt_dir / "last.pt", state)
        writer.history(history)  # after the checkpoints: a row in history means its epoch can be resumed from
        remaining = 0 if done_early else recipe.epochs - epoch
        writer.status("running", epoch=epoch, epochs=recipe.epochs, eta_seconds=remaining * np.mean(epoch_seconds),
                      best_epoch=best_epoch, best_val_auc=best_auc, message="")
        log(f"  {recipe.name} epoch {epoch}/{recipe.epochs}: train loss {tot_loss / seen:.4f} "
            f"val loss {val_loss:.4f} val AUC {val_auc:.4f} ({seconds:.0f}s)"
            + (" *best*" if improved else "") + (" early stop" if done_early else ""))

    return finish_entry(model, recipe, cache, rows, labels, paths, writer, device, history, best_epoch, best_auc,
                        early=done_early)


def writer_heartbeat(writer, b, steps, epoch, recipe, epoch_seconds, t0, best_epoch, best_auc) -> None:
    """Refresh status.json about every 10 seconds within an epoch, so the dashboard sees a live ETA."""
    now = time.perf_counter()
    last = getattr(writer, "_last_beat", 0.0)
    if now - last < 10 and b + 1 < steps:
        return
    writer._last_beat = now
    per_epoch = np.mean(epoch_seconds) if epoch_seconds else (now - t0) / (b + 1) * steps
    eta = (now - t0) / (b + 1) * (steps - b - 1) + per_epoch * (recipe.epochs - epoch)
    writer.status("running", epoch=epoch - 1, epochs=recipe.epochs, batch=b + 1, batches=steps,
                  eta_seconds=float(eta), best_epoch=best_epoch, best_val_auc=best_auc if best_auc >= 0 else None,
                  message=f"training epoch {epoch}")


def finish_entry(model, recipe, cache, rows, labels, paths, writer, device, history, best_epoch, best_auc,
                 early) -> dict:
    """Reload the best epoch, choose thresholds on validation, score validation and test once."""
    load_best(model, writer.dir / "checkpoints" / "best.safetensors")
    spec = get_spec(recipe.arch)
    probs = {split: predict_probabilities(model, cache.images, spec.mean, spec.std, device=device,
                                          indices=rows[split], tta=recipe.tta, preprocess=recipe.preprocess)
             for split in rows if split != "train" and len(rows[split]) > 0}
    thresholds = metrics.choose_thresholds(labels["val"], probs["val"], target_sensitivity=recipe.target_sensitivity)
    for split, p in probs.items():
        writer.predictions(split, paths[split], labels[split], p)
        writer.metrics(split, metrics.evaluate_split(labels[split], p, thresholds, split=split))
    status = {"epoch": len(history), "epochs": recipe.epochs, "best_epoch": best_epoch, "best_val_auc": best_auc,
              "eta_seconds": 0.0, "early_stopped": bool(early),
              "train_seconds": float(sum(h["seconds"] for h in history)), "message": ""}
    writer.status("finished", **status)
    return status
