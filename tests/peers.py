"""Real aiortc participants for live-lesson tests: they speak the protocol of docs/protocol.md.

A ``Peer`` is a WebSocket plus an ``RTCPeerConnection`` to a real server. The teacher sends
``media/speech.wav``; a student records what it hears (decoded frames) so tests can check that
audio arrived, was not silent, and lost nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional

import aiohttp
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import AudioFrame

from servers import ApiClient, GroomServer

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"


class Peer:
    def __init__(self, base_url: str, http: Optional[aiohttp.ClientSession] = None) -> None:
        self.base_url = base_url
        self.http = http or aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.pc: Optional[RTCPeerConnection] = None
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.messages: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}
        self.frames: list[np.ndarray] = []  # decoded audio received (mono int16)
        self.frame_pts: list[int | None] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.closed_code: Optional[int] = None
        self.player: Optional[MediaPlayer] = None
        self.reading = True  # a "stalled" student stops reading its track

    async def connect(self, hello: dict[str, Any]) -> dict[str, Any]:
        self.ws = await self.http.ws_connect(self.base_url.replace("http", "ws") + "/ws")
        self._tasks.append(asyncio.create_task(self._read_ws()))
        await self.send(hello)
        return await self.expect("welcome", "waiting", "error")

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def _read_ws(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.messages.append(data)
                if data["type"] == "welcome":
                    self.welcome = data
                await self.inbox.put(data)
        self.closed_code = self.ws.close_code
        await self.inbox.put({"type": "_closed", "code": self.ws.close_code})

    async def expect(self, *types: str, timeout: float = 15.0) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                message = await self.inbox.get()
                if message["type"] in types or message["type"] == "_closed":
                    return message

        return await asyncio.wait_for(wait(), timeout)

    async def negotiate(self, *, send_audio: bool, receive_audio: bool) -> None:
        """Full offer (ICE gathered) -> answer; waits for the connection to be up.

        Like a page, the peer uses the STUN/TURN servers of its ``welcome`` (none unless the
        server has ``--ice-servers``; TURN ones come with credentials)."""
        if self.pc is not None:
            await self.pc.close()
        servers = [RTCIceServer(**s) for s in self.welcome.get("ice_servers", [])]
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        if send_audio:
            self.player = MediaPlayer(str(SPEECH), loop=True)
            audio = self.player.audio
            assert audio is not None, f"{SPEECH} has no audio stream"
            pc.addTransceiver(audio, direction="sendrecv" if receive_audio else "sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._record(track)))

        await pc.setLocalDescription(await pc.createOffer())
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await self.expect("answer", "error")
        assert answer["type"] == "answer", answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        for _ in range(200):
            if pc.connectionState == "connected":
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"connection state {pc.connectionState}")

    async def _record(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                if not self.reading:
                    await asyncio.sleep(0.05)
                    continue
                frame = await track.recv()
                assert isinstance(frame, AudioFrame), frame  # an audio track yields audio frames
                samples = frame.to_ndarray().reshape(-1)
                if frame.layout.name == "stereo":
                    samples = samples[::2]
                self.frames.append(samples.astype(np.int16))
                self.frame_pts.append(frame.pts)
        except MediaStreamError:
            pass

    def rms(self, last_seconds: Optional[float] = None) -> float:
        if not self.frames:
            return 0.0
        audio = np.concatenate(self.frames).astype(np.float64)
        if last_seconds:
            audio = audio[-int(48000 * last_seconds):]
        return float(np.sqrt(np.mean(audio ** 2))) if audio.size else 0.0

    def rms_since(self, mark: int) -> float:
        """RMS of what arrived after ``mark`` (= ``len(self.frames)`` then). With DTX the
        server sends nothing during silence, so "the last second received" may be old audio."""
        if len(self.frames) <= mark:
            return 0.0
        audio = np.concatenate(self.frames[mark:]).astype(np.float64)
        return float(np.sqrt(np.mean(audio ** 2)))

    def seconds_received(self) -> float:
        return sum(len(f) for f in self.frames) / 48000

    async def keeps_hearing(self, seconds: float = 2.0, *, min_rms: float = 300.0) -> None:
        """Assert that audio keeps arriving for ``seconds`` and is not silence: the check that an
        honest student's lesson went on while something else (an attack, a fault) happened."""
        mark, before = len(self.frames), self.seconds_received()
        await asyncio.sleep(seconds)
        heard = self.seconds_received() - before
        assert heard >= 0.6 * seconds, f"heard {heard:.2f} s of audio in {seconds} s"
        assert self.rms_since(mark) >= min_rms, f"audio RMS {self.rms_since(mark):.0f}"

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.player is not None and self.player.audio is not None:
            self.player.audio.stop()
        if self.ws is not None:
            await self.ws.close()
        await self.http.close()


