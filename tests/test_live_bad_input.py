"""Bad input on the live WebSocket: a clear error or close code, the room unaffected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from peers import Peer, end_lesson, join_student, other_class, start_teacher
from servers import GroomServer

pytestmark = pytest.mark.timeout(180)


async def _raw(srv: GroomServer) -> tuple[aiohttp.ClientSession, aiohttp.ClientWebSocketResponse]:
    http = aiohttp.ClientSession()
    return http, await http.ws_connect(srv.base_url.replace("http", "ws") + "/ws")


async def _next(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await asyncio.wait_for(ws.receive(), 10)
    if msg.type == aiohttp.WSMsgType.TEXT:
        return json.loads(msg.data)
    return ("closed", ws.close_code)


async def test_malformed_messages_get_errors(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    http, ws = await _raw(srv)
    try:
        await ws.send_str("{not json")
        assert (await _next(ws))["code"] == "bad_message"
        await ws.send_str(json.dumps({"type": "teleport"}))
        assert (await _next(ws))["code"] == "bad_message"
        await ws.send_str(json.dumps({"type": "hello", "role": "student", "code": 12345}))
        assert (await _next(ws))["code"] == "bad_message"
        await ws.send_str(json.dumps({"type": "ping"}))
        assert await _next(ws) == ("closed", 4400)  # the first valid message must be hello
    finally:
        await http.close()
    http, ws = await _raw(srv)
    try:
        await ws.send_str(json.dumps({"type": "hello", "role": "student", "name": "x" * 30000}))
        assert await _next(ws) == ("closed", 1009)  # over 16 KB
    finally:
        await http.close()


async def test_wrong_code_unknown_lesson_and_no_login(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    for hello, code in (({"role": "student", "code": "ZZZZZZZZ", "name": "Guess"}, 4404),
                        ({"role": "teacher", "lesson_id": demo["lesson_id"]}, 4401)):
        http, ws = await _raw(srv)
        try:
            await ws.send_str(json.dumps({"type": "hello", **hello}))
            error = await _next(ws)
            assert error["type"] == "error"
            assert await _next(ws) == ("closed", code)
        finally:
            await http.close()


async def test_teacher_cannot_open_another_class_lesson(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    other = await other_class(srv, demo, "other")
    peer = Peer(srv.base_url)
    try:
        async with peer.http.post(srv.base_url + "/api/login", json=demo["teacher_login"]) as resp:
            assert resp.status == 200
        reply = await peer.connect({"type": "hello", "role": "teacher", "lesson_id": other["lesson_id"]})
        assert reply["type"] == "error" and reply["code"] == "not_found"
        assert (await peer.expect("_closed"))["code"] == 4404
    finally:
        await peer.close()


async def test_students_cannot_publish_or_steer_and_bad_sdp(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Cheeky")
    other = await join_student(srv, demo, "Bystander")
    try:
        for message in ({"type": "end"}, {"type": "kick", "participant_id": other.welcome["participant_id"]},
                        {"type": "floor", "participant_id": student.welcome["participant_id"]}):
            await student.send(message)
            assert (await student.expect("error"))["code"] == "forbidden"
        # Publishing the microphone without the floor is refused.
        assert student.pc is not None
        transceiver = student.pc.getTransceivers()[0]
        transceiver.direction = "sendrecv"
        await student.pc.setLocalDescription(await student.pc.createOffer())
        await student.send({"type": "offer", "sdp": student.pc.localDescription.sdp})
        assert (await student.expect("error", "answer"))["code"] == "no_floor"
        # An offer without audio is refused; so is nonsense SDP.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("x")
        await pc.setLocalDescription(await pc.createOffer())
        probe = Peer(srv.base_url)
        await probe.connect({"type": "hello", "role": "student", "code": demo["class_code"], "name": "Probe"})
        await probe.send({"type": "offer", "sdp": pc.localDescription.sdp})
        assert (await probe.expect("error"))["code"] == "no_audio"
        await probe.send({"type": "offer", "sdp": "v=0\r\nnonsense"})
        assert (await probe.expect("error"))["code"] in ("no_audio", "bad_sdp")
        await pc.close()
        await probe.close()
        # The room went on: the bystander still hears the teacher, the lesson is live.
        mark = len(other.frames)
        await asyncio.sleep(2)
        assert other.rms_since(mark) > 100
        assert not [m for m in other.messages if m["type"] == "ended"]
    finally:
        await end_lesson(teacher)
        for p in (teacher, student, other):
            await p.close()


async def test_floods_and_rapid_reconnects_leave_the_room_alone(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    listener = await join_student(srv, demo, "Listener")
    try:
        # A message flood closes that one socket with 4429.
        http, ws = await _raw(srv)
        await ws.send_str(json.dumps({"type": "hello", "role": "student", "code": demo["class_code"],
                                      "name": "Flood"}))
        for _ in range(200):
            try:
                await ws.send_str(json.dumps({"type": "ping"}))
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                break  # the server already closed this socket
        code = None
        while code is None:
            reply = await _next(ws)
            if isinstance(reply, tuple):
                code = reply[1]
        assert code == 4429
        await http.close()

        # Many rapid reconnects (join, leave, join ...) from many sockets at once.
        async def churn(i: int) -> None:
            async with aiohttp.ClientSession() as session:
                resume = None
                for _ in range(10):
                    async with session.ws_connect(srv.base_url.replace("http", "ws") + "/ws") as sock:
                        await sock.send_str(json.dumps({"type": "hello", "role": "student",
                                                        "code": demo["class_code"], "name": f"churn {i}",
                                                        "resume": resume}))
                        msg = await sock.receive(timeout=10)
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            resume = json.loads(msg.data).get("resume", resume)

        mark = len(listener.frames)
        await asyncio.gather(*(churn(i) for i in range(30)))
        await asyncio.sleep(1)
        assert listener.rms_since(mark) > 100, "the listener kept hearing the teacher"
        assert listener.pc is not None
        inbound = next(s for s in (await listener.pc.getStats()).values() if s.type == "inbound-rtp")
        assert inbound.packetsLost <= 2
        # The teacher's inbox still holds listings sent during the churn; the newest one counts.
        listing = await teacher.expect("participants")
        while len(listing["list"]) >= 10:
            try:
                listing = await teacher.expect("participants", timeout=10)
            except TimeoutError:
                break
        assert len(listing["list"]) < 10, "gone sockets are not listed"
        assert teacher.closed_code is None, (teacher.closed_code, teacher.messages[-3:])
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await listener.close()
    problems = [line for line in srv.log_lines()
                if line.get("level") in ("error", "critical") or "Traceback" in str(line.get("raw", ""))]
    assert not problems, problems[:3]


async def test_ended_lesson_cannot_be_rejoined(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    lesson_id = demo["lesson_id"]
    await teacher.send({"type": "end"})
    await teacher.expect("ended")
    await teacher.close()
    again = Peer(srv.base_url)
    try:
        async with again.http.post(srv.base_url + "/api/login", json=demo["teacher_login"]) as resp:
            assert resp.status == 200
        reply = await again.connect({"type": "hello", "role": "teacher", "lesson_id": lesson_id})
        assert reply["code"] == "lesson_over"
        assert (await again.expect("_closed"))["code"] == 4410
    finally:
        await again.close()
    # A student of the class now waits for the next lesson instead of joining the ended one.
    student = Peer(srv.base_url)
    try:
        reply = await student.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                       "name": "Too late"})
        assert reply["type"] == "waiting"
    finally:
        await student.close()
