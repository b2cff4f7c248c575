"""Operations endpoints: readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from api.encoding import JSONBody
from api.state import Relay
from tokenrelay.metrics import render

router = APIRouter(tags=["ops"])


@router.get("/readyz")
async def readyz(request: Request) -> JSONBody:
    """Ready when Redis answers and at least one worker sent a heartbeat lately; else 503."""
    r: Relay = request.app.state.relay
    try:
        await r.jobs.ping()
        workers = await r.control.workers_alive()
    except (RedisError, OSError):
        return JSONBody(
            {
                "error": {
                    "type": "service_unavailable",
                    "message": "Redis is unreachable",
                    "param": None,
                }
            },
            status_code=503,
        )
    if workers == 0:
        return JSONBody(
            {
                "error": {
                    "type": "service_unavailable",
                    "message": "no worker is alive",
                    "param": None,
                }
            },
            status_code=503,
        )
    return JSONBody({"status": "ready", "workers": workers})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of the whole deployment (shared through Redis) and this process."""
    r: Relay = request.app.state.relay
    raw, queued, running, workers = await r.job_queue.snapshot()
    gauges = {
        "queue_depth": float(queued),
        "running_jobs": float(running),
        "workers_alive": float(workers),
        "active_streams": float(r.hub.streams),
        "listeners": float(r.hub.listeners),
        "jobs_reaped": float(r.reaper.reaped),
    }
    return Response(render(raw, gauges), media_type="text/plain; version=0.0.4; charset=utf-8")
