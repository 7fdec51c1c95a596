"""Training one model entry: a flat loop in the style of torchvision's reference train.py, with resume.

Per epoch: train on the cached training images (batch augmentation on tensors), score validation, append a
row to history.csv, save last.pt (resume state) and, when validation AUC improves, best.safetensors. After the
last epoch (or early stop) the best weights are reloaded, thresholds are chosen on validation, and validation
and test are scored once. ``train_one_epoch`` is the one batch loop: the training benchmark calls it too.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.data.cache import ImageCache
from core.data.transforms import AugmentConfig, augment, normalize, to_float
from core.evaluate import metrics
from core.models.accel import Accel, choose, pick_device  # noqa: F401 (pick_device stays importable from here)
from core.models.checkpoints import load_best, load_resume, save_best, save_resume
from core.models.inference import predict_probabilities
from core.models.lungs import lung_model_sha256
from core.models.registry import ModelSpec, count_params, create_model, get_spec, input_size_for, set_backbone_trainable
from core.store import (
    ModelWriter,
    best_checkpoint,
    epoch_checkpoint,
    last_checkpoint,
    prune_epoch_checkpoints,
    stored_path,
)
from trainer import distributed
from trainer.config import Recipe
from trainer.distill import Teacher, distill_loss, load_teacher
from trainer.prepare import SplitData
from trainer.robust import WeightAverage, mixed_loss, mixup

log = logging.getLogger(__name__)

# "flat" validation loss for stop_on=val_loss: a gain under a thousandth of a nat is noise at our validation sizes
LOSS_MIN_DELTA = 1e-3
HEARTBEAT_SECONDS = 10  # status.json refresh within an epoch, for a live ETA on the dashboard


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


def source_weights(labels: np.ndarray, sources, balance: float, views=None) -> np.ndarray | None:
    """Per-image draw weights of a multi-source training split, or None for one source.

    Each source's share of the draws is proportional to (its images) ** (1 - ``balance``), split equally
    between its two classes: a 400-film adult source beside 3,700 children's films gets 25 % of the draws at
    balance 0.5 (each adult film drawn about 2.5 times an epoch) instead of 10 %, and neither source's class
    balance leaks into the other's. Within a class, each view (AP, PA; where known) gets an equal share, so a view
    tied to the class (NIH: 72 % of normal films AP, 45 % of pneumonia films) is no shortcut."""
    if sources is None or len(set(sources)) < 2:
        return None
    sources = np.asarray(sources, dtype=str)
    views = np.asarray(views if views is not None else [""] * len(labels), dtype=str)
    names = sorted(set(sources))
    share = np.array([(sources == g).sum() ** (1 - balance) for g in names], dtype=float)
    share /= share.sum()
    w = np.zeros(len(labels))
    for g, sh in zip(names, share):
        classes = [c for c in (0, 1) if ((sources == g) & (labels == c)).any()]
        for c in classes:
            in_class = (sources == g) & (labels == c)
            cells = [in_class & (views == v) for v in sorted(set(views[in_class]))]
            for m in cells:
                w[m] = sh / len(classes) / len(cells) / m.sum()
    return w / w.sum()


def _epoch_order(n: int, labels: np.ndarray, recipe: Recipe, seed: int, epoch: int,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """Deterministic per (seed, epoch), so a resumed run sees the same batches as an uninterrupted one."""
    rng = np.random.default_rng([seed, epoch])
    if weights is not None:
        return rng.choice(n, size=n, replace=True, p=weights)
    if recipe.balanced_sampler:
        w = np.where(labels == 1, 1.0 / max(1, labels.sum()), 1.0 / max(1, (labels == 0).sum()))
        return rng.choice(n, size=n, replace=True, p=w / w.sum())
    return rng.permutation(n)


def _class_weights(labels: np.ndarray, recipe: Recipe, device, balanced: bool = False) -> torch.Tensor | None:
    if not recipe.class_weights or recipe.balanced_sampler or balanced:
        return None
    counts = np.bincount(labels, minlength=2).astype(float)
    return torch.tensor(counts.sum() / (2 * np.maximum(counts, 1)), dtype=torch.float32, device=device)


@dataclass
class Fit:
    """A model being trained and what its batch step needs: optimiser, schedule, loss weights, augmentation."""

    model: torch.nn.Module
    spec: ModelSpec
    recipe: Recipe
    device: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    aug: AugmentConfig
    steps_per_epoch: int
    ema: WeightAverage | None = None  # recipe ema_decay > 0: the averaged weights are validated and kept
    draw_weights: np.ndarray | None = None  # multi-source runs: ``source_weights`` of the training images
    accel: Accel = field(default_factory=lambda: choose("cpu"))  # mixed precision, pinned copies, compile
    teacher: Teacher | None = None  # recipe distill_from: soft labels mixed into the loss (trainer.distill)

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that are validated, checkpointed and scored: the average when there is one."""
        return self.ema.model if self.ema is not None else self.model


