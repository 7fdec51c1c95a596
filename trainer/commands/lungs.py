"""``lungs``: train the lung-field segmentation model on the lungmasks pairs (``trainer/lungs.py``)."""

from __future__ import annotations

import os

from core.models import lungs as core_lungs
from core.models.weights import ENV_WEIGHTS_DIR
from trainer import lungs


def add_parser(sub) -> None:
    p = sub.add_parser("lungs", help="train the lung-field segmentation model on the lungmasks pairs")
    p.add_argument("--data", required=True, help="the lungmasks folder (pairs.csv, <source>/images, <source>/masks)")
    p.add_argument("--out", default=str(core_lungs.WEIGHTS),
                   help="weights file (metrics.json and heldout.csv beside it)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=core_lungs.INPUT_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-fraction", type=float, default=0.2)
    p.add_argument("--max-batches", type=int, help="cap batches per epoch: quick runs")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 default: on a shared, busy machine 2 threads ran ~10x slower)")
    p.add_argument("--weights-dir", default=os.environ.get(ENV_WEIGHTS_DIR))
    p.set_defaults(func=run)


def run(args) -> int:
    return lungs.train_lungs(args)
