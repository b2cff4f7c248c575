"""A RESP-aware TCP proxy in front of one Redis server: cuts, stalls and drops traffic on cue."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Literal, get_args

# What a trigger does to the connection of the command it matched (bytes of the commands before
# it are forwarded first):
#   cut         the command and all after it are dropped; both sides are reset (RST)
#   lose_reply  it and all after it are forwarded, then every byte either way is dropped while
#               both sockets stay open, until the client closes
#   hold        it waits for Trigger.release(): forwarded, or the connection is reset
#   hold_reply  it is forwarded; what the server sends back waits for Trigger.release()
Action = Literal["cut", "lose_reply", "hold", "hold_reply"]
MessageKind = Literal["", "push", "array"]

CHUNK = 256 * 1024
CONNECT_TIMEOUT_S = 5.0
RELEASE_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 5.0
# What follows the type byte of a pub/sub message: its element count and its kind.
_MESSAGE_HEADS = (b"3\r\n$7\r\nmessage\r\n", b"4\r\n$8\r\npmessage\r\n", b"3\r\n$8\r\nsmessage\r\n")
_SUBSCRIBES = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"})
_LINE_TYPES = frozenset(b"+-:_,#(")
_BLOB_TYPES = frozenset(b"$=!")
_AGGREGATE_TYPES = {ord("*"): 1, ord("~"): 1, ord(">"): 1, ord("%"): 2, ord("|"): 2}


class ProtocolError(Exception):
    """Bytes that are not RESP where RESP was expected."""


@dataclass(frozen=True, slots=True)
class Command:
    """One whole command a client sent: its arguments as sent, and its connection's id."""

    args: tuple[bytes, ...]
    conn_id: int

    @property
    def name(self) -> str:
        return self.args[0].decode(errors="replace").upper()

    def mentions(self, needle: str | bytes) -> bool:
        """Whether any argument (the name included) contains ``needle``."""
        raw = needle.encode() if isinstance(needle, str) else needle
        return any(raw in arg for arg in self.args)