def make_fit(model, spec: ModelSpec, recipe: Recipe, train_labels: np.ndarray, device: torch.device,
             compile: bool = False, train_sources=None, train_views=None) -> Fit:
    """Optimiser with the recipe's parameter groups, warmup + cosine schedule over the run, class weights (or,
    with several sources, draws weighted by source and class: ``source_weights``)."""
    draw = source_weights(train_labels, train_sources, recipe.source_balance, train_views)
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(_param_groups(model, spec, recipe), weight_decay=recipe.weight_decay)
    steps = math.ceil(len(train_labels) / recipe.batch_size)
    if recipe.max_train_batches:
        steps = min(steps, recipe.max_train_batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps * recipe.epochs,
                                                               int(recipe.warmup_epochs * steps)))
    accel = choose(str(device), compile=compile)
    return Fit(model, spec, recipe, device, opt, sched, accel.scaler(),
               _class_weights(train_labels, recipe, device, balanced=draw is not None),
               AugmentConfig(hflip=recipe.hflip, blur_prob=recipe.blur_prob, crop_area_min=recipe.crop_area_min,
                             noise_std=recipe.noise_std).scaled(recipe.photometric_scale), steps,
               WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None, draw, accel)


@dataclass
class EpochStats:
    """Running totals of one epoch, and per-batch seconds spent on the batch (data) and on the model (step)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    data_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.seen)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.seen)


def _batch(fit: Fit, images, rows: np.ndarray, labels: np.ndarray, idx: np.ndarray, gen: torch.Generator):
    """Cached uint8 rows (read in file order: a memory map likes that) → augmented, normalised input + labels."""
    x = to_float(torch.from_numpy(images[np.sort(rows[idx])]))
    y = torch.from_numpy(labels[idx][np.argsort(rows[idx], kind="stable")])
    if fit.recipe.augment:
        x = augment(x, fit.aug, gen)
    x = normalize(x, fit.spec.mean, fit.spec.std, fit.recipe.preprocess)
    return fit.accel.to_device(x), fit.accel.to_device(y)


def _step(fit: Fit, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None,
          scale: float = 1.0) -> tuple[float, int]:
    """One optimiser step; returns the batch's mean loss and its number of correct predictions.

    ``scale`` multiplies the loss that is backpropagated (``trainer.distributed.loss_scale``)."""
    x, y_mix, lam = mixup(x, y, fit.recipe.mixup_alpha, gen)
    with fit.accel.autocast():
        logits = fit.model(x)
        loss = mixed_loss(logits.float(), y, y_mix, lam, fit.class_weights, fit.recipe.label_smoothing)
        if fit.teacher is not None:
            w = fit.recipe.distill_weight
            soft = distill_loss(logits.float(), fit.teacher.logits(x), fit.recipe.distill_temperature)
            loss = (1 - w) * loss + w * soft
    fit.opt.zero_grad(set_to_none=True)
    fit.scaler.scale(loss * scale).backward()
    fit.scaler.step(fit.opt)
    fit.scaler.update()
    fit.sched.step()
    if fit.ema is not None:
        fit.ema.update(distributed.unwrap(fit.model))
    return float(loss.detach()), int((logits.argmax(1) == y).sum())


def train_one_epoch(fit: Fit, images, rows: np.ndarray, labels: np.ndarray, *, seed: int, epoch: int,
                    on_batch=None) -> EpochStats:
    """One pass over the training rows in the epoch's seeded order; ``on_batch(b, stats)`` after each batch."""
    fit.model.train()
    order = _epoch_order(len(rows), labels, fit.recipe, seed, epoch, fit.draw_weights)
    gen = torch.Generator().manual_seed(distributed.epoch_seed(seed, epoch))
    bs, stats, clock = fit.recipe.batch_size, EpochStats(), time.perf_counter
    for b in range(fit.steps_per_epoch):
        t0 = clock()
        batch = order[b * bs:(b + 1) * bs]
        part = distributed.rank_part(batch)  # the whole batch in one process; this rank's share under DDP
        x, y = _batch(fit, images, rows, labels, part, gen)
        t1 = clock()
        loss, correct = _step(fit, x, y, gen, distributed.loss_scale(len(part), len(batch)))
        stats.data_seconds.append(t1 - t0)
        stats.step_seconds.append(clock() - t1)
        stats.loss_sum, stats.correct, stats.seen = stats.loss_sum + loss * len(y), stats.correct + correct, \
            stats.seen + len(y)
        if on_batch is not None:
            on_batch(b, stats)
    stats.loss_sum, stats.correct, stats.seen = distributed.sum_across([stats.loss_sum, stats.correct, stats.seen])
    return stats


