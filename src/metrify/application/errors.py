"""Errors the API-facing use cases raise; entrypoints map them to HTTP problems or CLI messages."""

from __future__ import annotations


class InvalidRequest(Exception):
    """A request's values break a rule the schema cannot express (an unknown window size, a bad interval)."""


class NotFound(Exception):
    """No such thing, or not one the caller may see (the two are not told apart)."""


class AlreadyExists(Exception):
    """A thing with this identity exists already."""


class AuthenticationFailed(Exception):
    """Bad credentials, or a token that is expired, tampered with, revoked or of the wrong kind."""


class Conflict(Exception):
    """The change would break a rule about the whole (e.g. leave no active ADMIN)."""


class RateLimited(Exception):
    """Too many requests in the current window; `retry_after` seconds until the next one."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limit reached; retry after {retry_after} s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """A service behind a port does not answer now; `retry_after` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
