"""After a lesson: turn the raw recording into what students listen to and download.

Inputs, in ``data_dir/recordings/<lesson_id>/``: ``audio.ogg`` (the recording tier's Opus, ~16 kbps),
``timeline.jsonl`` and the slide images in ``data_dir/slides/``. Outputs:

- ``listen.opus``  Opus 8 kbps mono VoIP: online playback (``web/static/playback.js``).
- ``offline.zip``  MP3 (mono 11 kHz, 8 kbps), the slide images, ``timeline.json`` and a
  self-contained ``index.html`` player (``offline_pack.py``).
- ``listen.mp3``   not a file: the pack's MP3, served straight out of the zip
  (``offline_pack.pack_member``). Listed in the recording's outputs (``Result.virtual``) but not
  counted in what is kept.
- ``video.webm``   VP9 at 1 fps + the Opus audio copied, made on demand by a ``video`` job
  (``video.py``).

Kept per lesson: ``listen.opus`` + ``offline.zip``: 7.4 MB per hour of speech with 60 light
slides (``scripts/bench_recording.py``), leaving ~2.6 MB/h for heavier slides in the 10 MB budget.
The original (~16 kbps, ~6 MB/h) is deleted once both exist, and the video is not made by default
because anyone can have it regenerated in seconds (>= 100x real time) from what is kept.
ffmpeg runs under ``nice -n 19`` (``ffmpeg_runner.py``) so live lessons on the same machine keep
their CPU; outputs are written to a temporary folder and moved into place only when all
succeeded, so a failure (a full disk, a broken ffmpeg) leaves the original untouched.

This module is the flow: the recording's life as the room and the app see it (start, stop,
repair after a crash, the jobs) and ``process``, the step that makes the listening files and
the pack. What a replay shows is read from the timeline by ``playback.py``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import av
import ffmpeg
import numpy as np
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.models import Job, Recording, RecordingState, utcnow

from .ffmpeg_runner import ffmpeg_exe, run_ffmpeg
from .jobs import Handler, JobWorker, enqueue
from .offline_pack import MP3, PACK, pack_member, write_pack
from .playback import read_timeline, slide_changes
from .recorder import AUDIO, Recorder, read_marker, recording_dir, recover
from .video import VIDEO, make_video

log = logging.getLogger(__name__)

LISTEN = "listen.opus"


class NoAudio(Exception):
    """Nothing was heard in the lesson (no packet, or only silence): nothing to play. A state,
    not a failure."""


@dataclass
class Result:
    duration_s: float
    slide_count: int
    outputs: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    virtual: dict[str, int] = field(default_factory=dict)  # served from a file above, not kept


# --- the listening files ---------------------------------------------------------------------

def audio_duration(path: Path) -> float:
    """Seconds of audio, read with PyAV (this ffmpeg build has no ffprobe). Blocking."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return (container.duration or 0) / 1_000_000


SOUND_RMS = 200  # int16 RMS of a 60 ms frame (about -44 dBFS): quieter than any voice


def has_sound(path: Path, threshold: float = SOUND_RMS) -> bool:
    """Whether any frame of the audio is louder than near-silence. Blocking; stops at the first
    loud frame, so only a silent recording is decoded to its end.

    A lesson with nobody speaking still has packets (the room's clock sends silence, and the
    encoder's DTX frames), so "no packets" alone does not tell a lesson with no audio."""
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = np.asarray(frame.to_ndarray(), dtype=np.float64)
            if frame.format.name.startswith(("flt", "dbl")):
                samples = samples * 32768
            if samples.size and float(np.sqrt(np.mean(samples ** 2))) > threshold:
                return True
    return False


async def make_audio(source: Path, out_dir: Path, exe: str) -> tuple[Path, Path]:
    """Decode once, encode the two listening formats."""
    opus, mp3 = out_dir / LISTEN, out_dir / "audio.mp3"
    src = ffmpeg.input(str(source)).audio
    graph = ffmpeg.merge_outputs(
        ffmpeg.output(src, str(opus), acodec="libopus", ac=1, application="voip",
                      frame_duration=60, vbr="on", **{"b:a": "8k"}),
        ffmpeg.output(src, str(mp3), acodec="libmp3lame", ac=1, ar=11025, **{"b:a": "8k"}))
    await run_ffmpeg(graph, exe)
    return opus, mp3


# --- the whole step --------------------------------------------------------------------------

def _virtual(directory: Path) -> dict[str, int]:
    try:
        return {MP3: pack_member(directory / PACK)[1]}
    except (KeyError, ValueError):
        return {}


def _existing_result(directory: Path) -> Result:
    changes = slide_changes(read_timeline(directory))
    return Result(audio_duration(directory / LISTEN), len({c.image for c in changes}),
                  {n: (directory / n).stat().st_size for n in (LISTEN, PACK)},
                  _virtual(directory))


