"""Media attacks on a live lesson, against the real server on loopback: offers with media the
room never reads, a floor student who keeps sending after the floor is taken back, offers that
make aiortc raise, ICE candidates naming addresses the server must not probe, and ``stats`` with
numbers a float cannot hold. Each attack fails, and an honest student keeps hearing the teacher
while it happens."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any, Optional

import psutil
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import VideoStreamTrack

from groom.live import sdp
from peers import SPEECH, Peer, end_lesson, join_student, start_teacher
from servers import ApiClient, GroomServer

pytestmark = pytest.mark.timeout(240)

MEMORY_SLACK = 30 * 1024 * 1024  # the bound: within 30 MB of the baseline


def _rss(srv: GroomServer) -> int:
    assert srv.proc is not None
    return int(psutil.Process(srv.proc.pid).memory_info().rss)


async def _guest(srv: GroomServer, demo: dict[str, Any], name: str) -> Peer:
    """A student who joined (welcome) but has made no peer connection yet."""
    peer = Peer(srv.base_url)
    welcome = await peer.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                  "name": name})
    assert welcome["type"] == "welcome", welcome
    return peer


async def _offer(peer: Peer, pc: RTCPeerConnection, edit: Any = None) -> dict[str, Any]:
    """Send ``pc``'s offer (optionally edited as text) and return the reply (answer or error)."""
    await pc.setLocalDescription(await pc.createOffer())
    text = pc.localDescription.sdp
    await peer.send({"type": "offer", "sdp": edit(text) if edit else text})
    return await peer.expect("answer", "error")


