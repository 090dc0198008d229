"""A cluster of G-Room nodes on a Redis Cluster (``--redis-url redis+cluster://...``).

The test starts a real Redis Cluster on free loopback ports: three primaries, each with a replica,
each server in a folder of its own, with a node timeout of 1 s so that a failover takes seconds.
Two G-Room nodes know only two of its servers. A lesson runs on one node with a student relayed
through the other, and wrong join codes and logins spread over both nodes are stopped at one
budget: the Lua scripts and ``MGET`` that touch several keys work, because every key sits under
the prefix's hash tag in one slot (checked by listing each primary's keys). Then the primary of
that slot is killed: the lesson keeps its audio, the Cluster promotes its replica, and a new
lesson is placed and joined through either node.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest

from groom.core.redis_client import key_prefix, parse_cluster_url
from peers import new_lesson
from servers import GroomServer, database_backends, free_port
from test_cluster import closing, connect
from test_sentinel import origins_of, placed_and_heard_after_failover, redis_cli, wait_for
from test_shared_limits import join, login

pytestmark = pytest.mark.timeout(180)  # redis-server: scripts/test installs it

WRONG_CODES = 4  # --join-attempts-per-minute
PER_ADDRESS = 3  # --login-failures-per-address


class RedisClusterGroup:
    """Three primaries and three replicas forming one Redis Cluster."""

    def __init__(self, tls: Sequence[str] = (), cli: Sequence[str] = ()) -> None:
        """A plain Cluster or, with ``tls`` (redis-server's TLS options: certificate files,
        --tls-cluster...), one whose every port speaks TLS only (``--port 0``, the port given as
        ``--tls-port``), reached by redis-cli with ``cli`` (--tls and its files)."""
        self.tls, self.cli = tuple(tls), tuple(cli)
        # Each server works in a folder of its own (its nodes.conf; no dump.rdb in the checkout).
        self.root = Path(tempfile.mkdtemp(prefix="groom-rc-"))
        ports: set[int] = set()
        while len(ports) < 12:  # each server's port and its cluster bus port, all distinct
            ports.add(free_port())
        self.ports, self.buses = sorted(ports)[:6], sorted(ports)[6:]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for port, bus in zip(self.ports, self.buses):
                self._server(port, bus)
            created = subprocess.run(
                ["redis-cli", *self.cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True,
                timeout=30)
            assert created.returncode == 0, created.stdout + created.stderr
            for port in self.ports:
                wait_for(lambda port=port: "cluster_state:ok" in self.redis_cli(port, "cluster", "info"),
                         "every server to see the cluster up")
            for port in self.replicas():
                wait_for(lambda port=port: "master_link_status:up"
                         in self.redis_cli(port, "info", "replication"), "the replicas in sync")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis+cluster://127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"

    def _server(self, port: int, bus: int) -> None:
        folder = self.root / str(port)
        folder.mkdir()
        listen = ("--port", "0", "--tls-port", str(port), *self.tls) if self.tls else ("--port", str(port))
        self.procs[port] = subprocess.Popen(
            ["redis-server", *listen, "--bind", "127.0.0.1", "--dir", str(folder),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-port", str(bus),  # not port + 10000, which may be past 65535
             "--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.redis_cli(port, "ping") == "PONG", f"redis-server on {port}")

    def redis_cli(self, port: int, *args: str) -> str:
        return redis_cli(port, *args, cli=self.cli)

    def replicas(self) -> list[int]:
        return [p for p in self.live() if "role:slave" in self.redis_cli(p, "info", "replication")]

    def live(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def primary_of(self, key: str) -> Optional[int]:
        """The port of the primary serving ``key``'s slot, as a live server sees it (``CLUSTER
        NODES``: id, address, flags, its primary, pings, epoch, link, then slot ranges); None while
        it has none (its primary failed, no replica promoted yet)."""
        asked = self.live()[0]
        slot = int(self.redis_cli(asked, "cluster", "keyslot", key))
        for line in self.redis_cli(asked, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for spread in fields[8:]:
                low, _, high = spread.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return int(fields[1].partition("@")[0].rpartition(":")[2])
        return None

    def keys(self, port: int) -> list[str]:
        return [k for k in self.redis_cli(port, "--scan").split("\n") if k]

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class Pair:
    """Two G-Room nodes on one Redis Cluster, started by ``cluster`` (plain, or over TLS)."""

    def __init__(self, root: Path, backend: str,
                 cluster: Callable[[], RedisClusterGroup] = RedisClusterGroup) -> None:
        self.redis = cluster()
        self.prefix = "t" + secrets.token_hex(4)
        self.nodes: list[GroomServer] = []
        try:
            for i in range(2):
                node = GroomServer(root, backend, pg_database="groom_redis_cluster",
                                   reset_database=i == 0,
                                   args=("--redis-url", self.redis.url, "--redis-prefix", self.prefix,
                                         "--node-id", f"c{i}", "--trusted-proxies", "127.0.0.1",
                                         "--join-attempts-per-minute", str(WRONG_CODES),
                                         "--login-failures-per-address", str(PER_ADDRESS)))
                node.log_path = root / f"c{i}.log"
                self.nodes.append(node)
            self.nodes[0].start("--demo", "--json")
            self.demo = self.nodes[0].demo_info()
            self.nodes[1].start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()


@pytest.fixture(params=database_backends())
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    group = Pair(tmp_path, request.param)
    try:
        yield group
    finally:
        group.stop()


def test_cluster_urls() -> None:
    assert parse_cluster_url("redis+cluster://10.0.0.5:7000,10.0.0.6,[::1]:7002") == (
        [("10.0.0.5", 7000), ("10.0.0.6", 6379), ("::1", 7002)], None, None)
    assert parse_cluster_url("redis+cluster://:s%40cret@h:7000/0") == ([("h", 7000)], None, "s@cret")
    assert parse_cluster_url("redis+cluster://app:pw@h:7000/") == ([("h", 7000)], "app", "pw")
    for bad in ("redis+cluster://", "redis+cluster://h:7000/1", "redis+cluster://h:port",
                "redis+cluster://h:7000?ssl=true", "redis+cluster://:7000", "redis://h:7000"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)
    # Keys: the prefix itself everywhere but in a Cluster, where it is a hash tag.
    assert key_prefix("redis://h:6379/0", "groom") == "groom"
    assert key_prefix("redis+sentinel://h:26379/groom", "{x}") == "{x}"
    assert key_prefix("redis+cluster://h:7000", "groom") == "{groom}"
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError):
            key_prefix("redis+cluster://h:7000", bad)


def test_a_bad_cluster_setting_stops_the_start(tmp_path: Path) -> None:
    srv = GroomServer(tmp_path)
    for args in (["--redis-url", "redis+cluster://h:7000/2"],
                 ["--redis-url", "redis+cluster://h:7000", "--redis-prefix", "{g}"]):
        result = srv.groom("serve", "--port", "0", *srv.common_args(), *args)
        assert result.returncode == 2 and "--redis-" in result.stderr, result.stderr


async def test_a_cluster_on_redis_cluster(pair: Pair) -> None:
    demo = pair.demo
    n0, n1 = pair.nodes
    lesson_id = await new_lesson(n0, demo)
    teacher = await connect(n0.base_url, {"type": "hello", "role": "teacher", "lesson_id": lesson_id},
                            demo["teacher_login"])
    async with closing(teacher) as peers:
        await teacher.negotiate(send_audio=True, receive_audio=True)
        relayed = await connect(n1.base_url, {"type": "hello", "role": "student", "name": "Relayed",
                                              "code": demo["class_code"]})
        peers.append(relayed)
        await relayed.negotiate(send_audio=False, receive_audio=True)
        await relayed.keeps_hearing(1.0)
        assert await origins_of(n1, demo, lesson_id) == ["c0"]

        await one_budget_across_nodes(pair)

        # Every key of this cluster is on one primary, under the prefix's hash tag.
        tag = "{" + pair.prefix + "}:"
        owner = pair.redis.primary_of(tag)
        assert owner is not None
        replicas = pair.redis.replicas()
        found = {port: pair.redis.keys(port) for port in pair.redis.live() if port not in replicas}
        assert found[owner] and all(key.startswith(tag) for key in found[owner]), found
        assert not [key for port, keys in found.items() if port != owner for key in keys], found

        # The slot's primary dies: its replica takes over, the lesson plays on meanwhile.
        pair.redis.kill(owner)
        await relayed.keeps_hearing(2.0)
        await asyncio.to_thread(wait_for, lambda: pair.redis.primary_of(tag) not in (owner, None),
                                "the Cluster to promote the replica")
        await placed_and_heard_after_failover(n0, n1, demo, "ClusterFailover", peers)
        await relayed.keeps_hearing(1.0)
        assert await origins_of(n1, demo, lesson_id) == ["c0"]


async def one_budget_across_nodes(pair: Pair) -> None:
    """Wrong codes and wrong logins spread over both nodes are stopped at the budget in total
    (the join and login scripts, two and five keys each, run in the Cluster)."""
    guesser = "203.0.113.9"
    for i in range(WRONG_CODES):
        status, body, _ = await join(pair.nodes[i % 2], "ZZZZZZZZ", guesser)
        assert status == 404, body
    for node in pair.nodes:
        status, body, wait = await join(node, "ZZZZZZZZ", guesser)
        assert status == 429 and 1 <= int(wait) <= 60, body
    status, body, _ = await join(pair.nodes[1], pair.demo["class_code"], "198.51.100.9")
    assert status == 200, body
    for i in range(PER_ADDRESS):
        status, _ = await login(pair.nodes[i % 2], "nobody", "wrong-password", guesser)
        assert status == 401
    for node in pair.nodes:
        status, wait = await login(node, "nobody", "wrong-password", guesser)
        assert status == 429 and int(wait) >= 1
