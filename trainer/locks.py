"""One writer per run folder: an exclusive ``flock`` on ``<run>/.lock`` while a command writes the run.

Two ``train --run same`` at once would interleave their checkpoints, predictions and metrics and both exit 0.
The lock is held by the open file, so the kernel releases it when the process dies, even on ``kill -9``: a
stale lock cannot block anyone. Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

from core.store import ArtifactError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLocked(ArtifactError):
    """Another process is writing this run folder; the message names it."""


def remove_stale_temp(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (``.<name>.<random>.tmp``) that a killed writer left in the run.

    Only called with the run's lock held: no other process can be writing one of them right now."""
    removed = []
    for tmp in run_dir.rglob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            continue
    return removed


@contextmanager
def run_lock(run_dir: str | Path, what: str = "write"):
    """Hold the run folder's lock for the ``with`` block, or raise ``RunLocked`` at once (never wait)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    try:  # never through a link (truncating its target) nor into a pipe or device a hostile run folder carries
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise ArtifactError(f"{path}: cannot open the run's lock file ({e.strerror or e}); delete it if it is "
                            "a link or not a file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{path}: is not a file (a pipe, device or folder); delete it and try again")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
                raise RunLocked(f"{run_dir} is being written by another process ({holder}); wait for it to end, "
                                "or use another run name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        remove_stale_temp(run_dir)
        yield
    finally:
        os.close(fd)  # closing releases the lock
