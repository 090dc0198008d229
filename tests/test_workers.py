"""``groom serve --workers 2``: two worker processes on one port, a supervisor, real lessons.

The kernel spreads connections across the workers (``SO_REUSEPORT``); each response names the
worker that answered (``X-Groom-Worker``), so the tests open sockets until they land where they
want. A student whose socket lands on the worker that does not run the class's room is relayed
to it (signaling only: the audio comes straight from the room's worker) and hears the teacher
like anyone else; a second class is placed on the other worker; ``kill -9`` of a worker is
repaired by the supervisor while the other worker's lesson goes on unharmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Iterator, Optional

import aiohttp
import pytest

from groom.live.placement import PLACEMENT_GRACE_S, Load, Node, PlacementTable
from peers import Peer, new_lesson, other_class
from servers import ApiClient, GroomServer, database_backends

pytestmark = pytest.mark.timeout(150)

DECK = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"

WORKER = "X-Groom-Worker"


@pytest.fixture(scope="module", params=database_backends())
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[GroomServer, dict[str, Any]]]:
    srv = GroomServer(tmp_path_factory.mktemp(f"workers-{request.param}"), request.param,
                      pg_database="groom_workers",
                      args=("--workers", "2", "--demo", "--json", "--grace-seconds", "4",
                            "--join-attempts-per-minute", "1000"))
    srv.start()
    demo = srv.demo_info()
    wait_for_workers(srv, 2)
    yield srv, demo
    srv.stop()


def worker_pids(srv: GroomServer) -> dict[str, int]:
    """Worker id -> pid of its latest start, from the supervisor's log."""
    pids: dict[str, int] = {}
    for line in srv.log_lines():
        if line.get("event") == "worker ready":
            pids[line["worker"]] = line["pid"]
    return pids


def wait_for_workers(srv: GroomServer, count: int, *, not_pid: int = 0) -> dict[str, int]:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        pids = worker_pids(srv)
        if len(pids) == count and not_pid not in pids.values():
            return pids
        time.sleep(0.2)
    raise AssertionError(f"workers not ready: {worker_pids(srv)}")


def _session() -> tuple[aiohttp.ClientSession, dict[str, str]]:
    """A client session that remembers which worker answered its last request."""
    seen: dict[str, str] = {}

    async def on_end(_s: aiohttp.ClientSession, _c: SimpleNamespace,
                     params: aiohttp.TraceRequestEndParams) -> None:
        seen["worker"] = params.response.headers.get(WORKER, "")

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_end)
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 trace_configs=[trace]), seen


async def session_on(srv: GroomServer, worker: str
                     ) -> contextlib.AbstractAsyncContextManager[tuple[aiohttp.ClientSession,
                                                                      dict[str, str]]]:
    """A client session whose (kept-alive) connection is to ``worker``."""
    for _ in range(60):
        http, seen = _session()
        async with http.get(srv.base_url + "/healthz") as resp:
            await resp.read()
        if seen["worker"] == worker:
            @contextlib.asynccontextmanager
            async def using() -> AsyncIterator[tuple[aiohttp.ClientSession, dict[str, str]]]:
                async with http:
                    yield http, seen
            return using()
        await http.close()
    raise AssertionError(f"no connection landed on {worker}")


async def peer_on(srv: GroomServer, worker: str, hello: dict[str, Any],
                  login: Optional[dict[str, str]] = None) -> Peer:
    """A participant whose WebSocket landed on ``worker``: sockets that land on the other
    are closed before their hello, and another is opened (new source port, new draw)."""
    for _ in range(60):
        http, seen = _session()
        if login is not None:
            async with http.post(srv.base_url + "/api/login", json=login) as resp:
                assert resp.status == 200
        ws = await http.ws_connect(srv.base_url.replace("http", "ws") + "/ws")
        if seen["worker"] == worker:
            peer = Peer(srv.base_url, http)
            peer.ws = ws
            peer._tasks.append(asyncio.create_task(peer._read_ws()))
            await peer.send(hello)
            welcome = await peer.expect("welcome", "error")
            assert welcome["type"] == "welcome", welcome
            return peer
        await ws.close()
        await http.close()
    raise AssertionError(f"no connection landed on {worker}")


