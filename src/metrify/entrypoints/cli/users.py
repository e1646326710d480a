"""`metrify users create` and `list`: the first ADMIN comes from here, the rest over the API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from metrify.application.errors import AlreadyExists
from metrify.application.users import UserAdmin
from metrify.domain.stream.grammar import format_timestamp
from metrify.domain.users import InvalidUser, Role
from metrify.entrypoints.cli.api import ensure_schema
from metrify.entrypoints.cli.app import app, console, state
from metrify.entrypoints.cli.errors import UserError

users_app = typer.Typer(help="API users: create one (the first ADMIN), list them.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _user_admin() -> UserAdmin:
    ensure_schema()
    container = state.get_container()
    return UserAdmin(container.user_repository(), container.password_hasher(), container.clock())


def _password() -> str:
    """Prompted twice on a terminal; otherwise the first line of standard input."""
    if sys.stdin.isatty():
        return typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline()
    if not line:
        raise UserError("no password on standard input (pipe it in, or run on a terminal to be prompted)")
    return line.rstrip("\r\n")


@users_app.command("create")
def create(
    email: Annotated[str, typer.Option(help="The user's email, their sign-in name.")],
    role: Annotated[Role, typer.Option(case_sensitive=False, help="USER, OPERATOR or ADMIN.")],
    meter: Annotated[list[str] | None, typer.Option(help="A meter a USER sees (repeatable).")] = None,
    region: Annotated[list[str] | None, typer.Option(help="A region an OPERATOR works on (repeatable).")] = None,
) -> None:
    """Create a user; the password is prompted (or read from standard input when it is not a terminal)."""
    admin = _user_admin()
    password = _password()
    try:
        user = admin.create(email, password, role, meter or [], region or [])
    except (InvalidUser, AlreadyExists) as exc:
        raise UserError(str(exc)) from None
    console.print(f"created {user.role.value} {user.email} (id {user.user_id})")


@users_app.command("list")
def list_users() -> None:
    """List every user: email, role, active, assignments, creation time and id (tab-separated)."""
    admin = _user_admin()
    print("email\trole\tactive\tassigned\tcreated\tid")
    after: str | None = None
    while batch := admin.list(after, 500):
        for user in batch:
            assigned = ",".join(sorted(user.meters | user.regions)) or "-"
            active = "yes" if user.active else "no"
            print(
                f"{user.email}\t{user.role.value}\t{active}\t{assigned}\t{format_timestamp(user.created_at)}\t{user.user_id}"
            )
        after = batch[-1].email
