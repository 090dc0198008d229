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

A lesson recorded in several runs (its process was killed, the lesson reopened, maybe on
another node: ``recorder.py`` has the layout) gives ONE recording: ``start_recording`` keeps the
earlier run as a part, and ``process`` makes the listening files from every part, one after the
other, each cut or padded to its length on the recording's clock (the marker's, which the
timeline's shift uses too, so slides and ink stay on their words). The seconds the lesson was
down are dropped, not played as silence: nothing happened in them. The parts are joined in the
same ffmpeg run that encodes the listening files (a ``concat`` filter), so joining costs no
encode of its own; the video, made later, takes its audio from ``listen.opus``.

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

from groom.audio.packets import SAMPLE_RATE
from groom.core.models import Job, Recording, RecordingState, utcnow

from .ffmpeg_runner import ffmpeg_exe, run_ffmpeg
from .jobs import Handler, JobWorker, enqueue
from .offline_pack import MP3, PACK, pack_member, write_pack
from .playback import read_timeline, slide_changes
from .recorder import (
    AUDIO,
    JOINED,
    Recorder,
    earlier_parts,
    joined_parts,
    keep_as_part,
    read_marker,
    recording_dir,
    recover,
    repair,
    write_marker,
)
from .video import VIDEO, make_video

log = logging.getLogger(__name__)

LISTEN = "listen.opus"


class NoAudio(Exception):
    """Nothing was heard in the lesson (no packet, or only silence): nothing to play. A state,
    not a failure."""


class NotClosed(RuntimeError):
    """The recording is being written: its lesson is live (again, when this is the job of an
    earlier run that was reopened since). Its close queues the processing of the whole."""


def _being_written(directory: Path) -> bool:
    """A folder without its marker is a recorder's, open (blocking). One a crash left open is
    repaired at start or when its lesson reopens, before any job can reach it."""
    return directory.is_dir() and read_marker(directory) is None


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


@dataclass(frozen=True)
class Segment:
    """One part's stretch of the recording: its audio file (``None``: nothing of it is left,
    played as silence so what follows stays on time) and its length on the recording's clock."""
    source: Optional[Path]
    seconds: float


def audio_segments(directory: Path, parts: list[Path]) -> list[Segment]:
    """What the listening files are made of: ``parts`` (earlier, oldest first) then the folder's
    own ``audio.ogg`` (blocking: reads the markers).

    An earlier part's audio is its ``audio.ogg``, or, once it was processed (a part that was
    a whole recording before its lesson was reopened), its ``listen.opus``, which holds the
    parts that recording was made of too (``JOINED``): it stands for them."""
    own = read_marker(directory) or {}
    segments: list[Segment] = []
    for part in parts:
        marker = read_marker(part) or {}
        seconds = float(marker.get("duration_s", 0.0))
        if (part / AUDIO).exists():
            segments.append(Segment(part / AUDIO, seconds))
        elif (part / LISTEN).exists():
            held = min(int(marker.get(JOINED, 0)), len(segments))
            if held:
                seconds += sum(s.seconds for s in segments[-held:])
                del segments[-held:]
            segments.append(Segment(part / LISTEN, seconds))
        else:
            segments.append(Segment(None, seconds))
    segments.append(Segment(directory / AUDIO, float(own.get("duration_s", 0.0))))
    return [s for s in segments if s.seconds > 0 or len(segments) == 1]


def _joined_audio(segments: list[Segment]) -> tuple[Any, Any]:
    """The audio of the whole recording as two ffmpeg streams (one per output): one part is
    read as it is, several are each cut or padded to their length and concatenated."""
    if len(segments) == 1 and segments[0].source is not None:
        src = ffmpeg.input(str(segments[0].source)).audio
        return src, src
    streams = []
    for segment in segments:
        samples = round(segment.seconds * SAMPLE_RATE)
        src = (ffmpeg.input(str(segment.source)).audio if segment.source is not None else
               ffmpeg.input(f"anullsrc=r={SAMPLE_RATE}:cl=mono", f="lavfi").audio)
        streams.append(src.filter("asetpts", "N/SR/TB").filter("atrim", end_sample=samples)
                       .filter("apad", whole_len=samples))
    joined = ffmpeg.concat(*streams, v=0, a=1).filter_multi_output("asplit", 2)
    return joined[0], joined[1]


