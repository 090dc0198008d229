"""The teacher's uplink decoder: lost packets rebuilt from the next packet's in-band FEC.

Real libopus packets (speech, 20 ms, 32 kbit/s, FEC on as a browser sends them when our answer
asks for it) go through ``OpusIngress.push`` with 5 % of them dropped at random, as a thin 3G
uplink would. No network: the decoder is the part under test; the live path (aiortc receiver to
mixer) is exercised by every live test.
"""

from __future__ import annotations

import ctypes
import random

import av
import numpy as np

from groom.audio.libopus import OpusDecoder, libopus
from groom.live.ingress import OpusIngress
from groom.live.tiers import OpusEncoder, TierSpec
from test_tiers import speech_pcm

FRAME = 960
_OPUS_SET_PACKET_LOSS_PERC = 4014


def _browser_packets() -> list[bytes]:
    """Speech as a browser's Opus: 20 ms, 32 kbit/s, in-band FEC for ~10 % loss, no DTX."""
    encoder = OpusEncoder(TierSpec("browser", 32000, "fullband", 20, fec=True, expected_loss_pct=10))
    libopus().opus_encoder_ctl(encoder._state, ctypes.c_int(4016), ctypes.c_int(0))  # DTX off
    pcm = speech_pcm().tobytes()
    usable = len(pcm) // (2 * FRAME) * 2 * FRAME
    return [encoder.encode(pcm[i:i + 2 * FRAME], FRAME) for i in range(0, usable, 2 * FRAME)]


class _Receiver:
    """What OpusIngress needs of aiortc's RTCRtpReceiver, for a test without a connection."""

    _enabled = True
    _RTCRtpReceiver__codecs: dict[int, object] = {}
    _RTCRtpReceiver__remote_streams: dict[int, object] = {}


def _run(packets: list[bytes], lost: set[int]) -> tuple[OpusIngress, np.ndarray]:
    ingress = OpusIngress(_Receiver())  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    ingress.attach(lambda samples, created: out.append(samples))
    for seq, payload in enumerate(packets):
        if seq not in lost:
            ingress.push(seq, payload, 0.0)
    return ingress, np.concatenate(out)


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    n = min(len(reference), len(test))
    ref, got = reference[:n].astype(np.float64), test[:n].astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - got) ** 2), 1.0)))


def test_isolated_losses_are_rebuilt_from_fec() -> None:
    packets = _browser_packets()
    # libopus leaves FEC out where the speech does not need it (pauses, unvoiced sounds)
    assert sum(map(OpusDecoder.has_fec, packets)) > 0.6 * len(packets)
    rng = random.Random(7)
    lost = {i for i in range(1, len(packets) - 1) if rng.random() < 0.05}
    lost -= {i + 1 for i in lost}  # isolated losses only: each one has FEC in the next packet
    _, clean = _run(packets, set())
    ingress, lossy = _run(packets, lost)
    assert len(lost) >= 5
    assert ingress.recovered == len(lost) - sum(1 for i in lost if not OpusDecoder.has_fec(packets[i + 1]))
    assert ingress.recovered >= 0.6 * len(lost)
    # Nothing is missing from the timeline: every lost 20 ms came back as audio.
    assert len(lossy) == len(clean)
    # And it sounds like the original, far more than concealment alone does.
    concealed_only: list[np.ndarray] = []
    decoder = OpusDecoder()
    for seq, payload in enumerate(packets):
        if seq in lost:
            concealed_only.append(decoder.decode(None, FRAME))  # type: ignore[arg-type]
        else:
            concealed_only.append(decoder.decode(payload, FRAME))  # type: ignore[arg-type]
    assert _snr_db(clean, lossy) > _snr_db(clean, np.concatenate(concealed_only)) + 3


def test_late_and_duplicate_packets_are_dropped_and_long_gaps_not_filled() -> None:
    packets = _browser_packets()[:100]
    ingress = OpusIngress(_Receiver())  # type: ignore[arg-type]
    out: list[np.ndarray] = []
    ingress.attach(lambda samples, created: out.append(samples))
    for seq in (0, 1, 2, 2, 1, 3):  # a duplicate and a late one
        ingress.push(seq, packets[seq], 0.0)
    assert ingress.late == 2 and len(out) == 4
    ingress.push(60, packets[60], 0.0)  # 56 packets lost (1.1 s): at most 100 ms is concealed
    assert sum(len(x) for x in out[4:]) <= FRAME * (100 // 20 + 2)
    wrap = OpusIngress(_Receiver())  # type: ignore[arg-type]
    wrap.attach(lambda samples, created: None)
    wrap.push(65535, packets[0], 0.0)
    wrap.push(0, packets[1], 0.0)  # sequence numbers wrap around: the next packet, not a late one
    assert wrap.late == 0 and wrap.recovered == wrap.concealed == 0


def test_a_stereo_packet_decodes_to_mono() -> None:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 2 * FRAME), dtype=np.int16), format="s16",
                                       layout="stereo")
    frame.sample_rate, frame.pts = 48000, 0
    payload = bytes(next(iter(encoder.encode(frame))))
    pcm = OpusDecoder().decode(payload, OpusDecoder.samples_in(payload))
    assert pcm is not None and pcm.ndim == 1 and len(pcm) == OpusDecoder.samples_in(payload)
