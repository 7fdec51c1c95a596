"""What several command modules share (not a command)."""

from __future__ import annotations

__all__ = ["names"]


def names(text: str | None) -> list[str] | None:
    """A comma-separated flag value (``--models a,b``) as a list; None when the flag was not given."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None
