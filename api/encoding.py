"""Events on the wire: SSE frames or NDJSON lines, rendered from stored bytes without parsing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import orjson
from starlette.responses import JSONResponse

from tokenrelay.store.events import StoredEvent

WireFormat = Literal["sse", "ndjson"]

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"

KEEPALIVE: dict[WireFormat, bytes] = {"sse": b": keep-alive\n\n", "ndjson": b"\n"}


def wire_format(accept: str | None) -> WireFormat:
    """NDJSON when the client asks for it by ``Accept``, SSE otherwise."""
    if accept and NDJSON_MEDIA_TYPE in accept and SSE_MEDIA_TYPE not in accept:
        return "ndjson"
    return "sse"


def encode(events: Sequence[StoredEvent], fmt: WireFormat) -> bytes:
    """All ``events`` as one write: one syscall a batch, not one a frame."""
    if fmt == "sse":
        return b"".join(
            b"id: %s\nevent: %s\ndata: %s\n\n" % (e.id.encode(), e.type.encode(), e.data)
            for e in events
        )
    return b"".join(
        b'{"id":"%s","type":"%s","data":%s}\n' % (e.id.encode(), e.type.encode(), e.data)
        for e in events
    )


class JSONBody(JSONResponse):
    """A JSON response rendered with orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