class CommandParser:
    """Splits a client->server stream into whole commands, resuming where the last read ended.

    ``feed`` returns ``(end, args)`` for each command completed so far, ``end`` an offset into
    ``buf`` (frames are contiguous from offset 0); ``args`` is empty for a blank line or ``*0``.
    Inline commands (no leading ``*``) are split on whitespace. ``take(n)`` drops the first
    ``n`` bytes, which must end at a frame boundary. Raises ProtocolError on a malformed array.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self._pos = 0  # next byte to parse
        self._left = 0  # arguments still to read of the current array; 0 between commands
        self._args: list[bytes] = []
        self._body = (-1, -1)  # (start, end) of a bulk argument waiting for its bytes

    def feed(self, data: bytes) -> list[tuple[int, tuple[bytes, ...]]]:
        buf = self.buf
        buf += data
        size, done = len(buf), []
        while self._pos < size:
            if self._left == 0:
                pos = self._pos
                if buf[pos] != ord("*"):
                    eol = buf.find(b"\n", pos)
                    if eol < 0:
                        break
                    self._pos = eol + 1
                    done.append((self._pos, tuple(bytes(buf[pos:eol]).split())))
                    continue
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                count = _int(buf, pos + 1, eol)
                self._pos = eol + 2
                if count <= 0:
                    done.append((self._pos, ()))
                else:
                    self._left, self._args = count, []
                continue
            start, end = self._body
            if end < 0:
                pos = self._pos
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                if buf[pos] != ord("$"):
                    raise ProtocolError(f"expected a bulk string, got {bytes(buf[pos:eol])!r}")
                start = eol + 2
                end = start + _int(buf, pos + 1, eol) + 2
                self._body = (start, end)
            if end > size:
                break
            self._args.append(bytes(buf[start : end - 2]))
            self._pos, self._body = end, (-1, -1)
            self._left -= 1
            if self._left == 0:
                done.append((end, tuple(self._args)))
        return done

    def take(self, n: int) -> None:
        del self.buf[:n]
        self._pos -= n
        if self._body[1] >= 0:
            self._body = (self._body[0] - n, self._body[1] - n)


class ReplyParser:
    """Finds where each whole RESP2/RESP3 value in a server->client stream ends, resumably.

    Knows every type (``+ - : $ *`` and ``_ , # ! = ( % ~ > |``, null bulk and null array,
    attributes as prefixes of the value they annotate). ``feed`` returns ``(end, kind)`` per
    value completed so far, ``end`` an offset into ``buf``; ``kind`` is ``"push"`` for a ``>``
    and ``"array"`` for a ``*`` whose first element is message/pmessage/smessage, else ``""``.
    ``take(n)`` drops the first ``n`` bytes (a value boundary). Raises ProtocolError on an
    unknown type byte.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self._pos = 0  # next byte to parse
        self._start = 0  # where the current top-level value began
        self._stack: list[tuple[int, bool]] = []  # (elements left, is an attribute)
        self._body_end = -1  # a blob body is awaited up to here
        self._searched = 0  # a header line has no CRLF before here

    def feed(self, data: bytes) -> list[tuple[int, MessageKind]]:
        buf = self.buf
        buf += data
        size, done = len(buf), []
        while True:
            if self._body_end >= 0:
                if self._body_end > size:
                    break
                self._pos, self._body_end = self._body_end, -1
                complete = self._element_done()
            else:
                pos = self._pos
                eol = buf.find(b"\r\n", max(pos, self._searched))
                if eol < 0:
                    self._searched = max(pos, size - 1)
                    break
                self._searched = 0
                kind = buf[pos]
                self._pos = eol + 2
                if kind in _LINE_TYPES:
                    complete = self._element_done()
                elif kind in _BLOB_TYPES:
                    length = _int(buf, pos + 1, eol)
                    if length < 0:
                        complete = self._element_done()
                    else:
                        self._body_end = eol + 2 + length + 2
                        continue
                elif kind in _AGGREGATE_TYPES:
                    count = _int(buf, pos + 1, eol) * _AGGREGATE_TYPES[kind]
                    if count > 0:
                        self._stack.append((count, kind == ord("|")))
                        continue
                    # An empty attribute annotates the value that follows; it is no element.
                    complete = kind != ord("|") and self._element_done()
                else:
                    raise ProtocolError(f"unknown RESP type in {bytes(buf[pos : eol + 2])!r}")
            if complete:
                done.append((self._pos, self._kind(self._start, self._pos)))
                self._start = self._pos
        return done

    def _element_done(self) -> bool:
        """Count one finished element in the open aggregates; True when a top-level value ends."""
        while self._stack:
            left, attribute = self._stack.pop()
            if left > 1:
                self._stack.append((left - 1, attribute))
                return False
            if attribute:
                return False  # the attribute ended; the value it annotates comes next
        return True

    def _kind(self, start: int, end: int) -> MessageKind:
        buf = self.buf
        if buf[start] not in b"*>":
            return ""
        if not any(buf.startswith(head, start + 1, end) for head in _MESSAGE_HEADS):
            return ""
        return "push" if buf[start] == ord(">") else "array"

    def take(self, n: int) -> None:
        if n > self._start:
            raise ValueError(f"take({n}) would cut the value that begins at {self._start}")
        del self.buf[:n]
        self._pos -= n
        self._start -= n
        if self._body_end >= 0:
            self._body_end -= n
        self._searched = max(0, self._searched - n)


def _int(buf: bytearray, start: int, end: int) -> int:
    try:
        return int(buf[start:end])
    except ValueError:
        raise ProtocolError(f"bad length {bytes(buf[start:end])!r}") from None


@dataclass(eq=False)
class _Hold:
    decision: asyncio.Future[bool]
    applied: asyncio.Event = field(default_factory=asyncio.Event)
    # hold_reply: set once Redis answered every command forwarded on the connection so far
    # (the matched one included), i.e. once Redis has certainly applied it.
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    wanted: int = 0


class Trigger:
    """An armed fault: fires on the next ``times`` commands ``match`` accepts."""

    def __init__(self, match: Callable[[Command], bool], action: Action, times: int) -> None:
        self.match = match
        self.action: Action = action
        self.times = times
        self.fired = asyncio.Event()
        self.command: Command | None = None  # the last command it fired on
        self._holds: list[_Hold] = []

    def __repr__(self) -> str:
        return f"<Trigger {self.action} times={self.times} command={self.command!r}>"

    async def wait(self, within: float = 5.0) -> Command:
        """The command it fired on, once it has; AssertionError if it has not ``within`` s."""
        try:
            async with asyncio.timeout(within):
                await self.fired.wait()
        except TimeoutError:
            raise AssertionError(f"{self!r} did not fire within {within}s") from None
        assert self.command is not None
        if self.action == "hold_reply":
            try:
                async with asyncio.timeout(within):
                    for hold in self._holds:
                        await hold.replied.wait()
            except TimeoutError:
                raise AssertionError(f"{self!r}: Redis did not answer within {within}s") from None
        return self.command

    async def release(self, forward: bool = True) -> int:
        """Ends every hold this trigger has in place: ``forward`` sends the held bytes on,
        else their connection is reset. Returns once that is done; the number of holds ended."""
        holds, self._holds = self._holds, []
        for hold in holds:
            if not hold.decision.done():
                hold.decision.set_result(forward)
        async with asyncio.timeout(RELEASE_TIMEOUT_S):
            for hold in holds:
                await hold.applied.wait()
        return len(holds)

    def _hold(self) -> _Hold:
        hold = _Hold(asyncio.get_running_loop().create_future())
        self._holds.append(hold)
        return hold


