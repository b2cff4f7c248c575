"""Redis fails over under running jobs: a Sentinel set (one primary, one replica, three
Sentinels) holding the queue and the streams, and a Redis Cluster of three primaries with a
replica each holding the streams. A primary is SIGKILLed mid-stream and its replica promoted.

With ``TOKENRELAY_DURABILITY=replicated`` no job fails for it, and every listener's events
equal the stored stream. With ``local`` a failover may lose the events its primary had not yet
sent on: the job then ends with a retryable ``store_unavailable`` and one ``end``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from redis.asyncio import Redis

from tests.integration.helpers import Ev, assert_well_formed, collect, follow_resilient, texts
from tests.support.replicas import Node, ReplicatedCluster, SentinelSet
from tests.support.system import RelaySystem, system_env
from tests.upstream_server import Scenario, UpstreamServer
from tokenrelay.keys import durable_keys, durable_topic, events_key, job_key
from tokenrelay.store.connections import close, follow_primary, sentinel_pool

PIECES = 40
DELAY_S = 0.04
LAG_S = 0.3
"""For this long before the kill the replica receives nothing: what was written then is lost
with the primary (up to ~8 events of each job in flight)."""


@contextlib.contextmanager
def systems(
    workdir: Path, url: str, env: dict[str, str], count: int = 2
) -> Iterator[list[RelaySystem]]:
    """``count`` systems (an API and a worker each) on ``url`` (a Sentinel URL: nothing to
    flush, the servers are the test's own)."""
    started: list[RelaySystem] = []
    try:
        for i in range(count):
            system = RelaySystem(workdir / f"s{i}", url, env)
            started.append(system)
            system.start_api()
            system.start_worker()
        yield started
    finally:
        for system in reversed(started):
            system.stop()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "sentinel")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


HIDDEN = ("--rename-command", "REPLICAOF", "", "--rename-command", "SLAVEOF", "")
"""The first primary cannot be made a replica: after a failover it runs on as a primary (a
split brain, as when the Sentinels lose touch with a busy primary that is still up)."""


@pytest.fixture
def split_brain_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path / "sentinel", primary_args=HIDDEN)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def split_brain(sentinel_set: SentinelSet) -> tuple[Node, Node]:
    """A failover the Sentinels start while the primary is up, which it never hears of:
    (the stale primary, the one the Sentinels name)."""
    old = sentinel_set.primary()
    with redis.Redis(port=sentinel_set.sentinel_ports[0], socket_timeout=5) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", sentinel_set.service)
    deadline = time.monotonic() + 30
    while sentinel_set.primary() is old:
        assert time.monotonic() < deadline, "no failover"
        time.sleep(0.05)
    new = sentinel_set.primary()

    def settled() -> bool:  # every Sentinel names the new primary, its failover over
        for port in sentinel_set.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=5) as sentinel:
                state = sentinel.sentinel_master(sentinel_set.service)
            if int(state["port"]) != new.port or not state["is_master"]:
                return False
            if "failover_in_progress" in str(state.get("flags", "")):
                return False
        return new.role() == "master"

    deadline = time.monotonic() + 30
    while not settled():
        assert time.monotonic() < deadline, "the Sentinels did not settle on the new primary"
        time.sleep(0.05)
    assert old.role() == "master", "the old primary was demoted: no split brain"
    return old, new


async def test_sentinel_clients_follow_the_named_primary_in_a_split_brain(
    split_brain_set: SentinelSet,
) -> None:
    """After a failover the old primary never heard of, connections to it meet no error: they
    go on writing there unless moved. ``follow_primary`` moves a pool's idle connections and a
    single-connection client's own to the primary the Sentinels name, and nothing else."""
    url = split_brain_set.url()
    pool_client = Redis(connection_pool=sentinel_pool(url))
    single = Redis(connection_pool=sentinel_pool(url), single_connection_client=True)
    try:
        for client in (pool_client, single):
            await client.set("before", "1")
            assert not await follow_primary(client)
        old, new = await asyncio.to_thread(split_brain, split_brain_set)

        async def port_of(client: Redis) -> int:
            return int((await client.info("server"))["tcp_port"])

        for client in (pool_client, single):
            assert await port_of(client) == old.port  # the hazard: a stale primary answers
            assert await follow_primary(client)
            assert await port_of(client) == new.port
            await client.set("after", "1")
            assert not await follow_primary(client)
        with new.client() as named:
            assert named.get("after") == b"1"
        with old.client() as stale:
            assert stale.get("after") is None
    finally:
        await close(pool_client)
        await close(single)


