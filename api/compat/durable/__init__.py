"""The Durable Streams protocol on Redis: ``router`` and ``ProtocolHeaders`` (what
``api.app`` mounts).

    protocol.py   pure: offsets, cursors, JSON mode, SSE events, ETags
    sources.py    what a stream URL reads: a user stream, or a job's events (read-only)
    reading.py    catch-up, long-poll and SSE reads over a source
    forks.py      a fork's creation: its source's messages up to the fork point, copied
    routes.py     the FastAPI routes
    headers.py    the security and CORS headers every protocol response carries
"""

from __future__ import annotations

from api.compat.durable.headers import ProtocolHeaders
from api.compat.durable.routes import router

__all__ = ["ProtocolHeaders", "router"]
