"""The Durable Streams conformance suite (``@durable-streams/server-conformance-tests``, pinned
in tests/js/durable-streams) against real tokenrelay API processes: on one Redis, and on a
3-primary Redis Cluster behind two API processes taking the suite's requests in turn, and
with durability ``replicated`` on a Sentinel set.

Every test outside webhook subscriptions (optional in the protocol, not built; the suite skips
them) must pass, forks included; how many ran, and how, is printed."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.replicas import SentinelSet
from tests.support.servers import RedisClusterServers
from tests.support.system import ROOT, RelaySystem, relay_system

JS_DIR = ROOT / "tests" / "js" / "durable-streams"
LONG_POLL_S = "1"  # the suite's long-poll tests wait about 3 s for a 204
OPTIONAL = ("Reserved subscription APIs",)
MIN_REQUIRED = 332  # the pinned suite's tests outside subscriptions
SUITE_TIMEOUT_S = 240

ENV = {"TOKENRELAY_STREAM_LONG_POLL_S": LONG_POLL_S, "TOKENRELAY_KEEPALIVE_S": "1"}


def run_suite(urls: list[str], workdir: Path) -> list[dict[str, Any]]:
    """Run the suite against ``urls`` (each request to the next in turn): its test results."""
    assert (JS_DIR / "node_modules" / "vitest").is_dir(), "run `make js`"
    report = workdir / "report.json"
    env = {**os.environ, "DS_URLS": ",".join(urls), "DS_LONG_POLL_MS": "1000"}
    done = subprocess.run(
        ["node_modules/.bin/vitest", "run", "--reporter=json", f"--outputFile={report}"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT_S,
        check=False,
    )
    assert report.exists(), f"{done.stdout}\n{done.stderr}"
    results: list[dict[str, Any]] = [
        test
        for file in json.loads(report.read_text())["testResults"]
        for test in file["assertionResults"]
    ]
    return results


ROTATION_ARTIFACT = "Basic Stream Operations should create a stream"
"""With requests spread over two processes, this test compares the ``Location`` the creating
process sent (its own URL) with the URL its next request went to: the other process's."""


def check(results: list[dict[str, Any]], *, excused: tuple[str, ...] = ()) -> None:
    required = [t for t in results if not t["ancestorTitles"][0].startswith(OPTIONAL)]
    required = [t for t in required if t["fullName"] not in excused]
    failed = [t for t in required if t["status"] != "passed"]
    optional = Counter(t["status"] for t in results if t["ancestorTitles"][0].startswith(OPTIONAL))
    print(f"conformance: {len(required) - len(failed)}/{len(required)} required tests passed")
    print(f"subscriptions (optional, not built): {dict(optional)}")
    assert not failed, "\n".join(
        f"{t['fullName']}: {' '.join(t['failureMessages'])[:400]}" for t in failed
    )
    assert len(required) >= MIN_REQUIRED - len(excused)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, redis_dbs: Any) -> Iterator[RelaySystem]:
    with (
        redis_dbs.database() as url,
        relay_system(tmp_path_factory.mktemp("ds"), url, ENV, workers=0) as system,
    ):
        yield system


@pytest.mark.timeout(SUITE_TIMEOUT_S + 30)
def test_the_conformance_suite_on_one_redis(single: RelaySystem, tmp_path: Path) -> None:
    check(run_suite([single.base_url], tmp_path))


@pytest.mark.timeout(SUITE_TIMEOUT_S + 90)
def test_the_conformance_suite_on_a_cluster_behind_two_apis(tmp_path: Path, redis_db: str) -> None:
    cluster = RedisClusterServers(tmp_path / "cluster")
    env = {**ENV, "TOKENRELAY_STREAMS_URL": "", "TOKENRELAY_STREAMS_CLUSTER": "true"}
    try:
        cluster.start()
        env["TOKENRELAY_STREAMS_URL"] = cluster.url
        env["TOKENRELAY_QUEUE_URL"] = redis_db
        with (
            relay_system(tmp_path / "a", redis_db, env, workers=0) as a,
            relay_system(tmp_path / "b", redis_db, env, workers=0) as b,
        ):
            check(run_suite([a.base_url, b.base_url], tmp_path), excused=(ROTATION_ARTIFACT,))
    finally:
        cluster.stop()


@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
def test_the_conformance_suite_with_replicated_durability(tmp_path: Path) -> None:
    """Every write staged, waited for by a replica and only then published (a Sentinel set:
    a primary and a replica): the protocol behaves the same."""
    servers = SentinelSet(tmp_path / "sentinel")
    system = RelaySystem(
        tmp_path / "a", servers.url(), {**ENV, "TOKENRELAY_DURABILITY": "replicated"}
    )
    try:
        servers.start()
        system.start_api()
        check(run_suite([system.base_url], tmp_path))
    finally:
        system.stop()
        servers.stop()
