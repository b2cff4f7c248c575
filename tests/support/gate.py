"""A TCP relay that holds a streamed HTTP answer mid-way until the test lets it go on.

A test that must act "mid-stream" on a real model (drop a connection, add a listener) cannot
race the model: on a loaded machine the answer may end first. ``Gate`` sits between the worker
and the model and, after ``hold_after`` SSE ``data:`` lines have passed, forwards nothing more
from the model until ``release()``: the stream is then mid-way for as long as the test needs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from tokenrelay.processes import free_port

CHUNK = 64 * 1024
HOLD_LIMIT_S = 120.0  # a held answer goes on by itself after this, so no test hangs on it
CONNECT_TIMEOUT_S = 5.0


class Gate:
    """Relays ``127.0.0.1:port`` to ``127.0.0.1:target_port``; ``held`` is set once it holds."""

    def __init__(self, target_port: int, *, hold_after: int) -> None:
        self.target_port = target_port
        self.hold_after = hold_after
        self.port = free_port()
        self.held = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._seen = 0
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def release(self) -> None:
        """Lets the held answer (and everything after it) through."""
        self._released.set()

    def close(self) -> None:
        self._closed = True
        self._released.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self, exc: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(
                    ("127.0.0.1", self.target_port), timeout=CONNECT_TIMEOUT_S
                )
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            for args in ((client, server, False), (server, client, True)):
                thread = threading.Thread(target=self._pump, args=args, daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                dst.sendall(data)
                if answers and self._count(data):
                    self.held.set()
                    self._released.wait(HOLD_LIMIT_S)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _count(self, data: bytes) -> bool:
        """Counts the ``data:`` lines in ``data``; whether this chunk reached the hold point."""
        with self._lock:
            before = self._seen
            self._seen += data.count(b"data:")
            return before < self.hold_after <= self._seen and not self._released.is_set()