async def new_lesson(srv: GroomServer, demo: dict[str, Any]) -> int:
    """A fresh 5-minute lesson of the demo class, in its own slot so it clashes with nothing
    (the demo's own lesson is cancelled first: it covers the next 45 minutes)."""
    client = ApiClient(srv.base_url)
    try:
        await client.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
        if not demo.get("demo_lesson_cancelled"):
            status, body = await client.call("POST", f"/api/lessons/{demo['lesson_id']}/cancel",
                                             json={"scope": "one"})
            assert status == 200, body
            demo["demo_lesson_cancelled"] = True
        demo["slot"] = slot = demo.get("slot", 0) + 1  # lessons may start up to 1 h early
        start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5 * slot)
        status, body = await client.call("POST", f"/api/classes/{demo['class_id']}/lessons", json={
            "title": "Live test", "starts_at": start.isoformat(), "duration_minutes": 5})
        assert status == 201, body
        return int(body["id"])
    finally:
        await client.close()


async def start_teacher(srv: GroomServer, demo: dict[str, Any], *, silent: bool = False) -> Peer:
    lesson_id = await new_lesson(srv, demo)
    demo["lesson_id"] = lesson_id
    peer = Peer(srv.base_url)
    login = demo["teacher_login"]
    async with peer.http.post(srv.base_url + "/api/login", json=login) as resp:
        assert resp.status == 200
    welcome = await peer.connect({"type": "hello", "role": "teacher", "lesson_id": lesson_id})
    assert welcome["type"] == "welcome", welcome
    if silent:
        pc = peer.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")

        @pc.on("track")
        def on_track(track: Any) -> None:
            peer._tasks.append(asyncio.create_task(peer._record(track)))

        await pc.setLocalDescription(await pc.createOffer())
        await peer.send({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await peer.expect("answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    else:
        await peer.negotiate(send_audio=True, receive_audio=True)
    return peer


async def join_student(srv: GroomServer, demo: dict[str, Any], name: str, **extra: Any) -> Peer:
    peer = Peer(srv.base_url)
    welcome = await peer.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                  "name": name, **extra})
    assert welcome["type"] == "welcome", welcome
    await peer.negotiate(send_audio=False, receive_audio=True)
    return peer




async def end_lesson(teacher: Peer) -> None:
    """End the lesson and wait until the server confirms, so the next test's lesson may start."""
    await teacher.send({"type": "end"})
    await teacher.expect("ended")


async def other_class(srv: GroomServer, demo: dict[str, Any], name: str) -> dict[str, Any]:
    """A second class of the demo school with its own teacher and a lesson starting now:
    a demo-like dict (``teacher_login``, ``class_code``, ``class_id``, ``lesson_id``)."""
    admin = ApiClient(srv.base_url)
    try:
        await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
        status, me = await admin.call("GET", "/api/me")
        school = me["user"]["school_id"]
        login = {"username": f"{name}-{dt.datetime.now().timestamp():.0f}", "password": "password-456"}
        status, teacher = await admin.call("POST", f"/api/schools/{school}/teachers", json={
            **login, "display_name": name})
        assert status == 201, teacher
        status, klass = await admin.call("POST", f"/api/schools/{school}/classes", json={
            "name": f"{name} class", "teacher_id": teacher["id"]})
        assert status == 201, klass
        start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
        status, lesson = await admin.call("POST", f"/api/classes/{klass['id']}/lessons", json={
            "title": name, "starts_at": start.isoformat(), "duration_minutes": 30})
        assert status == 201, lesson
        return {"teacher_login": login, "class_code": klass["join_code"], "class_id": klass["id"],
                "lesson_id": lesson["id"]}
    finally:
        await admin.close()
