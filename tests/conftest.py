"""Shared fixtures and hooks: a real Redis-compatible server handing out its databases, real
upstream servers, real relay processes. The code behind them lives in ``tests/support``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.servers import RedisDatabases, RedisServer
from tests.support.system import RelaySystem, relay_system, system_env
from tests.upstream_server import UpstreamServer

DATABASES = 64  # the session server's logical databases, one per live test system


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session server's address: ``TOKENRELAY_TEST_REDIS_URL`` if set, else a Valkey
    started for the session. Tests take a database of their own from ``redis_dbs``."""
    given = os.environ.get("TOKENRELAY_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = RedisServer(tmp_path_factory.mktemp("valkey"), databases=DATABASES)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_dbs(redis_url: str) -> RedisDatabases:
    """Hands out the session server's databases (emptied first): ``with redis_dbs.database()
    as url:`` in module-scoped fixtures, the ``redis_db`` fixture in tests."""
    return RedisDatabases(redis_url)


@pytest.fixture
def redis_db(redis_dbs: RedisDatabases) -> Iterator[str]:
    """The URL of a database of the session server for this test alone, empty at its start."""
    with redis_dbs.database() as url:
        yield url


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


@pytest.fixture(scope="session")
def system(
    tmp_path_factory: pytest.TempPathFactory, redis_dbs: RedisDatabases, upstream: UpstreamServer
) -> Iterator[RelaySystem]:
    """One API and one worker for the session, on a database of their own."""
    env = system_env(upstream, TOKENRELAY_STREAM_TTL_S="3600")
    with (
        redis_dbs.database() as url,
        relay_system(tmp_path_factory.mktemp("system"), url, env) as sys_,
    ):
        yield sys_


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the fault matrix (tests/integration/test_fault_matrix.py), when it ran."""
    from tests.support.report import matrix_summary

    lines = matrix_summary()
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)