async def live_rooms(srv: GroomServer, demo: dict[str, Any]) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(srv.base_url + "/api/login", json=demo["admin_login"]) as resp:
            assert resp.status == 200
        async with http.get(srv.base_url + "/api/live") as resp:
            assert resp.status == 200
            rooms: list[dict[str, Any]] = await resp.json()
            return rooms


@pytest.fixture
async def lesson(cluster: tuple[GroomServer, dict[str, Any]]
                 ) -> AsyncIterator[tuple[Peer, str, str]]:
    """The demo class's lesson, live: its teacher, the worker running it, and the other one."""
    srv, demo = cluster
    lesson_id = demo["lesson_id"] = await new_lesson(srv, demo)
    hello = {"type": "hello", "role": "teacher", "lesson_id": lesson_id}
    teacher = await peer_on(srv, "w0", hello, login=demo["teacher_login"])
    rooms = [r for r in await live_rooms(srv, demo) if r["lesson"]["id"] == lesson_id]
    assert len(rooms) == 1 and rooms[0]["worker"] in ("w0", "w1"), rooms
    owner = rooms[0]["worker"]
    if owner != "w0":  # the class was placed before (an earlier test): come back on its worker
        resume = teacher.welcome["resume"]
        await teacher.close()
        teacher = await peer_on(srv, owner, {**hello, "resume": resume},
                                login=demo["teacher_login"])
    # The teacher's socket is on the room's own worker: killing the other one leaves it be.
    await teacher.negotiate(send_audio=True, receive_audio=True)
    yield teacher, owner, "w1" if owner == "w0" else "w0"
    await teacher.send({"type": "end"})
    await teacher.close()


async def student(srv: GroomServer, demo: dict[str, Any], worker: str, name: str) -> Peer:
    peer = await peer_on(srv, worker, {"type": "hello", "role": "student",
                                       "code": demo["class_code"], "name": name})
    await peer.negotiate(send_audio=False, receive_audio=True)
    return peer


async def test_students_on_both_workers_hear_the_teacher(
    cluster: tuple[GroomServer, dict[str, Any]], lesson: tuple[Peer, str, str],
) -> None:
    srv, demo = cluster
    teacher, owner, other = lesson
    relayed_before = sum(1 for line in srv.log_lines() if line.get("event") == "ws relayed")
    students = [await student(srv, demo, worker, f"S{i} {worker}")
                for i, worker in enumerate((owner, other, owner, other))]
    try:
        for s in students:
            await s.keeps_hearing(2.0)
        # The relayed ones came through the other worker: its log says so, and the room (on
        # the owner) seats all four, each with their own address as the client.
        relays = [line for line in srv.log_lines() if line.get("event") == "ws relayed"]
        assert len(relays) - relayed_before >= 2
        assert all(line["worker"] == other and line["node"] == owner
                   for line in relays[relayed_before:])
        participants = [m for m in teacher.messages if m["type"] == "participants"][-1]["list"]
        assert len([p for p in participants if p["connected"]]) == 4

        # The fallback stream of a relayed student, asked of the worker without the room.
        token = students[1].welcome["listen_token"]
        for _ in range(60):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{srv.base_url}/listen/{token}.ogg") as resp:
                    if resp.headers.get("X-Groom-Relayed-By") != other:
                        continue
                    assert resp.status == 200 and resp.headers[WORKER] == owner
                    assert (await resp.content.readexactly(4)) == b"OggS"
                    break
        else:
            raise AssertionError("no /listen request landed on the other worker")

        async with aiohttp.ClientSession() as http:  # every worker's health names both
            async with http.get(srv.base_url + "/healthz") as resp:
                health = await resp.json()
        assert resp.status == 200 and health["checks"]["workers"]["live"] == ["w0", "w1"]

        # A wrong code relayed nowhere: answered where it landed, with the usual close code.
        wrong = await peer_on_error(srv, other, {"type": "hello", "role": "student",
                                                 "code": "ZZZZZZZZ", "name": "X"})
        assert wrong == 4404
    finally:
        for s in students:
            await s.close()