async def test_a_job_submitted_in_a_split_brain_runs_on_the_named_primary(
    tmp_path: Path, upstream: UpstreamServer, split_brain_set: SentinelSet
) -> None:
    """A system running when a split brain begins moves to the primary the Sentinels name
    within a few seconds: a job submitted then is stored there, runs, and its listener (on the
    API's hub) gets it to the end. (Left on the stale primary, the job would be lost when that
    primary is at last made a replica.)"""
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="3")
    upstream.add("split", Scenario(pieces=[f"s{i} " for i in range(20)], delay_s=0.02))
    with systems(tmp_path, split_brain_set.url(), env, count=1) as (system,):
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            before = await submit_retrying(client, "split")
            assert texts(await collect(client, before, within=20)).startswith("s0 ")
            old, new = await asyncio.to_thread(split_brain, split_brain_set)
            await asyncio.sleep(3.0)  # a few reaper and lease rounds: each asks the Sentinels
            job_id = await submit_retrying(client, "split")
            events = await collect(client, job_id, within=30)
    assert_well_formed(events)
    assert texts(events) == "".join(f"s{i} " for i in range(20))
    with new.client() as named, old.client() as stale:
        assert named.hget(job_key(job_id), "status") == b"succeeded"
        assert named.xlen(events_key(job_id)) == len(events)
        assert not stale.exists(job_key(job_id))


async def submit_retrying(client: httpx.AsyncClient, model: str, within: float = 20.0) -> str:
    """Submit until accepted: during a failover the API answers 503 for a moment."""
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(
                    "/v1/jobs",
                    json={"model": model, "messages": [{"role": "user", "content": "x"}]},
                )
                if response.status_code == 202:
                    return str(response.json()["id"])
                assert response.status_code == 503, response.text
            await asyncio.sleep(0.1)


@dataclass
class Figures:
    jobs: int = 0
    events_checked: int = 0
    failover_s: float = 0.0
    events_lost: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def print(self, what: str) -> None:
        print(
            f"\n{what}: jobs={self.jobs} events checked={self.events_checked} "
            f"failover={self.failover_s:.2f} s events lost={self.events_lost} "
            f"outcomes={self.outcomes}"
        )


async def check_listeners(
    client: httpx.AsyncClient, job_ids: list[str], seen: list[list[list[Ev]]], figures: Figures
) -> list[list[Ev]]:
    """Every listener's events equal the stored stream (read again from the start), which is
    well formed with one ``end``; GET's text matches. Counts events a listener saw that the
    stream lacks (``events_lost``)."""
    truths = []
    for job_id, listeners in zip(job_ids, seen, strict=True):
        truth = await collect(client, job_id, within=30)
        assert_well_formed(truth)
        stored = {e.id: e for e in truth}
        for events in listeners:
            figures.events_lost += sum(1 for e in events if stored.get(e.id) != e)
            figures.events_checked += len(events)
            assert events == truth
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        assert job["text"] == texts(truth)
        reason = truth[-1].data["finish_reason"]
        errors = [e.data for e in truth if e.type == "error"]
        if errors:  # which error, so a failure says why
            reason += f":{errors[0].get('type')}:{str(errors[0].get('message'))[:60]}"
        figures.outcomes[reason] = figures.outcomes.get(reason, 0) + 1
        truths.append(truth)
    figures.jobs = len(job_ids)
    return truths


def add_scenarios(upstream: UpstreamServer, prefix: str, count: int) -> list[str]:
    names = []
    for j in range(count):
        name = f"{prefix}{j}"
        pieces = [f"{name}.{i} " for i in range(PIECES)]
        upstream.add(name, Scenario(pieces=pieces, delay_s=DELAY_S))
        names.append(name)
    return names


