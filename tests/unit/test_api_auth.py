"""Signing in, refreshing, logging out, and every way a token is refused (API on in-memory fakes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
from tests.support.api import PASSWORD, SECRET, Api, Fakes, api_settings, fast_hasher, memory_container, running_api

from metrify.adapters.crypto import Argon2PasswordHasher, JwtTokenCodec
from metrify.adapters.memory.bus import InMemoryCache
from metrify.adapters.memory.users import InMemoryUserRepository
from metrify.adapters.system import SystemClock
from metrify.application.auth import REUSE_GRACE, AuthService
from metrify.application.errors import AuthenticationFailed, RateLimited
from metrify.application.rate_limits import RateLimit
from metrify.domain.users import Role, User
from metrify.settings import AuthSettings


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = api_settings(tmp_path, auth=AuthSettings(secret=SECRET, login_rate_limit=3, user_rate_limit=50))
    with running_api(memory_container(settings, Fakes()), settings) as api:
        yield api


def me(api: Api, token: str) -> int:
    return api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code


def test_the_password_form_gives_an_access_and_a_refresh_token(api: Api) -> None:
    tokens = api.sign_in("admin@example.com")
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    claims = jwt.decode(tokens["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == api.users[Role.ADMIN].user_id and claims["role"] == "ADMIN" and claims["typ"] == "access"
    assert me(api, tokens["access_token"]) == 200


@pytest.mark.parametrize(
    ("email", "password"), [("admin@example.com", "wrong password!"), ("nobody@example.com", PASSWORD), ("", "")]
)
def test_a_wrong_password_or_an_unknown_email_is_one_401_problem(api: Api, email: str, password: str) -> None:
    response = api.client.post("/api/v1/auth/token", data={"username": email, "password": password})
    assert response.status_code in (401, 422)
    assert response.headers["content-type"] == "application/problem+json"
    if response.status_code == 401:
        assert response.json()["detail"] == "wrong email or password"


def test_sign_in_attempts_are_rate_limited_per_email_with_retry_after(api: Api) -> None:
    statuses = [
        api.client.post(
            "/api/v1/auth/token", data={"username": "user@example.com", "password": "nope-nope"}
        ).status_code
        for _ in range(5)
    ]
    assert statuses[-1] == 429 and 401 in statuses
    limited = api.client.post("/api/v1/auth/token", data={"username": "user@example.com", "password": PASSWORD})
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.json()["type"] == "urn:metrify:problem:rate-limited"


def test_sign_in_attempts_are_rate_limited_per_client_address_too(tmp_path: Path) -> None:
    """One password tried on many users (password spraying) is one client's attempts."""
    auth = AuthSettings(secret=SECRET, login_rate_limit=10, login_client_rate_limit=4)
    settings = api_settings(tmp_path, auth=auth)
    with running_api(memory_container(settings, Fakes()), settings) as api:
        for _ in range(6):  # signing in as oneself uses none of it (all behind one proxy share it)
            assert me(api, api.sign_in("user@example.com")["access_token"]) == 200
        statuses = [
            api.client.post(
                "/api/v1/auth/token", data={"username": f"user{n}@example.com", "password": "Summer2026!"}
            ).status_code
            for n in range(6)
        ]
        assert statuses == [401] * 4 + [429] * 2  # (the sign-ins of running_api's users succeeded: not counted)
        assert (
            1
            <= int(
                api.client.post("/api/v1/auth/token", data={"username": "a@b.cd", "password": "x" * 8}).headers[
                    "retry-after"
                ]
            )
            <= 60
        )


def test_a_refresh_token_works_once_and_buys_a_new_pair(api: Api) -> None:
    tokens = api.sign_in("operator@example.com")
    first = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    assert me(api, first.json()["access_token"]) == 200
    again = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401 and "revoked" in again.json()["detail"]


def test_a_used_refresh_token_that_comes_back_within_seconds_is_refused_alone(api: Api) -> None:
    """A second tab refreshing at once, or a retry after a lost answer: no theft."""
    tokens = api.sign_in("operator@example.com")
    rotated = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
    again = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401
    assert me(api, rotated["access_token"]) == 200


