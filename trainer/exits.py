"""How a trainer command ends: its exit codes, the one line a failed read or write ends with, and the command line
recorded in what it writes (docs/trainer.md lists the codes)."""

from __future__ import annotations

import errno
import shlex

__all__ = ["EXIT_FAILED", "EXIT_DATA", "EXIT_CONFIG", "EXIT_INTERRUPTED", "OS_HINTS", "os_error_line",
           "command_line"]

EXIT_FAILED, EXIT_DATA, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 3, 130

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


def command_line(argv) -> str:
    """The command as recorded in run.json, locks and the files a command writes (arguments shell-quoted)."""
    return "python -m trainer " + " ".join(shlex.quote(a) for a in argv or [])
