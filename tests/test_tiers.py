"""Tier encoding and the per-student packet path, with real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from groom.audio.packets import SAMPLE_RATE, EncodedPacket
from groom.live.sender import StudentSender, add_student_audio
from groom.live.tiers import DEFAULT_TIERS, FRAME_SAMPLES, TierSet, TierSpec

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"
OPUS_FRAME_SAMPLES = [480, 960, 1920, 2880] * 3 + [480, 960] * 4 + [120, 240, 480, 960] * 4


def speech_pcm(pad_silence_s: float = 0.0, tone: bool = False) -> np.ndarray:
    with wave.open(str(SPEECH)) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    if tone:  # never silent, so DTX never opens a timestamp gap
        t = np.arange(len(pcm)) / SAMPLE_RATE
        pcm = np.clip(pcm.astype(np.int32) + (3000 * np.sin(2 * np.pi * 330 * t)), -32768, 32767)
        pcm = pcm.astype(np.int16)
    if pad_silence_s:
        pcm = np.concatenate([pcm, np.zeros(int(pad_silence_s * SAMPLE_RATE), np.int16), pcm])
    return pcm


def frames_of(pcm: np.ndarray, start_pts: int = 0) -> list[av.AudioFrame]:
    frames = []
    for i in range(len(pcm) // FRAME_SAMPLES):
        chunk = pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start_pts + i * FRAME_SAMPLES
        frames.append(frame)
    return frames


def toc_samples(payload: bytes) -> int:
    """Samples at 48 kHz in one Opus packet (RFC 6716 section 3.1), code 0-2 or code 3."""
    toc = payload[0]
    per_frame = OPUS_FRAME_SAMPLES[toc >> 3]
    code = toc & 3
    count = 1 if code == 0 else 2 if code in (1, 2) else payload[1] & 0x3F
    return per_frame * count


class Collector:
    """A real PacketSink that keeps what it gets (for tests that need no network)."""

    def __init__(self) -> None:
        self.packets: list[EncodedPacket] = []

    def push(self, packet: EncodedPacket) -> None:
        self.packets.append(packet)


# --- encoding, no network --------------------------------------------------------------------

def test_tier_sizes_dtx_and_encode_cost() -> None:
    frames = frames_of(speech_pcm(pad_silence_s=3.0))
    seconds = len(frames) * FRAME_SAMPLES / SAMPLE_RATE
    tiers = TierSet()
    sinks = {name: Collector() for name in tiers.encoders}
    for name, sink in sinks.items():
        tiers.subscribe(sink, name)
    started = time.process_time()
    for frame in frames:
        tiers.feed(frame)
    cpu = time.process_time() - started
    assert cpu / seconds < 0.10, f"3 tiers cost {100 * cpu / seconds:.1f} % of a core"

    expect = {  # payload kbps (speech with pauses; VBR + DTX keep it under target) and TOC bandwidth
        "low": ((4.0, 8.5), {"narrowband"}),
        "standard": ((9.0, 16.5), {"wideband"}),
        "high": ((18.0, 30.0), {"wideband", "superwideband", "fullband"}),
    }
    for spec in DEFAULT_TIERS:
        packets = sinks[spec.name].packets
        kbps = sum(len(p.payload) for p in packets) * 8 / seconds / 1000
        lo, hi = expect[spec.name][0]
        assert lo <= kbps <= hi, f"{spec.name}: {kbps:.1f} kbps"
        assert all(p.duration == spec.frame_samples for p in packets)
        assert all(toc_samples(p.payload) == spec.frame_samples for p in packets)
        bands = {_toc_bandwidth(p.payload[0]) for p in packets if len(p.payload) > 2}
        assert bands <= expect[spec.name][1], (spec.name, bands)
        # DTX: ~3 s of digital silence mostly sends nothing (timestamps jump over it)
        encoder = tiers.encoders[spec.name]
        assert encoder.dtx_dropped * spec.frame_samples > 2.0 * SAMPLE_RATE, spec.name
        stamps = [p.timestamp for p in packets]
        assert stamps == sorted(stamps) and all(s % spec.frame_samples == 0 for s in stamps)


def _toc_bandwidth(toc: int) -> str:
    config = toc >> 3
    if config < 12:
        return ["narrowband", "mediumband", "wideband"][config // 4]
    if config < 16:
        return "superwideband" if config < 14 else "fullband"
    return ["narrowband", "wideband", "superwideband", "fullband"][(config - 16) // 4]


def test_move_waits_for_an_aligned_boundary() -> None:
    frames = frames_of(speech_pcm(tone=True))[:300]
    tiers = TierSet()
    sink = Collector()
    tiers.subscribe(sink, "high")
    plan = {40: "low", 101: "high", 160: "standard", 230: "high", 231: "low"}
    for i, frame in enumerate(frames):
        if i in plan:
            tiers.move(sink, plan[i])
        tiers.feed(frame)
    stamps = [(p.timestamp, p.duration, p.tier) for p in sink.packets]
    for (ts, dur, _), (nxt, _, _) in zip(stamps, stamps[1:]):
        assert nxt == ts + dur, stamps
    assert [t for _, _, t in stamps][-1] == "low"
    assert {t for _, _, t in stamps} == {"low", "standard", "high"}


# --- real peers ------------------------------------------------------------------------------

@dataclass
class Student:
    """A real aiortc student peer that records the RTP it receives (before the jitter buffer)."""

    pc: RTCPeerConnection
    # seq, ts, marker, payload, t
    received: list[tuple[int, int, int, bytes, float]] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None

    def tap(self) -> None:
        receiver = self.pc.getTransceivers()[0].receiver
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            self.received.append((packet.sequence_number, packet.timestamp, packet.marker,
                                  packet.payload, time.monotonic()))
            await original(packet, arrival_time_ms)  # keeps RTCP receiver reports flowing

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]  # tapping aiortc's receive path

    async def close(self) -> None:
        if self.drain is not None:
            self.drain.cancel()
            await asyncio.gather(self.drain, return_exceptions=True)
        await self.pc.close()


@dataclass
class Server:
    tiers: TierSet
    pcs: list[RTCPeerConnection] = field(default_factory=list)

    async def connect(self, tier: str) -> tuple[Student, StudentSender]:
        """Student offers (as a browser would); the server answers and attaches at connected."""
        config = RTCConfiguration(iceServers=[])
        client = RTCPeerConnection(config)
        client.addTransceiver("audio", direction="recvonly")
        student = Student(client)

        @client.on("track")
        def on_track(track: Any) -> None:
            async def drain() -> None:
                try:
                    while True:
                        await track.recv()
                except MediaStreamError:
                    pass
            student.drain = asyncio.ensure_future(drain())

        await client.setLocalDescription(await client.createOffer())
        server = RTCPeerConnection(config)
        self.pcs.append(server)
        await server.setRemoteDescription(client.localDescription)
        sender = add_student_audio(server)
        connected = asyncio.Event()

        @server.on("connectionstatechange")
        def on_state() -> None:
            if server.connectionState == "connected":
                connected.set()

        await server.setLocalDescription(await server.createAnswer())
        await client.setRemoteDescription(server.localDescription)
        student.tap()
        await asyncio.wait_for(connected.wait(), 10)
        sender.start()
        self.tiers.subscribe(sender, tier)
        return student, sender

    async def play(self, frames: list[av.AudioFrame], between: Any = None) -> None:
        """Feed frames in real time (20 ms each); ``between(i)`` runs before frame i."""
        start = time.monotonic()
        for i, frame in enumerate(frames):
            if between is not None:
                between(i)
            self.tiers.feed(frame)
            delay = start + (i + 1) * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(0.3)  # let the last packets land

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()
        self.tiers.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server(TierSet())
    yield srv
    await srv.close()


def decode_rms(payloads: list[bytes]) -> float:
    decoder = av.CodecContext.create("opus", "r")
    decoder.sample_rate = SAMPLE_RATE
    decoder.layout = "mono"
    decoder.thread_count = 1
    samples = []
    for payload in payloads:
        for frame in decoder.decode(av.Packet(payload)):
            samples.append(frame.to_ndarray().astype(np.float64).ravel())
    pcm = np.concatenate(samples)
    if np.abs(pcm).max() <= 1.0:  # float output: scale to s16 units
        pcm = pcm * 32768
    return float(np.sqrt(np.mean(pcm ** 2)))


async def test_every_tier_delivers_decodable_audio(server: Server) -> None:
    peers = {spec.name: await server.connect(spec.name) for spec in DEFAULT_TIERS}
    frames = frames_of(speech_pcm())[:250]  # 5 s
    await server.play(frames)
    for spec in DEFAULT_TIERS:
        student, sender = peers[spec.name]
        got = student.received
        assert len(got) == sender.packets_sent > 0 and sender.dropped == 0, spec.name
        seqs = [r[0] for r in got]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:])), spec.name
        assert all(toc_samples(r[3]) == spec.frame_samples for r in got)
        rms = decode_rms([r[3] for r in got])
        assert rms > 300, f"{spec.name}: decoded RMS {rms:.0f}"
        seconds = len(got) * spec.frame_samples / SAMPLE_RATE
        wire_kbps = sender.wire_bytes * 8 / seconds / 1000
        if spec.name == "standard":
            assert 17 <= wire_kbps <= 26, wire_kbps  # ~23 kbps on the wire while speaking
        await student.close()


async def test_move_between_tiers_mid_stream(server: Server) -> None:
    student, sender = await server.connect("low")
    frames = frames_of(speech_pcm(tone=True))[:400]  # 8 s, never silent
    plan = {50: "high", 120: "standard", 200: "high", 201: "low", 300: "standard"}

    def between(i: int) -> None:
        if i in plan:
            server.tiers.move(sender, plan[i])

    await server.play(frames, between)
    got = student.received
    assert len(got) == sender.packets_sent and sender.dropped == 0
    seqs = [r[0] for r in got]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))
    durations = {toc_samples(r[3]) for r in got}
    assert durations == {960, 2880}
    for (_, ts, _, payload, _), (_, nxt, marker, _, _) in zip(got, got[1:]):
        assert (nxt - ts) & 0xFFFFFFFF == toc_samples(payload)  # continuous timestamps
        assert marker == 0
    assert decode_rms([r[3] for r in got]) > 300
    await student.close()


async def test_stalled_or_vanished_student_does_not_delay_others(server: Server) -> None:
    healthy = [await server.connect("standard") for _ in range(3)]
    stalled, stalled_sender = await server.connect("standard")
    vanished, vanished_sender = await server.connect("standard")
    # Stalled: its socket stops being read. Vanished: its process is gone (port closed, ICMP
    # errors come back to the server's socket).
    for protocol in stalled.pc.getTransceivers()[0].receiver.transport.transport._connection._protocols:
        transport = protocol.transport
        assert isinstance(transport, asyncio.ReadTransport)  # asyncio's UDP transport is one
        transport.pause_reading()
    await vanished.pc.close()
    frames = frames_of(speech_pcm())[:200]
    await server.play(frames)
    for student, sender in healthy:
        assert len(student.received) == sender.packets_sent > 0
        await student.close()
    assert stalled.received == [] and stalled_sender.packets_sent > 0
    await stalled.close()
    # the vanished one was either still sent to (UDP does not know) or detected and dropped
    assert vanished_sender.packets_sent + vanished_sender.dropped == len(healthy[0][0].received)


async def test_receiver_reports_reach_link_quality(server: Server) -> None:
    student, sender = await server.connect("standard")
    assert sender.link_quality().fraction_lost is None
    frames = frames_of(speech_pcm())[:300]  # 6 s

    async def report() -> None:  # what the room's timer does for every student
        while True:
            await asyncio.sleep(1.0)
            sender.send_report()

    reporting = asyncio.create_task(report())
    await server.play(frames)
    sender.send_report()
    await asyncio.sleep(0.3)  # the student's receiver report answers it
    reporting.cancel()
    quality = sender.link_quality()
    assert quality.fraction_lost == 0.0 and quality.packets_lost == 0
    assert quality.jitter_ms is not None and quality.jitter_ms < 50
    assert quality.rtt_ms is not None and 0 <= quality.rtt_ms < 200
    stats = await server.pcs[-1].getSenders()[0].getStats()
    remote = [s for s in stats.values() if s.type == "remote-inbound-rtp"]
    outbound = [s for s in stats.values() if s.type == "outbound-rtp"]
    assert remote and outbound[0].packetsSent == sender.packets_sent
    assert sender.data_used() >= sender.wire_bytes
    await student.close()


def test_tier_spec_validation() -> None:
    with pytest.raises(ValueError):
        TierSpec("x", 16000, "wideband", 30)
    with pytest.raises(ValueError):
        TierSet((TierSpec("a", 8000, "narrowband", 60), TierSpec("a", 8000, "narrowband", 60)))


def test_only_the_tiers_someone_hears_are_encoded() -> None:
    frames = frames_of(speech_pcm(tone=True))[:150]
    tiers = TierSet()
    everyone, late = Collector(), Collector()
    tiers.subscribe(everyone, "standard")
    for frame in frames[:31]:
        tiers.feed(frame)
    assert tiers.running == ("standard",)
    assert all(e.packets == 0 for name, e in tiers.encoders.items() if name != "standard")
    tiers.subscribe(late, "low")  # wakes the low tier between two of the grid's boundaries
    for frame in frames[31:100]:
        tiers.feed(frame)
    assert late.packets and late.packets[0].timestamp % tiers.encoders["low"].spec.frame_samples == 0
    tiers.unsubscribe(late)
    low_packets = tiers.encoders["low"].packets
    for frame in frames[100:]:
        tiers.feed(frame)
    assert tiers.running == ("standard",) and tiers.encoders["low"].packets == low_packets
    stamps = [p.timestamp for p in everyone.packets]
    assert stamps == list(range(0, len(stamps) * 2880, 2880))  # the listened tier never skipped
