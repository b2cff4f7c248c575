"""The relay under test: real ``tokenrelay api`` and ``tokenrelay worker`` processes."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import redis

from tests.upstream_server import UpstreamServer
from tokenrelay.processes import Child, Group, free_port, http_ok

ROOT = Path(__file__).resolve().parent.parent.parent
UPSTREAM_SECRET = "sk-upstream-secret-do-not-log"
STOP_GRACE_S = 10.0


def upstreams_env(server: UpstreamServer) -> dict[str, dict[str, object]]:
    """``TOKENRELAY_UPSTREAMS`` for the test upstream server: one upstream per wire format."""
    return {
        "openai": {
            "kind": "openai",
            "base_url": server.url("openai"),
            "api_key": "sk-upstream-secret",
        },
        "ollama": {"kind": "ollama", "base_url": server.url("ollama")},
        "sse": {"kind": "sse", "base_url": server.url("sse")},
    }


def system_env(server: UpstreamServer, **extra: str) -> dict[str, str]:
    """The environment of a system on the test upstream server, ``extra`` added."""
    return {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams_env(server)).decode(),
        "TOKENRELAY_DEFAULT_UPSTREAM": "openai",
        "TOKENRELAY_KEEPALIVE_S": "0.5",
        **extra,
    }


class RelaySystem:
    """Real ``tokenrelay api`` and ``tokenrelay worker`` processes sharing one Redis database.

    ``workers`` are the worker children (``send_signal``, ``wait``), oldest first; logs are
    ``api.log``, ``worker0.log``, ... in ``workdir``.
    """

    def __init__(self, workdir: Path, redis_url: str, env: dict[str, str]) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TOKENRELAY_REDIS_URL": redis_url,
            "TOKENRELAY_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.group = Group(grace_s=STOP_GRACE_S)
        self.api: Child | None = None
        self.workers: list[Child] = []

    def _start(self, name: str, *args: str) -> Child:
        command = [sys.executable, "-m", "tokenrelay.cli", *args]
        log = self.workdir / f"{name}.log"
        return self.group.start(name, command, log=log, env=self.env, cwd=ROOT)

    def start_api(self) -> None:
        self.api = self._start("api", "api", "--workers", "1", "--port", str(self.port))
        self.api.wait_ready(lambda: http_ok(f"{self.base_url}/healthz"), timeout_s=20)

    def start_worker(self) -> Child:
        worker = self._start(f"worker{len(self.workers)}", "worker", "--processes", "1")
        self.workers.append(worker)
        worker.wait_for_log('"worker_started"', timeout_s=20)
        return worker

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(self.log(p.stem) for p in sorted(self.workdir.glob("*.log")))

    def log_events(self, name: str) -> list[dict[str, object]]:
        out = []
        for line in self.log(name).splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                obj = orjson.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def stop(self) -> None:
        """Every process, the last started first."""
        self.group.stop()


@contextlib.contextmanager
def relay_system(
    workdir: Path, redis_url: str, env: dict[str, str], *, workers: int = 1
) -> Iterator[RelaySystem]:
    """A started system (an API and ``workers`` workers) on ``redis_url``, emptied first;
    stopped when the block ends."""
    system = RelaySystem(workdir, redis_url, env)
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()  # each system owns its database: start it empty
    try:
        system.start_api()
        for _ in range(workers):
            system.start_worker()
        yield system
    finally:
        system.stop()
