"""The project's one root error, at the bottom of the layers so every package can raise it.

Every error meant for the user derives from :class:`AnonymizeError` and carries one line that
names the file or option and the cause; the CLI catches this one class and prints the line.
"""

from __future__ import annotations


class AnonymizeError(Exception):
    """A failure the user can act on: one line, no traceback."""


class RunError(AnonymizeError):
    """A run that cannot start (bad paths, bad options): one line, nothing written."""
