"""Errors shown to users: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class CTInvariancesError(Exception):
    """A problem with the user's input or settings, reported without a traceback."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(CTInvariancesError):
    """The input image or file cannot be used as given."""


class WeightsError(CTInvariancesError):
    """A model weight file is missing, corrupt or does not match its checksum."""


class Cancelled(Exception):
    """A long run was stopped by its caller (``should_stop()`` returned True)."""
