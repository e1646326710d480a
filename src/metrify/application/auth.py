"""Signing in: short-lived access tokens, rotating refresh tokens, and revocation (issue 7).

An access token proves who is calling for `access_ttl`; a refresh token buys a new pair once
(it is revoked on use) until `refresh_ttl`. Logging out revokes both. Revocations live in the
Cache port until the token would have expired anyway. Every request reloads the user, so a
deactivated user or a changed role takes effect at once, whatever tokens are out there.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from metrify.application.errors import AuthenticationFailed
from metrify.application.ports import Cache, Clock
from metrify.application.rate_limits import RateLimit
from metrify.application.users import PasswordHasher, UserRepository
from metrify.domain.stream.config import US
from metrify.domain.users import InvalidUser, User, normalise_email

ACCESS = "access"
REFRESH = "refresh"
_BAD_LOGIN = "wrong email or password"


class TokenCodec(Protocol):
    """Signs claims into a token and checks a token's signature and expiry."""

    def encode(self, claims: Mapping[str, Any]) -> str: ...

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; AuthenticationFailed when it is tampered with, expired or malformed."""
        ...


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token lives
    refresh_expires_in: int


class AuthService:
    def __init__(
        self,
        users: UserRepository,
        hasher: PasswordHasher,
        codec: TokenCodec,
        cache: Cache,
        clock: Clock,
        *,
        access_ttl: float,
        refresh_ttl: float,
        login_limit: RateLimit,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.codec = codec
        self.cache = cache
        self.clock = clock
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.login_limit = login_limit
        self._dummy_hash: str | None = None

    def login(self, email: str, password: str) -> TokenPair:
        """A token pair for the right email and password of an active user. Attempts per email are
        rate-limited, and an unknown email costs as much as a wrong password (no user enumeration)."""
        try:
            address = normalise_email(email)
        except InvalidUser:
            address = email.strip().lower()
        self.login_limit.check(self.cache, f"login:{address}", self.clock.now_us())
        user = self.users.by_email(address)
        if user is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(uuid.uuid4().hex)
            self.hasher.verify(self._dummy_hash, password)
            raise AuthenticationFailed(_BAD_LOGIN)
        if not self.hasher.verify(user.password_hash, password) or not user.active:
            raise AuthenticationFailed(_BAD_LOGIN)
        if self.hasher.needs_rehash(user.password_hash):
            user = user.changed(password_hash=self.hasher.hash(password))
            self.users.save(user)
        return self._issue(user)

    def refresh(self, refresh_token: str) -> TokenPair:
        """A new pair for a valid refresh token, which is revoked: each refresh token works once."""
        claims = self._claims(refresh_token, REFRESH)
        user = self._active_user(claims)
        self._revoke(claims)
        return self._issue(user)

    def logout(self, access_claims: Mapping[str, Any], refresh_token: str | None = None) -> None:
        """Revoke the access token in use and, when given, the same user's refresh token."""
        self._revoke(access_claims)
        if refresh_token:
            try:
                claims = self._claims(refresh_token, REFRESH)
            except AuthenticationFailed:
                return
            if claims.get("sub") == access_claims.get("sub"):
                self._revoke(claims)

    def authenticate(self, access_token: str) -> tuple[User, dict[str, Any]]:
        """The active user an access token speaks for, with its claims."""
        claims = self._claims(access_token, ACCESS)
        return self._active_user(claims), claims

    # ---------------------------------------------------------------------------------------

    def _issue(self, user: User) -> TokenPair:
        now = self.clock.now_us() // US
        access_ttl, refresh_ttl = max(1, round(self.access_ttl)), max(1, round(self.refresh_ttl))
        base = {"iss": "metrify", "sub": user.user_id, "role": user.role.value, "iat": now}
        access = self.codec.encode({**base, "typ": ACCESS, "jti": uuid.uuid4().hex, "exp": now + access_ttl})
        refresh = self.codec.encode({**base, "typ": REFRESH, "jti": uuid.uuid4().hex, "exp": now + refresh_ttl})
        return TokenPair(access, refresh, access_ttl, refresh_ttl)

    def _claims(self, token: str, kind: str) -> dict[str, Any]:
        claims = self.codec.decode(token)
        if claims.get("typ") != kind:
            raise AuthenticationFailed(f"not an {kind} token" if kind == ACCESS else f"not a {kind} token")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not isinstance(claims.get("sub"), str):
            raise AuthenticationFailed("the token lacks its subject or id")
        if self.cache.get(f"revoked:{jti}") is not None:
            raise AuthenticationFailed("the token has been revoked")
        return claims

    def _active_user(self, claims: Mapping[str, Any]) -> User:
        user = self.users.get(claims["sub"])
        if user is None or not user.active:
            raise AuthenticationFailed("the user does not exist or is deactivated")
        return user

    def _revoke(self, claims: Mapping[str, Any]) -> None:
        exp = claims.get("exp")
        remaining = (exp - self.clock.now_us() / US) if isinstance(exp, int | float) else self.refresh_ttl
        self.cache.set(f"revoked:{claims['jti']}", b"1", max(1.0, remaining + 1))
