"""The connection survives slow links: waiting students keep their socket, ICE consent outlasts
a long round trip, and the teacher sees each student's RTT."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from groom.live import consent
from netlab import UdpDelayRelay
from peers import Peer, end_lesson, new_lesson, start_teacher
from servers import GroomServer

pytestmark = pytest.mark.timeout(240)


async def test_waiting_student_is_welcomed_on_the_same_socket(
        live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    await new_lesson(srv, demo)  # a lesson of the class, not started yet
    student = Peer(srv.base_url)
    teacher: Optional[Peer] = None
    try:
        first = await student.connect({"type": "hello", "role": "student",
                                       "code": demo["class_code"], "name": "Early Noy"})
        assert first["type"] == "waiting", first
        await student.send({"type": "ping"})
        assert (await student.expect("pong"))["type"] == "pong"
        await student.send({"type": "ping"})  # a read pending when the lesson starts
        await asyncio.sleep(0.3)
        teacher = await start_teacher(srv, demo)
        welcome = await student.expect("welcome")
        assert welcome["type"] == "welcome", welcome  # not "_closed": no reconnect needed
        # The same socket goes on working: negotiate on it and hear the teacher.
        await student.send({"type": "ping"})
        assert (await student.expect("pong"))["type"] == "pong"
        await student.negotiate(send_audio=False, receive_audio=True)
        await student.keeps_hearing(3.0)
        assert student.closed_code is None
    finally:
        if teacher is not None:
            await end_lesson(teacher)
            await teacher.close()
        await student.close()


async def _participant_rtt(teacher: Peer, student_id: str, timeout: float) -> Optional[float]:
    """The teacher's latest ``rtt_ms`` for the student, waiting up to ``timeout`` for one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = await teacher.expect("participants", timeout=max(deadline - time.monotonic(), 0.1))
        except asyncio.TimeoutError:
            break
        for p in message.get("list", []):
            if p["id"] == student_id and p.get("rtt_ms") is not None:
                return float(p["rtt_ms"])
    return None


async def test_teacher_sees_student_rtt(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = Peer(srv.base_url)
    try:
        welcome = await student.connect({"type": "hello", "role": "student",
                                         "code": demo["class_code"], "name": "Rtt Kham"})
        assert welcome["type"] == "welcome", welcome
        await student.negotiate(send_audio=False, receive_audio=True)
        rtt = await _participant_rtt(teacher, welcome["participant_id"], 12.0)
        assert rtt is not None, "no rtt_ms in the teacher's participants list"
        assert 0 <= rtt < 200, rtt  # loopback
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()


def _first_candidate(sdp: str) -> tuple[str, int]:
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if fields[2].lower() == "udp" and ":" not in fields[4]:
                return fields[4], int(fields[5])
    raise AssertionError("no IPv4 UDP candidate")


def _only_candidate(sdp: str, address: tuple[str, int]) -> str:
    lines, added = [], False
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            if not added:
                lines.append(f"a=candidate:1 1 udp 2130706431 {address[0]} {address[1]} typ host")
                added = True
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


async def test_long_round_trip_keeps_the_connection(live: tuple[GroomServer, dict[str, Any]]) -> None:
    """A student whose media round trip stays at ~700 ms (the lab's UDP delay relay, both ways:
    every ICE, DTLS, RTP and RTCP packet is held 350 ms each way) keeps its connection for 40 s,
    goes on hearing the teacher, and the teacher sees that round trip. aioice's own consent
    checks (0.5 s, never retransmitted) would fail each time and close it after ~30 s."""
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    student = Peer(srv.base_url)
    relays: list[UdpDelayRelay] = []
    try:
        welcome = await student.connect({"type": "hello", "role": "student",
                                         "code": demo["class_code"], "name": "Far Away Bee"})
        assert welcome["type"] == "welcome", welcome
        pc = student.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")
        # The student stands for a browser, whose consent checks retransmit (RFC 7675).
        consent.install_on(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            student._tasks.append(asyncio.create_task(student._record(track)))

        await pc.setLocalDescription(await pc.createOffer())
        mine = _first_candidate(pc.localDescription.sdp)
        toward_student = UdpDelayRelay((mine[0], 0), mine, 350)  # server -> relay -> student
        relays.append(toward_student)
        await student.send({"type": "offer",
                            "sdp": _only_candidate(pc.localDescription.sdp, await toward_student.start())})
        answer = await student.expect("answer", "error")
        assert answer["type"] == "answer", answer
        theirs = _first_candidate(answer["sdp"])
        toward_server = UdpDelayRelay((theirs[0], 0), theirs, 350)  # student -> relay -> server
        relays.append(toward_server)
        munged = _only_candidate(answer["sdp"], await toward_server.start())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=munged, type="answer"))
        for _ in range(400):
            if pc.connectionState == "connected":
                break
            await asyncio.sleep(0.05)
        assert pc.connectionState == "connected", pc.connectionState

        await asyncio.sleep(40)
        assert pc.connectionState == "connected", pc.connectionState
        await student.keeps_hearing(4.0)
        assert sum(r.forwarded for r in relays) > 300  # the media went through the relays
        # and the teacher sees that round trip (RTCP sender reports, answered by the student)
        rtt = await _participant_rtt(teacher, welcome["participant_id"], 10.0)
        assert rtt is not None and 600 <= rtt <= 1500, rtt
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()
        for relay in relays:
            relay.close()
