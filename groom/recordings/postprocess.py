"""After a lesson: turn the raw recording into what students listen to and download.

Inputs, in ``data_dir/recordings/<lesson_id>/``: ``audio.ogg`` (the top tier's Opus, ~32 kbps),
``timeline.jsonl`` and the slide images in ``data_dir/slides/``. Outputs:

- ``listen.opus``  Opus 8 kbps mono VoIP: online playback (``web/static/playback.js``).
- ``offline.zip``  MP3 (mono 11 kHz, 8 kbps: every phone and old player can play it), the
  slide images, ``timeline.json`` and ``index.html`` (``web/templates/offline_player.html`` with
  the online player's ``ink.js`` and ``playback.js`` and the lesson's manifest inlined, so it
  works from ``file://``). Entries are stored, not deflated: media does
  not compress and a stored zip can be unpacked by anything.
- ``listen.mp3``   not a file: the pack's MP3, served straight out of the zip (``pack_member``
  gives where its bytes lie), so it is offered on its own without being kept twice. Listed in
  the recording's outputs (``Result.virtual``) but not counted in what is kept.
- ``video.webm``   VP9 at 1 fps + the Opus audio copied, made on demand by a ``video`` job.

Kept per lesson: ``listen.opus`` + ``offline.zip``: 7.4 MB per hour of speech with 60 light
slides (``scripts/bench_recording.py``), leaving ~2.6 MB/h for heavier slides in the 10 MB budget.
The 32 kbps original (14 MB/h) is deleted once both exist, and the video is not made by default
because anyone can have it regenerated in seconds (>= 100x real time) from what is kept.
ffmpeg runs under ``nice -n 19`` so live lessons on the same machine keep their CPU; outputs are
written to a temporary folder and moved into place only when all succeeded, so a failure (a
full disk, a broken ffmpeg) leaves the original untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import av
import ffmpeg
import numpy as np
from PIL import Image, ImageDraw
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.config import WEB_DIR
from groom.core.models import Job, Recording, RecordingState, utcnow

from .jobs import Handler, JobWorker, enqueue
from .recorder import AUDIO, TIMELINE, Recorder, read_marker, recording_dir, recover

log = logging.getLogger(__name__)

LISTEN = "listen.opus"
PACK = "offline.zip"
MP3 = "listen.mp3"  # virtual: the pack's PACK_AUDIO member
PACK_AUDIO = "audio.mp3"
VIRTUAL = frozenset({MP3})
VIDEO = "video.webm"
PLAYER_TEMPLATE = WEB_DIR / "templates" / "offline_player.html"
PLAYER_SCRIPTS = WEB_DIR / "static"
VIDEO_SIZE = (854, 480)
FFMPEG_TIMEOUT_S = 1800.0


class FfmpegError(RuntimeError):
    pass


class NoAudio(Exception):
    """Nothing was heard in the lesson (no packet, or only silence): nothing to play. A state,
    not a failure."""


@dataclass(frozen=True)
class SlideChange:
    at_ms: int
    image: str  # file name in data_dir/slides/


@dataclass
class Result:
    duration_s: float
    slide_count: int
    outputs: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    virtual: dict[str, int] = field(default_factory=dict)  # served from a file above, not kept


# --- inputs ----------------------------------------------------------------------------------

def read_timeline(directory: Path) -> list[dict[str, Any]]:
    """The events in time order; unreadable lines (a torn write) are skipped, not fatal."""
    events: list[dict[str, Any]] = []
    try:
        lines = (directory / TIMELINE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return events
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("at_ms"), int):
            events.append(event)
    events.sort(key=lambda e: e["at_ms"])
    return events


def slide_changes(events: list[dict[str, Any]]) -> list[SlideChange]:
    """Slide events whose image is a plain file name (never a path out of the slides folder)."""
    changes: list[SlideChange] = []
    for event in events:
        data = event.get("data")
        image = data.get("image") if event.get("kind") == "slide" and isinstance(data, dict) else None
        if not isinstance(image, str) or not image or Path(image).name != image:
            continue
        if changes and changes[-1].image == image:
            continue
        changes.append(SlideChange(max(0, event["at_ms"]), image))
    return changes


def _ints(value: Any) -> Optional[list[int]]:
    if not isinstance(value, list) or not all(type(x) is int for x in value):
        return None
    return value


def overlays(events: list[dict[str, Any]], changes: list[SlideChange]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What is drawn over the slides in playback: ``(ink, polls)``.

    ``ink``: strokes ``{at_ms, page, points, color, width}`` and clears ``{at_ms, page,
    clear: True}``, where ``page`` is the index in ``changes`` of the first change that showed the
    slide the ink is on (the players compute the same from their slide list, so no slide entry
    carries anything new). Ink on a slide not in ``changes`` (no image, a file left out) is
    dropped. Loading another deck starts its slides without ink, as the live board does, so the
    pages inked so far get a clear at that moment. ``polls``: the results shown to the class,
    ``{at_ms, question, choices, counts}``."""
    key_of: dict[str, int] = {}
    for i, change in enumerate(changes):
        key_of.setdefault(change.image, i)
    ink: list[dict[str, Any]] = []
    polls: list[dict[str, Any]] = []
    current: Optional[int] = None
    deck: Any = None
    inked: set[int] = set()
    for event in events:
        kind, data, at_ms = event.get("kind"), event.get("data"), max(0, event["at_ms"])
        if not isinstance(data, dict):
            continue
        if kind == "slide":
            if data.get("deck_id") != deck:
                ink.extend({"at_ms": at_ms, "page": k, "clear": True} for k in sorted(inked))
                inked.clear()
                deck = data.get("deck_id")
            image = data.get("image")
            current = key_of.get(image) if isinstance(image, str) else None
        elif kind == "ink" and current is not None:
            points = _ints(data.get("points"))
            color, width = data.get("color", 0), data.get("width", 1)
            if points and len(points) % 2 == 0 and type(color) is int and type(width) is int:
                ink.append({"at_ms": at_ms, "page": current, "points": points, "color": color,
                            "width": width})
                inked.add(current)
        elif kind == "ink_clear" and current is not None:
            ink.append({"at_ms": at_ms, "page": current, "clear": True})
            inked.discard(current)
        elif kind == "poll_result" and data.get("shown") is True:
            question, choices, counts = data.get("question"), data.get("choices"), data.get("counts")
            if (isinstance(question, str) and isinstance(choices, list)
                    and all(isinstance(c, str) for c in choices) and _ints(counts) is not None):
                polls.append({"at_ms": at_ms, "question": question, "choices": choices,
                              "counts": counts})
    return ink, polls


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


