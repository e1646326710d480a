"""Idempotency keys on ingest: a client that sends `Idempotency-Key` with a batch and sends the same
batch again under the same key (a retry after a timeout, a dropped connection) gets the first
answer again, and the batch is not ingested twice. Without one a retried batch is safe too (its
readings come back `duplicate`, the first one wins), but its answer is not the first one's, and
its readings are kept a second time as rejected.

A key is the client's, within its ingest key, and names one request: its body (a fingerprint of the
body as sent, its media type and its coding). Kept in the cache port (Redis in production, shared
by every API process; in-process embedded) for `ttl_seconds` after the answer. While the first
request runs, the key is claimed: a second one is a conflict. A request that failed (a 4xx or 5xx)
leaves the key free again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from metrify.application.errors import Conflict, InvalidRequest
from metrify.application.ports import Cache

_CLAIMED = b"C"
_ANSWERED = b"A"
_FINGERPRINT = 64  # hex characters of a SHA-256


class KeyInUse(Conflict):
    """The first request with this key has not been answered yet."""


class KeyReused(InvalidRequest):
    """The key names another request (another body) than this one."""


def fingerprint(media_type: str, coding: str, body: bytes) -> str:
    """What makes two requests the same: the body as sent, its media type and its coding."""
    digest = hashlib.sha256()
    for part in (media_type.encode(), coding.encode()):
        digest.update(len(part).to_bytes(4, "big") + part)
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A key this request holds until it `answered` or `failed`."""

    cache_key: str
    fingerprint: str


class IdempotentRequests:
    def __init__(self, cache: Cache, ttl_seconds: float, claim_seconds: float = 300.0) -> None:
        """`claim_seconds` bounds how long a claim outlives a process that died holding it."""
        self.cache = cache
        self.ttl_seconds = ttl_seconds
        self.claim_seconds = claim_seconds

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def begin(self, scope: str, key: str, print_: str) -> Claim | bytes:
        """The answer given to this same request before (bytes), or a Claim: this request runs
        and must end it with `answered` or `failed`. Raises KeyReused or KeyInUse."""
        cache_key = f"idempotency:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"
        for _ in range(2):  # a claim that expires between the two looks is looked at again
            if self.cache.add(cache_key, _CLAIMED + print_.encode(), self.claim_seconds):
                return Claim(cache_key, print_)
            kept = self.cache.get(cache_key)
            if kept is None:
                continue
            if kept[1 : 1 + _FINGERPRINT].decode() != print_:
                raise KeyReused(
                    "this Idempotency-Key was sent with another request (another body): "
                    "a key names one request; send a new key with a new batch"
                )
            if kept[:1] == _CLAIMED:
                raise KeyInUse(
                    "the first request with this Idempotency-Key is still being processed: "
                    "send it again once that one is answered"
                )
            return kept[1 + _FINGERPRINT :]
        raise KeyInUse("this Idempotency-Key is being claimed by another request: send it again")

    def answered(self, claim: Claim, answer: bytes) -> None:
        self.cache.set(claim.cache_key, _ANSWERED + claim.fingerprint.encode() + answer, self.ttl_seconds)

    def failed(self, claim: Claim) -> None:
        self.cache.delete(claim.cache_key)
