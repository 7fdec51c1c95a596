"""The trainer's one logging configuration (``python -m trainer`` sets it up; library code only logs).

Progress and diagnostics (a model's epochs, the split counts, a skipped file, a warning) go through ``logging`` to
stderr, one plain line each; what a command was asked for (a results table, the model list, a written file's
name) is printed on stdout, so ``python -m trainer report ... > table.md`` holds only the table. ``--quiet``
keeps warnings and errors, ``--verbose`` adds debug lines with the logger's name. Under ``torchrun`` rank 0
speaks for the run: the other ranks log warnings and errors only.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["PACKAGES", "configure", "only_warnings"]

PACKAGES = ("trainer", "core")  # the loggers configured here; a library's own loggers are left alone


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged (a redirect, pytest's capture), not as it was when
    the handler was made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


_HANDLER = _Stderr()


def configure(verbosity: int = 0) -> None:
    """``verbosity`` -1 (quiet: warnings and errors), 0 (progress) or 1 (debug, with logger names). Idempotent:
    calling it again (tests run many commands in one process) replaces the level, never adds a handler."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    _HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbosity > 0 else
                                            "%(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
        logger.setLevel(level)


def only_warnings() -> None:
    """For a process that does not speak for the run (a DDP rank other than 0): warnings and errors only."""
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