async def _connected(pc: RTCPeerConnection, seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if pc.connectionState == "connected":
            return True
        await asyncio.sleep(0.05)
    return False


async def _live_room(srv: GroomServer, demo: dict[str, Any]) -> dict[str, Any]:
    admin = ApiClient(srv.base_url)
    try:
        await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
        status, rooms = await admin.call("GET", "/api/live")
        assert status == 200, rooms
        room: dict[str, Any] = next(r for r in rooms if r["lesson"]["id"] == demo["lesson_id"])
        return room
    finally:
        await admin.close()


async def _still_in_the_room(peer: Peer) -> None:
    await peer.send({"type": "ping"})
    assert (await peer.expect("pong"))["type"] == "pong", "the attacker's socket is still open"


def _no_errors_logged(srv: GroomServer) -> None:
    problems = [line for line in srv.log_lines()
                if line.get("level") in ("error", "critical") or "Traceback" in str(line.get("raw", ""))]
    assert not problems, problems[:3]


async def test_extra_media_sections_are_refused_and_memory_stays_bounded(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    """A student offers to send a 640x480 video track and a second audio track beside the
    audio it listens on. Today the server answers ``recvonly`` for both and aiortc decodes them
    into queues nobody reads; the offer must be refused and the server's memory stay flat."""
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Honest")
    attacker = await _guest(srv, demo, "Extra tracks")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = MediaPlayer(str(SPEECH), loop=True)
    try:
        await honest.keeps_hearing(1.0)
        baseline = _rss(srv)
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTrack(VideoStreamTrack())  # 640x480 at 30 fps
        assert player.audio is not None
        pc.addTransceiver(player.audio, direction="sendonly")  # a second audio m-line
        reply = await _offer(attacker, pc)
        if reply["type"] == "answer":  # today: answered, so the attack goes on for 15 s
            await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
            await _connected(pc)
        peak = baseline
        for _ in range(5):
            await honest.keeps_hearing(3.0)
            peak = max(peak, _rss(srv))
        grown = peak - baseline
        assert grown < MEMORY_SLACK, f"server memory grew {grown / 2**20:.0f} MB"
        assert reply["type"] == "error" and reply["code"] == "bad_offer", reply
        await _still_in_the_room(attacker)
        # The same student may still listen with an honest offer.
        await attacker.negotiate(send_audio=False, receive_audio=True)
        await attacker.keeps_hearing(2.0)
    finally:
        await pc.close()
        if player.audio is not None:
            player.audio.stop()
        await end_lesson(teacher)
        for p in (teacher, honest, attacker):
            await p.close()


async def test_floor_holder_cannot_add_media_and_is_not_decoded_after_the_floor(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    """The floor student renegotiates with a video section (refused), then publishes the
    microphone; once the floor is taken back, the server stops decoding that student even
    though their phone keeps sending."""
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Honest")
    sneaky = await join_student(srv, demo, "Sneaky")
    speaker = await join_student(srv, demo, "Speaker")
    player = MediaPlayer(str(SPEECH), loop=True)
    try:
        assert (await _live_room(srv, demo))["receivers_decoding"] == 1  # the teacher
        await teacher.send({"type": "floor", "participant_id": sneaky.welcome["participant_id"]})
        assert (await sneaky.expect("floor"))["you"] is True
        assert sneaky.pc is not None
        sneaky.pc.getTransceivers()[0].direction = "sendrecv"
        sneaky.pc.addTrack(VideoStreamTrack())
        reply = await _offer(sneaky, sneaky.pc)
        assert reply["type"] == "error" and reply["code"] == "bad_offer", reply
        await honest.keeps_hearing(1.0)
        assert (await _live_room(srv, demo))["receivers_decoding"] == 1

        # The floor goes to another student, who publishes the microphone only: heard, decoded.
        await teacher.send({"type": "floor", "participant_id": speaker.welcome["participant_id"]})
        assert (await speaker.expect("floor"))["you"] is True
        assert speaker.pc is not None and player.audio is not None
        transceiver = speaker.pc.getTransceivers()[0]
        transceiver.direction = "sendrecv"
        transceiver.sender.replaceTrack(player.audio)
        reply = await _offer(speaker, speaker.pc)
        assert reply["type"] == "answer", reply
        await speaker.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        await honest.keeps_hearing(2.0)
        assert (await _live_room(srv, demo))["receivers_decoding"] == 2

        # The floor moves back; the speaker's phone keeps sending all the same.
        await teacher.send({"type": "floor", "participant_id": None})
        assert (await speaker.expect("floor"))["you"] is False
        await honest.keeps_hearing(2.0)
        assert (await _live_room(srv, demo))["receivers_decoding"] == 1, \
            "the ex-floor student's audio is no longer decoded"

        # Given the floor again (the page renegotiates sendrecv), they are heard again.
        await teacher.send({"type": "floor", "participant_id": speaker.welcome["participant_id"]})
        assert (await speaker.expect("floor"))["you"] is True
        reply = await _offer(speaker, speaker.pc)
        assert reply["type"] == "answer", reply
        await speaker.pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        await asyncio.sleep(0.5)
        assert (await _live_room(srv, demo))["receivers_decoding"] == 2
        await honest.keeps_hearing(2.0)
    finally:
        if player.audio is not None:
            player.audio.stop()
        await end_lesson(teacher)
        for p in (teacher, honest, sneaky, speaker):
            await p.close()


def _drop_lines(prefix: str) -> Any:
    return lambda text: "\r\n".join(line for line in text.split("\r\n") if not line.startswith(prefix))


async def test_offers_that_aiortc_refuses_get_bad_offer(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Honest")
    attacker = await _guest(srv, demo, "Broken offers")
    try:
        for edit in (_drop_lines("a=ice-ufrag"), lambda t: t.replace("a=setup:actpass", "a=setup:bogus")):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pc.addTransceiver("audio", direction="recvonly")
            try:
                reply = await _offer(attacker, pc, edit)
            finally:
                await pc.close()
            assert reply["type"] == "error" and reply["code"] == "bad_offer", reply
            await _still_in_the_room(attacker)
            await honest.keeps_hearing(1.0)
        await attacker.negotiate(send_audio=False, receive_audio=True)
        await attacker.keeps_hearing(1.5)
    finally:
        await end_lesson(teacher)
        for p in (teacher, honest, attacker):
            await p.close()
    _no_errors_logged(srv)


def _candidate(host: str, port: int, foundation: str) -> str:
    return f"a=candidate:{foundation} 1 udp 2130706432 {host} {port} typ host"


async def test_candidates_the_server_must_not_probe_are_dropped(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    """A student names loopback, link-local, multicast, broadcast and unspecified addresses as
    its ICE candidates: the server sends no connectivity check there (a loopback UDP socket here
    listens for them), and still connects over the student's real (private) address."""
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Honest")
    attacker = await _guest(srv, demo, "Candidates")
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind(("127.0.0.1", 0))
    trap.setblocking(False)
    port = trap.getsockname()[1]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        bad = [_candidate(host, port, f"bad{i}") for i, host in enumerate(
            ("127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "fe80::1", "224.0.0.251",
             "ff02::fb", "255.255.255.255", "0.0.0.0", "::", "::ffff:127.0.0.1"))]

        def inject(text: str) -> str:
            return text.replace("a=end-of-candidates", "\r\n".join(bad + ["a=end-of-candidates"]))

        pc.addTransceiver("audio", direction="recvonly")
        reply = await _offer(attacker, pc, inject)
        assert reply["type"] == "answer", reply
        await pc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        assert await _connected(pc), "the student's own private address still works"
        await honest.keeps_hearing(3.0)
        probes = 0
        while True:
            try:
                trap.recvfrom(2048)
                probes += 1
            except BlockingIOError:
                break
        assert probes == 0, f"the server sent {probes} ICE checks to a loopback candidate"
    finally:
        trap.close()
        await pc.close()
        await end_lesson(teacher)
        for p in (teacher, honest, attacker):
            await p.close()


def test_candidate_policy() -> None:
    """Which candidate addresses an offer may name (the same rule as above, every class)."""
    keep = ("192.168.1.20", "10.0.0.7", "172.16.5.5", "100.64.1.1", "192.0.2.2", "fd00::2",
            "203.0.113.9", "8.8.8.8", "2001:db8::5", "abcdef12-3456-7890-abcd-ef1234567890.local")
    drop = ("127.0.0.1", "127.1.2.3", "::1", "169.254.1.1", "fe80::1", "224.0.0.1", "239.1.2.3",
            "ff02::1", "255.255.255.255", "0.0.0.0", "0.1.2.3", "::", "::ffff:127.0.0.1",
            "::ffff:169.254.169.254", "240.0.0.1", "example.com", "not an address")
    lines = ["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111"]
    lines += [f"a=candidate:{i} 1 udp 1 {host} 5000 typ host" for i, host in enumerate(keep + drop)]
    kept = sdp.filter_candidates("\r\n".join(lines) + "\r\n")
    names = [line.split()[4] for line in kept.split("\r\n") if line.startswith("a=candidate:")]
    assert names == list(keep)
    assert sdp.filter_candidates("\r\n".join(lines) + "\r\n", allow_link_local=True).count(
        "169.254.1.1") == 1


async def test_stats_with_infinite_or_huge_numbers_are_refused(
    live: tuple[GroomServer, dict[str, Any]],
) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Honest")
    attacker = await join_student(srv, demo, "Stats")
    assert attacker.ws is not None
    try:
        good = {"type": "stats", "packets_received": 100, "packets_lost": 0, "jitter": 0.01,
                "concealed_samples": 0, "total_samples": 48000, "bytes_received": 5000}
        await attacker.send(good)
        for field, value in (("packets_received", "Infinity"), ("packets_lost", "-Infinity"),
                             ("total_samples", "NaN"), ("jitter", "Infinity"),
                             ("concealed_samples", "1e300"), ("bytes_received", "1e400")):
            text = json.dumps({**good, field: 0}).replace(f'"{field}": 0', f'"{field}": {value}')
            await attacker.ws.send_str(text)
            reply: Optional[dict[str, Any]] = await attacker.expect("error")
            assert reply is not None and reply.get("code") == "bad_message", (field, value, reply)
        await attacker.send(good)
        await _still_in_the_room(attacker)
        await honest.keeps_hearing(2.0)
        await attacker.keeps_hearing(1.0)
    finally:
        await end_lesson(teacher)
        for p in (teacher, honest, attacker):
            await p.close()
    _no_errors_logged(srv)