def probabilities(model, images, rows, mean, std, device, *, tta: int = 1, batch_size: int = 64,
                  preprocess: str = "none") -> np.ndarray:
    """P(PNEUMONIA) of ``rows``; under DDP each rank scores its share and all get the whole array, in order."""
    net = distributed.unwrap(model)  # the bare module: DDP's forward would wait for the other ranks
    distributed.sync_buffers(net)
    mine = np.asarray(rows)[distributed.shard(len(rows))]
    local = predict_probabilities(net, images, mean, std, batch_size=batch_size, device=device, indices=mine,
                                  tta=tta, preprocess=preprocess)
    return distributed.gather(local, len(rows))


def evaluate_loss(model, images, rows, labels, mean, std, device, batch_size=64,
                  preprocess="none") -> tuple[float, np.ndarray]:
    """Validation loss (unweighted) and probabilities."""
    probs = probabilities(model, images, rows, mean, std, device, batch_size=batch_size, preprocess=preprocess)
    p = np.clip(probs, 1e-6, 1 - 1e-6)
    loss = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    return loss, probs


@dataclass
class Progress:
    """Finished epochs and the best one so far: what last.pt carries besides the tensors."""

    history: list[dict] = field(default_factory=list)
    best_auc: float = -1.0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    @property
    def epoch(self) -> int:
        return len(self.history)

    def stopped_early(self, patience: int) -> bool:
        return self.bad_epochs >= patience

    def record(self, row: dict, stop_on: str = "val_auc") -> bool:
        """Append an epoch's history row; returns whether it is the new best: by validation AUC (then loss), or with
        ``stop_on="val_loss"`` by a validation loss at least ``LOSS_MIN_DELTA`` below the best so far."""
        self.history.append(row)
        auc, loss = row["val_auc"], row["val_loss"]
        if stop_on == "val_loss":
            better = loss < self.best_loss - LOSS_MIN_DELTA
        else:
            better = auc > self.best_auc + 1e-4 or (abs(auc - self.best_auc) <= 1e-4 and loss < self.best_loss)
        if better:
            self.best_auc, self.best_loss, self.best_epoch, self.bad_epochs = auc, loss, row["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    def state(self) -> dict:
        return {"epoch": self.epoch, "history": self.history, "best_auc": self.best_auc,
                "best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        return cls(list(state["history"]), float(state["best_auc"]), float(state["best_loss"]),
                   int(state["best_epoch"]), int(state["bad_epochs"]))


def setup_entry(recipe: Recipe, data: dict[str, SplitData], writer: ModelWriter, *, seed: int,
                device: torch.device, weights_dir=None, compile: bool = False) -> tuple[Fit, bool]:
    """Build the model (pretrained when asked and available), write config.json; returns it and pretrained."""
    spec = get_spec(recipe.arch)
    size = input_size_for(recipe.arch, recipe.input_size)
    torch.manual_seed(seed)
    model, winfo = create_model(recipe.arch, pretrained=recipe.pretrained, weights_path=recipe.weights,
                                weights_dir=weights_dir, input_size=size, in_chans=recipe.in_chans)
    if winfo.warning:
        log.warning(f"  WARNING [{recipe.name}]: {winfo.warning}")
    model.to(device, memory_format=torch.channels_last)  # matches core.data.transforms.normalize's output
    writer.config({**asdict(recipe), "input_size": size, "mean": list(spec.mean), "std": list(spec.std),
                   "pretrained": winfo.pretrained, "pretrained_requested": recipe.pretrained,
                   "weights_source": winfo.source, "weights_sha256": winfo.sha256, "weights_warning": winfo.warning,
                   "params": count_params(model), "seed": seed, "device": str(device),
                   **({"lung_model_sha256": lung_model_sha256()} if recipe.framing == "lungs" else {}),
                   **{f"n_{split}": int(len(data[split].rows)) if split in data else 0
                      for split in ("train", "val", "test")}})
    train = data["train"]
    fit = make_fit(model, spec, recipe, train.labels, device, compile, train.sources, train.strata.get("view"))
    if recipe.distill_from:
        held_out = [stored_path(p, writer.data_root) for split in ("val", "test") if split in data
                    for p in data[split].paths]
        fit.teacher = load_teacher(recipe.distill_from, writer.dir.parent.parent, held_out, spec.mean, spec.std,
                                   recipe.preprocess)
        fit.teacher.net.model.to(device)
    return fit, winfo.pretrained


def rng_state() -> dict:
    """The global RNG states (torch, CUDA, numpy, python) for the resume file: dropout and anything else drawing
    from them continue exactly where an uninterrupted run would be. Batch order and augmentation need nothing
    stored: their generators are seeded from (seed, epoch) at the start of every epoch."""
    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "python": random.getstate()}


