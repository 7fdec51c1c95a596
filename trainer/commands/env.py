"""``env``: what training would use here (device, mixed precision, compile, torchrun backend)."""

from __future__ import annotations

from core.models.accel import environment_lines


def add_parser(sub) -> None:
    p = sub.add_parser("env", help="what training would use here: device, mixed precision, compile, torchrun backend")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.set_defaults(func=run)


def run(args) -> int:
    print("\n".join(environment_lines(args.device)))
    return 0
