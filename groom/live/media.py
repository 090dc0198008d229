"""A live room's audio: the peer connections, the mixer, the tiers and each student's sender.

Split from the room so the room's bookkeeping (seats, floor, board, attendance) and its media
can each be read on their own. This part owns the WebRTC side for one room: answering a
participant's offer (a new connection, or the floor student's renegotiation to add their
microphone), starting a student's sender once their connection is up, moving students between
tiers as their link changes (RTCP reports from the server's side, ``getStats`` from the
student's page, data saver), the HTTP fallback streams, and closing a participant's media.
Who holds the floor is asked of the room (``floor_holder``); anything that changes what the
teacher's participant list shows is told to the room (``on_change``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from groom.core.errors import AppError

from . import consent, ice, sdp
from .fallback import FallbackStream
from .ingress import OpusIngress
from .latency import Latency
from .mixer import Mixer
from .participant import Participant
from .sender import add_student_audio
from .tiers import PROTECTED, ROOM_TIERS, TierSet

log = logging.getLogger("groom.live.room")


class RoomMedia:
    def __init__(self, ice_servers: list[dict[str, Any]], *,
                 floor_holder: Callable[[], Optional[str]], on_change: Callable[[], None],
                 on_level: Callable[[float], None], allow_link_local: bool = False) -> None:
        # STUN only: pages bring their own TURN relay (``ice.for_server`` says why).
        self._ice = RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice.for_server(ice_servers)])
        self._allow_link_local = allow_link_local  # settings.ice_link_local
        self._floor_holder = floor_holder
        self._on_change = on_change
        self.tiers = TierSet(ROOM_TIERS)
        self.mixer = Mixer(self.tiers.feed, on_level=on_level)
        self.latency = Latency()
        self.fallbacks: dict[str, FallbackStream] = {}
        self._last_report: dict[str, Any] = {}  # per student: the RTCP report last acted on
        self.teacher_ingress: Optional[OpusIngress] = None  # the teacher's current uplink

    def fallback(self, tier: str) -> FallbackStream:
        """The HTTP stream of one tier: made on first use, a subscriber like any student."""
        stream = self.fallbacks.get(tier)
        if stream is None:
            stream = self.fallbacks[tier] = FallbackStream(tier)
            self.tiers.subscribe(stream, tier)
        return stream

    async def stop(self, people: list[Participant]) -> None:
        """At the close: the audio clock, everyone's media and the fallback streams."""
        await self.mixer.stop()
        await asyncio.gather(*(self.close_media(p) for p in people),
                             *(stream.close() for stream in self.fallbacks.values()),
                             return_exceptions=True)

    # ---- time on each tier -------------------------------------------------------------------

    def current_tier(self, p: Participant) -> Optional[str]:
        """The tier whose packets the student is getting now (None: no media)."""
        return self.tiers.tier_of(p.sender) or p.controller.tier if p.sender else None

    def leave_time(self, p: Participant) -> None:
        p.leave_time(time.monotonic(), self.current_tier(p))

    # ---- WebRTC --------------------------------------------------------------------------------

    async def answer(self, p: Participant, offer_sdp: str) -> str:
        """Answer a participant's offer: a new connection, or a renegotiation (the floor).

        Refused with ``bad_offer``: any media section besides the one audio section (aiortc would
        decode it into a queue nobody reads), and any offer aiortc cannot apply. Candidates the
        server must not probe are dropped first (``sdp.filter_candidates``)."""
        if not sdp.has_audio(offer_sdp):
            raise AppError("no_audio", "The offer has no audio.", status=400)
        if not sdp.one_audio_section(offer_sdp):
            raise AppError("bad_offer", "An offer may carry one audio section and nothing else.",
                           status=400)
        offer = RTCSessionDescription(
            sdp=sdp.filter_candidates(offer_sdp, allow_link_local=self._allow_link_local), type="offer")
        if p.pc is not None and p.pc.connectionState in ("connected", "connecting", "new") \
                and p.role == "student" and p.sender is not None and p.sender.ready \
                and self._same_peer(p.pc, offer.sdp):
            try:
                return await self._renegotiate(p, offer)
            except Exception as exc:  # the listening connection itself goes on
                raise self._bad_offer(p, exc) from None
        await self.close_media(p)
        try:
            return await self._connect(p, offer)
        except Exception as exc:
            await self.close_media(p)
            raise self._bad_offer(p, exc) from None

    @staticmethod
    def _same_peer(pc: RTCPeerConnection, offer_sdp: str) -> bool:
        current = pc.remoteDescription
        return current is not None and sdp.fingerprints(current.sdp) == sdp.fingerprints(offer_sdp)

    @staticmethod
    def _bad_offer(p: Participant, exc: Exception) -> AppError:
        """An offer aiortc raised on (hand-made SDP: a missing ICE password, an unknown setup
        role, no codec in common): the sender gets a stable code, the room is unaffected."""
        log.warning("offer refused: %s: %s", type(exc).__name__, str(exc)[:200],
                    extra={"participant": p.id})
        return AppError("bad_offer", "The offer could not be used.", status=400)

    async def _connect(self, p: Participant, offer: RTCSessionDescription) -> str:
        """A new peer connection for ``p`` (their previous one is closed)."""
        pc = RTCPeerConnection(self._ice)
        p.pc = pc
        if p.role == "teacher":
            await pc.setRemoteDescription(offer)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    p.hears = self.mixer.floor_track()
                    pc.addTrack(p.hears)
                    self.teacher_ingress = OpusIngress(transceiver.receiver)
                    await self.mixer.set_teacher(self.teacher_ingress)
                    break
            consent.install_on(pc)
            await pc.setLocalDescription(await pc.createAnswer())
            self._watch(p, pc)
            return sdp.teacher_answer(pc.localDescription.sdp)
        await pc.setRemoteDescription(offer)
        p.sender = add_student_audio(pc)
        p.sender.latency = self.latency
        consent.install_on(pc)  # consent checks that survive a 2G round trip
        await pc.setLocalDescription(await pc.createAnswer())
        self._watch(p, pc)
        return self._student_answer(p, offer.sdp, pc.localDescription.sdp)

    @staticmethod
    def _student_answer(p: Participant, offer_sdp: str, answer_sdp: str) -> str:
        """Our Opus wishes, and RED accepted when the student offered it (then a lossy link
        may be sent a protected tier variant): aiortc itself knows no RED."""
        answer = sdp.student_answer(answer_sdp)
        red = sdp.offered_red(offer_sdp)
        if red is not None and p.sender is not None:
            answer, accepted = sdp.with_red(answer, red)
            p.sender.red_payload_type = red[0] if accepted else None
        return answer

    async def _renegotiate(self, p: Participant, offer: RTCSessionDescription) -> str:
        """The floor student adds (or drops) their microphone on the same connection.

        Our side of the transceiver receives only while the student holds the floor, so an
        offer to publish without it is answered "sendonly" and no audio is accepted."""
        assert p.pc is not None
        await p.pc.setRemoteDescription(offer)
        holds_floor = self._floor_holder() == p.id
        audio = [t for t in p.pc.getTransceivers() if t.kind == "audio"]
        for transceiver in audio:
            transceiver.direction = "sendrecv" if holds_floor else "sendonly"
        await p.pc.setLocalDescription(await p.pc.createAnswer())
        receiver = next((t.receiver for t in audio if t.receiver.track is not None), None)
        if holds_floor and receiver is not None and (p.mic is None or p.mic.receiver is not receiver):
            p.mic = OpusIngress(receiver)  # decoded on arrival, losses rebuilt from FEC
            await self.mixer.set_floor(p.mic)
        return self._student_answer(p, offer.sdp, p.pc.localDescription.sdp)

    def stop_hearing(self, p: Participant) -> None:
        """The floor moved away from ``p``: stop decoding their microphone.

        The mixer stops reading it, but their phone may go on sending (a page that never
        renegotiates, or one that means harm), and aiortc would decode every packet into the
        track's unbounded queue. Our side of the transceiver becomes "sendonly" now, without
        waiting for a renegotiation: aiortc's receiver then drops packets before decoding them.
        The next floor offer (``_renegotiate``) makes it "sendrecv" again."""
        if p.mic is not None:
            p.mic.attach(None)  # nothing more goes into the mixer from this microphone
        p.mic = None
        if p.pc is None:
            return
        for transceiver in p.pc.getTransceivers():
            if transceiver.kind != "audio" or transceiver.currentDirection not in ("sendrecv", "recvonly"):
                continue
            transceiver.direction = "sendonly"
            # aiortc 1.16: what setLocalDescription does with the answer's direction; it switches
            # the receiver's ``_enabled`` flag, checked first thing for every RTP packet.
            transceiver._setCurrentDirection("sendonly")
            queue = getattr(transceiver.receiver.track, "_queue", None)  # RemoteStreamTrack
            while queue is not None and not queue.empty():
                queue.get_nowait()  # frames decoded before the floor moved: nobody reads them

    def receivers_decoding(self, people: list[Participant]) -> int:
        """Remote tracks whose packets aiortc decodes now (the teacher's, the floor's): one
        more than that is a track the room does not read, filling a queue."""
        return sum(1 for p in people if p.pc is not None for t in p.pc.getTransceivers()
                   if t.currentDirection in ("sendrecv", "recvonly"))

    def _watch(self, p: Participant, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if p.pc is not pc:
                return
            state = pc.connectionState
            if state == "connected" and p.sender is not None and not p.sender.ready:
                try:
                    p.sender.start()
                except RuntimeError:
                    log.exception("student sender did not start", extra={"participant": p.id})
                    return
                served = self.served_tier(p)
                self.tiers.subscribe(p.sender, served)
                p.tier_since = time.monotonic()
                if served != p.controller.tier:  # a new student's provisional protection
                    self._tell_tier(p, served, "connected")
                self._on_change()
            elif state in ("failed", "closed"):
                await self.close_media(p)
                self._on_change()

    async def close_media(self, p: Participant) -> None:
        pc, p.pc = p.pc, None
        if p.sender is not None:
            p.close_tier_time(time.monotonic(), self.current_tier(p))
            p.tier_since = None
            p.bytes_before += p.sender.data_used()
            self.tiers.unsubscribe(p.sender)
            p.sender.stop()
            p.sender = None
        if p.role == "teacher" and pc is not None:
            await self.mixer.set_teacher(None)
        if p.hears is not None:
            p.hears.stop()
            p.hears = None
        if p.mic is not None:
            p.mic.attach(None)
            p.mic = None
            if self._floor_holder() == p.id:
                await self.mixer.set_floor(None)
        if pc is not None:
            await pc.close()

    # ---- tiers and link quality --------------------------------------------------------------

    def served_tier(self, p: Participant) -> str:
        """The tier variant the student's sender should carry: the controller's tier, or its
        protected (RED) variant while the link loses packets and the student can decode RED."""
        tier = p.controller.tier
        protected = PROTECTED.get(tier)
        if (protected is not None and p.controller.protect and not p.controller.data_saver
                and p.sender is not None
                and p.sender.red_payload_type is not None):
            return protected
        return tier

    def apply_tier(self, p: Participant, reason: str) -> None:
        tier = self.served_tier(p)
        if p.sender is not None and p.sender.ready and self.tiers.tier_of(p.sender) != tier:
            p.close_tier_time(time.monotonic(), self.current_tier(p))
            self.tiers.move(p.sender, tier)
        self._tell_tier(p, tier, reason)

    @staticmethod
    def _tell_tier(p: Participant, served: str, reason: str) -> None:
        """The student page's ``tier`` message: what it hears now (``served``) and why."""
        p.send({"type": "tier", "tier": p.controller.tier, "protected": served != p.controller.tier,
                "data_saver": p.controller.data_saver, "reason": reason})

    def _follow_link(self, p: Participant, changed: Optional[str]) -> None:
        """After a report: move the student if its tier, or its protection, changed."""
        if changed or (p.sender is not None and p.sender.ready
                       and self.tiers.tier_of(p.sender) != self.served_tier(p)):
            self.apply_tier(p, "link")

    def slide_delivered(self, p: Participant, kbps: float, paced: bool) -> None:
        """A slide image reached the student at ``kbps``: what the link carries beside the voice
        (``paced``: at least that; our pacing, not the link, set the rate)."""
        self._follow_link(p, p.controller.delivery_report(kbps, paced))

    def server_report(self, p: Participant) -> None:
        """The student's latest RTCP receiver report, if new, fed to their tier controller."""
        if p.sender is None or not p.sender.ready:
            return
        q = p.sender.link_quality()
        if q.reported_at is not None and self._last_report.get(p.id) != q.reported_at:
            self._last_report[p.id] = q.reported_at
            self._follow_link(p, p.controller.rtcp_report(
                int((q.fraction_lost or 0) * 256), (q.jitter_ms or 0) * 48,
                None if q.rtt_ms is None else q.rtt_ms / 1000))

    def client_stats(self, p: Participant, stats: dict[str, float]) -> None:
        """Cumulative ``getStats`` figures from the student page, turned into deltas; and the
        rate the page saw its last slide image arrive at (``slide_kbps``), capacity evidence."""
        slide_kbps = stats.pop("slide_kbps", None)
        if slide_kbps:
            self._follow_link(p, p.controller.delivery_report(float(slide_kbps), whole_link=True))
        last, p.last_client = p.last_client, stats

        def delta(name: str) -> int:
            return max(int(stats.get(name, 0) - last.get(name, 0)), 0)

        if not last:
            return
        changed = p.controller.client_report(
            packets_lost=delta("packets_lost"), packets_received=delta("packets_received"),
            jitter_s=stats.get("jitter"), concealed_samples=delta("concealed_samples"),
            total_samples=delta("total_samples"),
            silent_concealed_samples=delta("silent_concealed_samples"))
        self._follow_link(p, changed)

    def set_data_saver(self, p: Participant, on: bool) -> None:
        p.controller.set_data_saver(on)
        self.apply_tier(p, "data_saver")

    def figures(self, students: list[Participant],
                everyone: Optional[list[Participant]] = None) -> dict[str, Any]:
        """The audio side of the room's figures: per tier, and summed over the senders."""
        tiers: dict[str, Any] = {}
        for name, encoder in self.tiers.encoders.items():
            tiers[name] = {"students": sum(1 for p in students if p.sender is not None
                                           and self.tiers.tier_of(p.sender) == name),
                           "packets_encoded": encoder.packets, "payload_bytes": encoder.payload_bytes}
        senders = [p.sender for p in students if p.sender is not None]
        return {"students_connected": sum(1 for s in senders if s.ready), "tiers": tiers,
                "receivers_decoding": self.receivers_decoding(everyone or students),
                "packets_sent": sum(s.packets_sent for s in senders),
                "packets_dropped": sum(s.dropped for s in senders),
                "wire_bytes": sum(s.wire_bytes for s in senders),
                "latency": self.latency.percentiles(),
                "mixer": {"frames_out": self.mixer.frames_out,
                          "frames_skipped": self.mixer.frames_skipped},
                "teacher_uplink": self._uplink()}

    def _uplink(self) -> dict[str, int]:
        """How the teacher's packets fared: received, rebuilt from FEC, concealed, too late."""
        ingress = self.teacher_ingress
        if ingress is None:
            return {"packets": 0, "recovered": 0, "concealed": 0, "late": 0}
        return {"packets": ingress.packets, "recovered": ingress.recovered,
                "concealed": ingress.concealed, "late": ingress.late}
