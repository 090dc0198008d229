"""Three nodes on Redis (``groom serve --redis-url``): one school system on several machines.

Each node is a real server process on its own loopback port (standing in for a machine), all
sharing one database and one data folder (the production setup: PostgreSQL and a shared file
system) and a Redis server the test starts on a free port, so it can be killed and restarted.
A class's lesson runs on one node (its origin); students whose connection lands on another node
(an edge) are relayed to it and hear the teacher like anyone else. Then the failures: ``kill -9``
of an edge, of the origin, and of Redis itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional

import aiohttp
import pytest

from peers import Peer, new_lesson, other_class
from servers import ApiClient, GroomServer, database_backends, free_port
from test_recordings import audio_seconds, fetch, logged_in, wait_recording

pytestmark = pytest.mark.timeout(180)  # redis-server: scripts/test installs it

NODE_HEADER = "X-Groom-Worker"


class RedisServer:
    """A throwaway redis-server (no persistence: a restart comes back empty, the hard case)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                  capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Cluster:
    def __init__(self, root: Path, backend: str, grace_seconds: float = 30) -> None:
        self.redis = RedisServer()
        self.redis.start()
        prefix = "t" + secrets.token_hex(4)
        self.nodes: dict[str, GroomServer] = {}
        for i, name in enumerate(("n1", "n2", "n3")):
            srv = GroomServer(root, backend, pg_database="groom_cluster", reset_database=i == 0,
                              args=("--redis-url", self.redis.url, "--redis-prefix", prefix,
                                    "--node-id", name, "--grace-seconds", str(grace_seconds),
                                    "--join-attempts-per-minute", "1000"))
            srv.log_path = root / f"{name}.log"
            self.nodes[name] = srv
        self.nodes["n1"].start("--demo", "--json")
        self.demo = self.nodes["n1"].demo_info()
        for name in ("n2", "n3"):
            self.nodes[name].start()

    def url(self, name: str) -> str:
        return self.nodes[name].base_url

    def stop(self) -> None:
        for srv in self.nodes.values():
            srv.stop()
        self.redis.kill()


@pytest.fixture(params=database_backends())
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(tmp_path, request.param)
    try:
        yield group
    finally:
        group.stop()


async def connect(base_url: str, hello: dict[str, Any], login: Optional[dict[str, str]] = None,
                  *, within: float = 15.0) -> Peer:
    """A participant on this node, retried while the cluster answers "try again" (1013/1012:
    an owner that is gone and not yet noticed, Redis away)."""
    deadline = time.monotonic() + within
    while True:
        peer = Peer(base_url)
        if login is not None:
            async with peer.http.post(base_url + "/api/login", json=login) as resp:
                assert resp.status == 200
        try:
            welcome = await peer.connect(hello)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            welcome = {"type": "closed"}
        if welcome.get("type") == "welcome":
            return peer
        await peer.close()
        assert time.monotonic() < deadline, f"not welcomed on {base_url}: {welcome}"
        await asyncio.sleep(0.3)


async def teacher_on(cluster: Cluster, node: str, lesson_id: int, **extra: Any) -> Peer:
    peer = await connect(cluster.url(node), {"type": "hello", "role": "teacher",
                                             "lesson_id": lesson_id, **extra},
                         cluster.demo["teacher_login"])
    await peer.negotiate(send_audio=True, receive_audio=True)
    return peer


async def student_on(cluster: Cluster, node: str, name: str, **extra: Any) -> Peer:
    peer = await connect(cluster.url(node), {"type": "hello", "role": "student", "name": name,
                                             "code": cluster.demo["class_code"], **extra})
    await peer.negotiate(send_audio=False, receive_audio=True)
    return peer


async def hears_within(peer: Peer, seconds: float) -> float:
    """Seconds until this peer hears the teacher again (fails after ``seconds``)."""
    start = time.monotonic()
    mark = len(peer.frames)
    while time.monotonic() - start < seconds:
        if len(peer.frames) - mark >= 25 and peer.rms_since(mark) >= 300:  # 0.5 s, not silence
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"no audio within {seconds} s")


async def live_lessons(base_url: str, demo: dict[str, Any]) -> list[dict[str, Any]]:
    admin = ApiClient(base_url)
    try:
        await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
        status, rooms = await admin.call("GET", "/api/live")
        assert status == 200, rooms
        return list(rooms)
    finally:
        await admin.close()


async def origins(cluster: Cluster, asked: str, lesson_id: int) -> list[str]:
    """The nodes that ``asked``'s ``/api/live`` (every node's rooms) says run this lesson."""
    return [r["worker"] for r in await live_lessons(cluster.url(asked), cluster.demo)
            if r["lesson"]["id"] == lesson_id]


@contextlib.asynccontextmanager
async def closing(*peers: Peer) -> AsyncIterator[list[Peer]]:
    group = list(peers)
    try:
        yield group
    finally:
        await asyncio.gather(*(p.close() for p in group), return_exceptions=True)


