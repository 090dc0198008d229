"""The live lesson end to end: a real server, a teacher and students as real aiortc peers."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from peers import Peer, end_lesson, join_student, other_class, start_teacher
from servers import ApiClient, GroomServer

pytestmark = pytest.mark.timeout(120)


async def _inbound(peer: Peer) -> Any:
    assert peer.pc is not None
    stats = await peer.pc.getStats()
    return next(s for s in stats.values() if s.type == "inbound-rtp")


async def test_teacher_voice_reaches_students_on_their_tiers(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    students = [await join_student(srv, demo, f"Student {i}") for i in range(2)]
    saver = students[1]
    try:
        await saver.send({"type": "data_saver", "on": True})
        tier = await saver.expect("tier")
        assert tier["tier"] == "low" and tier["data_saver"] is True
        await asyncio.sleep(5)
        for s in students:
            assert s.seconds_received() > 2.0, s.seconds_received()
            assert s.rms(last_seconds=4) > 100, "students must hear the teacher's speech"
        # Both start on low (nothing above it before the link shows room); on this clean
        # link Student 0 is soon tried one tier up (--tier-up-seconds 2), data saver stays low.
        tiers: dict[str, str] = {}
        for _ in range(75):
            participants = [m for m in teacher.messages if m["type"] == "participants"][-1]["list"]
            tiers = {p["name"]: p["tier"] for p in participants}
            if tiers.get("Student 0") != "low":
                break
            await asyncio.sleep(0.2)
        assert tiers == {"Student 0": "standard", "Student 1": "low"}, tiers
        usage = await students[0].expect("usage")
        assert usage["bytes"] > 0
    finally:
        await end_lesson(teacher)
        for p in (teacher, *students):
            await p.close()
    async with aiohttp.ClientSession() as http:
        # The lesson is over: it is marked ended and attendance was kept for both students.
        async with http.post(srv.base_url + "/api/login", json=demo["admin_login"]) as resp:
            assert resp.status == 200


async def test_tier_moves_lose_nothing(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Mover")
    try:
        await asyncio.sleep(2)
        for on in (True, False, True, False):
            await student.send({"type": "data_saver", "on": on})
            await student.expect("tier")
            await asyncio.sleep(1.5)
        inbound = await _inbound(student)
        assert inbound.packetsReceived > 40
        assert inbound.packetsLost == 0
        # Good client reports for a while move the student up to the top tier (tier_up 2 s).
        received = 0
        for _ in range(6):
            inbound = await _inbound(student)
            received = inbound.packetsReceived
            await student.send({"type": "stats", "packets_received": received, "packets_lost": 0,
                                "jitter": 0.005, "concealed_samples": 0, "total_samples": received * 2880})
            await asyncio.sleep(1.0)
        tiers = [m["tier"] for m in student.messages if m["type"] == "tier"]
        assert tiers[-1] == "high", tiers
        await asyncio.sleep(1.5)
        inbound = await _inbound(student)
        assert inbound.packetsLost == 0 and inbound.packetsReceived > received
        assert student.rms(last_seconds=1) > 50
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


async def test_stalled_student_does_not_delay_others(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    stalled = await join_student(srv, demo, "Stalled")
    healthy = await join_student(srv, demo, "Healthy")
    try:
        await asyncio.sleep(1)
        # Stop reading the stalled student's UDP socket: its kernel buffer fills up.
        assert stalled.pc is not None
        ice = stalled.pc.getTransceivers()[0].receiver.transport.transport
        for pair in ice._connection._nominated.values():
            transport = pair.protocol.transport
            assert isinstance(transport, asyncio.ReadTransport)  # asyncio's UDP transport is one
            transport.pause_reading()
        before = healthy.seconds_received()
        await asyncio.sleep(6)
        gained = healthy.seconds_received() - before
        assert gained > 5.0, f"healthy student got {gained:.1f} s of audio in 6 s"
        inbound = await _inbound(healthy)
        assert inbound.packetsLost == 0
    finally:
        await end_lesson(teacher)
        for p in (teacher, stalled, healthy):
            await p.close()


async def test_floor_audio_reaches_everyone(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo, silent=True)
    speaker = await join_student(srv, demo, "Speaker")
    listener = await join_student(srv, demo, "Listener")
    try:
        mark = len(listener.frames)
        await asyncio.sleep(2)
        assert listener.rms_since(mark) < 50, "the teacher is silent in this test"
        await speaker.send({"type": "hand", "up": True})
        hands = await teacher.expect("hands")
        while hands["queue"] != [speaker.welcome["participant_id"]]:
            hands = await teacher.expect("hands")
        # A student cannot give itself the floor, nor publish without it.
        await speaker.send({"type": "floor", "participant_id": speaker.welcome["participant_id"]})
        assert (await speaker.expect("error"))["code"] == "forbidden"
        await teacher.send({"type": "floor", "participant_id": speaker.welcome["participant_id"]})
        floor = await speaker.expect("floor")
        assert floor["you"] is True
        await _publish_mic(speaker)
        await asyncio.sleep(4)
        assert listener.rms(last_seconds=2) > 100, "everyone hears the student holding the floor"
        assert teacher.rms(last_seconds=2) > 100, "the teacher hears the floor too"
        await teacher.send({"type": "floor", "participant_id": None})
        assert (await speaker.expect("floor"))["you"] is False
        await asyncio.sleep(1.0)  # what was already on its way
        mark = len(listener.frames)
        await asyncio.sleep(2.0)
        assert listener.rms_since(mark) < 50, "after the floor is taken back, silence again"
    finally:
        await end_lesson(teacher)
        for p in (teacher, speaker, listener):
            await p.close()


async def _publish_mic(peer: Peer) -> None:
    """Renegotiate on the same connection with the microphone added (sendrecv)."""
    from aiortc import RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from peers import SPEECH

    assert peer.pc is not None
    peer.player = MediaPlayer(str(SPEECH), loop=True)
    transceiver = peer.pc.getTransceivers()[0]
    transceiver.direction = "sendrecv"
    transceiver.sender.replaceTrack(peer.player.audio)
    await peer.pc.setLocalDescription(await peer.pc.createOffer())
    await peer.send({"type": "offer", "sdp": peer.pc.localDescription.sdp})
    answer = await peer.expect("answer", "error")
    assert answer["type"] == "answer", answer
    await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))


async def test_teacher_reconnect_within_grace_keeps_the_room(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Patient")
    resume = teacher.welcome["resume"]
    http = teacher.http
    try:
        assert teacher.ws is not None
        await teacher.ws.close()
        if teacher.pc is not None:
            await teacher.pc.close()
        room = await student.expect("room")
        while room["teacher_present"]:
            room = await student.expect("room")
        again = Peer(srv.base_url, http=http)
        welcome = await again.connect({"type": "hello", "role": "teacher",
                                       "lesson_id": demo["lesson_id"], "resume": resume})
        assert welcome["type"] == "welcome"
        await again.negotiate(send_audio=True, receive_audio=True)
        room = await student.expect("room")
        while not room["teacher_present"]:
            room = await student.expect("room")
        await asyncio.sleep(3)
        assert student.rms(last_seconds=2) > 100
        assert not [m for m in student.messages if m["type"] == "ended"]
        await end_lesson(again)
        await again.close()
    finally:
        await student.close()


async def test_student_back_with_a_new_connection_while_the_old_one_lives(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    """A page that lost its socket (a relaying node died, a network switch) comes back with its
    ``resume`` token and a new peer connection while the server still holds the old one. The
    new offer must get a new connection (it has new DTLS fingerprints), not be applied as a
    renegotiation of the old one, which the new peer could never connect to."""
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Switcher")
    again = Peer(srv.base_url)
    try:
        await student.keeps_hearing(1.0)
        assert student.ws is not None
        await student.ws.close()  # the socket only: the old connection still plays
        welcome = await again.connect({"type": "hello", "role": "student", "name": "Switcher",
                                       "code": demo["class_code"],
                                       "resume": student.welcome["resume"]})
        assert welcome["type"] == "welcome" and welcome["participant_id"] == \
            student.welcome["participant_id"]
        await again.negotiate(send_audio=False, receive_audio=True)
        await again.keeps_hearing(2.0)
        await end_lesson(teacher)
    finally:
        await again.close()
        await student.close()
        await teacher.close()


async def test_teacher_gone_past_grace_ends_the_lesson(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Left alone")
    try:
        assert teacher.ws is not None
        await teacher.ws.close()
        ended = await student.expect("ended", timeout=15)
        assert ended["reason"] == "teacher_gone"
    finally:
        await teacher.close()
        await student.close()
    # The next lesson must be created for later tests: the demo refreshes its lesson on start.


async def test_http_fallback_stream_decodes(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = Peer(srv.base_url)
    try:
        welcome = await student.connect({"type": "hello", "role": "student",
                                         "code": demo["class_code"], "name": "No WebRTC"})
        token = welcome["listen_token"]
        await asyncio.sleep(1)
        data = bytearray()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.base_url}/listen/{token}.ogg") as resp:
                assert resp.status == 200 and resp.content_type == "audio/ogg"
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 4
                while loop.time() < deadline:
                    chunk = await resp.content.read(4096)
                    if not chunk:
                        break
                    data += chunk
        with av.open(io.BytesIO(bytes(data)), mode="r", format="ogg") as container:
            # PyAV decodes Opus to float samples in [-1, 1]: scale to the int16 range.
            samples = [f.to_ndarray().astype(np.float64).reshape(-1) * 32768
                       for f in container.decode(audio=0)]
        audio = np.concatenate(samples)
        seconds = audio.size / 48000
        assert 2.0 < seconds < 9.0, seconds
        assert float(np.sqrt(np.mean(audio ** 2))) > 100
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


async def test_rooms_run_side_by_side_isolated(live: tuple[GroomServer, dict[str, Any]]) -> None:
    """Two classes live at once: each student hears only their own teacher."""
    srv, demo = live
    quiet_demo = await other_class(srv, demo, "quiet")
    speaking = await start_teacher(srv, demo)
    quiet = Peer(srv.base_url)
    async with quiet.http.post(srv.base_url + "/api/login", json=quiet_demo["teacher_login"]) as resp:
        assert resp.status == 200
    hello = {"type": "hello", "role": "teacher", "lesson_id": quiet_demo["lesson_id"]}
    assert (await quiet.connect(hello))["type"] == "welcome"
    admin = ApiClient(srv.base_url)
    await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
    a = await join_student(srv, demo, "In the speaking class")
    b = await join_student(srv, quiet_demo, "In the quiet class")
    try:
        await asyncio.sleep(3)
        assert a.rms(last_seconds=2) > 100
        assert b.rms_since(0) < 50, "no sound leaks from the other room"
        status, rooms = await admin.call("GET", "/api/live")
        assert status == 200
        by_lesson = {r["lesson"]["id"]: r for r in rooms}
        assert by_lesson[quiet_demo["lesson_id"]]["students_joined"] == 1
        assert by_lesson[demo["lesson_id"]]["students_joined"] == 1
        assert by_lesson[demo["lesson_id"]]["packets_sent"] > 0
    finally:
        await end_lesson(speaking)
        await end_lesson(quiet)
        for p in (speaking, quiet, a, b):
            await p.close()
        await admin.close()