async def test_a_slide_sent_by_the_other_worker_is_measured_for_the_room(
    cluster: tuple[GroomServer, dict[str, Any]], lesson: tuple[Peer, str, str],
) -> None:
    """A student's slide request lands on the worker that does not run its room (the kernel's
    draw): that worker asks the room's worker for the rate, paces the image, and hands its
    measurement back, so the student's tier controller learns the link's capacity all the same.
    Before, such an image went unpaced at the probing rate and the measurement was lost."""
    srv, demo = cluster
    teacher, owner, other = lesson
    api = ApiClient(srv.base_url)
    try:
        await api.login(demo["teacher_login"]["username"], demo["teacher_login"]["password"])
        status, deck = await api.call(
            "POST", f"/api/classes/{demo['class_id']}/decks?filename=deck.pdf",
            data=DECK.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        assert status == 201, deck
    finally:
        await api.close()
    pupil = await student(srv, demo, owner, "Slides")
    try:
        token = pupil.welcome["listen_token"]

        def capacity() -> Optional[float]:
            lists = [m["list"] for m in teacher.messages if m["type"] == "participants"]
            entry = next((p for p in lists[-1] if p["name"] == "Slides"), None) if lists else None
            return entry.get("capacity_kbps") if entry else None

        await asyncio.sleep(2.5)  # a participants list or two without any slide
        assert capacity() is None
        async with await session_on(srv, other) as (http, seen):
            async with http.get(f"{srv.base_url}/slides/{deck['slides'][0]['small']}?t={token}") as resp:
                image = await resp.read()
            assert resp.status == 200 and image[:4] == b"RIFF" and seen["worker"] == other
        deadline = time.monotonic() + 8
        while capacity() is None:
            assert time.monotonic() < deadline, "the room never learnt the slide's delivery rate"
            await asyncio.sleep(0.2)
        learnt = capacity()
        assert learnt is not None and learnt > 0
    finally:
        await pupil.close()


async def peer_on_error(srv: GroomServer, worker: str, hello: dict[str, Any]) -> int:
    for _ in range(60):
        http, seen = _session()
        async with http:
            ws = await http.ws_connect(srv.base_url.replace("http", "ws") + "/ws")
            if seen["worker"] != worker:
                await ws.close()
                continue
            await ws.send_json(hello)
            async for _msg in ws:
                pass
            assert ws.close_code is not None
            return ws.close_code
    raise AssertionError(f"no connection landed on {worker}")


async def test_second_lesson_on_the_other_worker_and_kill_9(
    cluster: tuple[GroomServer, dict[str, Any]], lesson: tuple[Peer, str, str],
) -> None:
    srv, demo = cluster
    _, owner, other = lesson
    second = await other_class(srv, demo, "second")
    # Its teacher's socket lands on the first lesson's worker and is relayed to the other.
    teacher2 = await peer_on(srv, owner, {"type": "hello", "role": "teacher",
                                          "lesson_id": second["lesson_id"]},
                             login=second["teacher_login"])
    direct = [await student(srv, demo, owner, f"D{i}") for i in range(2)]
    through = await student(srv, demo, other, "Through")  # relayed by the worker to be killed
    try:
        rooms = {r["lesson"]["id"]: r["worker"] for r in await live_rooms(srv, demo)}
        assert rooms == {demo["lesson_id"]: owner, second["lesson_id"]: other}, rooms

        async with aiohttp.ClientSession() as http:  # /metrics: both workers' figures
            async with http.get(srv.base_url + "/metrics") as resp:
                text = await resp.text()
        assert f'groom_rooms_live{{worker="{owner}"}} 1.0' in text
        assert f'groom_rooms_live{{worker="{other}"}} 1.0' in text

        # A third class on the other worker: its list of two rooms is big enough to come back
        # gzipped when the first worker asks for it, and must still be read whole.
        third = await other_class(srv, demo, "third")
        teacher3 = await peer_on(srv, other, {"type": "hello", "role": "teacher",
                                              "lesson_id": third["lesson_id"]},
                                 login=third["teacher_login"])
        async with await session_on(srv, owner) as (http, seen):
            async with http.post(srv.base_url + "/api/login", json=demo["admin_login"]) as resp:
                assert resp.status == 200
            async with http.get(srv.base_url + "/api/live") as resp:
                listed = {r["lesson"]["id"]: r["worker"] for r in await resp.json()}
        assert seen["worker"] == owner
        assert listed == {demo["lesson_id"]: owner, second["lesson_id"]: other,
                          third["lesson_id"]: other}, listed
        await teacher3.close()

        pids = worker_pids(srv)
        os.kill(pids[other], signal.SIGKILL)
        for s in direct:  # the lesson on the surviving worker goes on, unharmed
            await s.keeps_hearing(3.0)
        # The student whose socket went through the killed worker lost the socket (the page
        # reconnects), not its audio: that came from the room's worker all along.
        assert (await through.expect("_closed"))["code"] == 1006
        await through.keeps_hearing(1.0)
        # The second teacher's socket, relayed to the killed worker, is closed by the worker
        # it came in through with "service restart" (not a final code: the page comes back).
        assert (await teacher2.expect("_closed"))["code"] == 1012

        restarted = await asyncio.to_thread(wait_for_workers, srv, 2, not_pid=pids[other])
        assert restarted[owner] == pids[owner]
        assert any(line.get("event") == "worker exited; starting it again"
                   for line in srv.log_lines())
        # The restarted worker relays a newcomer to the lesson that went on.
        late = await student(srv, demo, other, "Late")
        try:
            await late.keeps_hearing(2.0)
        finally:
            await late.close()
        # The killed worker's class is placed again (on a live worker) when its teacher
        # returns: the lesson goes on, in a new room.
        teacher2b = await peer_on(srv, owner, {"type": "hello", "role": "teacher",
                                               "lesson_id": second["lesson_id"]},
                                  login=second["teacher_login"])
        try:
            rooms = {r["lesson"]["id"]: r["worker"] for r in await live_rooms(srv, demo)}
            assert rooms[second["lesson_id"]] == other  # the least loaded (restarted) worker
            # Logging out everywhere, asked of the first worker, closes the teacher's socket
            # held by the other one (and relayed through the first).
            async with await session_on(srv, owner) as (http, seen):
                async with http.post(srv.base_url + "/api/login",
                                     json=second["teacher_login"]) as resp:
                    csrf = (await resp.json())["csrf_token"]
                async with http.post(srv.base_url + "/api/logout-everywhere",
                                     headers={"X-CSRF-Token": csrf}) as resp:
                    assert resp.status == 204 and seen["worker"] == owner
            assert (await teacher2b.expect("_closed"))["code"] == 4401
        finally:
            await teacher2b.close()
    finally:
        for p in (*direct, through, teacher2):
            await p.close()


def test_placement_least_loaded_sticky_and_freed() -> None:
    """The supervisor's table: a new class goes to the least loaded worker (a tie stays where
    the connection landed), stays while held, and is freed when its worker dies or lets go."""
    now = [0.0]
    table = PlacementTable(clock=lambda: now[0])
    w0, w1 = Node("w0", "http://127.0.0.1:1", 10), Node("w1", "http://127.0.0.1:2", 11)
    table.heartbeat(w0, Load())
    table.heartbeat(w1, Load())
    assert table.place(1, asking="w1") == w1  # a tie: where the hello landed
    assert table.place(2, asking="w1") == w0  # w1 has a class already
    assert table.place(1, asking="w0") == w1  # placed: the same owner for everyone
    now[0] += PLACEMENT_GRACE_S + 1
    table.heartbeat(w1, Load(frozenset({1}), 30))  # w1 holds class 1
    table.heartbeat(w0, Load())  # w0 never opened class 2 (nobody came): it goes
    assert table.owner(1) == w1 and table.owner(2) is None
    assert table.drop("w1") == [1]
    assert table.owner(1) is None and table.place(1, asking="w1") == w0


def test_hung_worker_is_killed_and_started_again(
    cluster: tuple[GroomServer, dict[str, Any]],
) -> None:
    """A worker whose event loop stops (here: SIGSTOP) still holds its share of the port, so
    the kernel would keep handing it connections nobody answers: the supervisor notices the
    missing heartbeats and replaces it."""
    srv, _ = cluster
    pids = wait_for_workers(srv, 2)
    os.kill(pids["w1"], signal.SIGSTOP)
    try:
        restarted = wait_for_workers(srv, 2, not_pid=pids["w1"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids["w1"], signal.SIGCONT)
    assert restarted["w0"] == pids["w0"]
    hung = [line for line in srv.log_lines()
            if line.get("event") == "worker hung (no heartbeat); killing it"]
    assert hung and hung[-1]["pid"] == pids["w1"], hung
