"""Signing in and out: `POST /auth/token` (OAuth2 password form), `/auth/refresh`, `/auth/logout`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from metrify.application.auth import TokenPair
from metrify.entrypoints.api import schemas as s
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES
from metrify.entrypoints.api.render import user_out
from metrify.entrypoints.api.security import CurrentCaller, Services

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=PROBLEM_RESPONSES)


def _tokens(pair: TokenPair) -> s.TokenOut:
    return s.TokenOut(
        access_token=pair.access_token,
        expires_in=pair.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )


@router.post("/token", response_model=s.TokenOut, summary="Sign in with email and password")
def token(svc: Services, form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request) -> s.TokenOut:
    """The OAuth2 password flow: `username` is the email. Attempts per email, and per client
    address, are rate-limited."""
    client = request.client.host if request.client is not None else None
    return _tokens(svc.auth.login(form.username, form.password, client))


@router.post("/refresh", response_model=s.TokenOut, summary="Trade a refresh token for a new pair")
def refresh(svc: Services, body: s.RefreshIn) -> s.TokenOut:
    """Each refresh token works once: it is revoked as the new pair is issued."""
    return _tokens(svc.auth.refresh(body.refresh_token))


@router.post("/logout", status_code=204, response_class=Response, summary="Revoke the tokens in use")
def logout(svc: Services, caller: CurrentCaller, body: s.LogoutIn | None = None) -> Response:
    """Revokes the access token of the request and, when given, the refresh token."""
    svc.auth.logout(caller.claims, body.refresh_token if body is not None else None)
    return Response(status_code=204)


@router.get("/me", response_model=s.UserOut, summary="The signed-in user")
def me(caller: CurrentCaller) -> s.UserOut:
    return user_out(caller.user)