class _Clock:
    def __init__(self) -> None:
        self.now = time.time_ns() // 1000

    def now_us(self) -> int:
        return self.now


def test_a_used_refresh_token_that_comes_back_later_ends_the_session() -> None:
    """Whoever holds the rotated pair (the thief, or the user) loses it too: both must sign in."""
    users, clock = InMemoryUserRepository(), _Clock()
    _stored_user(users)
    service = AuthService(
        users, fast_hasher(), JwtTokenCodec(SECRET), InMemoryCache(), clock,
        access_ttl=900, refresh_ttl=3600, login_limit=RateLimit(0, 60),
    )  # fmt: skip
    stolen = service.login("user@example.com", PASSWORD)
    other = service.login("user@example.com", PASSWORD)  # another sign-in: its own session, untouched
    rotated = service.refresh(stolen.refresh_token)
    clock.now += round(REUSE_GRACE * 1_000_000)
    with pytest.raises(AuthenticationFailed):
        service.refresh(stolen.refresh_token)
    for refused in (lambda: service.authenticate(rotated.access_token), lambda: service.refresh(rotated.refresh_token)):
        with pytest.raises(AuthenticationFailed, match="revoked"):
            refused()
    assert service.authenticate(other.access_token)[0].email == "user@example.com"


def test_logout_revokes_the_access_token_and_the_refresh_token(api: Api) -> None:
    tokens = api.sign_in("user@example.com")
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    response = api.client.post("/api/v1/auth/logout", json={"refresh_token": tokens["refresh_token"]}, headers=headers)
    assert response.status_code == 204
    assert me(api, tokens["access_token"]) == 401
    refreshed = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401


def forge(claims_changes: dict, secret: str = SECRET, **base: object) -> str:
    now = int(time.time())
    claims = {"iss": "metrify", "sub": "x", "role": "ADMIN", "typ": "access", "jti": "j1", "iat": now, "exp": now + 60}
    claims["sid"], claims["pwd"] = "s1", "0" * 16
    claims.update(base)
    claims.update(claims_changes)
    return jwt.encode(claims, secret, algorithm="HS256")


def test_expired_tampered_foreign_and_refresh_tokens_are_refused_as_access_tokens(api: Api) -> None:
    admin_id = api.users[Role.ADMIN].user_id
    pwd = api.users[Role.ADMIN].security_stamp
    good = api.tokens[Role.ADMIN]
    head, body, signature = good.split(".")
    tampered_body = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b'"ADMIN"', b'"ADMIM"')
    ).decode()
    refresh = api.sign_in("admin@example.com")["refresh_token"]
    refused = {
        "expired": forge({"exp": int(time.time()) - 5}, sub=admin_id, pwd=pwd),
        "issued under another password": forge({}, sub=admin_id),
        "no session": forge({"sid": None}, sub=admin_id, pwd=pwd),
        "tampered signature": f"{head}.{body}.{signature[:-4]}AAAA",
        "tampered claims": f"{head}.{tampered_body}.{signature}",
        "other secret": forge({}, secret="another-secret-of-32-characters-or-more", sub=admin_id, pwd=pwd),
        "other issuer": forge({"iss": "someone"}, sub=admin_id, pwd=pwd),
        "no jti": jwt.encode({"sub": admin_id, "typ": "access", "iss": "metrify", "exp": time.time() + 60}, SECRET),
        "unknown user": forge({}, sub="nobody"),
        "refresh token": refresh,
        "not a token": "hello",
        "alg none": jwt.encode({"sub": admin_id, "typ": "access"}, None, algorithm="none"),
    }
    for name, token in refused.items():
        response = api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, name
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
    assert me(api, forge({}, sub=admin_id, pwd=pwd)) == 200  # the forger's recipe is right: only the flaws count


