"""Idempotency keys on ingest: a client that sends `Idempotency-Key` with a batch and sends the same
batch again under the same key (a retry after a timeout, a dropped connection) gets the first
answer again, and the batch is not ingested twice. Without one a retried batch is safe too (its
readings come back `duplicate`, the first one wins), but its answer is not the first one's, and
its readings are kept a second time as rejected.

A key is the client's, within its ingest key, and names one request: its media type and its body
(decompressed: a retry compressed again is the same request). Kept in a cache port (Redis in
production, shared by every API process; in-process embedded, bounded) for `ttl_seconds`
after the answer. While the first request runs the key is claimed: a second one is a conflict. A
request that failed (a 4xx or 5xx) leaves the key free again.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import zlib
from dataclasses import dataclass

from metrify.application.errors import Conflict, InvalidRequest
from metrify.application.ports import Cache

log = logging.getLogger("metrify.api")

_CLAIMED = b"C"
_ANSWERED = b"A"
_COMPRESSED = b"Z"  # an answer of more than _COMPRESS_ABOVE bytes, zlib-compressed
_COMPRESS_ABOVE = 512
_FINGERPRINT = 64  # hex characters of a SHA-256


class KeyInUse(Conflict):
    """The first request with this key has not been answered yet."""


class KeyReused(InvalidRequest):
    """The key names another request (another body) than this one."""


def fingerprint(media_type: str, body: bytes) -> str:
    """What makes two requests the same: their media type and their body (decompressed)."""
    digest = hashlib.sha256()
    kind = media_type.encode()
    digest.update(len(kind).to_bytes(4, "big") + kind)
    digest.update(body)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Claim:
    """A key this request holds until it `answered` or `failed`."""

    cache_key: str
    fingerprint: str
    mark: bytes  # what the cache holds while this request holds the key: its own, not a retry's


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
        and must end it with `answered` or `failed`. Raises KeyReused or KeyInUse (and Unavailable
        when the cache does not answer: without it no key can be kept)."""
        cache_key = f"idempotency:{scope}:{hashlib.sha256(key.encode()).hexdigest()}"
        mark = _CLAIMED + print_.encode() + secrets.token_hex(8).encode()
        for _ in range(2):  # a claim that expires between the two looks is looked at again
            if self.cache.add(cache_key, mark, self.claim_seconds):
                return Claim(cache_key, print_, mark)
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
            answer = kept[1 + _FINGERPRINT :]
            return zlib.decompress(answer) if kept[:1] == _COMPRESSED else answer
        raise KeyInUse("this Idempotency-Key is being claimed by another request: send it again")

    def answered(self, claim: Claim, answer: bytes) -> None:
        """Keep the answer (if this request still holds the key). Never raises: the batch is
        ingested and its answer stands; a cache that does not answer now leaves the claim to lapse
        (a retry meanwhile is a conflict, then ingested again, its readings duplicates)."""
        kind = _ANSWERED
        if len(answer) > _COMPRESS_ABOVE:  # a list of rejected readings: up to 10,000 of them
            kind, answer = _COMPRESSED, zlib.compress(answer, 1)
        try:
            if self.cache.get(claim.cache_key) == claim.mark:  # not a retry's claim, after this one lapsed
                self.cache.set(claim.cache_key, kind + claim.fingerprint.encode() + answer, self.ttl_seconds)
        except Exception as exc:  # noqa: BLE001 - the batch is ingested: its 202 stands
            log.warning("an ingest answer was not kept for its Idempotency-Key: %s", exc)

    def failed(self, claim: Claim) -> None:
        """Free the key (if this request still holds it). Never raises: the request's own error
        is what its client hears."""
        try:
            if self.cache.get(claim.cache_key) == claim.mark:
                self.cache.delete(claim.cache_key)
        except Exception as exc:  # noqa: BLE001 - the request's own error is what its client hears
            log.warning("an Idempotency-Key was not freed after its request failed: %s", exc)
