"""Speech quality of what a bench student received: PESQ wideband against ``media/speech.wav``.

Used by ``bench_students.py --quality`` (driven by ``bench_relay.py --quality``). The student
keeps every Opus payload of the window as it came off the wire (``Received``); ``score`` decodes
them with libopus three ways, as received and with 5 % and 15 % of the RTP packets dropped at
random (seeded, so every tier loses the same packet positions), and scores each with PESQ
(ITU-T P.862.2, wideband, 16 kHz) against the source.

Decoding is what a receiver does: a missing packet is concealed (libopus PLC, ``decode(None)``)
unless the next packet carries it in-band (Opus FEC: the high tier) or as an RFC 2198 redundant
block (the protected variants: the packet after a lost one rebuilds it). A gap in the timestamps
without a gap in the sequence numbers is the tier's DTX pause: the decoder fills it the same
way (comfort noise), as a browser does.

The teacher loops speech.wav from wherever the bench joined it, so the window is aligned by
cross-correlation against the looped source (the loop period is the teacher's packet count x
960 samples, handed over by the driver); PESQ then aligns each utterance itself.

``pesq`` is an optional dependency (``scripts/install --extras bench``): imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import av
import numpy as np

from groom.audio.libopus import OpusDecoder

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"
RATE = 48_000
PESQ_RATE = 16_000
LOSSES = {"clean": 0.0, "loss5": 0.05, "loss15": 0.15}
SEED = 10  # the same drop pattern for every tier and run
MAX_PLC = 2880  # conceal at most 60 ms per libopus call


@dataclass(frozen=True)
class Received:
    """One RTP packet as received: its primary Opus frame and, for RED, the redundant ones
    (timestamp, payload). Timestamps are relative to the window's first packet."""

    seq: int
    timestamp: int
    payload: bytes
    redundant: tuple[tuple[int, bytes], ...] = ()


@dataclass
class Window:
    """What one student kept during the bench window."""

    packets: list[Received] = field(default_factory=list)
    first_ts: Optional[int] = None
    tiers: set[str] = field(default_factory=set)

    def add(self, seq: int, timestamp: int, payload: bytes,
            redundant: tuple[tuple[int, bytes], ...], tier: str) -> None:
        """Keep one packet (``redundant``: (timestamp offset back, payload) blocks)."""
        if self.first_ts is None:
            self.first_ts = timestamp
        rel = (timestamp - self.first_ts) & 0xFFFFFFFF
        if rel >= 1 << 31:
            return  # reordered from before the window's first packet
        self.packets.append(Received(seq, rel, payload,
                                     tuple((rel - back, data) for back, data in redundant)))
        self.tiers.add(tier)


def parse_red(payload: bytes) -> Optional[tuple[bytes, tuple[tuple[int, bytes], ...]]]:
    """RFC 2198: (primary, ((timestamp offset, redundant payload), ...)), or None if malformed."""
    blocks: list[tuple[int, int]] = []
    at = 0
    while at < len(payload) and payload[at] & 0x80:
        if at + 4 > len(payload):
            return None
        word = int.from_bytes(payload[at:at + 4], "big")
        blocks.append(((word >> 10) & 0x3FFF, word & 0x3FF))
        at += 4
    at += 1  # the primary's one-byte header
    redundant = []
    for offset, length in blocks:
        if at + length > len(payload):
            return None
        redundant.append((offset, payload[at:at + length]))
        at += length
    return payload[at:], tuple(redundant)


def frames_after_loss(packets: list[Received], loss: float, seed: int = SEED) -> dict[int, bytes]:
    """Opus frames by timestamp, after dropping ``loss`` of the RTP packets at random; a
    redundant block stands in for its frame when the packet that carried it was dropped."""
    keep = np.random.default_rng(seed).random(len(packets)) >= loss
    frames: dict[int, bytes] = {}
    for kept, packet in zip(keep, packets):
        if not kept:
            continue
        frames[packet.timestamp] = packet.payload
        for ts, data in packet.redundant:
            frames.setdefault(ts, data)  # a primary that arrived wins over its copy
    return frames