def test_no_token_is_401_and_a_wrong_role_is_403(api: Api) -> None:
    assert api.client.get("/api/v1/users").status_code == 401
    for role in (Role.USER, Role.OPERATOR):
        response = api.client.get("/api/v1/users", headers=api.headers(role))
        assert response.status_code == 403
        assert response.json()["type"] == "urn:metrify:problem:forbidden"
    assert api.client.get("/api/v1/users", headers=api.headers(Role.ADMIN)).status_code == 200


def test_a_deactivated_user_is_refused_at_once_whatever_tokens_they_hold(api: Api) -> None:
    user = api.users[Role.USER]
    token = api.tokens[Role.USER]
    assert me(api, token) == 200
    response = api.client.post(f"/api/v1/users/{user.user_id}/deactivate", headers=api.headers(Role.ADMIN))
    assert response.status_code == 200 and response.json()["active"] is False
    assert me(api, token) == 401
    signed_in = api.client.post("/api/v1/auth/token", data={"username": user.email, "password": PASSWORD})
    assert signed_in.status_code == 401


def test_a_role_change_applies_to_tokens_already_out(api: Api) -> None:
    user = api.users[Role.USER]
    token = api.tokens[Role.USER]
    assert api.client.get("/api/v1/stream/summary", headers={"Authorization": f"Bearer {token}"}).status_code == 403
    changed = api.client.patch(
        f"/api/v1/users/{user.user_id}",
        json={"role": "OPERATOR", "regions": ["north"]},
        headers=api.headers(Role.ADMIN),
    )
    assert changed.status_code == 200 and changed.json()["meters"] == []
    assert api.client.get("/api/v1/stream/summary", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_each_user_is_rate_limited_with_429_and_retry_after(api: Api) -> None:
    headers = api.headers(Role.USER)
    statuses = [api.client.get("/api/v1/auth/me", headers=headers).status_code for _ in range(55)]
    assert statuses[0] == 200 and statuses[-1] == 429
    limited = api.client.get("/api/v1/auth/me", headers=headers)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert api.client.get("/api/v1/auth/me", headers=api.headers(Role.ADMIN)).status_code == 200  # per user


def test_a_rate_limit_window_opens_with_the_first_request_and_keeps_one_counter() -> None:
    cache = InMemoryCache(clock=lambda: now[0] / 1e6)
    now = [1_000_000_000]
    limit = RateLimit(2, 60)
    limit.check(cache, "u", now[0])
    now[0] += 20_000_000
    limit.check(cache, "u", now[0])
    with pytest.raises(RateLimited) as refused:
        limit.check(cache, "u", now[0] + 5_000_000)
    assert refused.value.retry_after == 35
    now[0] += 41_000_000  # the window has passed: a fresh one
    limit.check(cache, "u", now[0])
    assert len(cache._items) == 2  # the counter and its opening time, however many windows
    RateLimit(0, 60).check(cache, "v", now[0])


def test_expired_counters_of_subjects_never_seen_again_do_not_pile_up() -> None:
    now = [0.0]
    cache = InMemoryCache(clock=lambda: now[0])
    limit = RateLimit(5, 60)
    for n in range(20_000):  # sign-in attempts, each with another address, a second apart
        now[0] = float(n)
        limit.check(cache, f"login:someone-{n}@example.com", round(now[0] * 1e6))
    # a minute's counters (two keys each) are live; the rest have expired and gone but for the
    # ones since the last sweep, which at most doubles what is live
    assert len(cache) <= 2 * max(InMemoryCache.SWEEP_FLOOR, 2 * 2 * 60)
    assert cache.get("rate:login:someone-19999@example.com") == b"1"


def test_a_long_subject_is_counted_under_a_short_key() -> None:
    cache = InMemoryCache()
    limit = RateLimit(1, 60)
    subject = "login:" + "x" * 1_000_000
    limit.check(cache, subject, 0)
    with pytest.raises(RateLimited):
        limit.check(cache, subject, 1)  # still counted as the same subject
    limit.check(cache, subject + "y", 2)  # another one
    assert max(len(key) for key in cache._items) < 300


def test_a_changed_password_ends_every_session_issued_before(api: Api) -> None:
    stolen = api.sign_in("user@example.com")
    user_id = api.users[Role.USER].user_id
    changed = api.client.patch(
        f"/api/v1/users/{user_id}", json={"password": "a brand new password"}, headers=api.headers(Role.ADMIN)
    )
    assert changed.status_code == 200
    assert me(api, stolen["access_token"]) == 401
    assert api.client.post("/api/v1/auth/refresh", json={"refresh_token": stolen["refresh_token"]}).status_code == 401
    fresh = api.sign_in("user@example.com", "a brand new password")
    assert me(api, fresh["access_token"]) == 200


def test_logging_out_ends_the_session_refresh_tokens_included(api: Api) -> None:
    tokens = api.sign_in("user@example.com")
    rotated = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
    other = api.sign_in("user@example.com")  # another sign-in of the same user: its own session
    out = api.client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {rotated['access_token']}"})
    assert out.status_code == 204
    assert api.client.post("/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}).status_code == 401
    assert me(api, other["access_token"]) == 200


def test_a_refresh_token_raced_by_two_requests_gives_one_pair(api: Api) -> None:
    tokens = api.sign_in("user@example.com")
    auth = api.client.app.state.services.auth
    both_checked = threading.Barrier(2, timeout=5)
    users = auth.users

    class Slow:  # both requests past the revocation check before either claims the token
        def __getattr__(self, name: str) -> object:
            return getattr(users, name)

        def get(self, user_id: str) -> object:
            found = users.get(user_id)
            both_checked.wait()
            return found

    auth.users = Slow()
    statuses: list[int] = []

    def refresh() -> None:
        response = api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        statuses.append(response.status_code)

    racers = [threading.Thread(target=refresh) for _ in range(2)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    auth.users = users
    assert sorted(statuses) == [200, 401]


class _MidLoginHasher(Argon2PasswordHasher):
    """Real argon2, whose stored hashes all need a rehash, and which lets something happen while
    a password is being verified (what an ADMIN does during a slow login)."""

    def __init__(self, during_verify: Callable[[], None]) -> None:
        super().__init__(fast_hasher().hasher)
        self.during_verify = during_verify

    def verify(self, password_hash: str, password: str) -> bool:
        self.during_verify()
        return super().verify(password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return True


def _auth_service(users: InMemoryUserRepository, hasher: _MidLoginHasher) -> AuthService:
    return AuthService(
        users,
        hasher,
        JwtTokenCodec(SECRET),
        InMemoryCache(),
        SystemClock(),
        access_ttl=900,
        refresh_ttl=3600,
        login_limit=RateLimit(0, 60),
    )


def _stored_user(users: InMemoryUserRepository) -> User:
    user = User("u-1", "user@example.com", Role.OPERATOR, fast_hasher().hash(PASSWORD), security_stamp="s-1")
    users.add(user)
    return user


def _change(users: InMemoryUserRepository, user_id: str, **changes: object) -> Callable[[], None]:
    """What another request saves: the change, on the user as stored when it runs."""

    def change() -> None:
        stored = users.users[user_id]
        assert users.save(stored.changed(**changes), stored)  # type: ignore[arg-type]

    return change


def test_a_login_that_rehashes_the_password_keeps_a_deactivation_made_during_it() -> None:
    users = InMemoryUserRepository()
    user = _stored_user(users)
    service = _auth_service(users, _MidLoginHasher(_change(users, user.user_id, active=False)))
    with pytest.raises(AuthenticationFailed):
        service.login("user@example.com", PASSWORD)
    stored = users.users[user.user_id]
    assert stored.active is False  # the login did not write its stale copy back


def test_a_login_that_rehashes_keeps_a_role_change_made_during_it_and_stores_the_new_hash() -> None:
    users = InMemoryUserRepository()
    user = _stored_user(users)
    demote = _change(users, user.user_id, role=Role.USER)
    tokens = _auth_service(users, _MidLoginHasher(demote)).login("user@example.com", PASSWORD)
    stored = users.users[user.user_id]
    assert stored.role is Role.USER and stored.password_hash != user.password_hash
    assert jwt.decode(tokens.access_token, SECRET, algorithms=["HS256"])["role"] == "USER"


def test_a_login_with_the_old_password_fails_when_the_password_is_changed_during_it() -> None:
    users = InMemoryUserRepository()
    user = _stored_user(users)
    new_hash = fast_hasher().hash("another good passphrase")
    change = _change(users, user.user_id, password_hash=new_hash)
    with pytest.raises(AuthenticationFailed):
        _auth_service(users, _MidLoginHasher(change)).login("user@example.com", PASSWORD)
    assert users.users[user.user_id].password_hash == new_hash


def test_a_login_that_rehashes_the_password_ends_no_other_session() -> None:
    users = InMemoryUserRepository()
    user = _stored_user(users)
    service = _auth_service(users, _MidLoginHasher(lambda: None))
    first = service.login("user@example.com", PASSWORD)
    second = service.login("user@example.com", PASSWORD)  # the same password, hashed anew
    assert users.users[user.user_id].password_hash != user.password_hash
    for tokens in (first, second):
        assert service.authenticate(tokens.access_token)[0].user_id == user.user_id
    assert service.refresh(first.refresh_token).access_token


def test_a_reactivated_user_gets_none_of_their_old_sessions_back(api: Api) -> None:
    user = api.users[Role.USER]
    before = api.sign_in("user@example.com")
    for active in (False, True):
        response = api.client.patch(
            f"/api/v1/users/{user.user_id}", json={"active": active}, headers=api.headers(Role.ADMIN)
        )
        assert response.status_code == 200 and response.json()["active"] is active
    assert me(api, before["access_token"]) == 401
    assert api.client.post("/api/v1/auth/refresh", json={"refresh_token": before["refresh_token"]}).status_code == 401
    assert me(api, api.sign_in("user@example.com")["access_token"]) == 200  # a new sign-in works


def test_logouts_and_used_refresh_tokens_stay_revoked_after_a_restart(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, auth=AuthSettings(secret=SECRET))
    fakes = Fakes()  # the storage, the revocation log included, outlives the API process
    with running_api(memory_container(settings, fakes), settings) as first:
        signed_in = first.sign_in("user@example.com")
        used = first.sign_in("operator@example.com")
        fresh = first.client.post("/api/v1/auth/refresh", json={"refresh_token": used["refresh_token"]}).json()
        headers = {"Authorization": f"Bearer {signed_in['access_token']}"}
        body = {"refresh_token": signed_in["refresh_token"]}
        assert first.client.post("/api/v1/auth/logout", json=body, headers=headers).status_code == 204
    with running_api(memory_container(settings, fakes), settings) as second:  # a new process
        assert me(second, signed_in["access_token"]) == 401
        assert me(second, fresh["access_token"]) == 200  # what was not revoked still works
        for refresh_token in (signed_in["refresh_token"], used["refresh_token"]):
            again = second.client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
            assert again.status_code == 401
        assert me(second, fresh["access_token"]) == 401  # a used refresh token came back: its session ended


def test_a_logout_outlasts_access_tokens_set_to_live_longer_than_refresh_tokens() -> None:
    users = InMemoryUserRepository()
    _stored_user(users)
    cache = InMemoryCache()
    service = AuthService(
        users,
        fast_hasher(),
        JwtTokenCodec(SECRET),
        cache,
        SystemClock(),
        access_ttl=7200,
        refresh_ttl=600,
        login_limit=RateLimit(0, 60),
    )
    tokens = service.login("user@example.com", PASSWORD)
    _, claims = service.authenticate(tokens.access_token)
    service.logout(claims)
    session = f"revoked-session:{claims['sid']}"
    expires = cache._items[session][1]
    assert expires is not None and expires - time.monotonic() > 7000  # not 601 s: the token lives 7,200
