"""Users (ADMIN only): create, list, read, change role and assignments, deactivate."""

from __future__ import annotations

from fastapi import APIRouter, Request

from metrify.entrypoints.api import schemas as s
from metrify.entrypoints.api.pagination import CursorParam, LimitParam, decode_cursor, page, page_size, str_key
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES
from metrify.entrypoints.api.render import user_out
from metrify.entrypoints.api.security import Admin, Services

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=s.UserPage, summary="List users, by email")
def list_users(
    request: Request, svc: Services, actor: Admin, cursor: CursorParam = None, limit: LimitParam = None
) -> s.UserPage:
    size = page_size(request, limit)
    found = svc.users.list(decode_cursor(cursor, str_key), size + 1)
    items, next_cursor = page(found, size, lambda u: u.email)
    return s.UserPage(items=[user_out(u) for u in items], next_cursor=next_cursor)


@router.post("", response_model=s.UserOut, status_code=201, summary="Create a user")
def create_user(svc: Services, actor: Admin, body: s.UserCreate) -> s.UserOut:
    """USERs take `meters`, OPERATORs `regions`, ADMINs neither."""
    meters, regions = getattr(body, "meters", []), getattr(body, "regions", [])
    return user_out(svc.users.create(body.email, body.password, body.role, meters, regions))


@router.get("/{user_id}", response_model=s.UserOut, summary="Read a user")
def get_user(svc: Services, actor: Admin, user_id: str) -> s.UserOut:
    return user_out(svc.users.get(user_id))


@router.patch("/{user_id}", response_model=s.UserOut, summary="Change a user")
def update_user(svc: Services, actor: Admin, user_id: str, body: s.UserUpdate) -> s.UserOut:
    """Role, assignments, password, or `active`. The last active ADMIN stays an active ADMIN."""
    given = body.model_fields_set
    changed = svc.users.update(
        actor,
        user_id,
        role=body.role,
        meters=body.meters if "meters" in given else None,
        regions=body.regions if "regions" in given else None,
        active=body.active,
        password=body.password,
    )
    return user_out(changed)


@router.post("/{user_id}/deactivate", response_model=s.UserOut, summary="Deactivate a user")
def deactivate_user(svc: Services, actor: Admin, user_id: str) -> s.UserOut:
    """The user can no longer sign in, and their tokens stop working at once."""
    return user_out(svc.users.deactivate(actor, user_id))
