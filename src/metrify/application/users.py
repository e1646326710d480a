"""Managing users: the first ADMIN from the command line, then ADMINs over the API (issue 7)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

from metrify.application.errors import AlreadyExists, Conflict, NotFound
from metrify.application.ports import Clock
from metrify.domain.users import Role, User, check_assignments, check_password_policy, normalise_email


class UserRepository(Protocol):
    """Users with their assignments; each call is its own transaction."""

    def get(self, user_id: str) -> User | None: ...

    def by_email(self, email: str) -> User | None: ...

    def add(self, user: User) -> None:
        """Store a new user; AlreadyExists when the email is taken."""
        ...

    def save(self, user: User, previous: User, *, keep_an_admin: bool = False) -> bool:
        """Replace the stored user's fields and assignments with `user`'s, in one transaction, if
        the stored user is still `previous` (same `updated_at`); False, and nothing saved, when it
        changed meanwhile (the caller reads it again and redoes its change on what is there now).
        With `keep_an_admin`, raises LastActiveAdmin, and saves nothing, when no active ADMIN
        would be left: checked in the same transaction, against concurrent saves as well."""
        ...

    def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Set the user's password hash to `new_hash` if it is still `old_hash`, touching nothing
        else (the security stamp neither: the same password hashed anew ends no session); False
        when it had changed meanwhile (or the user is gone)."""
        ...

    def list(self, after_email: str | None, limit: int) -> list[User]:
        """Users ordered by email, those after `after_email` only."""
        ...

    def count_active_admins(self) -> int: ...


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password_hash: str, password: str) -> bool:
        """True when the password matches; False (never an exception) otherwise."""
        ...

    def needs_rehash(self, password_hash: str) -> bool: ...


class LastActiveAdmin(Conflict):
    """The change would leave no active ADMIN."""

    def __init__(self) -> None:
        super().__init__("the last active ADMIN cannot be demoted or deactivated")


# How often an update is redone on a user that another request changed meanwhile.
UPDATE_ATTEMPTS = 5


def new_security_stamp() -> str:
    return uuid.uuid4().hex


def _names(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(v.strip() for v in values)


class UserAdmin:
    """Create, list, change and deactivate users. There is always at least one active ADMIN."""

    def __init__(self, users: UserRepository, hasher: PasswordHasher, clock: Clock) -> None:
        self.users = users
        self.hasher = hasher
        self.clock = clock

    def create(
        self,
        email: str,
        password: str,
        role: Role,
        meters: Iterable[str] = (),
        regions: Iterable[str] = (),
    ) -> User:
        address = normalise_email(email)
        check_password_policy(password)
        assigned_meters, assigned_regions = _names(meters) or frozenset(), _names(regions) or frozenset()
        check_assignments(role, assigned_meters, assigned_regions)
        if self.users.by_email(address) is not None:
            raise AlreadyExists(f"a user with the email {address} exists already")
        now = self.clock.now_us()
        user = User(
            user_id=uuid.uuid4().hex,
            email=address,
            role=role,
            password_hash=self.hasher.hash(password),
            meters=assigned_meters,
            regions=assigned_regions,
            created_at=now,
            security_stamp=new_security_stamp(),
            updated_at=now,
        )
        self.users.add(user)
        return user

    def get(self, user_id: str) -> User:
        user = self.users.get(user_id)
        if user is None:
            raise NotFound(f"no user {user_id!r}")
        return user

    def list(self, after_email: str | None, limit: int) -> list[User]:
        return self.users.list(after_email, limit)

    def update(
        self,
        actor: User,
        user_id: str,
        *,
        role: Role | None = None,
        meters: Iterable[str] | None = None,
        regions: Iterable[str] | None = None,
        active: bool | None = None,
        password: str | None = None,
    ) -> User:
        """Change a user; a new role drops assignments that no longer fit. An ADMIN cannot demote or
        deactivate themselves, and the last active ADMIN cannot be demoted or deactivated. A new
        password or a deactivation ends the user's sessions (a new security stamp). The change is
        applied to the user as stored when it is saved: one made by another request meanwhile is
        kept, not overwritten."""
        actor.require(Role.ADMIN)
        password_hash = None
        if password is not None:
            check_password_policy(password)
            password_hash = self.hasher.hash(password)
        for _ in range(UPDATE_ATTEMPTS):
            user = self.get(user_id)
            changed = user.changed(
                role=role, meters=_names(meters), regions=_names(regions), active=active, password_hash=password_hash
            )
            if user.ends_sessions(changed):
                changed = replace(changed, security_stamp=new_security_stamp())
            loses_admin = (
                user.role is Role.ADMIN and user.active and (changed.role is not Role.ADMIN or not changed.active)
            )
            if loses_admin and user.user_id == actor.user_id:
                raise Conflict("an ADMIN cannot demote or deactivate themselves")
            if self.users.save(changed, user, keep_an_admin=loses_admin):
                return changed
        raise Conflict(f"user {user_id!r} kept being changed by other requests; try again")

    def deactivate(self, actor: User, user_id: str) -> User:
        return self.update(actor, user_id, active=False)