class FaultProxy:
    """Listens on 127.0.0.1 (a free port) and relays each connection to one Redis server.

    Whole-server faults: ``cut_all``, ``set_down``. Per-command faults: ``arm``. Pub/sub:
    ``drop_pushes``. Runs in the caller's event loop. ``stats`` counts connections, commands,
    cuts (connections reset by a fault), lost_replies, holds, held_replies, dropped_pushes,
    upstream_failures and errors (unexpected failures of the proxy itself, kept in ``errors``).
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.errors: list[BaseException] = []  # unexpected failures inside the proxy
        self.dropping_pushes = False
        self._server: asyncio.Server | None = None
        self._links: dict[int, _Link] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._triggers: list[Trigger] = []
        self._next_id = 0

    async def start(self) -> None:
        await self._listen(0)

    async def aclose(self) -> None:
        """Stops listening and resets every connection; raises the first internal error, if any."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links.values()):
            link.reset()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=CLOSE_TIMEOUT_S)
        if self.errors:
            raise self.errors[0]

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
        else:
            with contextlib.suppress(Exception):
                await self.aclose()

    @property
    def open_connections(self) -> int:
        """Client connections the proxy holds open right now."""
        return sum(not link.closed for link in self._links.values())

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def cut_all(self) -> int:
        """Resets (RST) every open connection on both sides; returns how many there were."""
        links = [link for link in self._links.values() if not link.closed]
        for link in links:
            link.reset()
        self.stats["cuts"] += len(links)
        return len(links)

    async def set_down(self, down: bool) -> None:
        """Down: cut every connection and stop listening, so connects are refused.
        Up: listen again on the same port."""
        if down:
            if self._server is not None:
                self._server.close()  # closes the listening socket at once
                self._server = None
            self.cut_all()
        elif self._server is None:
            await self._listen(self.port)

    def retarget(self, port: int) -> None:
        """Connections made from now on go to ``port``; open ones stay where they are."""
        self.target_port = port

    def arm(self, match: Callable[[Command], bool], action: Action, *, times: int = 1) -> Trigger:
        """Applies ``action`` to the next ``times`` commands (any connection) ``match`` accepts;
        earlier triggers are checked first."""
        if action not in get_args(Action):
            raise ValueError(f"unknown action {action!r}")
        trigger = Trigger(match, action, times)
        self._triggers.append(trigger)
        return trigger

    def drop_pushes(self, on: bool) -> None:
        """While on, pub/sub messages the server sends to subscribed connections vanish whole."""
        self.dropping_pushes = on

    def _match(self, command: Command) -> Trigger | None:
        for trigger in self._triggers:
            if trigger.times > 0 and trigger.match(command):
                trigger.times -= 1
                if trigger.times == 0:
                    self._triggers.remove(trigger)
                trigger.command = command
                trigger.fired.set()
                return trigger
        return None

    async def _listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            self._server = await asyncio.start_server(self._handle, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._next_id += 1
        link = _Link(self, self._next_id, reader, writer)
        self._links[link.id] = link
        self.stats["connections"] += 1
        try:
            await link.run()
        finally:
            self._links.pop(link.id, None)
            self._handlers.discard(task)


class _Link:
    """One client connection, its own upstream connection, and the two pumps between them."""

    def __init__(
        self,
        proxy: FaultProxy,
        conn_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy, self.id = proxy, conn_id
        self.client_r, self.client_w = reader, writer
        self.upstream_w: asyncio.StreamWriter | None = None
        self.closed = False
        self.blackholed = False
        self.subscribed = False
        self.resp3 = False
        self.reply_hold: _Hold | None = None
        self.held_replies = bytearray()
        self.forwarded = 0  # commands sent on to Redis
        self.answered = 0  # replies Redis sent back (pub/sub messages aside)
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        proxy = self.proxy
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                upstream_r, self.upstream_w = await asyncio.open_connection(
                    proxy.target_host, proxy.target_port
                )
        except (OSError, TimeoutError):
            proxy.stats["upstream_failures"] += 1
            self.reset()
            return
        if self.closed:  # cut while it connected
            self.reset()
            return
        for w in (self.client_w, self.upstream_w):
            # drain() then waits until our buffer is empty, so a cut right after loses nothing.
            w.transport.set_write_buffer_limits(high=0)
        self.tasks = [
            asyncio.create_task(self._guard(partial(self._client_to_server, self.upstream_w))),
            asyncio.create_task(self._guard(partial(self._server_to_client, upstream_r))),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _guard(self, pump: Callable[[], Coroutine[None, None, None]]) -> None:
        # The pump's coroutine is made here: a task cancelled before it starts leaves none behind.
        try:
            await pump()
        except OSError:
            self.reset()  # a peer reset or a broken pipe: pass it on to the other side
        except Exception as exc:
            self.proxy.errors.append(exc)
            self.proxy.stats["errors"] += 1
            self.reset()

    async def _client_to_server(self, upstream: asyncio.StreamWriter) -> None:
        proxy, parser = self.proxy, CommandParser()
        while data := await self.client_r.read(CHUNK):
            if self.blackholed:
                continue
            buf, sent, start = parser.buf, 0, 0
            for end, args in parser.feed(data):
                trigger = self._command(args) if args else None
                if trigger is None:
                    self.forwarded += bool(args)
                    start = end
                    continue
                upstream.write(buf[sent:start])
                sent = start
                await upstream.drain()
                if trigger.action == "cut":
                    proxy.stats["cuts"] += 1
                    self.reset()
                    return
                if trigger.action == "lose_reply":
                    upstream.write(buf[sent:])
                    await upstream.drain()
                    proxy.stats["lost_replies"] += 1
                    self.blackholed = True
                    break
                if trigger.action == "hold":
                    proxy.stats["holds"] += 1
                    hold = trigger._hold()
                    try:
                        if not await hold.decision:
                            proxy.stats["cuts"] += 1
                            self.reset()
                            return
                        upstream.write(buf[sent:end])
                        self.forwarded += 1
                    finally:
                        hold.applied.set()
                else:  # hold_reply
                    proxy.stats["held_replies"] += 1
                    upstream.write(buf[sent:end])
                    self.forwarded += 1
                    self._hold_replies(trigger._hold())
                sent = start = end
            if self.blackholed:
                continue
            upstream.write(buf[sent:start])
            parser.take(start)
            await upstream.drain()
        self.close()

    def _command(self, args: tuple[bytes, ...]) -> Trigger | None:
        command = Command(args, self.id)
        self.proxy.stats["commands"] += 1
        name = command.name
        if name in _SUBSCRIBES:
            self.subscribed = True
        elif name == "HELLO" and len(args) > 1:
            self.resp3 = args[1] == b"3"
        return self.proxy._match(command)

    def _hold_replies(self, hold: _Hold) -> None:
        self.reply_hold = hold

        def decided(decision: asyncio.Future[bool]) -> None:
            if not self.closed and not decision.cancelled():
                if decision.result():
                    self.client_w.write(bytes(self.held_replies))
                    self.held_replies.clear()
                    self.reply_hold = None
                else:
                    self.proxy.stats["cuts"] += 1
                    self.reset()
            hold.applied.set()

        hold.decision.add_done_callback(decided)

    async def _server_to_client(self, upstream: asyncio.StreamReader) -> None:
        proxy, parser = self.proxy, ReplyParser()
        while data := await upstream.read(CHUNK):
            if self.blackholed:
                continue
            buf, out, sent, start = parser.buf, bytearray(), 0, 0
            dropping = proxy.dropping_pushes and self.subscribed
            for end, kind in parser.feed(data):
                if dropping and (kind == "push" or (kind == "array" and not self.resp3)):
                    out += buf[sent:start]
                    sent = end
                    proxy.stats["dropped_pushes"] += 1
                elif kind != "push" and not self.subscribed:
                    self.answered += 1
                start = end
            out += buf[sent:start]
            parser.take(start)
            if self.reply_hold is not None:
                self.held_replies += out
                # Everything forwarded by now (the rest of a pipeline, an EXEC) is answered.
                if self.answered >= self.forwarded:
                    self.reply_hold.replied.set()
            elif out:
                self.client_w.write(out)
                await self.client_w.drain()
        if self.blackholed:
            return  # the client must find out by itself
        if self.reply_hold is not None:
            await self.reply_hold.applied.wait()
        self.close()

    def close(self) -> None:
        """Closes both sides gracefully (pending bytes are sent first)."""
        if not self.closed:
            self.closed = True
            for w in (self.client_w, self.upstream_w):
                if w is not None:
                    w.close()
            self._cancel_pumps()

    def reset(self) -> None:
        """Resets both sides at once: pending bytes are dropped and the peers get an RST."""
        self.closed = True
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                w.transport.abort()
        self._cancel_pumps()

    def _cancel_pumps(self) -> None:
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
