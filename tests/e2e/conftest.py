"""A real model for end-to-end tests: SmolLM2-135M-Instruct served by llama.cpp's server."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import RelaySystem, free_port, relay_system, with_db
from tokenrelay.cli.dev import LOCAL_MODEL, local_model_missing, smollm2_path


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (``.../v1``) of llama.cpp's OpenAI-compatible server running SmolLM2."""
    missing = local_model_missing()
    assert missing is None, f"the e2e tests need the local model: {missing} (make install)"
    port = free_port()
    log_path = tmp_path_factory.mktemp("model") / "model.log"
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path())]
    args += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", LOCAL_MODEL]
    args += ["--n_ctx", "2048"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, Path(log_path).read_text()[-3000:]
            time.sleep(0.2)
        else:
            raise RuntimeError("llama.cpp's server did not start in 180 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def model_system(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, local_model: str
) -> Iterator[RelaySystem]:
    """An API and a worker whose one upstream, ``local``, is the real model."""
    upstreams = {"local": {"kind": "openai", "base_url": local_model, "default_model": LOCAL_MODEL}}
    env = {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
        "TOKENRELAY_KEEPALIVE_S": "1",
    }
    with relay_system(tmp_path_factory.mktemp("model_system"), with_db(redis_url, 5), env) as s:
        yield s
