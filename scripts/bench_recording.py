#!/usr/bin/env python3
"""Benchmark the recording path: record a synthetic lesson, post-process it, make its video.

Prints one JSON object. The lesson is ``--minutes`` of the top tier's Opus (32 kbps, 20 ms
packets, ``media/speech.wav`` looped, else a voice-like tone) with a 30 s silent gap (teacher
away) and ~10 slide changes of WebP slides, pushed through ``Recorder`` as fast as it takes
(``created`` times are synthetic, so the lesson clock is exact). Usage::

    python scripts/bench_recording.py [--minutes 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from groom.audio.packets import SAMPLE_RATE, EncodedPacket
from groom.core.config import MEDIA_DIR
from groom.recordings import postprocess
from groom.recordings.ffmpeg_runner import ffmpeg_exe
from groom.recordings.playback import read_timeline, slide_changes
from groom.recordings.recorder import AUDIO, Recorder
from groom.recordings.video import VIDEO, make_video

FRAME = SAMPLE_RATE // 50
GAP_S = 30.0


def voice(seconds: float) -> np.ndarray:
    """Mono int16 at 48 kHz: the speech sample looped, or a syllable-like tone without it."""
    wav = MEDIA_DIR / "speech.wav"
    n = int(seconds * SAMPLE_RATE)
    if wav.exists():
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            chunks = [r.to_ndarray().reshape(-1) for f in container.decode(audio=0)
                      for r in resampler.resample(f)]
        one = np.concatenate(chunks)
        return np.tile(one, n // len(one) + 1)[:n]
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, 1) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.2 * t))
    signal = np.sin(2 * np.pi * (150 + 30 * np.sin(2 * np.pi * 0.5 * t)) * t)
    noise = np.random.default_rng(1).normal(0, 0.05, n)
    return ((signal * envelope * 0.3 + noise * envelope) * 32767).astype(np.int16)


def encode(pcm: np.ndarray) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = SAMPLE_RATE, "mono", "s16", 32000
    enc.options = {"application": "voip"}
    enc.thread_count = 1
    packets: list[bytes] = []
    for i in range(len(pcm) // FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[i * FRAME:(i + 1) * FRAME].reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, i * FRAME, Fraction(1, SAMPLE_RATE)
        packets.extend(bytes(p) for p in enc.encode(frame))
    return packets


def make_slides(slides_dir: Path, count: int) -> list[str]:
    """Text-and-shapes slides, about the size a rasterized PDF page makes as WebP."""
    slides_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    names = []
    for i in range(count):
        image = Image.new("RGB", (1280, 720), (250, 250, 245))
        draw = ImageDraw.Draw(image)
        draw.text((60, 40), f"Lesson slide {i + 1}", fill=(20, 20, 120))
        for line in range(14):
            y = 120 + line * 38
            draw.line([(60, y), (60 + int(rng.integers(300, 1100)), y)], fill=(60, 60, 60), width=6)
        draw.ellipse([900, 300, 1180, 580], outline=(200, 40, 40), width=8)
        name = f"slide{i:02d}.webp"
        image.save(slides_dir / name, quality=70)
        names.append(name)
    return names


async def run(minutes: float, work: Path) -> dict[str, object]:
    timings: dict[str, float] = {}
    speech_s = minutes * 60 - GAP_S
    t0 = time.perf_counter()
    packets = encode(voice(speech_s))
    timings["synthesize_s"] = time.perf_counter() - t0
    names = make_slides(work / "slides", 10)
    lesson_s = len(packets) * FRAME / SAMPLE_RATE + GAP_S
    changes = [int(i * lesson_s * 1000 / len(names)) for i in range(len(names))]
    gap_at = len(packets) // 2

    directory = work / "recordings" / "1"
    recorder = Recorder(directory, 0.0)
    await recorder.start()
    t0 = time.perf_counter()
    push_s, ts, wall, next_event = 0.0, 0, 0.0, 0
    for i, payload in enumerate(packets):
        if i == gap_at:
            ts += int(GAP_S * SAMPLE_RATE)
            wall += GAP_S
        while next_event < len(names) and changes[next_event] <= wall * 1000:
            recorder.add_event(changes[next_event], "slide",
                               {"deck_id": 1, "page": next_event + 1, "image": names[next_event]})
            next_event += 1
        p0 = time.perf_counter()
        recorder.push(EncodedPacket("32k", payload, ts, FRAME, wall))
        push_s += time.perf_counter() - p0
        ts += FRAME
        wall += FRAME / SAMPLE_RATE
        if i % 250 == 0:
            await asyncio.sleep(0)
    await recorder.close()
    timings["record_s"] = time.perf_counter() - t0
    original_bytes = (directory / AUDIO).stat().st_size
    original_s = postprocess.audio_duration(directory / AUDIO)

    t0 = time.perf_counter()
    result = await postprocess.process(directory, work / "slides", keep_original=True)
    timings["process_audio_and_pack_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shown = slide_changes(read_timeline(directory))
    video = directory / VIDEO
    await make_video(directory / postprocess.LISTEN, shown, work / "slides", result.duration_s,
                     video, ffmpeg_exe())
    timings["video_s"] = time.perf_counter() - t0

    kept = sum(result.outputs.values())
    per_hour = 3600 / lesson_s / 1e6
    return {
        "lesson_seconds": round(lesson_s, 2),
        "packets": len(packets),
        "push_us_mean": round(push_s / len(packets) * 1e6, 2),
        "audio_duration_error_s": round(abs(original_s - lesson_s), 3),
        "listen_duration_error_s": round(abs(result.duration_s - lesson_s), 3),
        "video_realtime_factor": round(lesson_s / timings["video_s"], 1),
        "process_realtime_factor": round(lesson_s / timings["process_audio_and_pack_s"], 1),
        "kept_mb_per_lesson_hour": round(kept * per_hour, 2),
        "kept_files_mb_per_hour": {k: round(v * per_hour, 2) for k, v in result.outputs.items()},
        "original_mb_per_hour": round(original_bytes * per_hour, 2),
        "video_mb_per_hour": round(video.stat().st_size * per_hour, 2),
        "slides": len(names),
        "audio_source": "media/speech.wav" if (MEDIA_DIR / "speech.wav").exists() else "synthetic",
        **{k: round(v, 3) for k, v in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--keep", type=Path, help="keep the files in this folder")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="groom-bench-"))
    try:
        print(json.dumps(asyncio.run(run(args.minutes, work))))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
