"""Quality tiers: the mixed lesson audio is encoded once per tier, never once per student.

The mixer hands us one 20 ms, 48 kHz, mono, s16 ``av.AudioFrame`` every 20 ms (pts in samples on a
shared 48 kHz clock). Each ``TierEncoder`` turns those frames into Opus packets for its tier and
pushes each ``EncodedPacket`` to every ``PacketSink`` subscribed to it (student WebRTC senders,
the HTTP fallback stream, a recorder). ``TierSet`` owns the encoders and who listens to what.

Why libopus through ctypes rather than PyAV's ``libopus`` encoder: with PyAV 18 / FFmpeg 8 the
``dtx`` option is accepted but has no effect (measured: identical packet sizes with and without
it, 15-18 bytes per 20 ms of digital silence instead of 1-byte DTX frames), and DTX is the single
biggest saving on a lesson full of pauses. Calling the same libopus directly gives DTX, exact
bandwidth and FEC control, and packet timestamps equal to the input pts (no pre-skip shift to undo).
"""

from __future__ import annotations

import ctypes
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Literal

import av

from groom.audio.libopus import libopus
from groom.audio.packets import SAMPLE_RATE, EncodedPacket, PacketSink

logger = logging.getLogger(__name__)

Bandwidth = Literal["narrowband", "mediumband", "wideband", "superwideband", "fullband"]

FRAME_SAMPLES = SAMPLE_RATE // 50  # the mixer's 20 ms frame
_MAX_PACKET = 1500  # more than any Opus packet we ask for (<= 120 ms at <= 32 kbps)

# opus_defines.h
_OPUS_APPLICATION_VOIP = 2048
_OPUS_SET_BITRATE = 4002
_OPUS_SET_MAX_BANDWIDTH = 4004
_OPUS_SET_VBR = 4006
_OPUS_SET_INBAND_FEC = 4012
_OPUS_SET_PACKET_LOSS_PERC = 4014
_OPUS_SET_DTX = 4016
_OPUS_SET_SIGNAL = 4024
_OPUS_RESET_STATE = 4028
_OPUS_SIGNAL_VOICE = 3001
_BANDWIDTHS: dict[str, int] = {
    "narrowband": 1101,  # 4 kHz audio
    "mediumband": 1102,
    "wideband": 1103,  # 8 kHz audio: speech is fully intelligible
    "superwideband": 1104,
    "fullband": 1105,
}


@dataclass(frozen=True, slots=True)
class TierSpec:
    """One quality level offered to students. All tiers are Opus, voip, DTX on, 48 kHz clock."""

    name: str
    bitrate: int  # target bits/s of Opus payload (VBR; DTX makes the real average lower)
    bandwidth: Bandwidth  # the widest audio band the encoder may code
    frame_ms: int  # 20, 40 or 60: longer frames mean fewer packets, so less RTP/UDP/IP overhead
    fec: bool = False  # Opus in-band FEC: the next packet carries a coarse copy of this one
    expected_loss_pct: int = 0  # tells the encoder how much redundancy FEC should carry
    # RFC 2198 RED: each packet also carries the previous one (``red_payload``), so one lost
    # packet costs nothing when the next arrives. For students with sustained loss.
    red: bool = False

    def __post_init__(self) -> None:
        if self.frame_ms not in (20, 40, 60):
            raise ValueError(f"tier {self.name}: frame_ms must be 20, 40 or 60")
        if self.bandwidth not in _BANDWIDTHS:
            raise ValueError(f"tier {self.name}: unknown bandwidth {self.bandwidth!r}")
        if not 6000 <= self.bitrate <= 128000:
            raise ValueError(f"tier {self.name}: bitrate out of range")

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000