def decode(frames: dict[int, bytes]) -> np.ndarray:
    """48 kHz s16 audio from the first frame to the end of the last: missing stretches are
    in-band FEC from the next frame where it has some, else concealment."""
    decoder = OpusDecoder()
    stamps = sorted(frames)
    out: list[np.ndarray] = []
    t = stamps[0]
    last_size = OpusDecoder.samples_in(frames[t]) or MAX_PLC
    for ts in stamps:
        if ts < t:
            continue  # overlaps audio already decoded (a tier move); keep the timeline
        while t < ts:  # a gap: lost packets or a DTX pause
            gap = ts - t
            if gap <= MAX_PLC and OpusDecoder.has_fec(frames[ts]):
                pcm = decoder.decode(frames[ts], gap, fec=True)
            else:
                pcm = decoder.decode(None, min(gap, last_size, MAX_PLC))
            if pcm is None or len(pcm) == 0:
                pcm = np.zeros(min(gap, last_size), dtype=np.int16)
            out.append(pcm)
            t += len(pcm)
        size = OpusDecoder.samples_in(frames[ts])
        pcm = decoder.decode(frames[ts], size or last_size)
        if pcm is None:
            pcm = decoder.decode(None, last_size)
        if pcm is None:
            pcm = np.zeros(last_size, dtype=np.int16)
        last_size = len(pcm) or last_size
        out.append(pcm)
        t += len(pcm)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def to_16k(pcm: np.ndarray, rate: int = RATE) -> np.ndarray:
    """s16 mono at ``rate`` -> float32 mono at 16 kHz (FFmpeg's resampler, anti-aliased)."""
    frame = av.AudioFrame.from_ndarray(pcm.astype(np.int16).reshape(1, -1), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=PESQ_RATE)
    chunks = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame),
                                                   *resampler.resample(None))]
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def source_16k() -> np.ndarray:
    """media/speech.wav, mono 16 kHz float."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=PESQ_RATE)
    chunks: list[np.ndarray] = []
    with av.open(str(SPEECH)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def align(degraded: np.ndarray, source: np.ndarray, loop: int) -> tuple[np.ndarray, int]:
    """The stretch of the looped source (period ``loop`` samples) that ``degraded`` plays,
    found by FFT cross-correlation; and its offset into the loop."""
    period = np.zeros(loop, dtype=np.float32)
    period[:min(loop, len(source))] = source[:loop]
    tiled = np.tile(period, len(degraded) // loop + 2)
    n = 1 << int(np.ceil(np.log2(len(tiled) + len(degraded))))
    corr = np.fft.irfft(np.fft.rfft(tiled, n) * np.conj(np.fft.rfft(degraded, n)), n)
    offset = int(np.argmax(corr[:loop]))
    return tiled[offset:offset + len(degraded)], offset


def score(window: Window, loop_samples: int) -> dict[str, object]:
    """PESQ WB (MOS-LQO) of the window as received and after 5 % / 15 % random packet loss."""
    from pesq import pesq  # optional: bench extra

    result: dict[str, object] = {"tiers": sorted(window.tiers), "packets": len(window.packets),
                                 "red": any(p.redundant for p in window.packets)}
    if len(window.packets) < 50:
        return {**result, "error": "too few packets to score"}
    source = source_16k()
    loop = loop_samples * PESQ_RATE // RATE
    for name, loss in LOSSES.items():
        frames = frames_after_loss(window.packets, loss)
        degraded = to_16k(decode(frames))
        reference, offset = align(degraded, source, loop)
        try:
            result[f"pesq_wb_{name}"] = round(float(pesq(PESQ_RATE, reference, degraded, "wb")), 3)
        except Exception as exc:  # pesq raises on a window without speech
            result[f"pesq_wb_{name}"] = None
            result["error"] = f"{type(exc).__name__}: {exc}"[:200]
        if name == "clean":
            result["seconds"] = round(len(degraded) / PESQ_RATE, 1)
            result["loop_offset_s"] = round(offset / PESQ_RATE, 2)
        result[f"frames_{name}"] = len(frames)
    return result

