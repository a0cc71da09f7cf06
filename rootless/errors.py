"""One hierarchy for every error a user can cause: what was wrong, and what to do.

Library code raises these; only ``cli.py`` prints them and picks the exit code.
"""

from __future__ import annotations


class RootlessError(Exception):
    """An error with a message for the user and, where one helps, a hint."""

    #: docker's convention: 125 means the engine itself failed or was misused.
    exit_code = 125

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InvalidReference(RootlessError):
    """An image reference docker would refuse."""