# 60 ms frames on the low tiers: 16.7 packets/s instead of 50 cuts RTP+SRTP+UDP+IP overhead
# (~50 bytes/packet) from 20 kbps to 6.7 kbps. The high tier keeps 20 ms frames and FEC for
# links with ~10 % loss, where losing 60 ms at once would be audible.
DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec("low", 8000, "narrowband", 60),
    TierSpec("standard", 16000, "wideband", 60),
    TierSpec("high", 28000, "fullband", 20, fec=True, expected_loss_pct=10),
)


# Loss protection per student (``PROTECTED``: base tier -> its protected variant). Measured on
# media/speech.wav with libopus 1.6: in-band FEC needs >= 16 kbit/s at 60 ms narrowband before
# libopus emits any LBRR (none at 8-15 kbit/s whatever packet_loss_perc says), 1.83x the low
# tier's bytes; RED carrying the previous packet at 6 kbit/s costs ~1.4x the low tier (SRTP
# bytes, ~1.3x on the wire) and turns 15 % random loss into ~2.3 % (both packets lost).
PROTECTED_TIERS: tuple[TierSpec, ...] = (
    TierSpec("low-red", 6000, "narrowband", 60, red=True),
    TierSpec("standard-red", 11000, "wideband", 60, red=True),
)
PROTECTED: dict[str, str] = {"low": "low-red", "standard": "standard-red"}
# What a room encodes: the base tiers with each protected variant beside its base, the top tier
# last (the recorder takes the last one).
ROOM_TIERS: tuple[TierSpec, ...] = (DEFAULT_TIERS[0], PROTECTED_TIERS[0], DEFAULT_TIERS[1],
                                     PROTECTED_TIERS[1], *DEFAULT_TIERS[2:])
RED_MAX_OFFSET = 1 << 14  # RFC 2198: 14-bit timestamp offset of a redundant block


# What the recorder records. Post-processing keeps an 8 kbit/s listening file, so the 16 kbit/s
# wideband tier loses nothing that is kept, and a class whose students all hear that tier (the
# common case) then runs one encoder instead of two.
RECORDING_TIER = "standard"


def red_payload(primary: bytes, previous: bytes | None, offset: int) -> bytes:
    """An RFC 2198 payload: ``previous`` (``offset`` samples earlier) then ``primary``.

    The payload type fields are left 0: each student's sender writes its negotiated Opus type
    there (``StudentSender.push``), so the variant is built once for everyone."""
    if previous is None or not 0 < offset < RED_MAX_OFFSET or len(previous) >= 1 << 10:
        return b"\x00" + primary
    header = (1 << 31) | (offset << 10) | len(previous)
    return header.to_bytes(4, "big") + b"\x00" + previous + primary


class OpusEncoder:
    """A mono 48 kHz libopus encoder configured from a ``TierSpec``."""

    def __init__(self, spec: TierSpec) -> None:
        lib = libopus()
        error = ctypes.c_int(0)
        state = lib.opus_encoder_create(SAMPLE_RATE, 1, _OPUS_APPLICATION_VOIP, ctypes.byref(error))
        if error.value != 0 or not state:
            raise RuntimeError(f"opus_encoder_create failed: {error.value}")
        self._state = ctypes.c_void_p(state)
        self._finalizer = weakref.finalize(self, lib.opus_encoder_destroy, self._state)
        for request, value in (
            (_OPUS_SET_BITRATE, spec.bitrate),
            (_OPUS_SET_MAX_BANDWIDTH, _BANDWIDTHS[spec.bandwidth]),
            (_OPUS_SET_VBR, 1),
            (_OPUS_SET_SIGNAL, _OPUS_SIGNAL_VOICE),
            (_OPUS_SET_INBAND_FEC, int(spec.fec)),
            (_OPUS_SET_PACKET_LOSS_PERC, spec.expected_loss_pct),
            (_OPUS_SET_DTX, 1),
        ):
            status = lib.opus_encoder_ctl(self._state, ctypes.c_int(request), ctypes.c_int(value))
            if status != 0:
                raise RuntimeError(f"opus_encoder_ctl({request}, {value}) failed: {status}")
        self._encode = lib.opus_encode
        self._out = ctypes.create_string_buffer(_MAX_PACKET)

    def encode(self, pcm: bytes, samples: int) -> bytes:
        """Encode ``samples`` s16 mono samples; a result of 1-2 bytes is a DTX frame."""
        size = self._encode(self._state, pcm, samples, self._out, _MAX_PACKET)
        if size < 0:
            raise RuntimeError(f"opus_encode failed: {size}")
        return self._out.raw[:size]

    def reset(self) -> None:
        """Forget the codec's history, so a tier that wakes up starts as a fresh stream."""
        libopus().opus_encoder_ctl(self._state, ctypes.c_int(_OPUS_RESET_STATE))

    def close(self) -> None:
        self._finalizer()


