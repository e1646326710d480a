"""Ingest keys: how head-end systems and gateways post readings over HTTP (issue 7).

A key is a long random token shown once, when an ADMIN creates it; only its SHA-256 is stored (a
random token of 256 bits needs no slow hash). A key is scoped to regions (or to all of them) and
can be revoked. A reading belongs to the region the meter registry gives its meter, else to the
region the reading itself reports; a key scoped to regions refuses readings of any other region,
and readings whose region is unknown.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

TOKEN_PREFIX = "mtk_"


class InvalidIngestKey(Exception):
    """An ingest key's fields break a rule (no name, no region)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reading_region(registry: Mapping[str, str | None], meter_id: str, reported: Any) -> str | None:
    """A registered meter's region is the registry's, none included (a meter registered without a
    region is no region's: a reading cannot claim one for it); an unregistered meter's is the
    region the reading carries, if it is text."""
    if meter_id in registry:
        return registry[meter_id]
    if isinstance(reported, str) and reported.strip():
        return reported.strip()
    return None


@dataclass(frozen=True, slots=True)
class IngestKey:
    key_id: str
    name: str
    key_hash: str
    prefix: str  # the token's first characters, to recognise it in a list
    regions: frozenset[str] = field(default_factory=frozenset)
    all_regions: bool = False
    created_by: str = ""
    created_at: int = 0  # microseconds since the epoch
    revoked_at: int | None = None

    def __post_init__(self) -> None:
        if not self.all_regions and not self.regions:
            raise InvalidIngestKey("an ingest key is scoped to at least one region, or to all regions")
        if not self.name.strip():
            raise InvalidIngestKey("an ingest key needs a name")

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows_region(self, region: str | None) -> bool:
        return self.all_regions or (region is not None and region in self.regions)

    def revoked(self, at: int) -> IngestKey:
        return self if self.revoked_at is not None else replace(self, revoked_at=at)
