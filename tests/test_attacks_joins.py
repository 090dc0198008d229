"""Attacks on joining: floods of guests, guessing codes, coming back after a kick, hostile names,
voting twice, taking the teacher's seat. Each runs against a real server on loopback while an
honest student in the same lesson keeps hearing the teacher.

The server trusts loopback as its proxy, so each client can say which address it comes from
(``X-Forwarded-For``): a school NAT, a guesser, an IPv6 phone.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Iterator

import aiohttp
import pytest

from peers import Peer, end_lesson, other_class, start_teacher
from servers import ApiClient, GroomServer, database_backends

pytestmark = pytest.mark.timeout(300)

PER_LESSON, PER_ADDRESS, SOCKETS, WRONG = 30, 12, 40, 5


@pytest.fixture(scope="module", params=database_backends())
def srv_demo(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GroomServer, dict[str, Any]]]:
    srv = GroomServer(tmp_path_factory.mktemp(f"joins-{request.param}"), request.param,
                      pg_database="groom_attacks_joins",
                      args=("--demo", "--json", "--grace-seconds", "4", "--tier-up-seconds", "2",
                            "--trusted-proxies", "127.0.0.1",
                            "--join-attempts-per-minute", str(WRONG)))
    budgets = {"GROOM_STUDENTS_PER_LESSON": PER_LESSON, "GROOM_STUDENTS_PER_ADDRESS": PER_ADDRESS,
               "GROOM_SOCKETS_PER_ADDRESS": SOCKETS}
    os.environ.update({k: str(v) for k, v in budgets.items()})  # the server reads them at start
    try:
        srv.start()
    finally:
        for k in budgets:
            os.environ.pop(k, None)
    yield srv, srv.demo_info()
    srv.stop()


def ws_url(srv: GroomServer) -> str:
    return srv.base_url.replace("http", "ws") + "/ws"


def from_address(srv: GroomServer, address: str) -> Peer:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 headers={"X-Forwarded-For": address})
    return Peer(srv.base_url, http)


async def honest(srv: GroomServer, demo: dict[str, Any], name: str = "Honest",
                 address: str = "192.0.2.1") -> Peer:
    peer = from_address(srv, address)
    welcome = await peer.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                  "name": name})
    assert welcome["type"] == "welcome", welcome
    await peer.negotiate(send_audio=False, receive_audio=True)
    await peer.keeps_hearing(1.0)
    return peer


async def hello_once(srv: GroomServer, address: str, hello: dict[str, Any],
                     hold: float = 0.0, http: aiohttp.ClientSession | None = None) -> dict[str, Any]:
    """One raw socket: send hello, return the first message (or the close), optionally hold."""
    if http is None:
        async with aiohttp.ClientSession() as own:
            return await hello_once(srv, address, hello, hold, own)
    async with http.ws_connect(ws_url(srv), headers={"X-Forwarded-For": address}) as ws:
        if True:
            await ws.send_str(json.dumps({"type": "hello", **hello}))
            while True:  # a room broadcast may come before the welcome
                msg = await ws.receive(timeout=20)
                reply = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT \
                    else {"type": "_closed", "code": ws.close_code}
                if reply["type"] in ("welcome", "waiting", "error", "_closed"):
                    break
            if hold:
                await asyncio.sleep(hold)
            return reply


FLOOD = """
import asyncio, json, sys
import aiohttp
url, address, hello, count = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
async def one(http, i):
    try:
        async with http.ws_connect(url, headers={"X-Forwarded-For": address}) as ws:
            await ws.send_str(json.dumps({"type": "hello", **hello, "name": f"Bot {i}"}))
            while True:
                msg = await ws.receive(timeout=20)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return {"type": "_closed", "code": ws.close_code}
                reply = json.loads(msg.data)
                if reply["type"] in ("welcome", "waiting", "error"):
                    await asyncio.sleep(3)
                    return reply
    except Exception as exc:
        return {"type": "_failed", "error": repr(exc)}
