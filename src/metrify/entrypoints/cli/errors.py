"""Errors the CLI shows as one line: the user's input or set-up, not a bug."""

from __future__ import annotations


class UserError(Exception):
    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