def restore_rng_state(state: dict | None) -> None:
    """Undo ``rng_state``; a resume file written before RNG states were stored restores nothing."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                                                               "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    random.setstate(state["python"])


def resume_entry(fit: Fit, last: Path) -> Progress:
    """Load last.pt into the model, optimiser, schedule and scaler; returns where training stood."""
    state = load_resume(last)
    fit.model.load_state_dict(state["model"])
    fit.opt.load_state_dict(state["optimizer"])
    fit.sched.load_state_dict(state["scheduler"])
    fit.scaler.load_state_dict(state["scaler"])
    if fit.ema is not None and "ema" in state:
        fit.ema.load_state_dict(state["ema"])
    restore_rng_state(state.get("rng"))
    log.info(f"  resuming {fit.recipe.name} after epoch {state['epoch']}")
    return Progress.from_state(state)


def _save_epoch(fit: Fit, progress: Progress, model_dir: Path, improved: bool) -> None:
    """best.safetensors when improved; last.pt (and the last ``keep_last`` epoch_NNN.pt) always; rank 0 only."""
    if not distributed.is_main():
        return
    if improved:
        save_best(distributed.unwrap(fit.scored), best_checkpoint(model_dir), half=fit.recipe.half_checkpoint)
    state = {"model": distributed.unwrap(fit.model).state_dict(), "optimizer": fit.opt.state_dict(),
             "scheduler": fit.sched.state_dict(),
             "scaler": fit.scaler.state_dict(), "rng": rng_state(), **progress.state()}
    if fit.ema is not None:
        state["ema"] = fit.ema.state_dict()
    if fit.recipe.keep_last > 0:
        save_resume(epoch_checkpoint(model_dir, progress.epoch), state)
        prune_epoch_checkpoints(model_dir, fit.recipe.keep_last)
    save_resume(last_checkpoint(model_dir), state)


def _heartbeat(writer: ModelWriter, fit: Fit, progress: Progress, epoch: int, t0: float):
    """An ``on_batch`` hook that refreshes status.json about every HEARTBEAT_SECONDS with a live ETA."""
    last = [-math.inf]
    epochs_done = [h["seconds"] for h in progress.history]

    def beat(b: int, _stats) -> None:
        now, steps = time.perf_counter(), fit.steps_per_epoch
        if now - last[0] < HEARTBEAT_SECONDS and b + 1 < steps:
            return
        last[0] = now
        per_epoch = np.mean(epochs_done) if epochs_done else (now - t0) / (b + 1) * steps
        eta = (now - t0) / (b + 1) * (steps - b - 1) + per_epoch * (fit.recipe.epochs - epoch)
        writer.status("running", epoch=epoch - 1, epochs=fit.recipe.epochs, batch=b + 1, batches=steps,
                      eta_seconds=float(eta), best_epoch=progress.best_epoch,
                      best_val_auc=progress.best_auc if progress.best_auc >= 0 else None,
                      message=f"training epoch {epoch}")
    return beat


def run_epoch(fit: Fit, images, data: dict[str, SplitData], writer: ModelWriter, progress: Progress, *,
              seed: int, epoch: int, frozen: bool) -> None:
    """Train one epoch, validate, record it (history, checkpoints, status) and print a line."""
    recipe, t0 = fit.recipe, time.perf_counter()
    fit.model = distributed.rewrap(fit.model, fit.device, lambda net: set_backbone_trainable(net, fit.spec, not frozen),
                                   compile=fit.accel.compile)
    bar = tqdm(total=fit.steps_per_epoch, desc=f"{recipe.name} {epoch}/{recipe.epochs}", unit="batch",
               leave=False, dynamic_ncols=True, mininterval=1.0)
    beat = _heartbeat(writer, fit, progress, epoch, t0)

    def on_batch(b: int, stats: EpochStats) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{stats.loss:.4f}", img_s=f"{stats.seen / (time.perf_counter() - t0):.1f}")
        beat(b, stats)

    train, val = data["train"], data["val"]
    stats = train_one_epoch(fit, images, train.rows, train.labels, seed=seed, epoch=epoch, on_batch=on_batch)
    bar.close()
    val_loss, val_p = evaluate_loss(fit.scored, images, val.rows, val.labels, fit.spec.mean, fit.spec.std, fit.device,
                                    preprocess=recipe.preprocess)
    seconds = time.perf_counter() - t0
    improved = progress.record(stop_on=recipe.stop_on, row={
        "epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy, "val_loss": val_loss,
        "val_acc": float(np.mean((val_p >= 0.5) == val.labels)),
        "val_auc": metrics.macro_auc(val.labels, val_p, val.sources),  # several sources: their mean AUC
        "lr": fit.opt.param_groups[-1]["lr"], "seconds": round(seconds, 2)})
    _save_epoch(fit, progress, writer.dir, improved)
    distributed.barrier()  # the other ranks read these checkpoints at the end (and on resume)
    writer.history(progress.history)  # after the checkpoints: a row in history means its epoch can be resumed from
    early = progress.stopped_early(recipe.patience)
    remaining = 0 if early else recipe.epochs - epoch
    writer.status("running", epoch=epoch, epochs=recipe.epochs,
                  eta_seconds=remaining * np.mean([h["seconds"] for h in progress.history]),
                  best_epoch=progress.best_epoch, best_val_auc=progress.best_auc, message="")
    log.info(f"  {recipe.name} epoch {epoch}/{recipe.epochs}: train loss {stats.loss:.4f} val loss {val_loss:.4f} "
             f"val AUC {progress.history[-1]['val_auc']:.4f} ({seconds:.0f}s)"
             + (" *best*" if improved else "") + (" early stop" if early else ""))


def train_entry(recipe: Recipe, cache: ImageCache, data: dict[str, SplitData], writer: ModelWriter, *, seed: int,
                device: torch.device, resume: bool, weights_dir: str | None = None,
                compile: bool = False) -> dict:
    """Train, select and score one model entry. Returns the final status dict."""
    writer = distributed.main_writer(writer)  # under DDP, rank 0 alone writes artifacts
    fit, pretrained = setup_entry(recipe, data, writer, seed=seed, device=device, weights_dir=weights_dir,
                                  compile=compile)
    last = last_checkpoint(writer.dir)
    progress = resume_entry(fit, last) if resume and last.exists() else Progress()
    for epoch in range(progress.epoch + 1, recipe.epochs + 1):
        if progress.stopped_early(recipe.patience):
            break
        frozen = pretrained and epoch <= recipe.freeze_epochs
        run_epoch(fit, cache.images, data, writer, progress, seed=seed, epoch=epoch, frozen=frozen)
    return finish_entry(fit.model, recipe, cache, data, writer, device, progress)


def finish_entry(model, recipe: Recipe, cache: ImageCache, data: dict[str, SplitData], writer: ModelWriter,
                 device: torch.device, progress: Progress) -> dict:
    """Reload the best epoch, choose thresholds on validation, score validation and the other splits once."""
    load_best(distributed.unwrap(model), best_checkpoint(writer.dir))
    spec = get_spec(recipe.arch)
    probs = {split: probabilities(model, cache.images, d.rows, spec.mean, spec.std, device, tta=recipe.tta,
                                  preprocess=recipe.preprocess)
             for split, d in data.items() if split != "train" and len(d.rows) > 0}
    val = data["val"]
    thresholds = metrics.choose_thresholds(val.labels, probs["val"], target_sensitivity=recipe.target_sensitivity,
                                           groups=val.sources)
    for split, p in probs.items() if distributed.is_main() else ():  # scored where it is written: rank 0
        d = data[split]
        writer.scored(split, d.paths, d.labels, p, metrics.evaluate_split(d.labels, p, thresholds, split=split,
                                                                         strata=d.strata), d.strata)
    status = {"epoch": progress.epoch, "epochs": recipe.epochs, "best_epoch": progress.best_epoch,
              "best_val_auc": progress.best_auc, "eta_seconds": 0.0,
              "early_stopped": progress.stopped_early(recipe.patience),
              "train_seconds": float(sum(h["seconds"] for h in progress.history)), "message": ""}
    writer.status("finished", **status)
    distributed.barrier()  # the other ranks may read what rank 0 just wrote
    return status
