"""Many processes of one command on one machine: ``tokenrelay api --workers N`` and
``tokenrelay worker --processes N``.

The supervisor starts N children, each a plain one-process ``tokenrelay api`` or ``worker``;
they share nothing but Redis (and, for the API, the listening socket the supervisor opened, so
the kernel spreads connections over them). It does no work of its own:

- SIGTERM or SIGINT is passed to every child, which shuts down as one process does (the API
  finishes its requests, a worker its jobs within ``shutdown_grace_s``); the supervisor exits
  0 once all have exited, killing any still running ``stop_grace_s`` later;
- a child that dies is started again; five deaths in a row, each within ``QUICK_DEATH_S`` of
  its start (a bad configuration, Redis refusing us), make it stop the rest and exit 1;
- each child runs in a session of its own and gets SIGTERM if the supervisor dies, even by
  SIGKILL (``tokenrelay.processes``), so none outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from tokenrelay.processes import Child, start

log = structlog.get_logger("tokenrelay.supervisor")

QUICK_DEATH_S = 10.0
"""A child that exits sooner than this after its start died quickly."""
MAX_QUICK_DEATHS = 5
"""Quick deaths in a row after which the supervisor gives up (exit status 1)."""
RESTART_DELAY_S = 0.2
POLL_S = 0.1


def default_count() -> int:
    """One process per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cli_command(*args: str) -> list[str]:
    """The ``tokenrelay`` command line with ``args``, run by this Python."""
    return [sys.executable, "-m", "tokenrelay.cli", *args]


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port``, inheritable by the children."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs ``count`` children of ``command`` until a signal stops them (see the module)."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        count: int,
        *,
        stop_grace_s: float,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.command = list(command)
        self.count = count
        self.stop_grace_s = stop_grace_s
        self.pass_fds = tuple(pass_fds)
        self.children: list[Child | None] = [None] * count
        self.started_at = [0.0] * count
        self.quick_deaths = 0
        self.restarts = 0
        self._signal: int | None = None

    def _start(self, index: int) -> None:
        child = start(f"{self.name}{index}", self.command, pass_fds=self.pass_fds)
        self.children[index] = child
        self.started_at[index] = time.monotonic()
        log.info("process_started", process=self.name, index=index, pid=child.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signum

    def run(self) -> int:
        """Start the children and supervise them; the exit status (0 when stopped by a
        signal, 1 when children kept dying)."""
        previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            previous[stop_signal] = signal.signal(stop_signal, self._on_signal)
        try:
            for index in range(self.count):
                self._start(index)
            log.info("supervisor_started", process=self.name, count=self.count, pid=os.getpid())
            status = self._watch()
        finally:
            self._stop_all(self._signal or signal.SIGTERM)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log.info("supervisor_stopped", process=self.name, status=status, restarts=self.restarts)
        return status

    def _watch(self) -> int:
        while self._signal is None:
            for index, child in enumerate(self.children):
                if child is None or child.poll() is None:
                    continue
                lived = time.monotonic() - self.started_at[index]
                self.quick_deaths = self.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
                log.warning(
                    "process_exited",
                    process=self.name,
                    index=index,
                    pid=child.pid,
                    status=child.returncode,
                    lived_s=round(lived, 1),
                )
                if self.quick_deaths >= MAX_QUICK_DEATHS:
                    log.error("supervisor_giving_up", process=self.name, deaths=self.quick_deaths)
                    return 1
                time.sleep(RESTART_DELAY_S * self.quick_deaths)
                if self._signal is not None:
                    break
                self.restarts += 1
                self._start(index)
            time.sleep(POLL_S)
        return 0

    def _stop_all(self, signum: int) -> None:
        """Pass ``signum`` to every child, wait for all, kill those past the grace."""
        running = [c for c in self.children if c is not None and c.poll() is None]
        for child in running:
            child.send_signal(signum)
        deadline = time.monotonic() + self.stop_grace_s
        for child in running:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("process_killed", process=self.name, pid=child.pid)
                child.popen.kill()
                child.wait()
