"""Who is calling: a user with a bearer access token, or a gateway with an ingest key.

Each authenticated user request counts against the user's rate limit; each ingest batch against
its key's (the Cache port: Redis in production, in-process embedded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from metrify.application.errors import AuthenticationFailed
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.users import Role, User
from metrify.entrypoints.api.services import ApiServices

TOKEN_URL = "/api/v1/auth/token"
bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An ingest key, made by an ADMIN.")


def services(request: Request) -> ApiServices:
    return request.app.state.services


Services = Annotated[ApiServices, Depends(services)]


@dataclass(frozen=True, slots=True)
class Caller:
    user: User
    claims: dict[str, Any]


def current_caller(svc: Services, token: Annotated[str | None, Depends(bearer)]) -> Caller:
    if not token:
        raise AuthenticationFailed("sign in first: send `Authorization: Bearer <access token>`")
    user, claims = svc.auth.authenticate(token)
    svc.user_limit.check(svc.cache, f"user:{user.user_id}", svc.clock.now_us())
    return Caller(user, claims)


async def current_user(caller: Annotated[Caller, Depends(current_caller)]) -> User:
    return caller.user


CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentUser = Annotated[User, Depends(current_user)]


async def admin(user: CurrentUser) -> User:
    user.require(Role.ADMIN)
    return user


Admin = Annotated[User, Depends(admin)]


def ingest_key(svc: ApiServices, token: str | None) -> IngestKey:
    """The active key behind an X-API-Key header, counted against its rate limit."""
    if not token:
        raise AuthenticationFailed("send an ingest key as X-API-Key")
    key = svc.keys.authenticate(token)
    svc.ingest_limit.check(svc.cache, f"key:{key.key_id}", svc.clock.now_us())
    return key