async def make_audio(segments: list[Segment], out_dir: Path, exe: str) -> tuple[Path, Path]:
    """Decode once, encode the two listening formats."""
    opus, mp3 = out_dir / LISTEN, out_dir / "audio.mp3"
    to_opus, to_mp3 = _joined_audio(segments)
    graph = ffmpeg.merge_outputs(
        ffmpeg.output(to_opus, str(opus), acodec="libopus", ac=1, application="voip",
                      frame_duration=60, vbr="on", **{"b:a": "8k"}),
        ffmpeg.output(to_mp3, str(mp3), acodec="libmp3lame", ac=1, ar=11025, **{"b:a": "8k"}))
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


def _take_parts(directory: Path, marker: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    """Every earlier part of the recording, closed (a part an older version moved aside open is
    repaired), with its marker; the folder's marker then says how many it is made of."""
    parts = [(part, read_marker(part) or repair(part)) for part in earlier_parts(directory)]
    if marker.get(JOINED, 0) != len(parts):
        write_marker(directory, {**marker, JOINED: len(parts)})
    return parts


def _drop_originals(parts: list[Path]) -> None:
    """What the joined outputs now hold: the parts' audio and what was made from it alone. Their
    marker and timeline stay, for the recording's timeline (``playback.read_timeline``)."""
    for part in parts:
        for name in (AUDIO, LISTEN, PACK, VIDEO):
            (part / name).unlink(missing_ok=True)
        shutil.rmtree(part / "work", ignore_errors=True)


def _commit(directory: Path, work: Path, inode: int, parts: list[Path],
            keep_original: bool) -> dict[str, int]:
    """Move the outputs into place and, unless kept, remove what they were made from (blocking).

    Refused (``NotClosed``) when ``directory`` is no longer the folder being processed: its
    lesson was reopened meanwhile and the folder moved aside as a part, and what is there now
    is the new run's ``audio.ogg``, being written."""
    try:
        moved = directory.stat().st_ino != inode
    except FileNotFoundError:
        moved = True
    if moved:
        raise NotClosed(f"recording {directory} was reopened while it was processed")
    outputs: dict[str, int] = {}
    for name in (LISTEN, PACK):
        (work / name).replace(directory / name)
        outputs[name] = (directory / name).stat().st_size
    if not keep_original:
        # First: a retry then sees the work done (``process``). Missing when this run's
        # recorder could not open (a full disk) and the audio is all in earlier parts.
        (directory / AUDIO).unlink(missing_ok=True)
        _drop_originals(parts)
    return outputs


async def process(directory: Path, slides_dir: Path, *, exe: Optional[str] = None,
                  title: str = "", keep_original: bool = False) -> Result:
    """Make ``listen.opus`` and ``offline.zip`` from a closed recording and its earlier parts;
    raises ``NoAudio`` when it has no packet or only silence (the original is then kept, the
    outputs are not made), ``NotClosed`` when it is being written."""
    marker = read_marker(directory)
    if marker is None:
        if await asyncio.to_thread(_being_written, directory):
            raise NotClosed(f"recording {directory} is being written")
        raise RuntimeError(f"recording {directory} is missing")
    inode = directory.stat().st_ino
    source = directory / AUDIO
    if not source.exists() and all((directory / n).exists() for n in (LISTEN, PACK)):
        # Done before, e.g. a retry; a crash may have left the parts' originals.
        await asyncio.to_thread(_drop_originals, await asyncio.to_thread(joined_parts, directory))
        return await asyncio.to_thread(_existing_result, directory)
    parts = await asyncio.to_thread(_take_parts, directory, marker)
    if not any(m.get("has_audio") for m in [marker, *(m for _, m in parts)]):
        raise NoAudio()
    segments = await asyncio.to_thread(audio_segments, directory, [p for p, _ in parts])
    exe = exe or ffmpeg_exe()
    work = directory / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        opus, mp3 = await make_audio(segments, work, exe)
        if not await asyncio.to_thread(has_sound, opus):
            raise NoAudio()
        duration_s = await asyncio.to_thread(audio_duration, opus)
        events = await asyncio.to_thread(read_timeline, directory)
        changes = slide_changes(events)
        await asyncio.to_thread(write_pack, work / PACK, mp3, events, changes, slides_dir,
                                duration_s, title)
        result = Result(duration_s, len({c.image for c in changes}))
        result.outputs = await asyncio.to_thread(_commit, directory, work, inode,
                                                 [p for p, _ in parts], keep_original)
        result.virtual = await asyncio.to_thread(_virtual, directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


# --- the recording's life, as the room and the app see it ------------------------------------

async def start_recording(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                          lesson_id: int, started: float) -> Recorder:
    """Open the recorder for a lesson going live (subscribe it to the recording tier afterwards).

    A folder left by an earlier run of the same lesson (its process was killed, and the lesson
    reopened here) is repaired if need be and kept as an earlier part of the recording, never
    overwritten: the recording, once processed, is both runs, one after the other.
    """
    directory = recording_dir(data_dir, lesson_id)
    part = await asyncio.to_thread(keep_as_part, directory)
    if part is not None:
        log.warning("lesson %d was recorded before; that run is kept as part %s of its recording",
                    lesson_id, part.name)
    recorder = Recorder(directory, started)
    await recorder.start()
    async with session_maker.begin() as session:
        row = await session.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
        if row is None:
            session.add(Recording(lesson_id=lesson_id, state=RecordingState.recording))
        else:
            row.state, row.error, row.outputs = RecordingState.recording, None, {}
    return recorder


def _earlier(directory: Path) -> tuple[float, bool]:
    """The seconds the recording's earlier parts add to it, and whether one was repaired."""
    markers = [read_marker(part) or {} for part in earlier_parts(directory)]
    return (sum(float(m.get("duration_s", 0.0)) for m in markers),
            any(m.get("recovered") for m in markers))


async def _queue_processing(session_maker: async_sessionmaker[AsyncSession], directory: Path,
                            lesson_id: int, duration_s: float, recovered: bool,
                            error: Optional[str] = None) -> None:
    """The recording of all runs of the lesson, to be processed: its length is theirs, and it
    was repaired after a crash if one of them was."""
    before_s, repaired = await asyncio.to_thread(_earlier, directory)
    duration_s, recovered = duration_s + before_s, recovered or repaired
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
    await _queue_processing(session_maker, recorder.directory, lesson_id, recorder.duration_s,
                            False, recorder.error)
    if worker is not None:
        worker.wake()


async def recover_recordings(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                             worker: Optional[JobWorker] = None) -> list[int]:
    """At start: repair recordings a crash left open and queue them like any other."""
    repaired = await recover(data_dir)
    for lesson_id in repaired:
        marker = read_marker(recording_dir(data_dir, lesson_id)) or {}
        await _queue_processing(session_maker, recording_dir(data_dir, lesson_id), lesson_id,
                                float(marker.get("duration_s", 0)), True)
    if repaired and worker is not None:
        worker.wake()
    return repaired


def _closed_marker(directory: Path) -> Optional[dict[str, Any]]:
    """The folder's marker, after repairing it if it was left open; ``None``: no recording."""
    if not directory.is_dir():
        return None
    return read_marker(directory) or repair(directory)


async def recover_lesson_recording(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                                   lesson_id: int, worker: Optional[JobWorker] = None) -> bool:
    """One lesson's recording, left by a process that died and whose lesson nobody took over
    (``live/orphans.py`` ends it): repaired if it is open, and queued as a room's close would
    queue it, with its earlier parts. ``False``: the lesson has no recording folder."""
    directory = recording_dir(data_dir, lesson_id)
    marker = await asyncio.to_thread(_closed_marker, directory)
    if marker is None:
        return False
    await _queue_processing(session_maker, directory, lesson_id,
                            float(marker.get("duration_s", 0)), bool(marker.get("recovered")),
                            marker.get("error"))
    if worker is not None:
        worker.wake()
    return True


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
        except NotClosed as exc:  # the lesson is live again: the row says so, leave it
            log.info("recording of lesson %d not processed now: %s", job.lesson_id, exc)
            return
        except NoAudio:
            await set_state(job, state=RecordingState.no_audio, duration_s=0.0, error=None,
                            processed_at=utcnow())
            return
        except Exception as exc:
            if await asyncio.to_thread(_being_written, directory):
                # Reopened while it was processed (its files moved away under ffmpeg): as above.
                log.info("recording of lesson %d not processed now: reopened (%s)",
                         job.lesson_id, exc)
                return
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
        # ``audio.ogg`` (when kept) is only the last part of a recording made in several.
        alone = not await asyncio.to_thread(joined_parts, directory)
        audio = directory / AUDIO if alone and (directory / AUDIO).exists() else directory / LISTEN
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
