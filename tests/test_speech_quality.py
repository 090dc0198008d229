"""scripts/speech_quality.py without PESQ: what a student kept is decoded the way a receiver would.

The tier encoders are the server's own (``groom.live.tiers``) fed with media/speech.wav; the
PESQ score itself needs the optional bench extra and is measured by ``bench_relay --quality``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import av
import numpy as np

from groom.live.tiers import ROOM_TIERS, TierEncoder, TierSpec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from speech_quality import (  # noqa: E402
    RATE,
    Received,
    Window,
    align,
    decode,
    frames_after_loss,
    parse_red,
    source_16k,
    to_16k,
)

TIERS = {spec.name: spec for spec in ROOM_TIERS}


def speech_48k() -> np.ndarray:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    chunks: list[np.ndarray] = []
    with av.open(str(ROOT / "media" / "speech.wav")) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(chunks)


def received(spec: TierSpec, pcm: np.ndarray, first_pts: int) -> Window:
    """What a student on ``spec`` keeps: the tier's packets, RED unpacked as off the wire."""
    encoder = TierEncoder(spec)
    window = Window()
    for seq, at in enumerate(range(0, len(pcm) - 960, 960)):
        frame = av.AudioFrame.from_ndarray(pcm[at:at + 960].reshape(1, -1), format="s16",
                                           layout="mono")
        frame.sample_rate = RATE
        frame.pts = first_pts + at
        packet = encoder.encode(frame, 0.0)
        if packet is None:
            continue
        payload, redundant = packet.payload, ()
        if packet.red:
            parsed = parse_red(payload)
            assert parsed is not None
            payload, redundant = parsed
        window.add(seq, packet.timestamp & 0xFFFFFFFF, payload, redundant, spec.name)
    return window


def test_red_rebuilds_dropped_packets_and_the_timeline_holds() -> None:
    pcm = speech_48k()[: 8 * RATE]
    # Timestamps that wrap past 2^32 inside the window: relative timestamps must not care.
    window = received(TIERS["standard-red"], pcm, (1 << 32) - 3 * RATE)
    packets = window.packets
    assert len(packets) > 100 and sum(1 for p in packets if p.redundant) > 0.9 * len(packets)
    assert packets[0].timestamp == 0
    assert all(b.timestamp - a.timestamp >= 2880 for a, b in zip(packets, packets[1:]))
    clean = frames_after_loss(packets, 0.0)
    lossy = frames_after_loss(packets, 0.15)
    without_red = frames_after_loss([Received(p.seq, p.timestamp, p.payload) for p in packets], 0.15)
    # 15 % of RTP packets dropped: RED loses a frame only when two packets in a row are lost.
    assert len(without_red) < 0.9 * len(clean)
    assert len(lossy) > 0.95 * len(clean)
    assert all(lossy[ts] == clean[ts] for ts in lossy)  # a rebuilt frame is the original one
    audio = decode(lossy)
    span = packets[-1].timestamp + 2880
    assert abs(len(audio) - span) <= 2880 and np.abs(audio).max() > 1000


def test_the_window_is_found_in_the_looped_source() -> None:
    pcm = speech_48k()
    loop = (len(pcm) + 959) // 960 * 960
    looped = np.tile(np.pad(pcm, (0, loop - len(pcm))), 2)
    start = 7 * RATE + 480  # the bench joins the teacher's loop anywhere
    window = received(TIERS["high"], looped[start:start + 10 * RATE], 0)
    degraded = to_16k(decode(frames_after_loss(window.packets, 0.05)))
    reference, offset = align(degraded, source_16k(), loop // 3)
    # Found to within the codec's and resampler's delay (a few ms), not whole words away.
    assert abs(offset - start // 3) < 16 * 10, (offset, start // 3)
    assert len(reference) == len(degraded)
    assert np.corrcoef(reference, degraded)[0, 1] > 0.5