class TierEncoder:
    """Encodes the mixer's 20 ms frames for one tier and fans each packet out to its sinks.

    DTX follows libwebrtc: while libopus says "nothing to send" (a 1-2 byte packet) the first
    such packet is still sent, so the decoder learns the talker went quiet and plays comfort
    noise, and the following ones are dropped. libopus itself emits a real packet every ~400 ms
    during silence to refresh the comfort noise; those go out. Dropped packets still advance the
    tier's timestamp, so receivers see a timestamp gap, which RTP allows.
    """

    def __init__(self, spec: TierSpec) -> None:
        self.spec = spec
        self._encoder = OpusEncoder(spec)
        self._pcm = bytearray()
        self._start_pts: int | None = None  # pts of the first sample in self._pcm
        self._created = 0.0
        self._in_dtx = False
        self._sinks: dict[PacketSink, None] = {}  # insertion-ordered set
        self._fanout: tuple[PacketSink, ...] = ()  # snapshot iterated per packet, no allocation
        self.covered_until: int | None = None  # end timestamp of the last packet (sent or DTX-dropped)
        self._previous: tuple[int, bytes] | None = None  # (end timestamp, payload) of the last sent
        self.packets = 0
        self.dtx_dropped = 0
        self.payload_bytes = 0

    # --- sinks -------------------------------------------------------------------------------
    def add_sink(self, sink: PacketSink) -> None:
        self._sinks[sink] = None
        self._fanout = tuple(self._sinks)

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self._sinks:
            del self._sinks[sink]
            self._fanout = tuple(self._sinks)

    @property
    def sinks(self) -> tuple[PacketSink, ...]:
        return self._fanout

    @property
    def next_start(self) -> int | None:
        """Timestamp where this tier's next (not yet emitted) packet starts."""
        return self._start_pts

    # --- media -------------------------------------------------------------------------------
    def feed(self, frame: av.AudioFrame, created: float | None = None) -> None:
        """Encode one mixer frame and push the packet it completes (if any) to every sink."""
        packet = self.encode(frame, time.monotonic() if created is None else created)
        if packet is not None:
            self.publish(packet)

    def encode(self, frame: av.AudioFrame, created: float) -> EncodedPacket | None:
        """Add one frame; return the packet it completes, or None (still buffering, or DTX).

        ``created`` is the monotonic time the frame entered the server: with 60 ms packets it
        is the time of the frame that *completes* the packet, so latency figures measure what
        the server adds, not the (known, fixed) 40 ms spent waiting for the packet to fill.
        """
        samples = frame.samples
        pcm = bytes(frame.planes[0])[: samples * 2]
        pts = frame.pts
        if self._start_pts is None or (pts is not None and pts != self._start_pts + len(self._pcm) // 2):
            # First frame, or the mixer's clock jumped: start a fresh packet at the new pts
            # (a partly filled packet from before the jump is discarded, not shifted in time).
            self._pcm.clear()
            self._start_pts = pts if pts is not None else (self.covered_until or 0)
        self._pcm += pcm
        need = self.spec.frame_samples
        if len(self._pcm) < need * 2:
            return None
        payload = self._encoder.encode(bytes(self._pcm[: need * 2]), need)
        del self._pcm[: need * 2]
        timestamp = self._start_pts
        self._start_pts = timestamp + need
        self.covered_until = timestamp + need
        if len(payload) <= 2:
            if self._in_dtx:
                self.dtx_dropped += 1
                return None
            self._in_dtx = True
        else:
            self._in_dtx = False
        if self.spec.red:
            previous = self._previous
            self._previous = (timestamp + need, payload)
            payload = red_payload(payload, previous[1] if previous and previous[0] == timestamp
                                  else None, need)
        self.packets += 1
        self.payload_bytes += len(payload)
        return EncodedPacket(self.spec.name, payload, timestamp, need, created, red=self.spec.red)

    def publish(self, packet: EncodedPacket) -> None:
        """Push to every sink; one failing sink is logged and does not starve the others."""
        for sink in self._fanout:
            try:
                sink.push(packet)
            except Exception:
                logger.exception("tier %s: sink %r failed", self.spec.name, sink)

    def rest(self) -> None:
        """Nobody listens any more: drop the partial packet; the next ``encode`` starts afresh."""
        self._pcm.clear()
        self._start_pts = None
        self._in_dtx = False
        self._previous = None
        self._encoder.reset()

    def close(self) -> None:
        self._encoder.close()
        self._sinks.clear()
        self._fanout = ()


class TierSet:
    """All tiers of one room: ``feed`` encodes each frame once per tier that someone listens to.

    A ``move`` is seamless. Tiers share the 48 kHz clock and their packet boundaries fall on one
    grid, so a moving sink keeps its old tier until that tier's coverage ends exactly where one of
    the new tier's packets will start, then leaves it and joins the new tier with that packet:
    a student moving between 20 ms and 60 ms tiers gets neither a gap nor overlapping audio, and
    its RTP timestamps stay continuous.

    A tier nobody listens to (no sink, no sink heading to it) is not encoded at all: a class
    of 30 on one tier pays for one encoder, not five (encoding is most of a small room's cost).
    A tier that wakes up waits for the next packet boundary of the shared grid (at most 40 ms)
    before it starts, so moves between tiers stay seamless.
    """

    def __init__(self, specs: tuple[TierSpec, ...] = DEFAULT_TIERS) -> None:
        if len({spec.name for spec in specs}) != len(specs):
            raise ValueError("tier names must be unique")
        self.encoders: dict[str, TierEncoder] = {spec.name: TierEncoder(spec) for spec in specs}
        self._tier_of: dict[PacketSink, str] = {}  # the tier each attached sink receives
        self._moving: dict[PacketSink, str] = {}  # still on its old tier, heading to this one
        self._joining: dict[PacketSink, tuple[str, int]] = {}  # detached: (tier, first timestamp)
        self._running: tuple[TierEncoder, ...] = ()  # the tiers someone listens to or heads to
        self._grid: int | None = None  # a pts where every tier's packets start
        self._next_pts: int | None = None  # pts the next frame should have if the clock holds

    @property
    def specs(self) -> tuple[TierSpec, ...]:
        return tuple(encoder.spec for encoder in self.encoders.values())

    def feed(self, frame: av.AudioFrame, created: float | None = None) -> None:
        """Encode ``frame`` once per tier and push each resulting packet to that tier's sinks.

        ``created``: monotonic time the source audio entered the server (default: now).
        """
        if created is None:
            created = time.monotonic()
        pts = frame.pts
        if pts is not None and pts != self._next_pts:
            self._grid = pts  # first frame, or the mixer's clock jumped: packets restart here
        self._next_pts = None if pts is None else pts + frame.samples
        for encoder in self._running:
            if (encoder.next_start is None and pts is not None and self._grid is not None
                    and (pts - self._grid) % encoder.spec.frame_samples):
                continue  # woke up between two packet boundaries of the grid: wait for one
            covered = encoder.covered_until
            packet = encoder.encode(frame, created)
            if packet is not None:
                if self._joining:
                    self._join(encoder, packet.timestamp)
                encoder.publish(packet)
            if self._moving and encoder.covered_until != covered:
                self._leave(encoder)

    def subscribe(self, sink: PacketSink, tier: str) -> None:
        """Start sending ``tier`` to ``sink`` from its next packet (call at ``connected``)."""
        if sink in self._tier_of or sink in self._joining:
            raise ValueError(f"{sink!r} is already subscribed; use move()")
        self.encoders[tier].add_sink(sink)
        self._tier_of[sink] = tier
        self._wake_and_rest()

    def move(self, sink: PacketSink, tier: str) -> None:
        """Switch ``sink`` to ``tier`` at the next packet boundary where nothing is lost."""
        if tier not in self.encoders:
            raise KeyError(tier)
        if sink in self._joining:
            self._joining[sink] = (tier, self._joining[sink][1])
        else:
            current = self._tier_of[sink]
            if tier == current:
                self._moving.pop(sink, None)
            elif self.encoders[current].covered_until is None:
                self._attach(sink, tier)  # the old tier never produced anything: nothing to align
            else:
                self._moving[sink] = tier
        self._wake_and_rest()

    def unsubscribe(self, sink: PacketSink) -> None:
        self._moving.pop(sink, None)
        self._joining.pop(sink, None)
        tier = self._tier_of.pop(sink, None)
        if tier is not None:
            self.encoders[tier].remove_sink(sink)
        self._wake_and_rest()

    def tier_of(self, sink: PacketSink) -> str | None:
        """The tier the sink receives, or is moving to."""
        if sink in self._joining:
            return self._joining[sink][0]
        return self._moving.get(sink) or self._tier_of.get(sink)

    @property
    def running(self) -> tuple[str, ...]:
        """The tiers being encoded now."""
        return tuple(encoder.spec.name for encoder in self._running)

    def close(self) -> None:
        for encoder in self.encoders.values():
            encoder.close()
        self._tier_of.clear()
        self._moving.clear()
        self._joining.clear()
        self._running = ()

    def _wake_and_rest(self) -> None:
        """Encode exactly the tiers a sink receives, is moving to or is joining."""
        wanted = {*self._tier_of.values(), *self._moving.values(),
                  *(tier for tier, _ in self._joining.values())}
        for encoder in self._running:
            if encoder.spec.name not in wanted:
                encoder.rest()
        self._running = tuple(e for name, e in self.encoders.items() if name in wanted)

    def _leave(self, old: TierEncoder) -> None:
        """``old`` now covers up to ``end``: detach sinks whose target tier starts a packet there."""
        end = old.covered_until
        assert end is not None
        for sink, tier in list(self._moving.items()):
            if self._tier_of[sink] != old.spec.name:
                continue
            new = self.encoders[tier]
            # A tier not started yet starts at the next grid boundary: leave if ``end`` is one.
            start = new.next_start if new.next_start is not None else self._grid
            if start is None or (end >= start and (end - start) % new.spec.frame_samples == 0):
                del self._moving[sink]
                old.remove_sink(sink)
                del self._tier_of[sink]
                self._joining[sink] = (tier, end)
        self._wake_and_rest()

    def _join(self, new: TierEncoder, timestamp: int) -> None:
        for sink, (tier, start) in list(self._joining.items()):
            if tier == new.spec.name and timestamp >= start:
                del self._joining[sink]
                self._attach(sink, tier)

    def _attach(self, sink: PacketSink, tier: str) -> None:
        current = self._tier_of.get(sink)
        if current is not None:
            self.encoders[current].remove_sink(sink)
        self.encoders[tier].add_sink(sink)
        self._tier_of[sink] = tier
        self._wake_and_rest()
