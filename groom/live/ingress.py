"""A peer's Opus (the teacher's; the student holding the floor), decoded where it arrives, a
lost packet recovered from in-band FEC.

aiortc's path for a received track is: a jitter buffer, a decoder thread (PyAV), then
``asyncio.run_coroutine_threadsafe`` for every 20 ms frame, a queue, our reader task and a
resampler (stereo to mono). Four hand-offs between threads and tasks per frame per room were
most of a small room's cost apart from encoding, and that decoder never reads the FEC data the
teacher's browser sends (we ask for it in the answer, ``sdp.TEACHER_UPLOAD``), so every packet
lost on a provincial 3G uplink was heard as a gap by the whole class.

Here each RTP packet is decoded on arrival by one libopus call straight into the mixer's buffer
(``on_audio``). Losses are seen in the sequence numbers (DTX silences advance timestamps, not
sequence numbers): for one lost packet the next packet's in-band FEC copy is decoded first;
for a longer run libopus conceals up to ``MAX_CONCEAL_MS`` and the FEC copy ends it. A packet
older than the newest one (late, reordered or duplicated) is dropped: the mixer's clock has
moved past it. aiortc still counts every packet for its receiver reports, which the teacher's
browser needs for its bitrate and FEC decisions.

This reaches into aiortc 1.16's ``RTCRtpReceiver`` (the handler the DTLS transport calls, the
per-SSRC statistics and the codec table); pyproject.toml pins that minor version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket

from groom.audio.libopus import SAMPLE_RATE, OpusDecoder

log = logging.getLogger(__name__)

AudioSink = Callable[[np.ndarray, float], None]  # (mono s16 samples at 48 kHz, arrival time)
MAX_CONCEAL_MS = 100  # longer losses are left to the mixer's clock (silence, not a drone)
SEQ_MOD = 1 << 16


class OpusIngress:
    """Decodes one peer's incoming Opus RTP for the mixer; install with ``attach``."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.receiver = receiver
        self._decoder = OpusDecoder()
        self._sink: AudioSink | None = None
        self._last_seq: int | None = None
        self._last_samples = SAMPLE_RATE // 50
        self._opus_types: set[int] = {
            pt for pt, codec in self._codecs().items() if codec.mimeType.lower() == "audio/opus"
        }
        self.packets = 0
        self.recovered = 0  # lost packets rebuilt from the next packet's FEC data
        self.concealed = 0  # lost packets concealed by libopus (no FEC data for them)
        self.late = 0  # arrived after a newer packet: dropped
        self.undecodable = 0
        receiver._handle_rtp_packet = self._handle  # type: ignore[method-assign]

    def attach(self, sink: AudioSink | None) -> None:
        """Send decoded audio to ``sink`` (None: decode nothing, only count for reports)."""
        self._sink = sink

    def _codecs(self) -> dict[int, Any]:
        codecs: dict[int, Any] = getattr(self.receiver, "_RTCRtpReceiver__codecs")
        return codecs

    def _count(self, packet: RtpPacket) -> None:
        """What aiortc's own handler does for receiver reports, without its decode path."""
        streams: dict[int, StreamStatistics] = getattr(self.receiver,
                                                       "_RTCRtpReceiver__remote_streams")
        stats = streams.get(packet.ssrc)
        if stats is None:
            stats = streams[packet.ssrc] = StreamStatistics(SAMPLE_RATE)
        stats.add(packet)

    async def _handle(self, packet: RtpPacket, arrival_time_ms: int = 0) -> None:
        if not self.receiver._enabled:
            return
        if not self._opus_types:  # the codec table is filled when receiving starts
            self._opus_types = {pt for pt, c in self._codecs().items()
                                if c.mimeType.lower() == "audio/opus"}
        if packet.payload_type not in self._opus_types:
            return
        self._count(packet)
        self.packets += 1
        self.push(packet.sequence_number, packet.payload, time.monotonic())

    def push(self, seq: int, payload: bytes, arrived: float) -> None:
        """Decode one packet (and what was lost before it) into the sink."""
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) % SEQ_MOD
            if ahead == 0 or ahead > SEQ_MOD // 2:
                self.late += 1
                return
            lost = ahead - 1
        else:
            lost = 0
        self._last_seq = seq
        sink = self._sink
        samples = OpusDecoder.samples_in(payload) if payload else 0
        if sink is None or samples == 0:
            return
        if lost:
            self._fill_loss(lost, payload, arrived, sink)
        pcm = self._decoder.decode(payload, samples)
        if pcm is None:
            self.undecodable += 1
            return
        self._last_samples = samples
        sink(pcm, arrived)

    def _fill_loss(self, lost: int, payload: bytes, arrived: float, sink: AudioSink) -> None:
        per_packet = self._last_samples
        conceal = min(lost - 1, MAX_CONCEAL_MS * SAMPLE_RATE // 1000 // per_packet)
        for _ in range(conceal):
            pcm = self._decoder.decode(None, per_packet)
            if pcm is not None:
                self.concealed += 1
                sink(pcm, arrived)
        has_fec = OpusDecoder.has_fec(payload)
        fec = self._decoder.decode(payload, per_packet, fec=has_fec)  # without FEC: concealment
        if fec is not None:
            if has_fec:
                self.recovered += 1
            else:
                self.concealed += 1
            sink(fec, arrived)
