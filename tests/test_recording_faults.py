"""Faults the recordings must survive (issue 5): a full disk, and a 3-hour lesson.

A full disk is a real one: a small tmpfs mounted for the test (these tests run as root; without
``mount`` they fail, they do not skip). Packets are real Opus, encoded once and repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).parent))

from groom.audio.ogg import scan_pages  # noqa: E402
from groom.audio.packets import SAMPLE_RATE, EncodedPacket  # noqa: E402
from groom.core.models import JobState, RecordingState  # noqa: E402
from groom.live.tiers import DEFAULT_TIERS  # noqa: E402
from groom.recordings import offline_pack, playback, postprocess  # noqa: E402
from groom.recordings.jobs import JobWorker, enqueue  # noqa: E402
from groom.recordings.recorder import AUDIO, TIMELINE, Recorder, read_marker, recording_dir  # noqa: E402
from test_postprocess import (  # noqa: E402
    drain,
    job_rows,
    make_lesson,
    make_slides,
    record_lesson,
    recording_row,
    sqlite_db,
)
from test_recorder import FRAME, decoded_seconds, opus_packets  # noqa: E402

__all__ = ["sqlite_db"]  # a fixture, imported to be used here

ROOT = Path(__file__).resolve().parent.parent


# --- a small real disk -----------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    """A ``size_kb`` tmpfs mounted at ``path`` for the block; FAILS (never skips) without mount."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"cannot run mount for a small tmpfs (these tests need root): {exc}")
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a {size_kb} KiB tmpfs at {path} (these tests need root and "
                    f"permission to mount): {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int = 0) -> Path:
    """Another process's file takes all the free space but ``leave`` bytes; returns it."""
    ballast = disk / "ballast"
    chunk = b"\0" * 65536
    with open(ballast, "wb") as f:
        while True:
            room = free_bytes(disk) - leave
            if room <= 0:
                break
            try:
                f.write(chunk[:min(len(chunk), room)])
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return ballast


def packet_stream(payloads: list[bytes], started: float, seconds: float, *,
                  first: int = 0, duration: int = FRAME, tier: str = "32k"
                  ) -> Iterator[EncodedPacket]:
    n = round(seconds * SAMPLE_RATE / duration)
    for i in range(first, first + n):
        yield EncodedPacket(tier, payloads[i % len(payloads)], 10_000 + i * duration, duration,
                            started + i * duration / SAMPLE_RATE)


class Unretrieved:
    """Collects what the event loop reports (a task that died with nobody awaiting it)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    def __enter__(self) -> "Unretrieved":
        self.loop = asyncio.get_running_loop()
        self.previous = self.loop.get_exception_handler()
        self.loop.set_exception_handler(lambda _loop, context: self.reports.append(context))
        return self

    def __exit__(self, *exc: object) -> None:
        gc.collect()  # "Task exception was never retrieved" is reported when the task is freed
        self.loop.set_exception_handler(self.previous)


# --- the disk fills during a lesson ----------------------------------------------------------

async def test_disk_full_during_lesson_keeps_lesson_and_what_was_written(
        sqlite_db: async_sessionmaker[AsyncSession], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="groom")
    payloads = opus_packets(10)
    lesson_id = await make_lesson(sqlite_db)
    with small_disk(tmp_path / "disk", 1024) as data_dir, Unretrieved() as loop_reports:
        recorder = await postprocess.start_recording(sqlite_db, data_dir, lesson_id, 1000.0)
        recorder.flush_interval = 0.05  # from its second flush on (the first one is in 1 s)
        directory = recording_dir(data_dir, lesson_id)
        recorder.add_event(0, "slide", {"deck_id": 1, "page": 1, "image": "a.webp"})
        for i, packet in enumerate(packet_stream(payloads, 1000.0, 10)):
            recorder.push(packet)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(1.2)
        pages = scan_pages((directory / AUDIO).read_bytes())
        before_s = pages[-1].granule / SAMPLE_RATE
        assert before_s > 9.5

        ballast = fill(data_dir)  # the disk is full from here on
        started_at = time.perf_counter()
        for i, packet in enumerate(packet_stream(payloads, 1000.0, 10, first=500)):
            recorder.push(packet)  # never raises
            if i % 50 == 0:
                recorder.add_event(10_000 + i * 20, "ink", {"page": 1, "points": [1, 2],
                                                             "color": 0, "width": 1})
                await asyncio.sleep(0.005)  # the flusher runs, and fails, many times
        assert time.perf_counter() - started_at < 5
        await asyncio.sleep(recorder.flush_interval * 4)
        assert recorder.error is not None and "disk full" in recorder.error, recorder.error
        await postprocess.stop_recording(sqlite_db, lesson_id, recorder)  # does not raise

        # Logged once, not per packet or per flush.
        failures = [r for r in caplog.records
                    if r.name == "groom.recordings.recorder" and r.levelno >= logging.WARNING]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert "disk full" in failures[0].getMessage()

        # What was on disk before it filled is playable, still on the full disk.
        after_s = decoded_seconds(directory / AUDIO)
        assert before_s - 0.05 <= after_s <= before_s + 1.5, (before_s, after_s)
        pages = scan_pages((directory / AUDIO).read_bytes())
        assert pages[-1].flags & 0x04 and pages[-1].offset + pages[-1].length == \
            (directory / AUDIO).stat().st_size
        with av.open(str(directory / AUDIO)) as container:
            assert container.duration is not None and abs(container.duration / 1e6 - after_s) < 0.1
        marker = read_marker(directory)
        assert marker is not None and marker["has_audio"] and "disk full" in marker["error"]
        assert abs(marker["duration_s"] - after_s) < 0.05
        events = [json.loads(line) for line in (directory / TIMELINE).read_text().splitlines()]
        assert events[0]["kind"] == "slide"  # every line whole; the first one kept

        # The state says what happened; processing is queued for the part that was kept.
        row = await recording_row(sqlite_db, lesson_id)
        assert row.state == RecordingState.processing
        assert row.error is not None and "disk full" in row.error
        assert abs((row.duration_s or 0) - after_s) < 0.05

        # Once there is room again, the part kept is processed; the note stays for admins.
        ballast.unlink()
        await drain(JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, data_dir)))
        row = await recording_row(sqlite_db, lesson_id)
        assert row.state == RecordingState.ready, row.error
        assert row.error is not None and "disk full" in row.error
        assert abs(decoded_seconds(directory / postprocess.LISTEN) - after_s) < 1.0
    assert not loop_reports.reports, loop_reports.reports  # no task died unnoticed


# --- the disk fills during post-processing ---------------------------------------------------

async def test_disk_full_during_postprocessing(sqlite_db: async_sessionmaker[AsyncSession],
                                               tmp_path: Path) -> None:
    lesson_id = await make_lesson(sqlite_db)
    with small_disk(tmp_path / "disk", 1024) as data_dir:
        recorder = await postprocess.start_recording(sqlite_db, data_dir, lesson_id, 1000.0)
        await record_lesson(data_dir, lesson_id, recorder=recorder)
        await postprocess.stop_recording(sqlite_db, lesson_id, recorder)
        directory = recording_dir(data_dir, lesson_id)
        original = (directory / AUDIO).read_bytes()
        listed_before = sorted(p.name for p in directory.iterdir())
        ballast = fill(data_dir, leave=8192)  # room for a start, not for the outputs

        worker = JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, data_dir), backoff_s=0)
        await drain(worker)
        [job] = await job_rows(sqlite_db)
        assert job.state == JobState.failed and job.attempts == job.max_attempts
        assert job.error is not None and "No space left on device" in job.error, job.error
        row = await recording_row(sqlite_db, lesson_id)
        assert row.state == RecordingState.failed
        assert row.error is not None and "No space left on device" in row.error
        assert row.outputs == {}
        # The original is untouched and plays; no half-made output is left beside it.
        assert (directory / AUDIO).read_bytes() == original
        assert abs(decoded_seconds(directory / AUDIO) - 40) < 1.0
        assert sorted(p.name for p in directory.iterdir()) == listed_before

        # Room again: the same recording goes through.
        ballast.unlink()
        async with sqlite_db.begin() as session:
            await enqueue(session, "recording", lesson_id)
        await drain(worker)
        row = await recording_row(sqlite_db, lesson_id)
        assert row.state == RecordingState.ready and row.error is None
        assert set(row.outputs) == {"listen.opus", "offline.zip", "listen.mp3"}


# --- a 3-hour lesson -------------------------------------------------------------------------

def speech_packets(bitrate: int, seconds: float = 20.0) -> list[bytes]:
    """The top tier's 20 ms Opus packets (bitrate, FEC) of media/speech.wav, encoded once."""
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = SAMPLE_RATE, "mono", "s16", bitrate
    enc.options = {"application": "voip", "fec": "1", "packet_loss": "10"}
    out: list[bytes] = []
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pcm: list[np.ndarray] = []
    with av.open(str(ROOT / "media" / "speech.wav")) as container:
        for frame in container.decode(audio=0):
            for f in resampler.resample(frame):
                pcm.append(f.to_ndarray().reshape(-1))
    samples = np.concatenate(pcm)[:int(seconds * SAMPLE_RATE)]
    for i in range(len(samples) // FRAME):
        frame = av.AudioFrame.from_ndarray(samples[i * FRAME:(i + 1) * FRAME].reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, i * FRAME, Fraction(1, SAMPLE_RATE)
        out.extend(bytes(p) for p in enc.encode(frame))
    return out


LESSON_3H_S = 3 * 3600
GAP_AT_S, GAP_S = 3600, 20 * 60  # the teacher away for 20 min (DTX: no packets at all)


@pytest.fixture(scope="module")
async def three_hours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recorder, float]:
    """3 h of the top tier's packets and a slide change every 3 min, pushed as fast as they
    go (lesson time from synthetic timestamps, not waited for); ``(folder, recorder, seconds)``."""
    top = DEFAULT_TIERS[-1]
    assert top.frame_samples == FRAME
    payloads = speech_packets(top.bitrate)
    root = tmp_path_factory.mktemp("three_hours")
    t0 = time.perf_counter()
    directory = root / "recordings" / "1"
    recorder = Recorder(directory, 1000.0, flush_interval=0.05)
    await recorder.start()
    slides = make_slides(root / "slides")
    next_event_ms = 0
    for i in range((LESSON_3H_S - GAP_S) * 50):
        away = GAP_S if i >= GAP_AT_S * 50 else 0
        ts = 77_000 + i * FRAME + away * SAMPLE_RATE
        wall = 1000.0 + i * 0.02 + away
        if (wall - 1000.0) * 1000 >= next_event_ms:  # a slide change every 3 min, and ink
            page = next_event_ms // 180_000
            recorder.add_event(next_event_ms, "slide", {"deck_id": 1, "page": page + 1,
                                                        "image": slides[page % len(slides)]})
            recorder.add_event(next_event_ms + 500, "ink", {"page": page + 1, "color": 0,
                                                            "points": [1, 2, 3, 4], "width": 1})
            next_event_ms += 180_000
        recorder.push(EncodedPacket(top.name, payloads[i % len(payloads)], ts, FRAME, wall))
        if i % 2000 == 0:
            await asyncio.sleep(0)
    await recorder.close()
    return directory, recorder, time.perf_counter() - t0


async def test_three_hour_lesson_recorded(three_hours: tuple[Path, Recorder, float],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    directory, recorder, record_s = three_hours
    assert abs(recorder.duration_s - LESSON_3H_S) < 0.05
    assert abs(recorder.silence_samples / SAMPLE_RATE - GAP_S) < 0.05
    # Well-formed: one unbroken chain of pages, granules rising, the last one ends the stream.
    t0 = time.perf_counter()
    audio = directory / AUDIO
    data = audio.read_bytes()
    pages = scan_pages(data)
    assert pages[-1].offset + pages[-1].length == len(data)
    assert [p.seq for p in pages] == list(range(len(pages)))
    assert all(a.granule < b.granule for a, b in zip(pages[2:], pages[3:]))
    assert pages[-1].flags & 0x04 and pages[-1].granule == LESSON_3H_S * SAMPLE_RATE
    with av.open(str(audio)) as container:
        assert container.duration is not None and abs(container.duration / 1e6 - LESSON_3H_S) < 1.0
        demuxed = sum(p.duration for p in container.demux(audio=0) if p.duration)
    assert abs(demuxed / SAMPLE_RATE - LESSON_3H_S) < 1.0
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert abs(decoded_seconds(audio) - LESSON_3H_S) < 1.0  # every packet decodes
    decode_s = time.perf_counter() - t0
    marker = read_marker(directory)
    assert marker is not None and abs(marker["duration_s"] - LESSON_3H_S) < 0.05
    events = playback.read_timeline(directory)
    assert len(events) == 2 * (LESSON_3H_S // 180)
    assert events[-2]["at_ms"] == (LESSON_3H_S - 180) * 1000
    with capsys.disabled():
        print(f"\n3 h lesson recorded: {len(data) / 1e6:.1f} MB Ogg; push+close {record_s:.1f} s, "
              f"page/demux check {check_s:.1f} s, full PyAV decode {decode_s:.1f} s")


async def test_three_hour_lesson_postprocessed(three_hours: tuple[Path, Recorder, float],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The audio post-processing (the video is on request), the job's code path; 58-75 s here."""
    directory, _recorder, _ = three_hours
    t0 = time.perf_counter()
    result = await postprocess.process(directory, directory.parent.parent / "slides",
                                       keep_original=True)
    process_s = time.perf_counter() - t0
    assert abs(result.duration_s - LESSON_3H_S) < 1.0
    with av.open(str(directory / postprocess.LISTEN)) as container:
        listened = sum(p.duration for p in container.demux(audio=0) if p.duration)
    assert abs(listened / SAMPLE_RATE - LESSON_3H_S) < 1.0
    offset, size = offline_pack.pack_member(directory / offline_pack.PACK)
    mp3 = directory.parent / "pack.mp3"
    with open(directory / offline_pack.PACK, "rb") as f:
        f.seek(offset)
        mp3.write_bytes(f.read(size))
    with av.open(str(mp3)) as container:
        assert container.duration is not None and abs(container.duration / 1e6 - LESSON_3H_S) < 1.0
    assert result.slide_count == 3
    kept_mb = sum(result.outputs.values()) / 1e6
    assert kept_mb / 3 < 10  # the budget: 10 MB per lesson hour
    with capsys.disabled():
        print(f"\n3 h lesson post-processed in {process_s:.1f} s "
              f"({LESSON_3H_S / process_s:.0f}x real time), kept {kept_mb:.1f} MB")