async def process(directory: Path, slides_dir: Path, *, exe: Optional[str] = None,
                  title: str = "", keep_original: bool = False) -> Result:
    """Make ``listen.opus`` and ``offline.zip`` from a closed recording; raises ``NoAudio`` when
    it has no packet or only silence (the original is then kept, the outputs are not made)."""
    marker = read_marker(directory)
    if marker is None:
        raise RuntimeError(f"recording {directory} is not closed")
    if not marker.get("has_audio"):
        raise NoAudio()
    source = directory / AUDIO
    if not source.exists() and all((directory / n).exists() for n in (LISTEN, PACK)):
        return await asyncio.to_thread(_existing_result, directory)  # done before, e.g. a retry
    exe = exe or ffmpeg_exe()
    work = directory / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        opus, mp3 = await make_audio(source, work, exe)
        if not await asyncio.to_thread(has_sound, opus):
            raise NoAudio()
        duration_s = await asyncio.to_thread(audio_duration, opus)
        events = await asyncio.to_thread(read_timeline, directory)
        changes = slide_changes(events)
        await asyncio.to_thread(write_pack, work / PACK, mp3, events, changes, slides_dir,
                                duration_s, title)
        result = Result(duration_s, len({c.image for c in changes}))
        for name in (LISTEN, PACK):
            (work / name).replace(directory / name)
            result.outputs[name] = (directory / name).stat().st_size
        result.virtual = await asyncio.to_thread(_virtual, directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not keep_original:
        source.unlink()
    return result


# --- the recording's life, as the room and the app see it ------------------------------------

async def start_recording(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                          lesson_id: int, started: float) -> Recorder:
    """Open the recorder for a lesson going live (subscribe it to the recording tier afterwards).

    A folder left by an earlier run of the same lesson is moved aside, never overwritten.
    """
    directory = recording_dir(data_dir, lesson_id)
    if directory.exists():
        aside = directory.with_name(f"{lesson_id}-part{int(utcnow().timestamp())}")
        directory.rename(aside)
        log.warning("lesson %d already had a recording; kept it in %s", lesson_id, aside)
    recorder = Recorder(directory, started)
    await recorder.start()
    async with session_maker.begin() as session:
        row = await session.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
        if row is None:
            session.add(Recording(lesson_id=lesson_id, state=RecordingState.recording))
        else:
            row.state, row.error, row.outputs = RecordingState.recording, None, {}
    return recorder


async def _queue_processing(session_maker: async_sessionmaker[AsyncSession], lesson_id: int,
                            duration_s: float, recovered: bool,
                            error: Optional[str] = None) -> None:
    async with session_maker.begin() as session:
        row = await session.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
        if row is None:
            row = Recording(lesson_id=lesson_id)
            session.add(row)
        row.state, row.duration_s, row.recovered = RecordingState.processing, duration_s, recovered
        row.error = error
        await enqueue(session, "recording", lesson_id)


async def stop_recording(session_maker: async_sessionmaker[AsyncSession], lesson_id: int,
                         recorder: Recorder, worker: Optional[JobWorker] = None) -> None:
    """Close the files (unsubscribe the recorder first) and queue the post-processing.

    A recording cut short (a full disk) is processed too, for the part that was kept; its
    ``error`` says where and why it stopped, and stays once it is ready."""
    await recorder.close()
    await _queue_processing(session_maker, lesson_id, recorder.duration_s, False, recorder.error)
    if worker is not None:
        worker.wake()


async def recover_recordings(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                             worker: Optional[JobWorker] = None) -> list[int]:
    """At start: repair recordings a crash left open and queue them like any other."""
    repaired = await recover(data_dir)
    for lesson_id in repaired:
        marker = read_marker(recording_dir(data_dir, lesson_id)) or {}
        await _queue_processing(session_maker, lesson_id, float(marker.get("duration_s", 0)), True)
    if repaired and worker is not None:
        worker.wake()
    return repaired


def job_handlers(session_maker: async_sessionmaker[AsyncSession], data_dir: Path, *,
                 exe: Optional[str] = None, keep_original: bool = False) -> dict[str, Handler]:
    """The ``JobWorker`` handlers for recordings: ``recording`` and ``video`` jobs."""
    slides_dir = data_dir / "slides"

    async def set_state(job: Job, **values: Any) -> None:
        async with session_maker.begin() as session:
            row = await session.scalar(select(Recording).where(Recording.lesson_id == job.lesson_id))
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    async def on_recording(job: Job) -> None:
        assert job.lesson_id is not None
        directory = recording_dir(data_dir, job.lesson_id)
        try:
            result = await process(directory, slides_dir, exe=exe, keep_original=keep_original)
        except NoAudio:
            await set_state(job, state=RecordingState.no_audio, duration_s=0.0, error=None,
                            processed_at=utcnow())
            return
        except Exception as exc:
            final = job.attempts >= job.max_attempts
            await set_state(job, state=RecordingState.failed if final else RecordingState.processing,
                            error=f"{type(exc).__name__}: {exc}"[-4000:])
            raise
        marker = await asyncio.to_thread(read_marker, directory) or {}
        await set_state(job, state=RecordingState.ready, duration_s=result.duration_s,
                        slide_count=result.slide_count,
                        outputs={**result.outputs, **result.virtual},
                        error=marker.get("error"),  # a recording cut short says so
                        processed_at=utcnow())

    async def on_video(job: Job) -> None:
        assert job.lesson_id is not None
        directory = recording_dir(data_dir, job.lesson_id)
        audio = directory / AUDIO if (directory / AUDIO).exists() else directory / LISTEN
        duration_s = await asyncio.to_thread(audio_duration, audio)
        changes = slide_changes(await asyncio.to_thread(read_timeline, directory))
        out = directory / VIDEO
        tmp = directory / ("tmp-" + VIDEO)
        try:
            await make_video(audio, changes, slides_dir, duration_s, tmp, exe or ffmpeg_exe())
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        async with session_maker.begin() as session:
            row = await session.scalar(select(Recording).where(Recording.lesson_id == job.lesson_id))
            if row is not None:
                row.outputs = {**row.outputs, VIDEO: out.stat().st_size}

    return {"recording": on_recording, "video": on_video}
