"""Real replicated Redis for the failover tests (bundled Valkey on loopback): a Sentinel set
(one primary, one replica, three Sentinels) and a Redis Cluster of three primaries with one
replica each. Timeouts are short, so a killed primary's replica takes over within seconds."""

from __future__ import annotations

import contextlib
import functools
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from tests.support.servers import valkey_binary
from tokenrelay.processes import Child, free_port, redis_ping, start

DOWN_AFTER_MS = 1000
"""Sentinel: a primary silent this long is down; cluster: ``cluster-node-timeout``."""

REPLICA_ARGS = [
    "--save",
    "",
    "--appendonly",
    "no",
    # A replica (re)syncs at once, over the socket, with no delay to batch other replicas.
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
    "--repl-ping-replica-period",
    "1",
]


def _cli() -> str:
    return str(Path(valkey_binary()).with_name("valkey-cli"))


def _wait(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:g} s")
        time.sleep(0.05)


class Node:
    """One Valkey process with a fixed port (kept across restarts) and extra arguments."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.args = args
        self.child: Child | None = None

    def start(self, *extra: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [valkey_binary(), *self.args, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.workdir), *extra]
        self.child = start(f"valkey{self.port}", args, log=self.workdir / "valkey.log")
        self.child.wait_ready(functools.partial(redis_ping, self.port), timeout_s=10, poll_s=0.02)

    def kill(self) -> None:
        """SIGKILL: whatever it acknowledged but had not yet sent to its replica is lost."""
        if self.child is not None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait(timeout_s=10)
            self.child = None

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace_s=5)
            self.child = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def role(self) -> str:
        with self.client() as client:
            return str(client.info("replication")["role"])


@contextlib.contextmanager
def cut_off(primary: Node, replica: Node, lag_s: float) -> Iterator[None]:
    """Freeze ``replica`` (SIGSTOP) and cut its link from ``primary``, so the writes of the
    next ``lag_s`` never reach it (what it had received before it still reads); thaw it when
    the block ends (the block kills the primary)."""
    if lag_s <= 0 or replica.child is None:
        yield
        return
    replica.child.send_signal(signal.SIGSTOP)
    try:
        with primary.client() as client:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag_s)
        yield
    finally:
        replica.child.send_signal(signal.SIGCONT)


class SentinelSet:
    """A primary, one replica and three Sentinels watching them as ``service``.

    ``url`` is the ``redis+sentinel://`` URL of database ``db``; ``primary()`` asks the
    Sentinels which node is the primary now.
    """

    def __init__(
        self, workdir: Path, service: str = "mymaster", primary_args: tuple[str, ...] = ()
    ) -> None:
        self.workdir = workdir
        self.service = service
        self.nodes = [Node(workdir / f"node{i}", REPLICA_ARGS) for i in range(2)]
        self.primary_args = primary_args  # the first primary's extra arguments
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[Child] = []

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def start(self) -> None:
        first, second = self.nodes
        first.start(*self.primary_args)
        second.start("--replicaof", "127.0.0.1", str(first.port))
        _wait(lambda: self._in_sync(first), "the replica did not sync", 20)
        for port in self.sentinel_ports:
            folder = self.workdir / f"sentinel{port}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {first.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.service} 4000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            child = start(
                f"sentinel{port}",
                [valkey_binary(), str(config), "--sentinel"],
                log=folder / "sentinel.log",
            )
            child.wait_ready(functools.partial(redis_ping, port), timeout_s=10, poll_s=0.02)
            self.sentinels.append(child)
        _wait(self._all_see_the_replica, "the Sentinels did not find the replica", 20)

    def _in_sync(self, primary: Node) -> bool:
        with primary.client() as client:
            info = client.info("replication")
        return bool(info.get("connected_slaves")) and "online" in str(info.get("slave0", ""))

    def _all_see_the_replica(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=2) as s:
                if not s.execute_command("SENTINEL", "REPLICAS", self.service):
                    return False
                known = s.execute_command("SENTINEL", "SENTINELS", self.service)
                if len(known) < len(self.sentinel_ports) - 1:
                    return False
        return True

    def primary(self) -> Node:
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=2) as s:
            _host, port = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return next(node for node in self.nodes if node.port == int(port))

    def kill_primary(self, lag_s: float = 0.0) -> tuple[Node, float]:
        """SIGKILL the primary, wait until a Sentinel promoted the replica; the killed node
        and the seconds the promotion took. ``lag_s``: for that long before, the replica gets
        nothing (its link cut), so the writes of that time are lost with the primary."""
        old = self.primary()
        with cut_off(old, next(n for n in self.nodes if n is not old), lag_s):
            began = time.monotonic()
            old.kill()
        _wait(lambda: self.primary() is not old, "no promotion", 30)
        new = self.primary()
        _wait(lambda: new.role() == "master", "the promoted node is no primary", 10)
        return old, time.monotonic() - began

    def restart_as_replica(self, node: Node) -> None:
        """Start the killed node again (empty) as the new primary's replica (as the Sentinels
        would make it, only sooner); waits until it is in sync."""
        new = self.primary()
        node.start("--replicaof", "127.0.0.1", str(new.port))
        _wait(lambda: self._in_sync(new), "the old primary did not rejoin as a replica", 30)

    def stop(self) -> None:
        while self.sentinels:
            self.sentinels.pop().stop(grace_s=5)
        for node in self.nodes:
            node.stop()


class ReplicatedCluster:
    """A Redis Cluster of three primaries, each with one replica (``--cluster-replicas 1``);
    a primary silent for ``cluster-node-timeout`` is replaced by its replica."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.nodes: list[Node] = []
        for i in range(6):
            args = [*REPLICA_ARGS, "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", str(DOWN_AFTER_MS)]
            # The bus port defaults to port + 10000, which a free high port may not have.
            args += ["--cluster-port", str(free_port())]
            # A replica of a dead primary takes over even if it lost touch for a while.
            args += ["--cluster-replica-validity-factor", "0"]
            self.nodes.append(Node(workdir / f"node{i}", args))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait(self._healthy, "the cluster did not become ok with three replicas", 40)

    def _healthy(self) -> bool:
        try:
            with self.nodes[0].client() as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
            return sum(self._is_synced_replica(n) for n in self.nodes if n.child) == 3
        except redis.RedisError:
            return False

    def _is_synced_replica(self, node: Node) -> bool:
        with node.client() as client:
            info = client.info("replication")
        return info["role"] == "slave" and info.get("master_link_status") == "up"

    def replica_of(self, primary: Node) -> Node:
        with primary.client() as client:
            info = client.info("replication")
        return self.node_at(int(info["slave0"]["port"]))

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def kill(self, node: Node, lag_s: float = 0.0) -> float:
        """SIGKILL ``node`` (a primary), wait until its replica serves its slots and the
        cluster is ok again; the seconds that took. ``lag_s`` as ``SentinelSet.kill_primary``."""
        with cut_off(node, self.replica_of(node), lag_s):
            began = time.monotonic()
            node.kill()
        _wait(lambda: self._slots_served_without(node), "no replica took over", 30)
        return time.monotonic() - began

    def _slots_served_without(self, dead: Node) -> bool:
        try:
            with next(n for n in self.nodes if n.child is not None).client() as client:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                slots = client.execute_command("CLUSTER", "SLOTS")
        except redis.RedisError:
            return False
        covered = 0
        for start_slot, end_slot, primary, *_ in slots:
            if int(primary[1]) == dead.port:
                return False
            covered += int(end_slot) - int(start_slot) + 1
        return covered == 16384

    def restart(self, node: Node) -> None:
        """Start a killed node again, as a new empty node (as a replaced pod would be):
        never as the primary its old config names, which would serve its slots empty for a
        moment. It joins the cluster as the replica of the node that took its slots; waits
        until every primary has a synced replica again."""
        (node.workdir / "nodes.conf").unlink(missing_ok=True)
        node.start()
        survivor = next(n for n in self.nodes if n.child is not None and n is not node)
        with node.client() as client:
            bus = survivor.args[survivor.args.index("--cluster-port") + 1]
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", survivor.port, bus)
        orphan = self._orphaned_primary(survivor)

        def replicating() -> bool:
            try:
                with node.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", orphan)
                return True
            except redis.ResponseError:
                return False  # it does not know that node yet

        _wait(replicating, "the new node did not learn the cluster", 20)
        _wait(self._healthy, "the killed node did not rejoin as a replica", 40)

    def _orphaned_primary(self, asking: Node) -> str:
        """The id of the primary with no replica (the one that took over), as ``asking`` (a
        node of the cluster, not the new one: that one does not know the cluster yet) sees
        it. Only primaries serving slots count: the new node is a primary without any."""
        with asking.client() as client:
            lines = client.execute_command("CLUSTER", "NODES").decode().splitlines()
        primaries = {
            f[0]
            for f in (line.split() for line in lines)
            if "master" in f[2] and "fail" not in f[2] and len(f) > 8
        }
        replicated = {f[3] for f in (line.split() for line in lines) if "slave" in f[2]}
        (orphan,) = primaries - replicated
        return orphan

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