async def test_replicated_shows_no_event_before_a_replica_holds_it(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """The replica is frozen (SIGSTOP): the job runs, but its listener sees nothing until the
    replica takes the events; then the whole stream, as stored."""
    env = system_env(upstream, TOKENRELAY_DURABILITY="replicated", TOKENRELAY_REPLICA_WAIT_S="0.2")
    upstream.add("gated", Scenario(pieces=[f"g{i} " for i in range(5)], delay_s=0.01))
    with systems(tmp_path, sentinel_set.url(), env, count=1) as (system,):
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            replica = next(n for n in sentinel_set.nodes if n is not sentinel_set.primary())
            assert replica.child is not None
            replica.child.send_signal(signal.SIGSTOP)
            try:
                job_id = await submit_retrying(client, "gated")
                listener = asyncio.create_task(collect(client, job_id, within=30))
                await asyncio.sleep(1.5)  # the upstream is done within 0.1 s
                with redis.Redis(port=sentinel_set.primary().port) as primary:
                    assert primary.xlen(events_key(job_id)) == 0
                assert not listener.done()
            finally:
                replica.child.send_signal(signal.SIGCONT)
            events = await listener
        assert_well_formed(events)
        assert texts(events) == "".join(f"g{i} " for i in range(5))
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            assert await collect(client, job_id) == events


def frozen_replica(sentinel_set: SentinelSet) -> contextlib.AbstractContextManager[None]:
    """The Sentinel set's replica frozen (SIGSTOP) for the block: it acknowledges nothing."""
    replica = next(n for n in sentinel_set.nodes if n is not sentinel_set.primary())
    child = replica.child
    assert child is not None

    @contextlib.contextmanager
    def frozen() -> Iterator[None]:
        child.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            child.send_signal(signal.SIGCONT)

    return frozen()


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


async def test_replicated_a_reaped_job_shows_its_end_only_once_a_replica_holds_it(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """The worker is killed mid-job while the replica is frozen: the reaper ends the job
    (``worker_lost``), but stages that end and publishes it only once a replica holds it, so no
    listener sees an end a failover could lose. Then one end, and the replay equals what the
    listener saw."""
    env = system_env(
        upstream,
        TOKENRELAY_DURABILITY="replicated",
        TOKENRELAY_REPLICA_WAIT_S="0.2",
        TOKENRELAY_LEASE_TTL_S="1",
    )
    upstream.add("reaped", Scenario(pieces=[f"r{i} " for i in range(400)], delay_s=0.05))
    with (
        systems(tmp_path, sentinel_set.url(), env, count=1) as (system,),
        redis.Redis(port=sentinel_set.primary().port) as primary,
    ):
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            job_id = await submit_retrying(client, "reaped")
            listener = asyncio.create_task(follow_resilient(client, job_id, within=60))
            await until(lambda: primary.xlen(events_key(job_id)) >= 5, "events published")
            with frozen_replica(sentinel_set):
                system.workers[0].send_signal(signal.SIGKILL)
                system.workers[0].wait(10)

                def staged() -> bool:
                    owner: bytes = primary.hget(job_key(job_id), "owner") or b""
                    return owner.endswith(b":ending")

                await until(staged, "the reaper staged the end")
                await asyncio.sleep(1.0)  # a few of its WAITs time out meanwhile
                types = [f[b"t"] for _, f in primary.xrange(events_key(job_id))]
                assert b"end" not in types and b"error" not in types
                assert primary.hget(job_key(job_id), "status") == b"running"
                assert not listener.done()
            async with asyncio.timeout(30):
                events, _ = await listener
            truth = await collect(client, job_id)
    assert_well_formed(truth)
    assert events == truth
    error = next(e for e in truth if e.type == "error").data
    assert error["type"] == "worker_lost" and error["retryable"] is True
    assert truth[-1].data["finish_reason"] == "error"


async def test_replicated_a_cancel_before_start_shows_its_end_only_once_a_replica_holds_it(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """A queued job is cancelled while the replica is frozen: the cancel answers 503 (nothing
    a replica holds yet) and no listener sees an end. The end stays staged, and the job can no
    longer start: the worker that later takes it off the queue publishes the cancel instead of
    running it. One end, ``cancelled``."""
    env = system_env(upstream, TOKENRELAY_DURABILITY="replicated", TOKENRELAY_REPLICA_WAIT_S="0.2")
    upstream.add("never", Scenario(pieces=["never "], delay_s=0.01))
    system = RelaySystem(tmp_path / "s", sentinel_set.url(), env)
    try:
        system.start_api()  # no worker yet: the job stays queued
        with redis.Redis(port=sentinel_set.primary().port) as primary:
            async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
                job_id = await submit_retrying(client, "never")
                listener = asyncio.create_task(follow_resilient(client, job_id, within=60))
                with frozen_replica(sentinel_set):
                    response = await client.post(f"/v1/jobs/{job_id}/cancel")
                    assert response.status_code == 503, response.text
                    assert "Traceback" not in response.text
                    assert primary.hget(job_key(job_id), "status") == b"queued"
                    assert primary.hget(job_key(job_id), "owner") == b"api:ending"
                    assert primary.xlen(events_key(job_id)) == 0
                    await asyncio.sleep(0.5)
                    assert not listener.done()
                system.start_worker()
                async with asyncio.timeout(30):
                    events, _ = await listener
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                truth = await collect(client, job_id)
    finally:
        system.stop()
    assert [e.type for e in events] == ["end"]
    assert events == truth
    assert events[0].data["finish_reason"] == "cancelled"
    assert job["status"] == "cancelled"
    assert not [r for r in upstream.requests if r.scenario == "never"], "it never ran"


async def run_through_failover(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
    names: list[str],
    late: list[str],
    fail_over: Callable[[list[str]], Awaitable[float]],
) -> tuple[list[str], list[list[list[Ev]]], float]:
    """Submit ``names``, follow each on both API processes, fail over mid-stream (``fail_over``
    returns how long it took), submit ``late`` right after; the job ids, what each listener
    saw, and the failover time."""
    a, b = clients
    job_ids = [await submit_retrying(a if i % 2 else b, name) for i, name in enumerate(names)]
    listening = [
        asyncio.gather(
            follow_resilient(a, job_id, within=90), follow_resilient(b, job_id, within=90)
        )
        for job_id in job_ids
    ]
    await asyncio.sleep(PIECES * DELAY_S / 3)
    failover_s = await fail_over(list(job_ids))
    job_ids += [await submit_retrying(a, name) for name in late]
    listening += [
        asyncio.gather(
            follow_resilient(a, job_id, within=90), follow_resilient(b, job_id, within=90)
        )
        for job_id in job_ids[len(names) :]
    ]
    async with asyncio.timeout(120):
        followed = await asyncio.gather(*listening)
    seen = [[one[0], two[0]] for one, two in followed]
    return job_ids, seen, failover_s


async def test_sentinel_failover_with_replicated_loses_nothing(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """Queue and streams on a Sentinel set; two API processes and two workers; the primary is
    killed mid-stream. Running jobs finish, queued ones start, every listener's events equal
    the stored stream, no event is lost and no job fails."""
    env = system_env(upstream, TOKENRELAY_DURABILITY="replicated", TOKENRELAY_LEASE_TTL_S="5")
    names = add_scenarios(upstream, "sen", 10)
    late = add_scenarios(upstream, "senlate", 2)

    async def fail_over(job_ids: list[str]) -> float:
        old, took = await asyncio.to_thread(sentinel_set.kill_primary, LAG_S)
        await asyncio.to_thread(sentinel_set.restart_as_replica, old)
        return took

    with systems(tmp_path, sentinel_set.url(), env) as (one, two):
        async with (
            httpx.AsyncClient(base_url=one.base_url, timeout=10) as a,
            httpx.AsyncClient(base_url=two.base_url, timeout=10) as b,
        ):
            job_ids, seen, took = await run_through_failover((a, b), names, late, fail_over)
            figures = Figures(failover_s=took)
            await check_listeners(b, job_ids, seen, figures)
    figures.print("sentinel, replicated")
    assert figures.events_lost == 0
    assert figures.outcomes == {"stop": len(names) + len(late)}, figures.outcomes


def log_count(systems_: list[RelaySystem], event: str) -> int:
    """How many jobs the workers logged ``event`` for."""
    return len(
        {
            e.get("job_id")
            for system in systems_
            for e in system.log_events("worker0")
            if e.get("event") == event
        }
    )


async def test_sentinel_failover_with_local_restores_the_lost_events(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """``local``: the replica misses the last writes before the kill, so the promoted one
    lacks events listeners saw; the workers write them again with the same ids. Every
    listener's events equal the stored stream, and no job fails."""
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="5")
    names = add_scenarios(upstream, "loc", 8)

    async def fail_over(job_ids: list[str]) -> float:
        old, took = await asyncio.to_thread(sentinel_set.kill_primary, LAG_S)
        await asyncio.to_thread(sentinel_set.restart_as_replica, old)
        return took

    with systems(tmp_path, sentinel_set.url(), env) as started:
        async with (
            httpx.AsyncClient(base_url=started[0].base_url, timeout=10) as a,
            httpx.AsyncClient(base_url=started[1].base_url, timeout=10) as b,
        ):
            job_ids, seen, took = await run_through_failover((a, b), names, [], fail_over)
            figures = Figures(failover_s=took)
            await check_listeners(b, job_ids, seen, figures)
        restored = log_count(started, "events_restored")
    figures.print(f"sentinel, local ({restored} jobs had events restored)")
    assert restored > 0, "the failover lost nothing: the test proves nothing"
    assert figures.events_lost == 0
    assert figures.outcomes == {"stop": len(names)}, figures.outcomes


async def test_local_without_restoring_ends_each_job_once_with_a_retryable_error(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """``local`` with TOKENRELAY_RESTORE_EVENTS=0: a job that lost events in the failover
    ends with a retryable ``store_unavailable`` error and one ``end``, within a bound; the
    others finish."""
    env = system_env(upstream, TOKENRELAY_LEASE_TTL_S="5", TOKENRELAY_RESTORE_EVENTS="0")
    names = add_scenarios(upstream, "lost", 6)
    with systems(tmp_path, sentinel_set.url(), env, count=1) as (system,):
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            job_ids = [await submit_retrying(client, name) for name in names]
            listening = [follow_resilient(client, job_id, within=60) for job_id in job_ids]
            follow = asyncio.gather(*listening)
            await asyncio.sleep(PIECES * DELAY_S / 3)
            old, _ = await asyncio.to_thread(sentinel_set.kill_primary, LAG_S)
            killed_at = time.monotonic()
            await asyncio.to_thread(sentinel_set.restart_as_replica, old)
            async with asyncio.timeout(60):
                followed = await follow
            ended_within = time.monotonic() - killed_at
            failed = 0
            for job_id, (events, _) in zip(job_ids, followed, strict=True):
                assert [e.type for e in events].count("end") == 1
                truth = await collect(client, job_id)
                assert_well_formed(truth)
                if truth[-1].data["finish_reason"] == "error":
                    failed += 1
                    error = next(e for e in truth if e.type == "error").data
                    assert error["type"] == "store_unavailable" and error["retryable"] is True
                else:
                    assert events == truth
        lost = log_count([system], "events_lost")
    print(f"\nlocal, no restoring: jobs={len(job_ids)} lost events in {lost}, failed={failed}")
    assert failed == lost > 0
    assert ended_within < 30


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[ReplicatedCluster]:
    servers = ReplicatedCluster(tmp_path / "cluster")
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def busiest_primary(cluster: ReplicatedCluster, job_ids: list[str]) -> int:
    """The port of the primary holding the most of these jobs' keys."""
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        ports = [client.get_node_from_key(events_key(j)).port for j in job_ids]
    finally:
        client.close()
    return max(set(ports), key=ports.count)


async def test_cluster_failover_with_replicated_loses_nothing(
    tmp_path: Path, redis_db: str, upstream: UpstreamServer, replicated_cluster: ReplicatedCluster
) -> None:
    """Streams on a cluster of three primaries with a replica each; two API processes and two
    workers; the primary holding most job keys is killed mid-stream, its replica promoted.
    Every listener's events equal the stored stream, none lost, no job failed."""
    env = system_env(
        upstream,
        TOKENRELAY_DURABILITY="replicated",
        TOKENRELAY_QUEUE_URL=redis_db,
        TOKENRELAY_STREAMS_URL=replicated_cluster.url,
        TOKENRELAY_STREAMS_CLUSTER="true",
        TOKENRELAY_LEASE_TTL_S="5",
    )
    names = add_scenarios(upstream, "clr", 16)

    async def fail_over(job_ids: list[str]) -> float:
        port = await asyncio.to_thread(busiest_primary, replicated_cluster, job_ids)
        node = replicated_cluster.node_at(port)
        took = await asyncio.to_thread(replicated_cluster.kill, node, LAG_S)
        await asyncio.to_thread(replicated_cluster.restart, node)
        return took

    with systems(tmp_path, redis_db, env) as (one, two):
        async with (
            httpx.AsyncClient(base_url=one.base_url, timeout=10) as a,
            httpx.AsyncClient(base_url=two.base_url, timeout=10) as b,
        ):
            job_ids, seen, took = await run_through_failover((a, b), names, [], fail_over)
            figures = Figures(failover_s=took)
            await check_listeners(b, job_ids, seen, figures)
    figures.print("cluster, replicated")
    assert figures.events_lost == 0
    assert figures.outcomes == {"stop": len(names)}, figures.outcomes


# Durable Streams (``/v1/stream``) under ``replicated``: appends are staged, wait for a replica,
# and only then reach readers; a writer's answer waits for the publish to reach one too.

JSON = {"Content-Type": "application/json"}


def producer(pid: str, seq: int) -> dict[str, str]:
    return {"Producer-Id": pid, "Producer-Epoch": "0", "Producer-Seq": str(seq)}


async def read_all(client: httpx.AsyncClient, url: str) -> list[object]:
    """A stream's messages from its start, as one catch-up read gives them."""
    response = await client.get(url, params={"offset": "-1"})
    assert response.status_code == 200, response.text
    messages: list[object] = response.json()
    return messages


async def long_poll_until_closed(
    client: httpx.AsyncClient, url: str, within: float = 90.0
) -> list[object]:
    """A live reader: long-polls from the start until the stream is closed, reconnecting from
    its offset through errors (a failover answers 503 or drops connections for a moment)."""
    seen: list[object] = []
    offset, cursor = "-1", ""
    async with asyncio.timeout(within):
        while True:
            params = {"offset": offset, "live": "long-poll"} | (
                {"cursor": cursor} if cursor else {}
            )
            try:
                response = await client.get(url, params=params)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code not in (200, 204):
                assert response.status_code == 503, response.text
                await asyncio.sleep(0.1)
                continue
            if response.status_code == 200:
                seen += response.json()
            offset = response.headers["Stream-Next-Offset"]
            cursor = response.headers.get("Stream-Cursor", "")
            if response.headers.get("Stream-Closed") == "true":
                return seen


async def append_retrying(
    client: httpx.AsyncClient, url: str, message: object, headers: dict[str, str]
) -> int:
    """Append until acknowledged (2xx), the way a producer does: the same Producer-Seq again
    after a 503 or a dropped connection, so the stream applies it once (``message`` None: a
    close alone). The tries it took."""
    body = {} if message is None else {"json": message}
    async with asyncio.timeout(60):
        for tries in range(1, 10_000):
            try:
                response = await client.post(url, headers=JSON | headers, **body)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.is_success:
                return tries
            assert response.status_code == 503, response.text
            assert "Traceback" not in response.text
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def test_replicated_durable_stream_shows_no_message_before_a_replica_holds_it(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """The replica is frozen: an append answers 503 once its retry budget is spent, and no
    reader sees its message (it is staged, not published). The producer sends it again once
    the replica is back: it is applied once, and readers see it."""
    env = system_env(
        upstream,
        TOKENRELAY_DURABILITY="replicated",
        TOKENRELAY_REPLICA_WAIT_S="0.2",
        TOKENRELAY_WRITE_RETRY_S="1",
        TOKENRELAY_STREAM_LONG_POLL_S="1",
    )
    system = RelaySystem(tmp_path / "s", sentinel_set.url(), env)
    keys = durable_keys(durable_topic("rep"))
    try:
        system.start_api()
        async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
            url = "/v1/stream/rep"
            assert (await client.put(url, headers=JSON)).status_code == 201
            reader = asyncio.create_task(long_poll_until_closed(client, url, within=60))
            with (
                redis.Redis(port=sentinel_set.primary().port) as primary,
                frozen_replica(sentinel_set),
            ):
                started = time.monotonic()
                response = await client.post(url, json={"i": 0}, headers=JSON | producer("p", 0))
                took = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert response.headers["Retry-After"] == "1"
                assert "replica" in response.json()["error"]["message"]
                assert took < 5
                assert primary.xlen(keys[1]) == 0  # nothing published
                assert primary.xlen(keys[4]) == 1  # staged
                assert await read_all(client, url) == []
                await asyncio.sleep(0.5)
                assert not reader.done()
            # Back: the same append again is a duplicate of the staged one; it is published.
            for _ in range(100):  # the thawed replica may take a moment to catch up
                again = await client.post(url, json={"i": 0}, headers=JSON | producer("p", 0))
                if again.status_code != 503:
                    break
                await asyncio.sleep(0.1)
            assert again.status_code == 204, again.text
            assert await read_all(client, url) == [{"i": 0}]
            nxt = await client.post(
                url, json={"i": 1}, headers=JSON | producer("p", 1) | {"Stream-Closed": "true"}
            )
            assert nxt.status_code == 200, nxt.text
            assert await read_all(client, url) == [{"i": 0}, {"i": 1}]
            assert await reader == [{"i": 0}, {"i": 1}]
    finally:
        system.stop()


async def test_sentinel_failover_durable_streams_replicated_lose_no_acknowledged_append(
    tmp_path: Path, upstream: UpstreamServer, sentinel_set: SentinelSet
) -> None:
    """Writers append to Durable Streams (idempotent producers) through two API processes,
    live readers long-poll each stream on both; the primary is killed mid-stream. Every
    acknowledged append is in its stream once and in order, and every reader saw exactly the
    stream as stored: nothing a reader saw was lost."""
    env = system_env(
        upstream,
        TOKENRELAY_DURABILITY="replicated",
        TOKENRELAY_WRITE_RETRY_S="10",
        TOKENRELAY_STREAM_LONG_POLL_S="1",
    )
    streams, count = 4, 40  # two producers a stream, appending at once
    started: list[RelaySystem] = []
    try:
        for i in range(2):
            system = RelaySystem(tmp_path / f"s{i}", sentinel_set.url(), env)
            started.append(system)
            system.start_api()
        async with (
            httpx.AsyncClient(base_url=started[0].base_url, timeout=30) as a,
            httpx.AsyncClient(base_url=started[1].base_url, timeout=30) as b,
        ):
            urls = [f"/v1/stream/fo{s}" for s in range(streams)]
            for url in urls:
                assert (await a.put(url, headers=JSON)).status_code == 201
            readers = [
                asyncio.create_task(long_poll_until_closed(c, url)) for url in urls for c in (a, b)
            ]
            retried = 0

            async def write(s: int, w: str) -> None:
                nonlocal retried
                client = (a, b)[s % 2 if w == "x" else 1 - s % 2]
                for i in range(count):
                    message = {"s": s, "w": w, "i": i}
                    retried += await append_retrying(client, urls[s], message, producer(w, i)) - 1
                    await asyncio.sleep(0.02)

            async def write_then_close(s: int) -> None:
                await asyncio.gather(write(s, "x"), write(s, "y"))
                await append_retrying(a, urls[s], None, {"Stream-Closed": "true"})

            writers = asyncio.gather(*(write_then_close(s) for s in range(streams)))
            await asyncio.sleep(0.5)
            old, took = await asyncio.to_thread(sentinel_set.kill_primary, LAG_S)
            await asyncio.to_thread(sentinel_set.restart_as_replica, old)
            async with asyncio.timeout(120):
                await writers
                seen = await asyncio.gather(*readers)
            checked = lost = 0
            for s, url in enumerate(urls):
                truth = await read_all(b, url)
                # Every acknowledged append once, each producer's in its order.
                for w in ("x", "y"):
                    mine = [m for m in truth if isinstance(m, dict) and m["w"] == w]
                    assert mine == [{"s": s, "w": w, "i": i} for i in range(count)]
                assert len(truth) == 2 * count
                for reader in seen[2 * s : 2 * s + 2]:
                    lost += sum(1 for m in reader if m not in truth)
                    checked += len(reader)
                    assert reader == truth
    finally:
        for system in reversed(started):
            system.stop()
    print(
        f"\nDurable Streams, sentinel, replicated: streams={streams} (2 producers each) "
        f"appends={streams * 2 * count} "
        f"retried={retried} messages checked={checked} failover={took:.2f} s lost={lost}"
    )
    assert retried > 0, "no append met the failover: the test proves nothing"
