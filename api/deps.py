"""The dependencies every route takes: the process's ``Relay`` and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import tenant_of
from api.state import Relay


async def relay(request: Request) -> Relay:
    # async: FastAPI runs a plain ``def`` dependency in a thread pool, a hop per request.
    state: Relay = request.app.state.relay
    return state


RelayDep = Annotated[Relay, Depends(relay)]
TenantDep = Annotated[str, Depends(tenant_of)]
