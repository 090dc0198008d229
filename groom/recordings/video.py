"""``video.webm``: the slides at 1 fps (VP9) with the lesson's Opus audio copied.

Its own module because the video is made apart from the rest: not by default, only when a
``video`` job asks for it (queued by an admin: ``web/recordings.py`` ``ask_for_video``), and
from what is kept, so it can be made again in seconds (>= 100x real time) whenever it is wanted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import ffmpeg
from PIL import Image, ImageDraw

from .ffmpeg_runner import run_ffmpeg
from .playback import SlideChange

log = logging.getLogger(__name__)

VIDEO = "video.webm"
VIDEO_SIZE = (854, 480)


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
