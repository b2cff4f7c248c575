"""Child processes supervised so none is left behind: start with a log, wait until ready, stop.

One supervisor serves ``tokenrelay dev``, the tests and the benchmarks (standard library only):

    with Group(grace_s=10) as group:
        redis = group.start("redis", [valkey, "--port", str(port)])
        redis.wait_ready(lambda: redis_ping(port), timeout_s=10)
        api = group.start("api", [...], log=logs / "api.log", env=env)
        api.wait_ready(lambda: http_ok(f"http://127.0.0.1:{api_port}/healthz"), timeout_s=30)
    # leaving the block stops them in reverse order: api, then redis

What keeps a child from outliving its supervisor:

* each child runs in a session of its own, so a Ctrl-C in the terminal reaches the supervisor
  only, which then stops the children in order (a worker finishes its shutdown while Redis is
  still up);
* on Linux a child started from the main thread gets SIGTERM when the supervisor dies, even by
  SIGKILL (``PR_SET_PDEATHSIG``). The kernel ties that signal to the thread that forked the
  child, so a child started from another thread (``asyncio.to_thread``) does not get it: it
  would be killed when that thread ends, not when the process does;
* ``stop`` sends SIGTERM, waits ``grace_s`` and then sends SIGKILL, and always reaps.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = [
    "Child",
    "Group",
    "NotReady",
    "free_port",
    "http_ok",
    "redis_ping",
    "start",
]

_PR_SET_PDEATHSIG = 1


class NotReady(RuntimeError):
    """A child exited while starting, or its readiness check did not pass in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_ping(port: int, host: str = "127.0.0.1") -> bool:
    """True if a Redis server answers PING on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False


def http_ok(url: str, timeout_s: float = 0.5) -> bool:
    """True if a GET of the plain-HTTP ``url`` answers 200."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, loaded in the parent: a forked child of a threaded process must not
    load libraries (the loader's lock may be held by a thread that was not forked)."""
    if sys.platform != "linux":
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _die_with_parent() -> Callable[[], None] | None:
    """What the forked child runs to get SIGTERM when this thread (the main one) dies, or
    None where that is not possible or not wanted."""
    prctl = _prctl()
    if prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def in_child() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


class Child:
    """One started process: its ``name``, the ``popen`` and the ``log`` file it writes to."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    def __repr__(self) -> str:
        return f"<Child {self.name!r} pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        """The exit status if it has exited (reaped), else None."""
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` unless it has already exited."""
        self.popen.send_signal(signum)

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the exit status; raises ``subprocess.TimeoutExpired`` after ``timeout_s``."""
        return self.popen.wait(timeout_s)

    def log_text(self, tail: int | None = None) -> str:
        """What it logged so far (the last ``tail`` characters), or "" without a log file."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> None:
        """Call ``ready`` until it returns True. Raises ``NotReady`` (with the log's tail) if the
        child exits first or ``timeout_s`` passes; the child is left running either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise NotReady(
                    f"{self.name} exited with status {self.popen.returncode} while starting"
                    + self._tail()
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise NotReady(
                    f"{self.name} did not become ready within {timeout_s:g} s" + self._tail()
                )
            time.sleep(poll_s)

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        """``wait_ready`` until ``text`` appears in its log."""
        self.wait_ready(lambda: text in self.log_text(), timeout_s)

    def stop(self, grace_s: float = 10.0, on_kill: Callable[[Child], None] | None = None) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace_s`` (``on_kill`` hears of
        it first); returns the exit status. Safe to call again, and on a child that has already
        exited (it is reaped)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                if on_kill is not None:
                    on_kill(self)
                self.popen.kill()
        return self.popen.wait()

    def _tail(self) -> str:
        text = self.log_text(3000)
        return f":\n{text}" if text else ""


def start(
    name: str,
    args: Sequence[str],
    *,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Start ``args`` as a child, its stdout and stderr appended to ``log`` (inherited when None),
    with the file descriptors ``pass_fds`` kept open in it.

    The child gets a session of its own and, started from the main thread on Linux, dies with
    its parent (see the module's docstring). Raises ``OSError`` if it cannot be started.
    """
    out = open(log, "ab") if log is not None else None  # closed once the child holds it
    try:
        popen = subprocess.Popen(
            list(args),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
            pass_fds=tuple(pass_fds),
        )
    finally:
        if out is not None:
            out.close()
    return Child(name, popen, log)


class Group:
    """Children started in order and stopped in reverse order, so none is left behind.

    A context manager: leaving the block (by an exception too) stops every child.
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        self.grace_s = grace_s
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> Child:
        """``start`` a child (same arguments) and keep it, to be stopped with the group."""
        child = start(name, args, log=log, env=env, cwd=cwd)
        self.children.append(child)
        return child

    def first_exited(self) -> Child | None:
        """The first child (in start order) that has exited, or None while all run."""
        return next((c for c in self.children if c.poll() is not None), None)

    def stop(self, on_kill: Callable[[Child], None] | None = None) -> None:
        """Stop the children one after another, the last started first, each given
        ``grace_s`` before SIGKILL (``on_kill`` hears of each killed one). Clears the group."""
        while self.children:
            self.children.pop().stop(self.grace_s, on_kill)

    def __enter__(self) -> Group:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
