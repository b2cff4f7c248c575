"""The dependencies every route takes: the process's ``Relay`` and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from api.auth import tenant_of
from api.state import Relay


async def relay(request: Request) -> Relay:
    # async: FastAPI runs a plain ``def`` dependency in a thread pool, a hop per request.
    state: Relay = request.app.state.relay
    return state


RelayDep = Annotated[Relay, Depends(relay)]
TenantDep = Annotated[str, Depends(tenant_of)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="the same key and body again: the same job (replayed), not a second one",
    ),
]
