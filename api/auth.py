"""Bearer API keys, compared in constant time; a job belongs to the key that made it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Header, Request

from api.errors import ApiError

ANONYMOUS = "anon"


def key_tenant(key: str) -> str:
    """A stable, non-reversible name for a key: stored with jobs, safe to log."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def tenant_of(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant of the request's key; every key is checked so timing reveals nothing."""
    keys: tuple[str, ...] = request.app.state.relay.settings.api_key_list
    if not keys:
        return ANONYMOUS
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise ApiError(
            401, "send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    matched: str | None = None
    for key in keys:
        if hmac.compare_digest(presented.strip().encode(), key.encode()):
            matched = key
    if matched is None:
        raise ApiError(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return key_tenant(matched)
