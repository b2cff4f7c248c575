"""The Durable Streams protocol's routes: user streams at ``/v1/stream/{name}`` (PUT, POST,
GET, HEAD, DELETE) and jobs' events, read-only, at ``/v1/stream/jobs/{job_id}``."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response

from api.compat.durable import forks, reading
from api.compat.durable import protocol as p
from api.compat.durable.sources import JobStream, Source, UserStream
from api.deps import RelayDep, TenantDep
from api.errors import ApiError
from api.reading import require_job
from api.state import Relay
from tokenrelay.errors import StreamGone
from tokenrelay.keys import durable_topic
from tokenrelay.store.streams import Appended, Producer

# Out of the OpenAPI document: the protocol (PROTOCOL.md of durable-streams) describes these
# routes, and its conformance suite tests them (tests/integration/test_durable_streams_*).
router = APIRouter(prefix="/v1/stream", tags=["durable-streams"], include_in_schema=False)

MAX_NAME = 1024
JOBS = "jobs/"
READ_ONLY = {"Allow": "GET, HEAD"}
_APPEND_STATUS = {
    "missing": (404, "no such stream"),
    "gone": (410, "the stream was deleted (its forks remain)"),
    "ct": (409, "the content type differs from the stream's"),
    "seq": (409, "Stream-Seq is not after the last one"),
    "epoch_seq": (400, "a new producer epoch must start at Producer-Seq 0"),
}


def _name(name: str) -> str:
    if not name or len(name) > MAX_NAME:
        raise ApiError(400, f"a stream name is 1 to {MAX_NAME} characters")
    return name


def _user(r: Relay, name: str, tenant: str) -> UserStream:
    return UserStream(r, durable_topic(_name(name)), tenant)


async def _read(src: Source, r: Relay, request: Request) -> Response:
    params = request.query_params
    offsets = params.getlist("offset")
    live = params.get("live")
    if len(offsets) > 1:
        raise ApiError(400, "one offset parameter at most", param="offset")
    raw = offsets[0] if offsets else None
    if raw == "":
        raise ApiError(400, "an empty offset", param="offset")
    if live not in (None, "long-poll", "sse"):
        raise ApiError(400, "live is long-poll or sse", param="live")
    if live is not None and raw is None:
        raise ApiError(400, f"{live} reads need an offset", param="offset")
    after = None if raw == "now" else p.parse_offset(raw or "-1")
    if raw != "now" and after is None:
        raise ApiError(400, f"malformed offset {raw!r}", param="offset")
    start = raw or "-1"
    path = request.url.path
    cursor = params.get("cursor")
    if live == "sse":
        return await reading.sse(src, r.hub, after, cursor, r.settings.stream_long_poll_s)
    if live == "long-poll":
        return await reading.long_poll(
            src, r.hub, path, start, after, cursor, r.settings.stream_long_poll_s
        )
    if after is None:
        return await reading.at_now(src)
    return await reading.catch_up(src, path, start, after, request.headers.get("if-none-match"))


async def _head(src: Source, request: Request) -> Response:
    state = await src.state()
    if state is None:
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    headers = {
        "Content-Type": state.content_type,
        "Stream-Next-Offset": p.offset_of(state.tail),
        "Cache-Control": "no-store",
        "ETag": p.etag(request.url.path, "-1", p.offset_of(state.tail), state.closed),
    }
    if state.closed:
        headers["Stream-Closed"] = "true"
    if state.ttl is not None:
        headers["Stream-TTL"] = state.ttl
    if state.expires_at is not None:
        headers["Stream-Expires-At"] = state.expires_at
    return Response(headers=headers)


@router.api_route("/jobs/{job_id}", methods=["GET", "HEAD"], summary="A job's events as a stream")
async def job_stream(job_id: str, request: Request, r: RelayDep, tenant: TenantDep) -> Response:
    """A job's events as a JSON Durable Stream: each event one message ``{type, data, id}``,
    closed at ``end``; offsets are the event ids (``<ms>-<seq>`` as ``<ms>_<seq>``, padded)."""
    src = JobStream(r, await require_job(r, job_id, tenant))
    if request.method == "HEAD":
        return await _head(src, request)
    return await _read(src, r, request)


@router.api_route("/jobs/{job_id}", methods=["PUT", "POST", "DELETE"], include_in_schema=False)
async def job_stream_write(job_id: str) -> Response:
    raise ApiError(405, "a job's stream is read-only", headers=READ_ONLY)


@router.api_route("/{name:path}", methods=["GET", "HEAD"], summary="Read a stream")
async def read_stream(name: str, request: Request, r: RelayDep, tenant: TenantDep) -> Response:
    src = _user(r, name, tenant)
    if request.method == "HEAD":
        return await _head(src, request)
    return await _read(src, r, request)


def _messages(r: Relay, content_type: str, body: bytes, *, create: bool) -> list[bytes]:
    limit = r.settings.stream_max_message_bytes
    if not body:
        return []
    if p.is_json(content_type):
        try:
            messages = p.json_messages(body, create=create)
        except p.InvalidJson as exc:
            raise ApiError(400, str(exc)) from None
    else:
        messages = [body]
    if any(len(m) > limit for m in messages):
        raise ApiError(413, f"a message is larger than {limit} bytes")
    return messages


def _expiry(request: Request) -> tuple[str, str, str]:
    ttl = request.headers.get("stream-ttl")
    expires = request.headers.get("stream-expires-at")
    if ttl is not None and expires is not None:
        raise ApiError(400, "send Stream-TTL or Stream-Expires-At, not both")
    if ttl is not None and not p.valid_ttl(ttl):
        raise ApiError(400, f"Stream-TTL is whole seconds, got {ttl!r}", param="Stream-TTL")
    if expires is None:
        return ttl or "", "", ""
    try:
        when = datetime.fromisoformat(expires.replace("z", "Z"))
    except ValueError:
        raise ApiError(400, f"Stream-Expires-At is RFC 3339, got {expires!r}") from None
    if when.tzinfo is None:
        raise ApiError(400, "Stream-Expires-At needs a time zone", param="Stream-Expires-At")
    return "", expires, str(int(when.timestamp() * 1000))


@router.put("/{name:path}", status_code=201, summary="Create a stream")
async def create_stream(name: str, request: Request, r: RelayDep, tenant: TenantDep) -> Response:
    if name.startswith(JOBS):
        raise ApiError(405, "jobs/ streams are jobs' events, read-only", headers=READ_ONLY)
    topic = durable_topic(_name(name))
    forked_from = request.headers.get("stream-forked-from")
    forks.sub_offset(request.headers.get("stream-fork-sub-offset"), forked_from is not None)
    content_type = request.headers.get("content-type", "").strip()
    if "/" not in content_type:
        content_type = ""
    ttl, expires, expires_ms = _expiry(request)
    closed = p.closed_flag(request.headers.get("stream-closed"))
    body = await request.body()
    if forked_from is not None:
        spec = await forks.fork_spec(
            r,
            tenant,
            forked_from,
            dict(request.headers),
            content_type=content_type,
            ttl=ttl,
            expires=expires,
            expires_ms=expires_ms,
            closed=closed,
        )
        content_type = spec.content_type
        messages = _messages(r, content_type, body, create=True)
        status, tail, is_closed = await r.durable.fork(topic, tenant, spec, messages)
    else:
        content_type = content_type or "application/octet-stream"
        messages = _messages(r, content_type, body, create=True)
        status, tail, is_closed = await r.durable.create(
            topic,
            tenant,
            content_type=content_type,
            normalized=p.normalize_type(content_type),
            ttl=ttl,
            expires_at=expires,
            expires_ms=expires_ms,
            closed=closed,
            messages=messages,
        )
    if status == "conflict":
        raise ApiError(409, "the stream exists with another configuration")
    headers = {"Content-Type": content_type, "Stream-Next-Offset": p.offset_of(tail)}
    if is_closed:
        headers["Stream-Closed"] = "true"
    if status == "created":
        headers["Location"] = str(request.url.replace(query=""))
        return Response(status_code=201, headers=headers)
    return Response(status_code=200, headers=headers)


def _producer(request: Request) -> Producer | None:
    pid = request.headers.get("producer-id")
    epoch = request.headers.get("producer-epoch")
    seq = request.headers.get("producer-seq")
    given = [v is not None for v in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given):
        raise ApiError(400, "send Producer-Id, Producer-Epoch and Producer-Seq together")
    assert pid is not None and epoch is not None and seq is not None
    if not pid:
        raise ApiError(400, "Producer-Id must not be empty", param="Producer-Id")
    e, s = p.parse_safe_integer(epoch), p.parse_safe_integer(seq)
    if e is None:
        raise ApiError(400, f"Producer-Epoch is an integer, got {epoch!r}", param="Producer-Epoch")
    if s is None:
        raise ApiError(400, f"Producer-Seq is an integer, got {seq!r}", param="Producer-Seq")
    return Producer(pid, e, s)


@router.post("/{name:path}", status_code=204, summary="Append to or close a stream")
async def append_stream(name: str, request: Request, r: RelayDep, tenant: TenantDep) -> Response:
    if name.startswith(JOBS):
        raise ApiError(405, "jobs/ streams are jobs' events, read-only", headers=READ_ONLY)
    topic = durable_topic(_name(name))
    close = p.closed_flag(request.headers.get("stream-closed"))
    producer = _producer(request)
    body = await request.body()
    content_type = request.headers.get("content-type", "").strip()
    if not body and not close:
        raise ApiError(400, "an append needs a body (or Stream-Closed: true)")
    if body and not content_type:
        raise ApiError(400, "an append needs a Content-Type", param="Content-Type")
    messages = _messages(r, content_type, body, create=False) if body else []
    done = await r.durable.append(
        topic,
        tenant,
        normalized=p.normalize_type(content_type) if body else "",
        close=close,
        seq=request.headers.get("stream-seq", ""),
        producer=producer,
        messages=messages,
    )
    return _appended(done, producer, close, bool(messages))


def _appended(done: Appended, producer: Producer | None, close: bool, data: bool) -> Response:
    offset = {"Stream-Next-Offset": p.offset_of(done.tail)}
    echo = {} if producer is None else {"Producer-Epoch": str(producer.epoch)}
    if done.status == "ok":
        headers = offset | echo
        if producer is not None:
            headers["Producer-Seq"] = str(producer.seq)
        if close:
            headers["Stream-Closed"] = "true"
        # A producer's accepted append is 200 (a duplicate is 204); anything else is 204.
        return Response(status_code=200 if producer is not None and data else 204, headers=headers)
    if done.status in ("dup", "dup_closed"):
        headers = echo | {"Producer-Seq": done.detail}
        if done.status == "dup_closed":
            headers |= offset | {"Stream-Closed": "true"}
        return Response(status_code=204, headers=headers)
    if done.status == "closed":
        raise ApiError(409, "the stream is closed", headers=offset | {"Stream-Closed": "true"})
    if done.status == "stale":
        current = {"Producer-Epoch": done.detail}
        raise ApiError(403, "a newer producer epoch writes", headers=current)
    if done.status == "gap":
        expected = "0" if not done.detail else str(int(done.detail) + 1)
        assert producer is not None
        raise ApiError(
            409,
            f"Producer-Seq {producer.seq} skips {expected}",
            headers={"Producer-Expected-Seq": expected, "Producer-Received-Seq": str(producer.seq)},
        )
    status, message = _APPEND_STATUS[done.status]
    raise ApiError(status, message)


@router.delete("/{name:path}", status_code=204, summary="Delete a stream")
async def delete_stream(name: str, r: RelayDep, tenant: TenantDep) -> Response:
    if name.startswith(JOBS):
        raise ApiError(405, "jobs/ streams are jobs' events, read-only", headers=READ_ONLY)
    status = await r.durable.delete(durable_topic(_name(name)), tenant)
    if status == "missing":
        raise ApiError(404, "no such stream")
    if status == "gone":
        raise StreamGone
    return Response(status_code=204)
