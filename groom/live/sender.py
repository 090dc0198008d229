"""One student's WebRTC audio output: tier packets straight onto the student's SRTP socket.

aiortc negotiates the peer connection as usual (one sendonly Opus transceiver), but its per-packet
path (a ``MediaStreamTrack.recv()`` coroutine per student, ``RtpPacket`` objects, header
extensions, three awaits down to the socket) costs ~110 us per packet sent. Here ``push`` does the
whole job synchronously: pack the 12-byte RTP header for this student (its ssrc, sequence number,
timestamp offset, negotiated payload type), protect it with the DTLS transport's SRTP session and
hand it to the selected ICE pair's datagram transport, whose ``sendto`` never blocks (the kernel
drops on a full socket buffer, asyncio buffers and drops on closure). No queue, no task.

RTCP: aiortc's RTP loop for this sender is parked on a track that never yields
(``PacketPathTrack``), and its sender-report task (one coroutine per student, a report every
~1 s) is replaced by ``send_report``, which the room calls every few seconds for all students
from one timer: the same synchronous protect-and-sendto path, a fifth of the reports (RTCP is
header-heavy, and a 2G student pays for every byte) and no task per student. The student's
receiver reports still reach aiortc's sender, become ``remote-inbound-rtp`` in ``getStats()``
(round-trip time included, from the report times we record), and ``link_quality()`` reads them
without building a stats report.

This reaches into aiortc 1.16 / aioice 0.13 internals, all of it here and nowhere else
(``RTCDtlsTransport._tx_srtp`` / ``_state``, ``Connection._nominated``, the ``RTCRtpSender``
counters); ``StudentSender.start`` checks they exist so an aiortc upgrade fails loudly at connect
time, not silently on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo, RtcpSrPacket
from aiortc.stats import RTCStatsReport

from groom.audio.packets import SAMPLE_RATE, EncodedPacket

from .latency import Latency

logger = logging.getLogger(__name__)

_RTP_HEADER = struct.Struct("!BBHII")
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
_NTP_SCALE = float(1 << 32)
_UDP_IPV4_OVERHEAD = 28  # IPv4 (20) + UDP (8) headers, per datagram
_UDP_IPV6_OVERHEAD = 48  # IPv6 (40) + UDP (8)
# asyncio buffers a datagram only when the kernel says EAGAIN; past this the student's socket is
# not draining and further packets are dropped instead of piling up in an unbounded buffer.
_MAX_SOCKET_BACKLOG = 16 * 1024


async def _no_rtcp(packets: Any) -> None:
    """Stands in for a retired aiortc sender's RTCP output (see ``StudentSender.start``)."""


def _no_backlog() -> int:
    return 0


def _red_for(payload: bytes, opus_type: int) -> bytes:
    """A tier's RED payload (``tiers.red_payload``, type fields 0) with this student's Opus
    payload type written into its block headers: 4 bytes then 1 with a redundant block, else 1."""
    if payload[0] & 0x80:
        return bytes((0x80 | opus_type,)) + payload[1:4] + bytes((opus_type,)) + payload[5:]
    return bytes((opus_type,)) + payload[1:]


class _SenderInternals:
    """Typed access to an ``RTCRtpSender``'s name-mangled private state (aiortc 1.16).

    aiortc keeps these as ``self.__name`` attributes, which mypy cannot see from outside the
    class; every read and write goes through here, under the mangled names ``NAMES`` lists
    (``StudentSender.start`` checks they exist)."""

    NAMES = ("rtcp_task", "rtcp_started", "rtcp_exited", "lsr", "lsr_time", "cname", "rtt", "stats",
             "packet_count", "octet_count")

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender

    def _get(self, name: str) -> object:
        return getattr(self._sender, "_RTCRtpSender__" + name)

    def has(self, name: str) -> bool:
        return hasattr(self._sender, "_RTCRtpSender__" + name)

    @property
    def rtcp_task(self) -> asyncio.Future[None] | None:
        return cast("asyncio.Future[None] | None", self._get("rtcp_task"))

    @property
    def rtcp_started(self) -> asyncio.Event:
        return cast(asyncio.Event, self._get("rtcp_started"))

    @property
    def rtcp_exited(self) -> asyncio.Event:
        return cast(asyncio.Event, self._get("rtcp_exited"))

    @property
    def cname(self) -> str | None:
        return cast("str | None", self._get("cname"))

    @property
    def stats(self) -> RTCStatsReport:
        return cast(RTCStatsReport, self._get("stats"))

    @property
    def rtt(self) -> float | None:
        return cast("float | None", self._get("rtt"))

    def record_report(self, lsr: int, lsr_time: float, packet_count: int, octet_count: int) -> None:
        """What aiortc's own sender records as it sends a report (for RTT and getStats)."""
        setattr(self._sender, "_RTCRtpSender__lsr", lsr)
        setattr(self._sender, "_RTCRtpSender__lsr_time", lsr_time)
        setattr(self._sender, "_RTCRtpSender__packet_count", packet_count)
        setattr(self._sender, "_RTCRtpSender__octet_count", octet_count)


