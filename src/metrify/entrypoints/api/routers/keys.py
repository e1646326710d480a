"""Ingest keys (ADMIN only): create (the token is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

from metrify.entrypoints.api import schemas as s
from metrify.entrypoints.api.problems import PROBLEM_RESPONSES
from metrify.entrypoints.api.render import key_out
from metrify.entrypoints.api.security import Admin, Services

router = APIRouter(prefix="/api/v1/ingest-keys", tags=["ingest keys"], responses=PROBLEM_RESPONSES)


@router.get("", response_model=list[s.KeyOut], summary="List ingest keys, revoked ones too")
def list_keys(svc: Services, actor: Admin) -> list[s.KeyOut]:
    return [key_out(k) for k in svc.keys.list(actor)]


@router.post("", response_model=s.KeyCreated, status_code=201, summary="Create an ingest key")
def create_key(svc: Services, actor: Admin, body: s.KeyCreate) -> s.KeyCreated:
    """Scoped to `regions`, or to every region with `all_regions`. Keep the token: only its hash is stored."""
    regions = body.regions if isinstance(body, s.KeyForRegions) else []
    key, token = svc.keys.create(actor, body.name, regions, body.all_regions)
    return s.KeyCreated(**key_out(key).model_dump(), token=token)


@router.delete("/{key_id}", response_model=s.KeyOut, summary="Revoke an ingest key")
def revoke_key(svc: Services, actor: Admin, key_id: str) -> s.KeyOut:
    """The key stops working at once; revoking it again changes nothing."""
    return key_out(svc.keys.revoke(actor, key_id))
