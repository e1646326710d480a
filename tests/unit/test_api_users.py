"""Users and roles: the domain's access rules, and ADMINs managing users over the API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.api import PASSWORD, Api, Fakes, api_settings, fast_hasher, memory_container, running_api

from metrify.adapters.memory.users import InMemoryUserRepository
from metrify.adapters.system import SystemClock
from metrify.application.users import UserAdmin
from metrify.domain.users import AccessDenied, InvalidUser, Role, Scope, User, normalise_email

ADMIN_URL = "/api/v1/users"


def user(role: Role, **assigned: frozenset[str]) -> User:
    return User("u1", "a@example.com", role, "hash", **assigned)


def test_each_role_sees_its_own_part_of_the_fleet() -> None:
    assert user(Role.ADMIN).scope == Scope(everything=True)
    operator = user(Role.OPERATOR, regions=frozenset({"north"}))
    assert operator.scope.allows_meter("M1", "north") and not operator.scope.allows_meter("M1", "south")
    assert not operator.scope.allows_meter("M1", None)
    customer = user(Role.USER, meters=frozenset({"M1"}))
    assert customer.scope.allows_meter("M1", "south") and not customer.scope.allows_meter("M2", "south")
    assert not customer.scope.allows_region("south")


def test_assignments_must_fit_the_role() -> None:
    with pytest.raises(InvalidUser):
        user(Role.USER, regions=frozenset({"north"}))
    with pytest.raises(InvalidUser):
        user(Role.OPERATOR, meters=frozenset({"M1"}))
    with pytest.raises(InvalidUser):
        user(Role.ADMIN, regions=frozenset({"north"}))
    changed = user(Role.USER, meters=frozenset({"M1"})).changed(role=Role.OPERATOR)
    assert changed.meters == frozenset() and changed.regions == frozenset()


def test_operators_manage_meters_of_their_regions_only() -> None:
    operator = user(Role.OPERATOR, regions=frozenset({"north"}))
    operator.require_meter_management("north")
    for regions in (("south",), (None,), ("north", "south")):
        with pytest.raises(AccessDenied):
            operator.require_meter_management(*regions)
    with pytest.raises(AccessDenied):
        user(Role.USER).require_meter_management("north")
    user(Role.ADMIN).require_meter_management(None, "anywhere")


@pytest.mark.parametrize("email", ["", "plain", "a@b", "a b@c.d", "@example.com", "a@example."])
def test_emails_are_checked(email: str) -> None:
    with pytest.raises(InvalidUser):
        normalise_email(email)
    assert normalise_email("  Ada@Example.COM ") == "ada@example.com"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    settings = api_settings(tmp_path)
    with running_api(memory_container(settings, Fakes()), settings) as api:
        yield api


def test_an_admin_creates_lists_changes_and_deactivates_users(api: Api) -> None:
    admin = api.headers(Role.ADMIN)
    body = {"email": "Grid.Op@Example.com", "password": PASSWORD, "role": "OPERATOR", "regions": ["east", "west"]}
    created = api.client.post(ADMIN_URL, json=body, headers=admin)
    assert created.status_code == 201
    new = created.json()
    assert (new["email"], new["role"], new["regions"], new["active"]) == (
        "grid.op@example.com",
        "OPERATOR",
        ["east", "west"],
        True,
    )
    assert "password" not in new and "password_hash" not in new
    assert api.client.post(ADMIN_URL, json=body, headers=admin).status_code == 409
    assert api.sign_in("grid.op@example.com")["access_token"]

    changed = api.client.patch(f"{ADMIN_URL}/{new['user_id']}", json={"regions": ["east"]}, headers=admin)
    assert changed.json()["regions"] == ["east"] and changed.json()["role"] == "OPERATOR"
    promoted = api.client.patch(f"{ADMIN_URL}/{new['user_id']}", json={"role": "ADMIN"}, headers=admin)
    assert promoted.json()["role"] == "ADMIN" and promoted.json()["regions"] == []
    assert api.client.get(f"{ADMIN_URL}/{new['user_id']}", headers=admin).json()["role"] == "ADMIN"
    gone = api.client.post(f"{ADMIN_URL}/{new['user_id']}/deactivate", headers=admin)
    assert gone.json()["active"] is False
    assert api.client.get(f"{ADMIN_URL}/nobody", headers=admin).status_code == 404


def test_users_are_listed_by_email_a_page_at_a_time(api: Api) -> None:
    admin = api.headers(Role.ADMIN)
    for n in range(5):
        body = {"email": f"u{n}@example.com", "password": PASSWORD, "role": "USER", "meters": [f"M{n}"]}
        assert api.client.post(ADMIN_URL, json=body, headers=admin).status_code == 201
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.client.get(ADMIN_URL, params=params, headers=admin).json()
        seen += [u["email"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 8


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"email": "x@example.com", "password": "short", "role": "USER"}, 422),
        ({"email": "not-an-email", "password": PASSWORD, "role": "USER"}, 422),
        ({"email": "x@example.com", "password": PASSWORD, "role": "ROOT"}, 422),
        ({"email": "x@example.com", "password": PASSWORD, "role": "USER", "regions": ["north"]}, 422),
        ({"email": "x@example.com", "password": PASSWORD, "role": "ADMIN", "meters": ["M1"]}, 422),
        ({"email": "x@example.com", "password": PASSWORD, "role": "USER", "is_admin": True}, 422),
    ],
)
def test_a_user_that_breaks_a_rule_is_a_422_problem(api: Api, body: dict, status: int) -> None:
    response = api.client.post(ADMIN_URL, json=body, headers=api.headers(Role.ADMIN))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


def test_there_is_always_an_active_admin(api: Api) -> None:
    me = api.users[Role.ADMIN]
    admin = api.headers(Role.ADMIN)
    response = api.client.post(f"{ADMIN_URL}/{me.user_id}/deactivate", headers=admin)
    assert response.status_code == 409 and "themselves" in response.json()["detail"]
    second = api.client.post(
        ADMIN_URL, json={"email": "second@example.com", "password": PASSWORD, "role": "ADMIN"}, headers=admin
    ).json()
    other = api.sign_in("second@example.com")["access_token"]
    demoted = api.client.patch(
        f"{ADMIN_URL}/{me.user_id}", json={"role": "USER"}, headers={"Authorization": f"Bearer {other}"}
    )
    assert demoted.status_code == 200
    last = api.client.post(f"{ADMIN_URL}/{second['user_id']}/deactivate", headers={"Authorization": f"Bearer {other}"})
    assert last.status_code == 409


class _Interleaved(InMemoryUserRepository):
    """Users whose next save is preceded by another request's: what two ADMINs changing one
    user at the same moment look like from one of them."""

    def __init__(self) -> None:
        super().__init__()
        self.before_next_save: Callable[[], None] | None = None

    def save(self, user: User, previous: User, *, keep_an_admin: bool = False) -> bool:
        other, self.before_next_save = self.before_next_save, None
        if other is not None:
            other()
        return super().save(user, previous, keep_an_admin=keep_an_admin)


def test_two_admins_changing_one_user_at_once_both_have_their_change() -> None:
    users = _Interleaved()
    users.add(User("a-1", "admin@example.com", Role.ADMIN, "hash", security_stamp="s"))
    users.add(User("u-1", "op@example.com", Role.OPERATOR, "hash", regions=frozenset({"north"}), security_stamp="s"))
    admins = UserAdmin(users, fast_hasher(), SystemClock())
    actor = users.users["a-1"]
    users.before_next_save = lambda: admins.update(actor, "u-1", regions=["north", "east"])
    changed = admins.update(actor, "u-1", active=False)
    stored = users.users["u-1"]
    assert stored.regions == {"north", "east"} and not stored.active  # neither change lost
    assert changed.regions == stored.regions
    assert stored.security_stamp != "s"  # the deactivation ended the user's sessions
