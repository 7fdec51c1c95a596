"""``python -m trainer <command>`` (docs/trainer.md): the parser, the logging set-up, and the exit codes.

Each command is a module of ``trainer/commands`` with ``add_parser`` and ``run``; this module only builds the
parser from them, configures logging (``--quiet`` / ``--verbose``, ``trainer.logs``) and turns the errors a command
raises into one line on stderr and an exit code (``trainer.exits``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.data.layouts import DataError
from core.models.accel import DeviceError
from core.models.onnx_backend import BackendError, OnnxError, choose_backend
from core.store import ArtifactError
from trainer import logs
from trainer.commands import COMMANDS
from trainer.config import ConfigError
from trainer.exits import EXIT_CONFIG, EXIT_DATA, EXIT_INTERRUPTED, os_error_line

__all__ = ["parser", "main", "EXIT_DATA", "EXIT_CONFIG", "EXIT_INTERRUPTED", "os_error_line"]

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description="Train and evaluate chest X-ray PNEUMONIA/"
                                "NORMAL models and write the artifacts the dashboard reads (docs/trainer.md).")
    _add_loudness(p, default=False)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # also after the command: python -m trainer train ... --quiet
        _add_loudness(command_parser, default=argparse.SUPPRESS)
    return p


def _add_loudness(p: argparse.ArgumentParser, default) -> None:
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", default=default, help="log warnings and errors only")
    loud.add_argument("-v", "--verbose", action="store_true", default=default,
                      help="also log debug lines, with the logger's name")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m trainer -- train ...: keeps torchrun from reading --run as its own
        argv = argv[1:]
    args = parser().parse_args(argv)
    args.argv = argv
    logs.configure(-1 if args.quiet else 1 if args.verbose else 0)
    try:
        if os.environ.get("CXR_BACKEND"):  # a typo there fails now, not after the data is cached
            choose_backend()
        return args.func(args)
    except (DataError, ArtifactError) as e:
        return _fail(e, EXIT_DATA)
    except (ConfigError, DeviceError, BackendError) as e:
        return _fail(e, EXIT_CONFIG)
    except OnnxError as e:
        return _fail(f"{e} (CXR_BACKEND=torch scores without ONNX Runtime)", EXIT_DATA)
    except KeyboardInterrupt:
        print("\nstopped.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a full disk, a read-only run folder, a folder not ours: one line naming the file
        return _fail(os_error_line(e), EXIT_DATA)


def _fail(message, code: int) -> int:
    """The one line a failed command ends with (on stderr whatever the log level: it says why nothing happened)."""
    print(f"error: {message}", file=sys.stderr)
    return code