async def test_students_on_every_node_hear_the_teacher(cluster: Cluster) -> None:
    demo = cluster.demo
    lesson_id = await new_lesson(cluster.nodes["n1"], demo)
    teacher = await teacher_on(cluster, "n1", lesson_id)
    async with closing(teacher) as peers:
        for i, node in enumerate(("n1", "n2", "n3", "n2", "n3")):
            peers.append(await student_on(cluster, node, f"S{i} {node}"))
        for student in peers[1:]:
            await student.keeps_hearing(2.0)
        # Every node shows the same lesson, run by the node the teacher landed on (a tie in
        # load keeps the class where its first connection is), with all five students.
        for node in ("n1", "n2", "n3"):
            assert await origins(cluster, node, lesson_id) == ["n1"]
        participants = [m for m in teacher.messages if m["type"] == "participants"][-1]["list"]
        assert len([p for p in participants if p["connected"]]) == 5
        relayed = [line for name in ("n2", "n3") for line in cluster.nodes[name].log_lines()
                   if line.get("event") == "ws relayed"]
        assert len(relayed) >= 4 and all(line["node"] == "n1" for line in relayed)

        # A second class is placed on a node without a lesson (least loaded), although its
        # teacher came through the busy one; its student, on the third node, hears it.
        second = await other_class(cluster.nodes["n1"], demo, "second")
        other = await connect(cluster.url("n1"), {"type": "hello", "role": "teacher",
                                                  "lesson_id": second["lesson_id"]},
                              second["teacher_login"])
        peers.append(other)
        await other.negotiate(send_audio=True, receive_audio=True)
        listener = await connect(cluster.url("n3"), {"type": "hello", "role": "student",
                                                     "name": "Second S", "code": second["class_code"]})
        peers.append(listener)
        await listener.negotiate(send_audio=False, receive_audio=True)
        await listener.keeps_hearing(2.0)
        placed = {r["lesson"]["id"]: r["worker"]
                  for r in await live_lessons(cluster.url("n3"), demo)}
        assert placed[lesson_id] == "n1" and placed[second["lesson_id"]] in ("n2", "n3"), placed
        async with aiohttp.ClientSession() as http:
            async with http.get(cluster.url("n2") + "/healthz") as resp:
                health = await resp.json()
        assert health["checks"]["workers"]["live"] == ["n1", "n2", "n3"], health


async def test_edge_killed_its_students_are_back_within_5_s(cluster: Cluster) -> None:
    demo = cluster.demo
    lesson_id = await new_lesson(cluster.nodes["n1"], demo)
    teacher = await teacher_on(cluster, "n1", lesson_id)
    async with closing(teacher) as peers:
        student = await student_on(cluster, "n3", "Edge student")
        peers.append(student)
        await student.keeps_hearing(1.0)
        resume = student.welcome["resume"]
        cluster.nodes["n3"].kill()
        killed = time.monotonic()
        back = await connect(cluster.url("n2"), {"type": "hello", "role": "student",
                                                 "code": demo["class_code"], "name": "Edge student",
                                                 "resume": resume})
        peers.append(back)
        await back.negotiate(send_audio=False, receive_audio=True)
        await hears_within(back, 5.0)
        assert time.monotonic() - killed <= 5.0
        # The same seat (attendance kept): still one student, connected, under the same name.
        await asyncio.sleep(2.5)  # the room lists participants every 2 s
        listing = [m for m in teacher.messages if m["type"] == "participants"][-1]["list"]
        students = [p for p in listing if p.get("role", "student") == "student"]
        assert [p["name"] for p in students] == ["Edge student"], listing
        assert students[0]["connected"]


async def test_origin_killed_the_lesson_goes_on_elsewhere(cluster: Cluster) -> None:
    demo = cluster.demo
    lesson_id = await new_lesson(cluster.nodes["n1"], demo)
    teacher = await teacher_on(cluster, "n1", lesson_id)
    async with closing(teacher) as peers:
        peers.append(await student_on(cluster, "n2", "Before"))
        await peers[-1].keeps_hearing(2.0)
        cluster.nodes["n1"].kill()
        killed = time.monotonic()
        # The teacher's page comes back through another node; the class is placed again on a
        # live node once the origin's registration has expired, and the same lesson goes on.
        again = await teacher_on(cluster, "n3", lesson_id)
        peers.append(again)
        assert again.welcome.get("lesson", {}).get("id", lesson_id) == lesson_id
        student = await student_on(cluster, "n2", "After")
        peers.append(student)
        await hears_within(student, 5.0)
        took = time.monotonic() - killed
        assert took < 15, f"the lesson was back after {took:.1f} s"
        assert await origins(cluster, "n2", lesson_id) in (["n2"], ["n3"])
        await student.keeps_hearing(2.0)
        await again.send({"type": "end"})
        await again.expect("ended")
    # One recording: the origin's part (about 2 s, repaired) and the rest, joined.
    admin = await logged_in(cluster.nodes["n2"], demo["admin_login"])
    try:
        rec = await wait_recording(admin, lesson_id)
        assert rec["state"] == "ready" and rec["recovered"], rec
        status, opus, _ = await fetch(admin, f"/recordings/{lesson_id}/listen.opus")
        assert status == 200 and abs(audio_seconds(opus) - rec["duration_s"]) < 0.3
        part1 = cluster.nodes["n1"].data_dir / "recordings" / f"{lesson_id}-part1"
        assert part1.is_dir()
        assert rec["duration_s"] > 4.0, rec  # both parts: 2 s before the kill, 4 s after
    finally:
        await admin.close()


