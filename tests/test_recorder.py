"""The recorder: Opus packets to Ogg without re-encoding, lesson time kept across gaps, crashes.

Packets are real Opus from PyAV's libopus; durations are measured by decoding with PyAV.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from groom.audio.ogg import scan_pages
from groom.audio.packets import SAMPLE_RATE, EncodedPacket
from groom.recordings.recorder import AUDIO, CLOSED, TIMELINE, Recorder, read_marker, recover

ROOT = Path(__file__).resolve().parent.parent
FRAME = 960


def opus_packets(seconds: float, bitrate: int = 32000) -> list[bytes]:
    """20 ms Opus packets of a voice-like signal (a wobbling tone with syllable-like bursts)."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = SAMPLE_RATE, "mono", "s16", bitrate
    enc.options = {"application": "voip"}
    enc.thread_count = 1
    t = np.arange(FRAME) / SAMPLE_RATE
    out: list[bytes] = []
    for i in range(int(seconds * 50)):
        level = 0.2 + 0.2 * np.sin(i / 7) ** 2
        x = level * np.sin(2 * np.pi * (180 + 40 * np.sin(i / 30)) * (t + i * 0.02))
        frame = av.AudioFrame.from_ndarray((x * 32767).astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, i * FRAME, Fraction(1, SAMPLE_RATE)
        out.extend(bytes(p) for p in enc.encode(frame))
    return out


def decoded_seconds(path: Path) -> float:
    """Exact: summed as fractions, because 400 frames of 960/48000 s summed as floats make
    7.99999999999992 s, not 8 (a comparison with a whole number of seconds flickered)."""
    with av.open(str(path)) as container:
        return float(sum((Fraction(f.samples, f.sample_rate) for f in container.decode(audio=0)),
                         Fraction(0)))


async def record(target: Path | Recorder, packets: list[bytes], *, start_delay_s: float = 0.0,
                 ts_gaps: dict[int, float] | None = None, wall_gaps: dict[int, float] | None = None,
                 events: list[tuple[int, str, dict[str, object]]] | None = None) -> Recorder:
    """Push ``packets`` as a tier would, then close: ``ts_gaps`` jump the RTP timestamp before
    packet i, ``wall_gaps`` only move the wall clock (an encoder that stopped counting).
    Fast-forwarded: ``created`` is synthetic. ``target`` is a folder or a started recorder."""
    if isinstance(target, Recorder):
        recorder = target
    else:
        recorder = Recorder(target, 1000.0, flush_interval=0.05)
        await recorder.start()
    started = recorder.started
    ts, wall = 123_456, started + start_delay_s
    pending = sorted(events or [], key=lambda e: e[0])
    for i, payload in enumerate(packets):
        ts += int((ts_gaps or {}).get(i, 0) * SAMPLE_RATE)
        wall += (ts_gaps or {}).get(i, 0) + (wall_gaps or {}).get(i, 0)
        while pending and pending[0][0] <= (wall - started) * 1000:
            recorder.add_event(*pending.pop(0))
        recorder.push(EncodedPacket("32k", payload, ts, FRAME, wall))
        ts += FRAME
        wall += FRAME / SAMPLE_RATE
        if i % 500 == 0:
            await asyncio.sleep(0)  # let the flusher run now and then
    for event in pending:
        recorder.add_event(*event)
    await recorder.close()
    return recorder


async def test_gaps_keep_lesson_time(tmp_path: Path) -> None:
    packets = opus_packets(30)
    rec = await record(tmp_path / "1", packets, start_delay_s=1.5, ts_gaps={500: 10.0},
                       wall_gaps={1000: 6.0}, events=[(0, "slide", {"page": 1})])
    expected = 1.5 + 30 + 10 + 6
    assert abs(rec.duration_s - expected) < 0.05
    assert abs(decoded_seconds(tmp_path / "1" / AUDIO) - expected) < 1.0
    with av.open(str(tmp_path / "1" / AUDIO)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        # granule positions agree
        assert container.duration is not None and abs(container.duration / 1e6 - expected) < 1.0
    marker = read_marker(tmp_path / "1")
    assert marker is not None and marker["has_audio"] and marker["packets"] == len(packets)


async def test_silence_is_silent_and_sound_is_kept(tmp_path: Path) -> None:
    await record(tmp_path / "1", opus_packets(4), ts_gaps={100: 3.0})
    with av.open(str(tmp_path / "1" / AUDIO)) as container:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    assert pcm.dtype == np.float32  # libopus decodes to float, full scale 1.0
    seconds = [np.abs(pcm[s * SAMPLE_RATE:(s + 1) * SAMPLE_RATE]).mean() for s in range(7)]
    assert seconds[0] > 0.05 and seconds[6] > 0.05
    assert seconds[3] < 1e-4 and seconds[4] < 1e-4  # the 3 s gap sits at 2-5 s


async def test_duplicates_dropped_and_push_is_cheap(tmp_path: Path) -> None:
    packets = opus_packets(20)
    recorder = Recorder(tmp_path / "1", 0.0, flush_interval=0.05)
    await recorder.start()
    t0 = time.perf_counter()
    for i, payload in enumerate(packets):
        recorder.push(EncodedPacket("32k", payload, i * FRAME, FRAME, i * 0.02))
        if i % 10 == 0:  # a resent packet, as a reordering jitter buffer may produce
            recorder.push(EncodedPacket("32k", payload, i * FRAME, FRAME, i * 0.02))
    per_push_us = (time.perf_counter() - t0) / (len(packets) * 1.1) * 1e6
    await recorder.close()
    assert recorder.dropped == len(packets) // 10
    assert per_push_us < 50, per_push_us
    assert abs(decoded_seconds(tmp_path / "1" / AUDIO) - 20) < 0.05


async def test_no_packets_means_no_audio(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "1", 0.0)
    await recorder.start()
    recorder.add_event(10, "slide", {"page": 1})
    await recorder.close()
    marker = read_marker(tmp_path / "1")
    assert marker is not None and not marker["has_audio"]


async def test_torn_tail_is_cut_at_last_page(tmp_path: Path) -> None:
    directory = tmp_path / "recordings" / "7"
    await record(directory, opus_packets(5), events=[(0, "slide", {"page": 1})])
    (directory / CLOSED).unlink()  # as if the process had died before closing
    audio = directory / AUDIO
    with open(audio, "ab") as f:
        f.write(b"OggS\0\0" + os.urandom(40))  # half a page, as a crash leaves it
    with open(directory / TIMELINE, "a") as f:
        f.write('{"at_ms": 99, "ki')
    assert await recover(tmp_path) == [7]
    pages = scan_pages(audio.read_bytes())
    assert pages[-1].offset + pages[-1].length == audio.stat().st_size
    assert pages[-1].flags & 0x04  # end of stream
    assert 4.0 < decoded_seconds(audio) <= 5.0
    assert (directory / TIMELINE).read_text().splitlines() == [
        '{"at_ms":0,"kind":"slide","data":{"page":1}}']
    assert await recover(tmp_path) == []  # closed now: not repaired twice


CRASHING_RECORDER = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_recorder import opus_packets
    from groom.audio.packets import EncodedPacket
    from groom.recordings.recorder import Recorder

    async def main():
        packets = opus_packets(60)
        started = time.monotonic()
        rec = Recorder(Path(sys.argv[1]), started, flush_interval=0.2)
        await rec.start()
        rec.add_event(0, "slide", {"deck_id": 1, "page": 1, "image": "a.png"})
        for i, p in enumerate(packets):  # 10x faster than real time
            rec.push(EncodedPacket("32k", p, i * 960, 960, started + i * 0.02))
            if i == 250:
                rec.add_event(5000, "slide", {"deck_id": 1, "page": 2, "image": "b.png"})
            if i % 10 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


def record_and_kill(data_dir: Path, lesson_id: int, min_seconds: float) -> None:
    """A recorder in another process, SIGKILLed mid-lesson (no close, no marker)."""
    directory = data_dir / "recordings" / str(lesson_id)
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_RECORDER, str(directory),
                             str(Path(__file__).parent)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pages = scan_pages((directory / AUDIO).read_bytes()) if directory.exists() else []
            if pages and pages[-1].granule >= min_seconds * SAMPLE_RATE:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("recorder subprocess wrote nothing")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_sigkilled_recording_is_recovered(tmp_path: Path) -> None:
    record_and_kill(tmp_path, 42, min_seconds=8)
    directory = tmp_path / "recordings" / "42"
    assert not (directory / CLOSED).exists()
    assert await recover(tmp_path) == [42]
    marker = read_marker(directory)
    assert marker is not None and marker["recovered"] and marker["has_audio"]
    seconds = decoded_seconds(directory / AUDIO)
    assert seconds >= 8 and abs(seconds - marker["duration_s"]) < 0.05
    events = [json.loads(line) for line in (directory / TIMELINE).read_text().splitlines()]
    assert [e["data"]["page"] for e in events] == [1, 2]


async def test_flusher_bounds_what_a_crash_loses(tmp_path: Path) -> None:
    """While recording, what is on disk trails what was pushed by about one flush interval."""
    flush_interval = 0.05
    recorder = Recorder(tmp_path / "1", 0.0, flush_interval=flush_interval)
    await recorder.start()
    for i, payload in enumerate(opus_packets(3)):
        recorder.push(EncodedPacket("32k", payload, i * FRAME, FRAME, i * 0.02))
    await asyncio.sleep(flush_interval * 4)
    pages = scan_pages((tmp_path / "1" / AUDIO).read_bytes())
    on_disk = pages[-1].granule / SAMPLE_RATE
    assert recorder.duration_s - on_disk <= 0.02 + 1e-9  # all but the held-back packet
    await recorder.close()
