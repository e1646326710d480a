"""Users, their one role, and what each role may see and do (issue 7; DESIGN §5 "API").

- USER sees only the meters assigned to them: their readings, aggregates and gaps.
- OPERATOR works on the regions assigned to them: the meters there (registering and updating them
  too), their readings, aggregates, gaps, too-late and rejected readings, the regional aggregates
  and the stream's summary.
- ADMIN does everything, including users and ingest keys.

A meter belongs to the region the meter registry gives it; a meter without a registered region is
visible to ADMIN (and to USERs it is assigned to) only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

# Whitespace as str.isspace() and str.strip() see it, spelled out so that every regex engine (Python's,
# the JSON Schema of the API, pydantic's) reads the same class.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# No NUL anywhere: no store of ours holds one in text (PostgreSQL refuses it outright).
EMAIL_PATTERN = rf"^[^@{WHITESPACE}\x00]+@[^@{WHITESPACE}\x00]+\.[^@.{WHITESPACE}\x00]+$"
_EMAIL = re.compile(EMAIL_PATTERN)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


class Role(StrEnum):
    USER = "USER"
    OPERATOR = "OPERATOR"
    ADMIN = "ADMIN"


class AccessDenied(Exception):
    """The user's role or assignments do not allow this."""


class InvalidUser(Exception):
    """A user's fields break a rule: the email, the password policy, or assignments that do not fit the role."""


def normalise_email(email: str) -> str:
    """Emails are compared trimmed and lower-cased; anything not shaped like name@domain.tld is refused."""
    value = email.strip()
    if len(value) > 320 or not _EMAIL.match(value):
        raise InvalidUser(f"{email!r} is not an email address")
    return value.lower()


def check_password_policy(password: str) -> None:
    """A password has 8 to 1024 characters and is not only whitespace."""
    if len(password) < MIN_PASSWORD_LENGTH or not password.strip():
        raise InvalidUser(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidUser(f"a password has at most {MAX_PASSWORD_LENGTH} characters")


def check_assignments(role: Role, meters: frozenset[str], regions: frozenset[str]) -> None:
    """USERs are assigned meters, OPERATORs regions, ADMINs nothing (they see everything)."""
    if role is Role.USER and regions:
        raise InvalidUser("a USER is assigned meters, not regions")
    if role is Role.OPERATOR and meters:
        raise InvalidUser("an OPERATOR is assigned regions, not meters")
    if role is Role.ADMIN and (meters or regions):
        raise InvalidUser("an ADMIN sees everything and takes no assignments")
    if any(not m.strip() for m in meters) or any(not r.strip() for r in regions):
        raise InvalidUser("meter ids and regions cannot be empty")


@dataclass(frozen=True, slots=True)
class Scope:
    """The part of the fleet a user may see: everything, the meters of some regions, or some meters."""

    everything: bool = False
    regions: frozenset[str] = field(default_factory=frozenset)
    meters: frozenset[str] = field(default_factory=frozenset)

    def allows_meter(self, meter_id: str, region: str | None) -> bool:
        if self.everything or meter_id in self.meters:
            return True
        return region is not None and region in self.regions

    def allows_region(self, region: str) -> bool:
        return self.everything or region in self.regions


@dataclass(frozen=True, slots=True)
class User:
    """A person with one role. `password_hash` is the hasher's encoded string, never the password.
    `security_stamp` is what the user's tokens carry: it changes with the password and when the
    user is deactivated, which ends every session issued before. `updated_at` is when the stored
    user last changed (the store sets it): a save names the version it replaces."""

    user_id: str
    email: str
    role: Role
    password_hash: str
    active: bool = True
    meters: frozenset[str] = field(default_factory=frozenset)
    regions: frozenset[str] = field(default_factory=frozenset)
    created_at: int = 0  # microseconds since the epoch
    security_stamp: str = ""
    updated_at: int = 0  # microseconds since the epoch

    def __post_init__(self) -> None:
        check_assignments(self.role, self.meters, self.regions)

    @property
    def scope(self) -> Scope:
        if self.role is Role.ADMIN:
            return Scope(everything=True)
        if self.role is Role.OPERATOR:
            return Scope(regions=self.regions)
        return Scope(meters=self.meters)

    def changed(
        self,
        *,
        role: Role | None = None,
        meters: frozenset[str] | None = None,
        regions: frozenset[str] | None = None,
        active: bool | None = None,
        password_hash: str | None = None,
    ) -> User:
        """A copy with the changes; a new role drops the assignments that no longer fit it unless new ones are given."""
        new_role = role or self.role
        keep_meters = self.meters if new_role is Role.USER else frozenset()
        keep_regions = self.regions if new_role is Role.OPERATOR else frozenset()
        return replace(
            self,
            role=new_role,
            meters=keep_meters if meters is None else meters,
            regions=keep_regions if regions is None else regions,
            active=self.active if active is None else active,
            password_hash=password_hash or self.password_hash,
        )

    def ends_sessions(self, changed: User) -> bool:
        """Whether going from this user to `changed` must end the sessions issued before: a new
        password, or a deactivation. (A new hash of the same password is not a new password: see
        `UserRepository.replace_password_hash`.)"""
        return changed.password_hash != self.password_hash or (self.active and not changed.active)

    # -- what the role allows -------------------------------------------------------------------

    def require(self, *roles: Role) -> None:
        if self.role not in roles:
            raise AccessDenied(f"this needs the role {' or '.join(r.value for r in roles)}")

    def require_meter(self, meter_id: str, region: str | None) -> None:
        if not self.scope.allows_meter(meter_id, region):
            raise AccessDenied(f"meter {meter_id!r} is not assigned to you")

    def require_region(self, region: str) -> None:
        self.require(Role.ADMIN, Role.OPERATOR)
        if not self.scope.allows_region(region):
            raise AccessDenied(f"region {region!r} is not assigned to you")

    def require_meter_management(self, *regions: str | None) -> None:
        """ADMINs register and update any meter; OPERATORs only inside their regions (old and new)."""
        self.require(Role.ADMIN, Role.OPERATOR)
        if self.role is Role.OPERATOR:
            for region in regions:
                if region is None or region not in self.regions:
                    raise AccessDenied("an OPERATOR manages meters of their own regions only")