async def main():
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        print(json.dumps(await asyncio.gather(*(one(http, i) for i in range(count)))))
asyncio.run(main())
"""


def open_files(srv: GroomServer) -> int:
    assert srv.proc is not None
    return len(os.listdir(f"/proc/{srv.proc.pid}/fd"))


async def test_guest_flood_is_budgeted(srv_demo: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = srv_demo
    teacher = await start_teacher(srv, demo)
    student = await honest(srv, demo)
    files_before = open_files(srv)
    try:
        # 300 hellos with the class code from one address, all held open at once.
        # (from another process, so the flood's client work does not starve this one's student)
        hello = {"role": "student", "code": demo["class_code"]}
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-c", FLOOD, ws_url(srv), "203.0.113.7", json.dumps(hello), "300",
            stdout=asyncio.subprocess.PIPE)
        await student.keeps_hearing(3.0)
        out, _ = await asyncio.wait_for(flood.communicate(), 60)
        replies = json.loads(out)
        welcomed = [r for r in replies if r["type"] == "welcome"]
        codes = {r.get("code") for r in replies if r["type"] == "error"}
        assert len([r for r in replies if r["type"] == "error"]) >= 300 - PER_ADDRESS - 20, replies[:3]
        assert len(welcomed) <= PER_ADDRESS, len(welcomed)
        assert codes <= {"too_many_from_address", "too_many_connections"}, codes
        assert "too_many_from_address" in codes
        assert open_files(srv) < files_before + SOCKETS + 20

        # The room itself is bounded at its design size: many addresses, one seat each.
        many = await asyncio.gather(*(hello_once(srv, f"198.18.0.{i}", {**hello, "name": "One"}, hold=2)
                                      for i in range(PER_LESSON + 5)))
        assert sum(r["type"] == "welcome" for r in many) <= PER_LESSON
        assert {r.get("code") for r in many if r["type"] == "error"} == {"room_full"}

        # Waiting sockets are counted too (a class whose lesson has not started yet).
        other = await other_class(srv, demo, "Later")
        waiting = await asyncio.gather(*(hello_once(srv, "203.0.113.8", {
            "role": "student", "code": other["class_code"], "name": f"W{i}"}, hold=2) for i in range(30)))
        assert sum(r["type"] == "waiting" for r in waiting) == PER_ADDRESS
        assert {r.get("code") for r in waiting if r["type"] == "error"} == {"too_many_from_address"}
        await student.keeps_hearing(2.0)
        assert teacher.closed_code is None and student.closed_code is None
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


async def test_guessers_do_not_lock_out_their_school(srv_demo: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = srv_demo
    teacher = await start_teacher(srv, demo)
    student = await honest(srv, demo, "First pupil", "198.51.100.9")  # the school NAT
    other = await other_class(srv, demo, "Neighbours")
    try:
        # A guesser behind the same NAT burns the wrong-code budget of the address.
        for i in range(WRONG + 2):
            reply = await hello_once(srv, "198.51.100.9", {"role": "student", "name": "Guess",
                                                           "code": f"ZZZZZZZ{'ABCDEFG'[i]}"})
            assert reply.get("code") in ("bad_code", "too_many_attempts"), reply
        assert reply["code"] == "too_many_attempts"
        # A classmate with the right code (already used from this address) still gets in ...
        mate = await hello_once(srv, "198.51.100.9", {"role": "student", "code": demo["class_code"],
                                                      "name": "Classmate"})
        assert mate["type"] == "welcome", mate
        # ... but a code never used from here stays behind the limit: no oracle for guessers.
        guess = await hello_once(srv, "198.51.100.9", {"role": "student", "code": other["class_code"],
                                                       "name": "Guess"})
        assert guess.get("code") == "too_many_attempts", guess
        # A student reconnecting with their resume token always passes.
        back = await hello_once(srv, "198.51.100.9", {"role": "student", "resume": mate["resume"]})
        assert back["type"] == "welcome" and back["participant_id"] == mate["participant_id"], back

        # IPv6: one /64 is one address (a phone gets a whole /64); another /64 is not locked.
        for i in range(WRONG + 1):
            await hello_once(srv, f"2001:db8:1:2::{i + 1:x}", {"role": "student", "code": "ZZZZZZZZ",
                                                                "name": "Guess"})
        locked = await hello_once(srv, "2001:db8:1:2:ffff::99", {"role": "student",
                                                                 "code": other["class_code"], "name": "G"})
        assert locked.get("code") == "too_many_attempts", locked
        free = await hello_once(srv, "2001:db8:1:3::1", {"role": "student", "code": other["class_code"],
                                                         "name": "Fine"})
        assert free["type"] == "waiting", free
        await student.keeps_hearing(2.0)
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


async def _admin(srv: GroomServer, demo: dict[str, Any]) -> ApiClient:
    admin = ApiClient(srv.base_url)
    await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
    return admin


async def test_a_kick_is_remembered(srv_demo: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = srv_demo
    admin = await _admin(srv, demo)
    status, card = await admin.call("POST", f"/api/classes/{demo['class_id']}/students",
                                    json={"name": "Card holder"})
    assert status == 201, card
    teacher = await start_teacher(srv, demo)
    student = await honest(srv, demo)
    rude = from_address(srv, "203.0.113.50")
    carded = from_address(srv, "203.0.113.51")
    listen_http = aiohttp.ClientSession()
    try:
        welcome = await rude.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                      "name": "Rude"})
        assert welcome["type"] == "welcome"
        assert (await carded.connect({"type": "hello", "role": "student",
                                      "card": card["card_code"]}))["type"] == "welcome"
        url = f"{srv.base_url}/listen/{welcome['listen_token']}.ogg"
        first = await listen_http.get(url)
        assert first.status == 200
        await first.content.read(1000)
        second = await listen_http.get(url)  # one stream per listen token: the first one ends
        assert second.status == 200
        rest = await asyncio.wait_for(first.content.read(), 10)
        assert rest is not None and first.content.at_eof()

        for p in (rude, carded):
            await teacher.send({"type": "kick", "participant_id": p.welcome["participant_id"]})
            assert (await p.expect("ended"))["reason"] == "kicked"
        await asyncio.wait_for(second.content.read(), 10)  # the kick ended the open stream
        assert second.content.at_eof()

        for address, hello in (("203.0.113.50", {"code": demo["class_code"], "name": "Rude"}),
                               ("203.0.113.50", {"code": demo["class_code"], "name": " rude ",
                                                 "resume": welcome["resume"]}),
                               ("203.0.113.99", {"resume": welcome["resume"]}),
                               ("203.0.113.99", {"card": card["card_code"]})):
            reply = await hello_once(srv, address, {"role": "student", **hello})
            assert reply.get("code") == "kicked", (hello, reply)
        status = (await listen_http.get(url)).status
        assert status == 404
        await student.keeps_hearing(2.0)
    finally:
        await end_lesson(teacher)
        await listen_http.close()
        for p in (teacher, student, rude, carded):
            await p.close()
        await admin.close()


async def test_hostile_names_are_cleaned_and_saved(srv_demo: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = srv_demo
    teacher = await start_teacher(srv, demo)
    lesson_id = demo["lesson_id"]
    student = await honest(srv, demo, "Aaa first")
    bad = from_address(srv, "203.0.113.60")
    late = from_address(srv, "203.0.113.61")
    admin = await _admin(srv, demo)
    try:
        reply = await bad.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                   "name": "Ma\u0000l\u202ebob\u200b\u2066 x\x1b[31m"})
        assert reply["type"] == "welcome", reply
        assert (await late.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                    "name": "Zzz last"}))["type"] == "welcome"
        listing = await teacher.expect("participants")
        while len(listing["list"]) < 3:
            listing = await teacher.expect("participants")
        names = sorted(p["name"] for p in listing["list"])
        assert names == ["Aaa first", "Malbob x[31m", "Zzz last"], names
        await student.keeps_hearing(2.0)
        await end_lesson(teacher)
        status, lesson = await admin.call("GET", f"/api/lessons/{lesson_id}")
        assert lesson["state"] == "ended", lesson
        status, rows = await admin.call("GET", f"/api/lessons/{lesson_id}/attendance")
        assert status == 200
        assert sorted(r["name"] for r in rows) == names, rows
    finally:
        for p in (teacher, student, bad, late):
            await p.close()
        await admin.close()


async def test_a_guest_cannot_vote_twice(srv_demo: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = srv_demo
    teacher = await start_teacher(srv, demo)
    student = await honest(srv, demo)
    try:
        await teacher.send({"type": "poll", "question": "Yes?", "choices": ["yes", "no"]})
        voter = from_address(srv, "203.0.113.70")
        poll = (await voter.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                     "name": "Voter"}))["poll"]
        await voter.send({"type": "vote", "poll_id": poll["id"], "choice": 0})
        assert (await voter.expect("voted", "error"))["type"] == "voted"
        resume = voter.welcome["resume"]
        await voter.close()
        await asyncio.sleep(0.5)
        for hello in ({"name": "Voter"}, {"name": "voter ", "resume": resume}, {"name": "Voter\u200b"}):
            again = from_address(srv, "203.0.113.70")
            try:
                reply = await again.connect({"type": "hello", "role": "student",
                                             "code": demo["class_code"], **hello})
                assert reply["type"] == "welcome", reply
                await again.send({"type": "vote", "poll_id": poll["id"], "choice": 0})
                answer = await again.expect("voted", "error")
                assert answer.get("code") == "already_voted", (hello, answer)
            finally:
                await again.close()
            await asyncio.sleep(0.5)
        await student.keeps_hearing(2.0)
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


async def test_only_the_class_teacher_takes_the_teacher_seat(
    srv_demo: tuple[GroomServer, dict[str, Any]],
) -> None:
    srv, demo = srv_demo
    teacher = await start_teacher(srv, demo)
    student = await honest(srv, demo)
    intruder = Peer(srv.base_url)
    try:
        async with intruder.http.post(srv.base_url + "/api/login", json=demo["admin_login"]) as resp:
            assert resp.status == 200
        reply = await intruder.connect({"type": "hello", "role": "teacher", "lesson_id": demo["lesson_id"]})
        assert reply.get("code") == "teacher_seat_taken", reply
        assert (await intruder.expect("_closed"))["code"] == 4409
        await student.keeps_hearing(2.0)
        assert teacher.closed_code is None
        # The class's own teacher, reconnecting from another device, does take the seat back.
        again = Peer(srv.base_url)
        try:
            async with again.http.post(srv.base_url + "/api/login", json=demo["teacher_login"]) as resp:
                assert resp.status == 200
            assert (await again.connect({"type": "hello", "role": "teacher",
                                         "lesson_id": demo["lesson_id"]}))["type"] == "welcome"
            assert (await teacher.expect("_closed"))["code"] == 4409
            await end_lesson(again)
        finally:
            await again.close()
    finally:
        for p in (teacher, student, intruder):
            await p.close()
