"""A real model for end-to-end tests: SmolLM2-135M-Instruct served by llama.cpp's server."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import orjson
import pytest

from tests.support.servers import RedisDatabases
from tests.support.system import RelaySystem, relay_system
from tokenrelay.cli.dev import LOCAL_MODEL, local_model_missing, smollm2_path
from tokenrelay.processes import Group, free_port, http_ok


@pytest.fixture(scope="session")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (``.../v1``) of llama.cpp's OpenAI-compatible server running SmolLM2."""
    missing = local_model_missing()
    assert missing is None, f"the e2e tests need the local model: {missing} (make install)"
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path())]
    args += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", LOCAL_MODEL]
    args += ["--n_ctx", "2048"]
    base = f"http://127.0.0.1:{port}/v1"
    log = tmp_path_factory.mktemp("model") / "model.log"
    with Group() as group:
        model = group.start("model", args, log=log)
        model.wait_ready(lambda: http_ok(f"{base}/models", timeout_s=1), timeout_s=180, poll_s=0.2)
        yield base


@pytest.fixture(scope="session")
def model_system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, local_model: str
) -> Iterator[RelaySystem]:
    """An API and a worker whose one upstream, ``local``, is the real model."""
    upstreams = {"local": {"kind": "openai", "base_url": local_model, "default_model": LOCAL_MODEL}}
    env = {
        "TOKENRELAY_UPSTREAMS": orjson.dumps(upstreams).decode(),
        "TOKENRELAY_KEEPALIVE_S": "1",
    }
    workdir = tmp_path_factory.mktemp("model_system")
    with redis_dbs.database() as url, relay_system(workdir, url, env) as s:
        yield s
