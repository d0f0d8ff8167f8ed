"""Exceptions shared by the checkpoint core and the format converters.

A leaf module: it imports nothing from rnope, so any module may import it without creating an
import cycle.
"""

from __future__ import annotations

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""

    # the public name (and the one tracebacks and pickle use) is rnope.checkpoint.CheckpointError,
    # which re-exports this class
    __module__ = "rnope.checkpoint"