def _dtls_sent(dtls: RTCDtlsTransport) -> tuple[int, int]:
    """(bytes, packets) the DTLS transport has sent: its name-mangled private counters."""
    return (cast(int, getattr(dtls, "_RTCDtlsTransport__tx_bytes")),
            cast(int, getattr(dtls, "_RTCDtlsTransport__tx_packets")))


class PacketPathTrack(MediaStreamTrack):
    """An audio track whose ``recv`` never yields: it parks aiortc's RTP loop for this sender.

    The transceiver needs a track so aiortc negotiates a sendonly audio m-line and starts the
    sender (RTCP included); without one, ``RTCRtpSender._run_rtp`` polls every 20 ms per student.
    Audio reaches the student through ``StudentSender.push`` instead.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._stopped = asyncio.Event()

    async def recv(self) -> Any:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


@dataclass(frozen=True, slots=True)
class LinkQuality:
    """The latest RTCP receiver report from the student (None fields: no report yet)."""

    fraction_lost: float | None  # 0.0-1.0 over the last report interval
    packets_lost: int | None  # cumulative
    jitter_ms: float | None
    rtt_ms: float | None
    reported_at: datetime | None  # when the latest receiver report arrived


def add_student_audio(pc: RTCPeerConnection) -> StudentSender:
    """Give ``pc`` a sendonly Opus-only audio transceiver and return its ``StudentSender``.

    Call before ``createOffer``/``createAnswer``. When the student made the offer (with an audio
    m-line), call after ``setRemoteDescription``: ``addTrack`` then reuses that transceiver.
    """
    track = PacketPathTrack()
    sender = pc.addTrack(track)
    transceiver = next(t for t in pc.getTransceivers() if t.sender is sender)
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
    transceiver.setCodecPreferences(opus)
    transceiver.direction = "sendonly"
    return StudentSender(transceiver, track)


class StudentSender:
    """A ``PacketSink`` writing one student's RTP. Call ``start()`` once the connection is up."""

    def __init__(self, transceiver: RTCRtpTransceiver, track: PacketPathTrack) -> None:
        self._transceiver = transceiver
        self._sender: RTCRtpSender = transceiver.sender
        self._track = track
        self._ready = False
        self._protect: Any = None
        self._dtls: Any = None
        self._nominated: dict[int, Any] = {}
        self._payload_type = 0
        self._ssrc = 0
        self._sequence = random.randrange(1 << 16)
        self._ts_offset = random.randrange(1 << 32)
        self._next_timestamp: int | None = None
        self._ip_overhead = _UDP_IPV4_OVERHEAD
        self._pair: Any = None
        self._sendto: Any = None
        self._remote_addr: Any = None
        self._backlog: Any = _no_backlog
        self.packets_sent = 0
        self.payload_bytes = 0
        self.wire_bytes = 0  # RTP as billed: header + payload + SRTP tag + UDP + IP
        self.rtcp_bytes = 0  # our sender reports, billed the same way
        self._last_rtp_timestamp = 0
        self._cname = ""
        self.dropped = 0  # pushed before start() or after the connection went away
        self.latency: Latency | None = None  # the room's server-added delay sample
        # RFC 2198 RED's payload type when the student's offer had it (sdp.red_payload_type):
        # only then may the student hear a protected (RED) tier variant.
        self.red_payload_type: int | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def start(self) -> None:
        """Bind the send path to the negotiated connection (call at ``connectionState == connected``)."""
        sender = self._sender
        dtls = sender.transport
        opus = [c for c in self._transceiver._codecs if c.mimeType.lower() == "audio/opus"]
        if not opus:
            raise RuntimeError("student audio did not negotiate Opus")
        if dtls._state != DtlsState.CONNECTED or dtls._tx_srtp is None:
            raise RuntimeError("DTLS is not connected yet")
        internals = _SenderInternals(sender)
        for name in internals.NAMES:
            if not internals.has(name):
                raise RuntimeError(f"aiortc internals changed: RTCRtpSender has no _RTCRtpSender__{name}")
        payload_type = opus[0].payloadType
        if payload_type is None:  # negotiated codecs always carry one
            raise RuntimeError("student audio negotiated Opus without a payload type")
        # Retire aiortc's report task; it would send RTCP BYE as it ends, which tells the
        # student the stream is over, so its send path is silenced first. (Replacing a method
        # of a third-party object: mypy rightly flags it; this is the one place we do.)
        sender._send_rtcp = _no_rtcp  # type: ignore[method-assign]
        rtcp_task = internals.rtcp_task
        if rtcp_task is not None:
            rtcp_task.cancel()
        # A task cancelled before its first step never runs, so it never sets the events
        # aiortc's ``stop()`` waits for: set them here, or closing the connection would hang.
        internals.rtcp_started.set()
        internals.rtcp_exited.set()
        self._cname = internals.cname or ""
        self._payload_type = payload_type
        self._ssrc = sender._ssrc
        self._dtls = dtls
        self._protect = dtls._tx_srtp.protect
        self._protect_rtcp = dtls._tx_srtp.protect_rtcp
        self._nominated = dtls.transport._connection._nominated
        if not self._bind_pair(self._nominated.get(1)):
            raise RuntimeError("ICE has no selected pair")
        self._ready = True

    def push(self, packet: EncodedPacket) -> None:
        """Send one tier packet to this student now; never blocks, never queues."""
        if not self._ready:
            self.dropped += 1
            return
        pair = self._nominated.get(1)
        if (pair is not self._pair and not self._bind_pair(pair)) or (
            self._dtls._state is not DtlsState.CONNECTED
        ):
            self._ready = False  # the connection is gone; the room will unsubscribe us
            self.dropped += 1
            return
        if self._backlog() > _MAX_SOCKET_BACKLOG:
            self.dropped += 1  # the socket is not draining: drop rather than queue without end
            return
        timestamp = (packet.timestamp + self._ts_offset) & 0xFFFFFFFF
        # RFC 3551: the marker bit flags the first packet of a talkspurt (after a DTX gap).
        marker = 0x80 if packet.timestamp != self._next_timestamp else 0
        self._next_timestamp = packet.timestamp + packet.duration
        payload = packet.payload
        payload_type = self._payload_type
        if packet.red:
            if self.red_payload_type is None:  # never moved to a RED variant without it
                self.dropped += 1
                return
            payload = _red_for(payload, payload_type)
            payload_type = self.red_payload_type
        data = self._protect(
            _RTP_HEADER.pack(0x80, payload_type | marker, self._sequence, timestamp, self._ssrc)
            + payload
        )
        self._sendto(data, self._remote_addr)
        if self.latency is not None:
            self.latency.observe(packet.created)
        self._sequence = (self._sequence + 1) & 0xFFFF
        size = len(data)
        self.packets_sent += 1
        self.payload_bytes += len(payload)
        self.wire_bytes += size + self._ip_overhead
        self._last_rtp_timestamp = timestamp

    def send_report(self) -> None:
        """An RTCP sender report (+ SDES CNAME), sent now on the same synchronous path.

        Its times let the student's receiver reports carry a round-trip time; aiortc's own
        sender computes it from the ``lsr`` values recorded here."""
        if not self._ready or self._dtls._state is not DtlsState.CONNECTED:
            return
        now = time.time()
        ntp = int((now + _NTP_EPOCH_OFFSET) * _NTP_SCALE)
        report = RtcpSrPacket(ssrc=self._ssrc, sender_info=RtcpSenderInfo(
            ntp_timestamp=ntp, rtp_timestamp=self._last_rtp_timestamp,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.payload_bytes & 0xFFFFFFFF))
        sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=self._ssrc,
                                                     items=[(1, self._cname.encode())])])
        data = self._protect_rtcp(bytes(report) + bytes(sdes))
        self._sendto(data, self._remote_addr)
        # what aiortc's getStats() reports as outbound-rtp, and RTT
        _SenderInternals(self._sender).record_report(
            (ntp >> 16) & 0xFFFFFFFF, now, self.packets_sent, self.payload_bytes)
        self.rtcp_bytes += len(data) + self._ip_overhead

    def _bind_pair(self, pair: Any) -> bool:
        """Cache the selected ICE pair's datagram transport (rebound if ICE ever changes it)."""
        self._pair = pair
        if pair is None:
            return False
        transport = pair.protocol.transport
        self._sendto = transport.sendto
        self._remote_addr = pair.remote_addr
        # A TURN relay transport has no write buffer of its own (aioice sends via tasks).
        self._backlog = getattr(transport, "get_write_buffer_size", _no_backlog)
        self._ip_overhead = _UDP_IPV6_OVERHEAD if ":" in pair.remote_addr[0] else _UDP_IPV4_OVERHEAD
        return True

    def link_quality(self) -> LinkQuality:
        """Latest receiver-report figures for this student, for tier adaptation.

        Reads what aiortc's sender stored from the last receiver report: a dict lookup instead of
        ``await getStats()`` building a report per call.
        """
        sender = self._sender
        internals = _SenderInternals(sender)
        report = internals.stats.get("remote-inbound-rtp_" + str(id(sender)))
        rtt = internals.rtt
        if report is None:
            return LinkQuality(None, None, None, None, None)
        return LinkQuality(
            fraction_lost=report.fractionLost / 256,
            packets_lost=report.packetsLost,
            jitter_ms=report.jitter * 1000 / SAMPLE_RATE,
            rtt_ms=None if rtt is None else rtt * 1000,
            reported_at=report.timestamp,
        )

    def data_used(self) -> int:
        """Bytes sent to this student on the wire, UDP/IP headers included: our RTP and sender
        reports, plus what aiortc sent itself (DTLS handshake, anything else)."""
        dtls: RTCDtlsTransport = self._dtls if self._dtls is not None else self._sender.transport
        tx_bytes, tx_packets = _dtls_sent(dtls)
        return int(self.wire_bytes + self.rtcp_bytes + tx_bytes + tx_packets * self._ip_overhead)

    def stop(self) -> None:
        """Stop sending (the peer connection's ``close()`` stops aiortc's sender and its RTCP)."""
        self._ready = False
        self._track.stop()