async def test_origin_stopped_for_an_upgrade_hands_its_lesson_over(cluster: Cluster) -> None:
    """A node stopped on purpose (SIGINT/SIGTERM: an upgrade, one machine at a time) while the
    cluster goes on: its lesson is not ended but handed over. Pages are told to reconnect
    (1012), the teacher's comes back through another node and the same lesson goes on there,
    with its recording in one piece."""
    demo = cluster.demo
    lesson_id = await new_lesson(cluster.nodes["n1"], demo)
    teacher = await teacher_on(cluster, "n1", lesson_id)
    async with closing(teacher) as peers:
        student = await student_on(cluster, "n2", "Stays")
        peers.append(student)
        await student.keeps_hearing(2.0)
        await asyncio.to_thread(cluster.nodes["n1"].stop)
        assert (await teacher.expect("_closed"))["code"] == 1012
        assert (await student.expect("_closed"))["code"] == 1012
        assert not [m for m in teacher.messages + student.messages if m["type"] == "ended"]
        again = await teacher_on(cluster, "n3", lesson_id)
        peers.append(again)
        back = await student_on(cluster, "n2", "Stays")
        peers.append(back)
        await hears_within(back, 5.0)
        assert await origins(cluster, "n2", lesson_id) in (["n2"], ["n3"])
        await again.send({"type": "end"})
        await again.expect("ended")
    admin = await logged_in(cluster.nodes["n2"], demo["admin_login"])
    try:
        rec = await wait_recording(admin, lesson_id)
        assert rec["state"] == "ready" and not rec["recovered"], rec  # closed, not repaired
        assert rec["duration_s"] > 4.0, rec
        assert (cluster.nodes["n2"].data_dir / "recordings" / f"{lesson_id}-part1").is_dir()
    finally:
        await admin.close()


async def test_origin_killed_and_nobody_back_the_lesson_is_ended(tmp_path: Path) -> None:
    """Nobody reconnects after the origin died: a live node's sweeper ends the lesson after the
    teacher's grace, and the recording of what was said is repaired and processed."""
    cluster = Cluster(tmp_path, "sqlite", grace_seconds=2)
    try:
        demo = cluster.demo
        lesson_id = await new_lesson(cluster.nodes["n1"], demo)
        teacher = await teacher_on(cluster, "n2", lesson_id)
        owner = (await origins(cluster, "n3", lesson_id))[0]
        async with closing(teacher):
            await asyncio.sleep(3)
            cluster.nodes[owner].kill()
        alive = next(name for name in ("n1", "n2", "n3") if name != owner)
        admin = await logged_in(cluster.nodes[alive], demo["admin_login"])
        try:
            rec = await wait_recording(admin, lesson_id, timeout=45)
            assert rec["state"] == "ready" and rec["recovered"] and rec["duration_s"] > 1.5, rec
            status, lesson = await admin.call("GET", f"/api/lessons/{lesson_id}")
            assert status == 200 and lesson["state"] == "ended", lesson
            assert not await origins(cluster, alive, lesson_id)
        finally:
            await admin.close()
    finally:
        cluster.stop()


async def test_redis_restart_lessons_keep_their_audio(cluster: Cluster) -> None:
    demo = cluster.demo
    lesson_id = await new_lesson(cluster.nodes["n1"], demo)
    teacher = await teacher_on(cluster, "n1", lesson_id)
    async with closing(teacher) as peers:
        relayed = await student_on(cluster, "n2", "Relayed")
        peers.append(relayed)
        await relayed.keeps_hearing(1.0)
        cluster.redis.kill()
        # Without Redis: the lesson plays on, for the students already in (relayed included),
        # and the nodes say so without failing their health (a proxy keeps sending traffic).
        await relayed.keeps_hearing(3.0)
        async with aiohttp.ClientSession() as http:
            async with http.get(cluster.url("n2") + "/healthz") as resp:
                health = await resp.json()
        assert resp.status == 200 and "degraded" in health["checks"]["workers"], health
        # Redis back, empty: the nodes register again and the origin claims its class again,
        # so a new student coming through another node reaches the same lesson.
        cluster.redis.start()
        newcomer = await student_on(cluster, "n3", "Newcomer")
        peers.append(newcomer)
        await newcomer.keeps_hearing(2.0)
        await relayed.keeps_hearing(1.0)
        assert await origins(cluster, "n3", lesson_id) == ["n1"]
