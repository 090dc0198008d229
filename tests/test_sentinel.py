"""A cluster on Redis Sentinel (``--redis-url redis+sentinel://...``): the primary dies, a replica
takes over, and the cluster follows it.

The test starts a Redis primary, one replica and three Sentinels (quorum 2, a server is down after
1 s without an answer) on free loopback ports, and two G-Room nodes that know only the Sentinels.
A lesson runs on one node with a student relayed through the other. Then the primary is killed:
the lesson keeps its audio meanwhile (as with any Redis outage), the Sentinels promote the replica,
and the nodes' next calls reach it: a new lesson is placed and joined through either node, and
health is no longer degraded.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import aiohttp
import pytest

from peers import Peer, new_lesson, other_class
from servers import GroomServer, database_backends, free_port
from test_cluster import closing, connect, live_lessons

pytestmark = pytest.mark.timeout(180)  # redis-server: scripts/test installs it

SERVICE = "groom-test"


def redis_cli(port: int, *args: str, cli: Sequence[str] = ()) -> str:
    """``redis-cli`` on ``port``; ``cli``: options to reach a TLS port (--tls and its files)."""
    return subprocess.run(["redis-cli", *cli, "-p", str(port), *args], capture_output=True,
                          text=True).stdout.strip()


def wait_for(check: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.1)


class SentinelGroup:
    """A primary, a replica and three Sentinels watching them."""

    def __init__(self, root: Path) -> None:
        self.root = root  # every server's working folder: a replica writes the synced data there
        self.primary, self.replica = free_port(), free_port()
        self.sentinels = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._server(self.primary)
        self._server(self.replica, "--replicaof", "127.0.0.1", str(self.primary))
        wait_for(lambda: "master_link_status:up" in redis_cli(self.replica, "info", "replication"),
                 "the replica in sync")
        for port in self.sentinels:
            conf = root / f"sentinel-{port}.conf"
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {root}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n")
            self.procs[port] = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.sentinels:  # each has found the replica and the other Sentinels
            wait_for(lambda port=port: self._seen(port), "the Sentinels to know each other")
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        self.url = f"redis+sentinel://{hosts}/{SERVICE}"

    def _server(self, port: int, *args: str) -> None:
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--dbfilename", f"dump-{port}.rdb",
             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_cli(port, "ping") == "PONG", f"redis-server on {port}")

    def _seen(self, port: int) -> bool:
        info = redis_cli(port, "info", "sentinel")
        return "slaves=1" in info and "sentinels=3" in info

    def primary_port(self) -> Optional[int]:
        answer = redis_cli(self.sentinels[0], "sentinel", "get-master-addr-by-name", SERVICE).split()
        return int(answer[1]) if len(answer) == 2 else None

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class Pair:
    def __init__(self, root: Path, backend: str) -> None:
        self.redis = SentinelGroup(root)
        prefix = "t" + secrets.token_hex(4)
        self.nodes: list[GroomServer] = []
        for i in range(2):
            node = GroomServer(root, backend, pg_database="groom_sentinel", reset_database=i == 0,
                               args=("--redis-url", self.redis.url, "--redis-prefix", prefix,
                                     "--node-id", f"s{i}", "--join-attempts-per-minute", "1000"))
            node.log_path = root / f"s{i}.log"
            self.nodes.append(node)
        self.nodes[0].start("--demo", "--json")
        self.demo = self.nodes[0].demo_info()
        self.nodes[1].start()

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


async def degraded(node: GroomServer) -> bool:
    async with aiohttp.ClientSession() as http:
        async with http.get(node.base_url + "/healthz") as resp:
            health = await resp.json()
    return "degraded" in str(health["checks"].get("workers", ""))


async def test_the_cluster_follows_a_sentinel_failover(pair: Pair) -> None:
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
        assert pair.redis.primary_port() == pair.redis.primary

        pair.redis.kill(pair.redis.primary)
        await relayed.keeps_hearing(2.0)  # no Redis answers yet: the lesson plays on
        await asyncio.to_thread(wait_for, lambda: pair.redis.primary_port() == pair.redis.replica,
                                "the Sentinels to promote the replica")

        # The nodes reach the new primary: another class's lesson is placed there and joined
        # through the other node; the first lesson's class is still claimed by its origin.
        await placed_and_heard_after_failover(n0, n1, demo, "Failover", peers)
        await relayed.keeps_hearing(1.0)
        assert await origins_of(n1, demo, lesson_id) == ["s0"]


async def placed_and_heard_after_failover(n0: GroomServer, n1: GroomServer, demo: dict[str, Any],
                                          name: str, peers: list[Peer]) -> None:
    """Once neither node reports Redis away, another class's lesson (``name``) is placed, its
    teacher joins through ``n1`` and a student through ``n0`` hears it (both added to ``peers``)."""
    other = await other_class(n0, demo, name)
    await asyncio.sleep(2.5)  # the nodes' pause after a failed call (shared_state.RETRY_S)
    deadline = time.monotonic() + 20
    while await degraded(n0) or await degraded(n1):
        assert time.monotonic() < deadline, "a node still reports Redis away"
        await asyncio.sleep(0.5)
    second = await connect(n1.base_url, {"type": "hello", "role": "teacher",
                                         "lesson_id": other["lesson_id"]}, other["teacher_login"])
    peers.append(second)
    await second.negotiate(send_audio=True, receive_audio=True)
    newcomer = await connect(n0.base_url, {"type": "hello", "role": "student", "name": "Newcomer",
                                           "code": other["class_code"]})
    peers.append(newcomer)
    await newcomer.negotiate(send_audio=False, receive_audio=True)
    await newcomer.keeps_hearing(1.0)


async def origins_of(node: GroomServer, demo: dict[str, Any], lesson_id: int) -> list[str]:
    """The nodes that ``node``'s ``/api/live`` (every node's rooms) says run this lesson."""
    return [r["worker"] for r in await live_lessons(node.base_url, demo)
            if r["lesson"]["id"] == lesson_id]
