"""Fixed-window rate limits over the Cache port (Redis in production, in-process embedded).

A subject's window opens with its first request and lasts `window_seconds`; the counter is one
cache key per subject that expires with its window, so counters never pile up however long the
process runs. Its opening time is kept next to it, to tell a refused client when to come back. A
long subject (anything a client sends, such as an email address of a megabyte) is keyed by its
SHA-256, so that no request makes a key longer than `MAX_SUBJECT` characters.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from metrify.application.errors import RateLimited
from metrify.application.ports import Cache
from metrify.domain.stream.config import US

MAX_SUBJECT = 256


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` requests per window of `window_seconds`, counted per subject; 0 means no limit."""

    limit: int
    window_seconds: float

    def check(self, cache: Cache, subject: str, now_us: int) -> None:
        """Count one request of `subject`; raise RateLimited with the seconds left in the window when over."""
        if self.limit <= 0:
            return
        if self.count(cache, subject, now_us) > self.limit:
            self._refuse(cache, subject, now_us)

    def count(self, cache: Cache, subject: str, now_us: int) -> int:
        """Count one request (or one failure) of `subject`, without refusing it; the count so far."""
        key = self._key(subject)
        count = cache.incr(key, self.window_seconds)
        if count == 1:
            cache.set(f"{key}:opened", str(now_us).encode(), self.window_seconds)
        return count

    def refuse_when_spent(self, cache: Cache, subject: str, now_us: int) -> None:
        """RateLimited when `subject` has used up its window, counting nothing (with `count`: a
        limit on what fails only)."""
        if self.limit <= 0:
            return
        counted = cache.get(self._key(subject))
        if counted is not None and int(counted) >= self.limit:
            self._refuse(cache, subject, now_us)

    def _refuse(self, cache: Cache, subject: str, now_us: int) -> None:
        opened = cache.get(f"{self._key(subject)}:opened")
        window_us = round(self.window_seconds * US)
        left = window_us - (now_us - int(opened)) if opened is not None else window_us
        raise RateLimited(max(1, math.ceil(left / US)))

    @staticmethod
    def _key(subject: str) -> str:
        if len(subject) > MAX_SUBJECT:
            subject = "sha256:" + hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()
        return f"rate:{subject}"
