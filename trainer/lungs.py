"""``python -m trainer lungs``: train the lung-field segmentation model (core/models/lungs.py) on the lungmasks pairs.

Data: ``<data>/pairs.csv`` (one row per image + mask pair; see the data set's README). A ``group`` (the
underlying film; 64 films are annotated in two sources) stays in one split. The held-out part is drawn per
combination of sources with ``--seed``, so the same seed always gives the same held-out films. Training never
looks at the held-out part (no model selection on it: the last epoch is kept, cosine learning-rate schedule).

Output: ``--out`` (float16 safetensors), and beside it ``metrics.json`` (Dice/IoU overall and per source, held-out
stems, command) and ``heldout.csv`` (per-image Dice/IoU). A resume checkpoint ``<out>.train.pt`` is written every
epoch: rerun the same command to continue an interrupted run.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from core.data.images import load_xray, resize_square
from core.models import lungs
from core.models.checkpoints import load_resume, save_best, save_resume
from core.models.registry import get_spec
from core.models.weights import resolve_weights
from core.store import ArtifactError, now_iso, write_csv, write_json

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["source", "stem", "image", "mask", "group"]


def read_pairs(data: str | Path) -> pd.DataFrame:
    path = Path(data) / "pairs.csv"
    if not path.is_file():
        raise ArtifactError(f"{path}: not found (expected the lungmasks data set: pairs.csv + images/ + masks/)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise ArtifactError(f"{path}: missing columns {missing}")
    return df


def split_groups(df: pd.DataFrame, seed: int, heldout_fraction: float) -> pd.Series:
    """'train' or 'heldout' per row; whole groups, drawn per combination of sources (stratified, seeded)."""
    sources_of = df.groupby("group")["source"].apply(lambda s: "+".join(sorted(set(s))))
    rng = np.random.default_rng(seed)
    held = set()
    for _, groups in sorted(sources_of.groupby(sources_of)):
        names = sorted(groups.index)
        n = round(heldout_fraction * len(names))
        held.update(rng.choice(names, size=n, replace=False).tolist())
    return df["group"].map(lambda g: "heldout" if g in held else "train")


def load_pair(data: Path, row) -> tuple[np.ndarray, np.ndarray]:
    """The film (uint8) and its mask (bool), at their stored size."""
    gray = load_xray(data / row["image"])
    mask = load_xray(data / row["mask"]) > 127
    if mask.shape != gray.shape:
        raise ArtifactError(f"{row['mask']}: size {mask.shape} differs from its image {gray.shape}")
    return gray, mask


def load_squares(data: Path, df: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs resized to (size, size): films uint8, masks float32 in {0, 1}."""
    images, masks = [], []
    for _, row in df.iterrows():
        gray, mask = load_pair(data, row)
        images.append(resize_square(gray, size))
        masks.append(resize_square(mask.astype(np.uint8) * 255, size) > 127)
    return np.stack(images), np.stack(masks).astype(np.float32)


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Small random affine (same for film and mask), then gamma, contrast and brightness on the film.

    x: (N, S, S) floats in [0, 1]; y: (N, S, S) masks in {0, 1}.
    """
    n = x.shape[0]
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)
    angle, scale = u(-10, 10) * math.pi / 180, u(0.88, 1.12)
    tx, ty = u(-0.07, 0.07), u(-0.07, 0.07)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, 1, *x.shape[-2:]), align_corners=False)
    x = F.grid_sample(x[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    y = (F.grid_sample(y[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] > 0.5)
    gamma = torch.exp(u(-0.4, 0.4)).view(n, 1, 1)
    x = x.clamp(1e-4, 1) ** gamma
    mean = x.mean(dim=(1, 2), keepdim=True)
    x = (x - mean) * u(0.75, 1.25).view(n, 1, 1) + mean + u(-0.08, 0.08).view(n, 1, 1)
    return x.clamp(0, 1), y.float()


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice per image), the usual segmentation loss: BCE for every pixel, Dice for the overlap."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2))
    soft_dice = (2 * inter + 1) / (p.sum(dim=(1, 2)) + target.sum(dim=(1, 2)) + 1)
    return bce + (1 - soft_dice).mean()


def new_model(weights_dir=None) -> lungs.LungUNet:
    """A LungUNet whose encoder starts from MobileNetV2's ImageNet weights (found offline via
    core/models/weights.py)."""
    model = lungs.LungUNet()
    state, info = resolve_weights(get_spec("mobilenet_v2").weights, weights_dir=weights_dir)
    if state is None:
        log.warning(f"warning: {info.warning}; the encoder trains from scratch")
        return model
    enc = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    enc = {k: v for k, v in enc.items() if int(k.split(".")[0]) <= lungs.ENCODER_END}
    model.encoder.load_state_dict(enc, strict=True)
    log.info(f"encoder: ImageNet weights from {info.source}")
    return model


def train_epoch(model, opt, sched, images, masks, batch_size, gen, max_batches=None) -> float:
    model.train()
    order = torch.randperm(len(images), generator=gen)
    n_batches = len(order) // batch_size  # drop the last partial batch: BatchNorm dislikes tiny ones
    if max_batches:
        n_batches = min(n_batches, max_batches)
    total = 0.0
    for b in range(n_batches):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = augment(torch.from_numpy(images[idx]).float() / 255, torch.from_numpy(masks[idx]), gen)
        loss = dice_bce(model(lungs.to_input(x))[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
    return total / max(n_batches, 1)


def evaluate(model, data: Path, df: pd.DataFrame) -> tuple[list[dict], dict]:
    """Dice and IoU per held-out pair, at the mask's stored size, through the same path as ``lung_mask``
    (resize, predict, resize back, clean up). Summary: mean overall and per source."""
    rows = []
    for _, row in df.iterrows():
        gray, truth = load_pair(data, row)
        pred = lungs.lung_mask(gray, model=model)
        rows.append({"source": row["source"], "stem": row["stem"], "group": row["group"],
                     "dice": round(lungs.dice(pred, truth), 5), "iou": round(lungs.iou(pred, truth), 5)})
    table = pd.DataFrame(rows)

    def summary(t):
        return {"n": len(t), "dice": round(float(t["dice"].mean()), 4), "iou": round(float(t["iou"].mean()), 4),
                "dice_median": round(float(t["dice"].median()), 4), "dice_min": round(float(t["dice"].min()), 4)}
    out = {"overall": summary(table)}
    out.update({src: summary(t) for src, t in table.groupby("source")})
    return rows, out


def train_lungs(args) -> int:
    """``python -m trainer lungs``: train, save and score the lung-field model (flags: trainer/commands/lungs.py)."""
    data, out = Path(args.data), Path(args.out)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    df = read_pairs(data)
    df["split"] = split_groups(df, args.seed, args.heldout_fraction)
    train_df, held_df = df[df["split"] == "train"], df[df["split"] == "heldout"]
    log.info(f"pairs: {len(train_df)} train, {len(held_df)} held out "
             f"({held_df['group'].nunique()} films; per source {held_df['source'].value_counts().to_dict()})")
    t0 = time.time()
    images, masks = load_squares(data, train_df, args.size)
    log.info(f"loaded {len(images)} training pairs at {args.size}px in {time.time() - t0:.0f}s")

    model = new_model(args.weights_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(images) // args.batch_size
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    resume_path, start = out.with_name(out.name + ".train.pt"), 0
    if resume_path.exists():
        state = load_resume(resume_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start = int(state["epoch"])
        log.info(f"resumed after epoch {start} from {resume_path}")
    for epoch in range(start, args.epochs):
        t0 = time.time()
        loss = train_epoch(model, opt, sched, images, masks, args.batch_size, gen, args.max_batches)
        save_resume(resume_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                  "scheduler": sched.state_dict(), "generator": gen.get_state(), "epoch": epoch + 1})
        log.info(f"epoch {epoch + 1}/{args.epochs}  loss {loss:.4f}  ({time.time() - t0:.0f}s)")

    out.parent.mkdir(parents=True, exist_ok=True)
    save_best(model, out, half=True)
    model = lungs.load_model.__wrapped__(str(out))  # score what ships: the float16 weights
    rows, summary = evaluate(model, data, held_df)
    write_csv(out.parent / "heldout.csv", rows, ["source", "stem", "group", "dice", "iou"])
    write_json(out.parent / "metrics.json", {
        "created": now_iso(), "command": "python -m trainer " + " ".join(shlex.quote(a) for a in args.argv),
        "weights": out.name, "input_size": args.size, "seed": args.seed, "heldout_fraction": args.heldout_fraction,
        "epochs": args.epochs, "n_train": len(train_df), "heldout": summary,
        "heldout_groups": sorted(held_df["group"].unique().tolist())})
    for name, s in summary.items():
        print(f"held-out {name:<18} n={s['n']:>3}  Dice {s['dice']:.4f}  IoU {s['iou']:.4f}  "
              f"(min Dice {s['dice_min']:.3f})")
    return 0
