"""Signing in: short-lived access tokens, rotating refresh tokens, and revocation (issue 7).

An access token proves who is calling for `access_ttl`; a refresh token buys a new pair once
(it is claimed atomically on use: two requests racing with one token get one pair) until
`refresh_ttl`. The tokens of one sign-in share a session id (`sid`) through every refresh, and
logging out revokes the session: the access token in use and every refresh token of that sign-in.
Revocations live in the Cache port until the token would have expired anyway; where that cache is
the process's own (no Redis), each one is written to a RevocationLog too, which the next process
reads back when it starts (`restore_revocations`): a restart forgets no logout. Every request
reloads the user, so a deactivated user or a changed role takes effect at once, and tokens carry the
user's security stamp (`pwd`), which a new password or a deactivation changes: either ends every
session issued before, and a reactivated user's old tokens stay dead.
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
# Seconds after a refresh token's use in which presenting it again is refused without ending its
# session: two tabs refreshing at once, or a client retrying after a lost answer, are no theft.
REUSE_GRACE = 10.0


class TokenCodec(Protocol):
    """Signs claims into a token and checks a token's signature and expiry."""

    def encode(self, claims: Mapping[str, Any]) -> str: ...

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a valid token; AuthenticationFailed when it is tampered with, expired or malformed."""
        ...


class RevocationLog(Protocol):
    """Revocations kept where they outlive the process (the database), for a cache that does not."""

    def append(self, key: str, expires_at_us: int, now_us: int) -> None:
        """Keep `key` revoked until `expires_at_us` (a later expiry of the same key wins); the
        revocations expired by `now_us` may go."""
        ...

    def live(self, now_us: int) -> list[tuple[str, int]]:
        """The revocations not expired at `now_us`: (key, expires_at_us)."""
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
        login_client_limit: RateLimit | None = None,
        revocation_log: RevocationLog | None = None,
    ) -> None:
        self.users = users
        self.hasher = hasher
        self.codec = codec
        self.cache = cache
        self.clock = clock
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.login_limit = login_limit
        self.login_client_limit = login_client_limit
        self.revocation_log = revocation_log
        self._dummy_hash: str | None = None

    def restore_revocations(self) -> int:
        """Put the revocations of the log that have not expired back into the cache (at start);
        how many there were."""
        if self.revocation_log is None:
            return 0
        now = self.clock.now_us()
        live = self.revocation_log.live(now)
        for key, expires_at in live:
            self.cache.set(key, b"1", (expires_at - now) / US)
        return len(live)

    def login(self, email: str, password: str, client: str | None = None) -> TokenPair:
        """A token pair for the right email and password of an active user. Attempts are
        rate-limited per email (guessing one user's password) and per client address, when it is
        known (trying one password on many users), and an unknown email costs as much as a wrong
        password (no user enumeration). A client address counts its failed attempts only: behind a
        proxy that does not forward the clients' addresses, every client has the proxy's, and
        signing in as oneself must not use up what everyone shares."""
        now = self.clock.now_us()
        by_client = None if client is None or self.login_client_limit is None else f"login-client:{client}"
        if by_client is not None and self.login_client_limit is not None:
            self.login_client_limit.refuse_when_spent(self.cache, by_client, now)
        try:
            return self._login(email, password, now)
        except AuthenticationFailed:
            if by_client is not None and self.login_client_limit is not None:
                self.login_client_limit.count(self.cache, by_client, now)
            raise

    def _login(self, email: str, password: str, now: int) -> TokenPair:
        try:
            address, valid = normalise_email(email), True
        except InvalidUser:
            address, valid = email.strip().lower(), False
        self.login_limit.check(self.cache, f"login:{address}", now)
        # Every user's address is a valid one: another is not looked up (PostgreSQL could not look
        # one holding NUL up at all).
        user = self.users.by_email(address) if valid else None
        if user is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(uuid.uuid4().hex)
            self.hasher.verify(self._dummy_hash, password)
            raise AuthenticationFailed(_BAD_LOGIN)
        if not self.hasher.verify(user.password_hash, password) or not user.active:
            raise AuthenticationFailed(_BAD_LOGIN)
        if self.hasher.needs_rehash(user.password_hash):
            # Only the hash, and only if it is still the one verified: the user read above may be
            # stale by now (an ADMIN deactivated or demoted them during the slow verify), and
            # saving it whole would undo that change.
            # A hash changed meanwhile means a new password: the one given here is not it.
            rehashed = self.hasher.hash(password)
            if not self.users.replace_password_hash(user.user_id, user.password_hash, rehashed):
                raise AuthenticationFailed(_BAD_LOGIN)
            user = self.users.get(user.user_id)
            if user is None or not user.active or user.password_hash != rehashed:
                raise AuthenticationFailed(_BAD_LOGIN)
        return self._issue(user)

    def refresh(self, refresh_token: str) -> TokenPair:
        """A new pair, of the same session, for a valid refresh token, which is revoked by this
        call: each refresh token works once, however many requests race with it. A refresh token
        that comes back after it was used means two parties hold the session (one of them stole
        it): the session ends, for both (OAuth 2.0 Security BCP, refresh token rotation), unless it
        comes back within REUSE_GRACE seconds of its use."""
        try:
            claims = self._claims(refresh_token, REFRESH)
        except AuthenticationFailed:
            self._end_session_of_reused(refresh_token)
            raise
        user = self._active_user(claims)
        if not self._revoke(claims):  # claimed by a request racing this one: no reuse, no harm
            raise AuthenticationFailed("the token has been revoked")
        return self._issue(user, claims["sid"])

    def logout(self, access_claims: Mapping[str, Any], refresh_token: str | None = None) -> None:
        """Revoke the access token in use and its session (every refresh token of that sign-in);
        a refresh token given as well, of the same user, is revoked too."""
        self._revoke(access_claims)
        self._end_session(access_claims["sid"])
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

    def _issue(self, user: User, session: str | None = None) -> TokenPair:
        now = self.clock.now_us() // US
        access_ttl, refresh_ttl = max(1, round(self.access_ttl)), max(1, round(self.refresh_ttl))
        base = {
            "iss": "metrify",
            "sub": user.user_id,
            "role": user.role.value,
            "iat": now,
            "sid": session or uuid.uuid4().hex,
            "pwd": user.security_stamp,
        }
        access = self.codec.encode({**base, "typ": ACCESS, "jti": uuid.uuid4().hex, "exp": now + access_ttl})
        refresh = self.codec.encode({**base, "typ": REFRESH, "jti": uuid.uuid4().hex, "exp": now + refresh_ttl})
        return TokenPair(access, refresh, access_ttl, refresh_ttl)

    def _claims(self, token: str, kind: str) -> dict[str, Any]:
        claims = self.codec.decode(token)
        if claims.get("typ") != kind:
            raise AuthenticationFailed(f"not an {kind} token" if kind == ACCESS else f"not a {kind} token")
        jti, sid = claims.get("jti"), claims.get("sid")
        if not all(isinstance(claims.get(name), str) for name in ("jti", "sub", "sid", "pwd")):
            raise AuthenticationFailed("the token lacks its subject, id, session or password fingerprint")
        if self.cache.get(f"revoked:{jti}") is not None or self.cache.get(f"revoked-session:{sid}") is not None:
            raise AuthenticationFailed("the token has been revoked")
        return claims

    def _active_user(self, claims: Mapping[str, Any]) -> User:
        user = self.users.get(claims["sub"])
        if user is None or not user.active:
            raise AuthenticationFailed("the user does not exist or is deactivated")
        if claims["pwd"] != user.security_stamp:
            raise AuthenticationFailed(
                "the password has changed, or the user was deactivated, since the token was issued"
            )
        return user

    def _end_session(self, session: str) -> None:
        """Revoke every token of the session, for as long as any of them may live: a refresh
        token, or an access token where access tokens are set to live longer."""
        key, lasting = f"revoked-session:{session}", max(self.access_ttl, self.refresh_ttl) + 1
        self.cache.set(key, b"1", lasting)
        self._log(key, lasting)

    def _end_session_of_reused(self, refresh_token: str) -> None:
        """End the session of a genuine refresh token that was used already (revoked on its own,
        its session still live)."""
        try:
            claims = self.codec.decode(refresh_token)
        except AuthenticationFailed:
            return  # not one of ours, or expired: nothing to end
        jti, session = claims.get("jti"), claims.get("sid")
        if claims.get("typ") != REFRESH or not isinstance(jti, str) or not isinstance(session, str):
            return
        used = self.cache.get(f"revoked:{jti}")
        if used is None or self.cache.get(f"revoked-session:{session}") is not None:
            return
        if used.isdigit() and self.clock.now_us() - int(used) < REUSE_GRACE * US:
            return  # a second tab, or a retry after a lost answer: refused, and nothing more
        self._end_session(session)

    def _revoke(self, claims: Mapping[str, Any]) -> bool:
        """Revoke a token until it would have expired; False when it was revoked already."""
        exp = claims.get("exp")
        remaining = (exp - self.clock.now_us() / US) if isinstance(exp, int | float) else self.refresh_ttl
        key, ttl = f"revoked:{claims['jti']}", max(1.0, remaining + 1)
        if not self.cache.add(key, str(self.clock.now_us()).encode(), ttl):  # when: see REUSE_GRACE
            return False
        self._log(key, ttl)
        return True

    def _log(self, key: str, ttl_seconds: float) -> None:
        if self.revocation_log is not None:
            now = self.clock.now_us()
            self.revocation_log.append(key, now + round(ttl_seconds * US), now)
