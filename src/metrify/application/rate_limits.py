"""Fixed-window rate limits over the Cache port (Redis in production, in-process embedded)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from metrify.application.errors import RateLimited
from metrify.application.ports import Cache
from metrify.domain.stream.config import US


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` requests per window of `window_seconds`, counted per subject; 0 means no limit."""

    limit: int
    window_seconds: float

    def check(self, cache: Cache, subject: str, now_us: int) -> None:
        """Count one request of `subject`; raise RateLimited with the seconds left in the window when over."""
        if self.limit <= 0:
            return
        window_us = round(self.window_seconds * US)
        number, into = divmod(now_us, window_us)
        count = cache.incr(f"rate:{subject}:{number}", self.window_seconds)
        if count > self.limit:
            raise RateLimited(max(1, math.ceil((window_us - into) / US)))
