"""The run's one-line error, at the bottom of the layers so every stage and executor can raise it."""

from __future__ import annotations


class RunError(Exception):
    """A run that cannot start (bad paths, bad options): one line, nothing written."""