# --- ffmpeg ----------------------------------------------------------------------------------

def ffmpeg_exe() -> str:
    import imageio_ffmpeg
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def run_ffmpeg(stream: Any, exe: str, timeout: float = FFMPEG_TIMEOUT_S) -> None:
    """Run one ffmpeg-python graph as a low-priority subprocess; raise with its stderr tail."""
    if shutil.which(exe) is None:  # else ``nice`` would report it, less clearly
        raise FfmpegError(f"ffmpeg not found: {exe}")
    args = (stream.global_args("-hide_banner", "-nostdin", "-loglevel", "error")
            .overwrite_output().compile(cmd=exe))
    nice = shutil.which("nice")
    if nice:
        args = [nice, "-n", "19", *args]
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:  # timeout or cancellation: never leave ffmpeg behind
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        raise FfmpegError(f"ffmpeg exited with {proc.returncode}: {tail}")


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


def _placeholder(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, (40, 44, 52))
    ImageDraw.Draw(image).text((size[0] // 2, size[1] // 2), "G-Room", fill=(200, 200, 200),
                               anchor="mm")
    return image


def _fitted(path: Path, size: tuple[int, int]) -> Image.Image:
    """The slide letterboxed onto the video frame; a missing or broken file gives the placeholder."""
    try:
        with Image.open(path) as src:
            src.thumbnail(size)
            frame = Image.new("RGB", size, (0, 0, 0))
            frame.paste(src.convert("RGB"), ((size[0] - src.width) // 2, (size[1] - src.height) // 2))
            return frame
    except (OSError, ValueError) as exc:
        log.warning("slide %s unusable in video: %s", path, exc)
        return _placeholder(size)


def _write_concat(changes: list[SlideChange], slides_dir: Path, duration_s: float,
                  work: Path) -> Path:
    """Frames (one PNG per distinct slide) and the concat list with each one's duration."""
    segments: list[tuple[str, float]] = []  # (frame file, start s)
    frames: dict[str, str] = {}
    if not changes or changes[0].at_ms > 0:
        _placeholder(VIDEO_SIZE).save(work / "placeholder.png")
        segments.append(("placeholder.png", 0.0))
    for change in changes:
        start = change.at_ms / 1000
        if start >= duration_s:
            break
        if change.image not in frames:
            frames[change.image] = f"frame{len(frames):04d}.png"
            _fitted(slides_dir / change.image, VIDEO_SIZE).save(work / frames[change.image])
        segments.append((frames[change.image], start))
    lines = ["ffconcat version 1.0"]
    for i, (name, start) in enumerate(segments):
        end = segments[i + 1][1] if i + 1 < len(segments) else duration_s
        if end > start:
            lines += [f"file '{name}'", f"duration {end - start:.3f}"]
    lines.append(f"file '{segments[-1][0]}'")  # the concat demuxer ignores the last duration
    concat = work / "slides.ffconcat"
    concat.write_text("\n".join(lines) + "\n")
    return concat


async def make_video(audio: Path, changes: list[SlideChange], slides_dir: Path,
                     duration_s: float, out: Path, exe: str) -> None:
    """WebM: the slides at 1 fps (a slide shows from the first whole second after its change)
    with the Opus audio copied; ``-t`` rather than ``-shortest``, which overruns."""
    work = out.parent / (out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        concat = await asyncio.to_thread(_write_concat, changes, slides_dir, duration_s, work)
        video = (ffmpeg.input(str(concat), f="concat", safe=0).video
                 .filter("fps", fps=1, round="up").filter("format", "yuv420p"))
        graph = ffmpeg.output(video, ffmpeg.input(str(audio)).audio, str(out), t=f"{duration_s:.3f}",
                              vcodec="libvpx-vp9", acodec="copy", deadline="realtime",
                              **{"cpu-used": 8, "row-mt": 1, "crf": 40, "b:v": 0, "g": 30,
                                 "threads": 2, "f": "webm"})
        await run_ffmpeg(graph, exe)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- offline pack ----------------------------------------------------------------------------

def _script(path: Path) -> str:
    """A static script's text, safe inside an inline ``<script>`` block."""
    return re.sub(r"</(script)", r"<\\/\1", path.read_text(encoding="utf-8"), flags=re.IGNORECASE)


def _player_html(data: dict[str, Any]) -> str:
    """The offline ``index.html``: the page with the lesson data and the online player's own
    scripts (``ink.js``, ``playback.js``) inlined, so one player serves both."""
    payload = (json.dumps(data, ensure_ascii=False).replace("&", "\\u0026")
               .replace("<", "\\u003c").replace(">", "\\u003e"))
    parts = {"__GROOM_DATA__": payload,
             "__GROOM_INK_JS__": _script(PLAYER_SCRIPTS / "ink.js"),
             "__GROOM_PLAYBACK_JS__": _script(PLAYER_SCRIPTS / "playback.js")}
    return re.sub("|".join(parts), lambda m: parts[m.group(0)],
                  PLAYER_TEMPLATE.read_text(encoding="utf-8"))


def write_pack(out: Path, mp3: Path, events: list[dict[str, Any]], changes: list[SlideChange],
               slides_dir: Path, duration_s: float, title: str) -> None:
    """The offline zip (blocking: run in a thread). Missing slide files are left out."""
    kept: list[SlideChange] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:
        pack.write(mp3, PACK_AUDIO)
        added: set[str] = set()
        for change in changes:
            source = slides_dir / change.image
            if change.image not in added:
                if not source.is_file():
                    continue
                pack.write(source, f"slides/{change.image}")
                added.add(change.image)
            kept.append(change)
        ink, polls = overlays(events, kept)
        slides = [{"at_ms": c.at_ms, "small": f"slides/{c.image}"} for c in kept]
        pack.writestr("timeline.json", json.dumps(events, ensure_ascii=False))
        pack.writestr("index.html", _player_html({"title": title, "audio": PACK_AUDIO,
                                                  "duration_s": duration_s, "slides": slides,
                                                  "ink": ink, "polls": polls}))


def pack_member(pack: Path, name: str = PACK_AUDIO) -> tuple[int, int]:
    """``(offset, size)`` of a stored (uncompressed) member's bytes in a zip, so it can be served
    as a file of its own; ``KeyError`` when it is missing, ``ValueError`` when it is compressed
    or the zip is damaged. Blocking (reads the zip's directory and the member's local header)."""
    try:
        with zipfile.ZipFile(pack) as archive:
            info = archive.getinfo(name)
    except zipfile.BadZipFile as exc:
        raise ValueError(str(exc)) from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{name} is compressed or encrypted in {pack}")
    with open(pack, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {name} in {pack}")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


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
    """Open the recorder for a lesson going live (subscribe it to the top tier afterwards).

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


async def request_video(session_maker: async_sessionmaker[AsyncSession], lesson_id: int,
                        worker: Optional[JobWorker] = None) -> None:
    """Queue (re)making ``video.webm`` for a ready recording."""
    async with session_maker.begin() as session:
        await enqueue(session, "video", lesson_id)
    if worker is not None:
        worker.wake()


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


def playback_manifest(directory: Path, duration_s: float, audio_url: str,
                      slide_urls: Callable[[str], dict[str, str]], title: str = "") -> dict[str, Any]:
    """The JSON ``web/static/playback.js`` expects (blocking: reads the timeline).

    ``slide_urls(image)`` gives ``{"small": url, "large": url}`` for a slide image name; the
    slides module owns those URLs.
    """
    events = read_timeline(directory)
    changes = slide_changes(events)
    ink, polls = overlays(events, changes)
    slides = [{"at_ms": c.at_ms, **slide_urls(c.image)} for c in changes]
    return {"title": title, "audio": audio_url, "duration_s": duration_s, "slides": slides,
            "ink": ink, "polls": polls}
