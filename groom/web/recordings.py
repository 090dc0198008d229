"""Recordings over HTTP: who may list, play, download, delete them, and the files themselves.

A lesson's recording is made by the room (``recorder.py``) and post-processed by the job worker
(``postprocess.py``); this module only shows it. Two kinds of people reach it:

- staff, logged in: the school's admins and the class's teacher (``Viewer.can_see_class``).
  Pages under ``/recordings/{lesson_id}`` and ``/classes/{id}/recordings``, files under
  ``/recordings/{lesson_id}/{file}``, and the JSON API below. Admins also see the processing
  state and its error, delete a recording and ask for its video.
- students, with no account: the class code or a personal card, as for joining
  (``joining.check_code``, rate limited). ``/r/{code}`` lists the class's ready recordings,
  ``/r/{code}/{lesson_id}`` plays one, ``/r/{code}/{lesson_id}/{file}`` downloads.

Whatever does not belong to the asker answers 404, exactly like a missing id: another class's
lesson, a file that is not one of the recording's outputs, a name that is not a plain file name.
Files are served by ``web.FileResponse`` (Range requests, ETag); ``listen.mp3``, which is not a
file but the offline pack's stored MP3, by a ranged read of the zip at the member's bytes
(``member_response``), with the same permissions. Slide images by ``/slides/{name}``
(``decks.py``), which the playback manifest points to.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.board.slides import FILE_NAME
from groom.core.auth import Viewer, require_viewer
from groom.core.errors import AppError, not_found
from groom.core.models import Job, JobState, Lesson, Recording, RecordingState, School
from groom.office import cards
from groom.office.schools import get_class
from groom.recordings.jobs import enqueue
from groom.recordings.postprocess import (
    LISTEN,
    MP3,
    PACK,
    VIDEO,
    VIRTUAL,
    overlays,
    pack_member,
    read_timeline,
    slide_changes,
)
from groom.recordings.recorder import recording_dir

from . import joining
from .live_pages import JOBS
from .openapi import endpoint
from .pages import Clock, page_viewer
from .plumbing import SESSIONS, SETTINGS, render, tr, viewer

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
# The files a recording may offer: name -> content type. Anything else is a 404.
FILES = {LISTEN: "audio/ogg; codecs=opus", PACK: "application/zip", VIDEO: "video/webm",
         MP3: "audio/mpeg"}
FILE_CACHE = "private, max-age=86400"  # outputs never change once made (deleting removes them)

StateName = Literal["recording", "processing", "ready", "failed", "no_audio"]


# --- response models ---------------------------------------------------------------------------

class RecordingFile(BaseModel):
    name: str = Field(description="listen.opus (online listening), listen.mp3 (for old players; "
                                  "the pack's MP3, not kept twice), offline.zip (audio, slides "
                                  "and a player for use without network), video.webm (on request)")
    bytes: int
    url: str


class RecordingOut(BaseModel):
    lesson_id: int
    class_id: int
    title: str
    state: StateName
    duration_s: Optional[float] = Field(description="Seconds of audio (once processed)")
    slide_count: int
    recovered: bool = Field(description="Repaired after the server stopped mid-lesson")
    files: list[RecordingFile]
    total_bytes: int = Field(description="What the recording costs to keep (listen.mp3 is "
                                         "inside offline.zip, so not counted again)")
    error: Optional[str] = Field(default=None, description="Why processing failed (admins only)")
    video_pending: bool = Field(description="A video is being made")
    lesson_started_at: Optional[dt.datetime]
    lesson_ended_at: Optional[dt.datetime]
    created_at: dt.datetime
    processed_at: Optional[dt.datetime]
    page_url: str


class ManifestSlide(BaseModel):
    at_ms: int = Field(description="Lesson time (= audio time) the slide appears")
    small: str
    large: str


class ManifestStroke(BaseModel):
    at_ms: int
    page: int = Field(description="Index in slides of the first change showing the inked slide")
    points: list[int] = Field(description="x0, y0, x1, y1, ... on a 0-1000 grid of the slide")
    color: int = Field(description="Palette index (web/static/ink.js)")
    width: int


class ManifestClear(BaseModel):
    at_ms: int
    page: int
    clear: Literal[True] = True


class ManifestPoll(BaseModel):
    at_ms: int = Field(description="When the result was shown to the class")
    question: str
    choices: list[str]
    counts: list[int]


class Manifest(BaseModel):
    """What ``web/static/playback.js`` plays."""
    title: str
    audio: str
    duration_s: float
    slides: list[ManifestSlide]
    ink: list[Union[ManifestStroke, ManifestClear]] = Field(default_factory=list)
    polls: list[ManifestPoll] = Field(default_factory=list)


# --- lookups -----------------------------------------------------------------------------------

def _id(request: web.Request, name: str, what: str = "lesson") -> int:
    raw = request.match_info[name]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or not 1 <= int(raw) <= MAX_ID:
        raise not_found(what)
    return int(raw)


def _staff_may_see(v: Viewer, lesson: Lesson) -> bool:
    return v.can_see_class(lesson.classroom) or (lesson.teacher_id is not None
                                                 and lesson.teacher_id == v.user.id)


async def _staff_lesson(db: AsyncSession, v: Viewer, lesson_id: int) -> tuple[Lesson, Recording]:
    """The lesson and its recording, if this user may see them; else 404 (never 403, so that
    another school's ids are not confirmed to exist)."""
    lesson = await db.get(Lesson, lesson_id)
    if lesson is None or not _staff_may_see(v, lesson):
        raise not_found("lesson")
    recording = await db.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
    if recording is None:
        raise not_found("recording")
    return lesson, recording


async def _student_lesson(request: web.Request, lesson_id: int
                          ) -> tuple[joining.JoinTarget, Lesson, Recording]:
    """A ready recording of the code's class; any other lesson is 404."""
    found = await joining.check_code(request, request.match_info["code"])
    async with request.app[SESSIONS]() as db:
        lesson = await db.get(Lesson, lesson_id)
        recording = await db.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
    if (lesson is None or lesson.class_id != found.classroom.id or recording is None
            or recording.state != RecordingState.ready):
        raise not_found("recording")
    return found, lesson, recording


async def _pending_videos(db: AsyncSession, lesson_ids: Sequence[int]) -> set[int]:
    if not lesson_ids:
        return set()
    rows = await db.scalars(select(Job.lesson_id).where(
        Job.kind == "video", Job.lesson_id.in_(lesson_ids),
        Job.state.in_([JobState.queued, JobState.running])))
    return {x for x in rows if x is not None}


def recording_out(lesson: Lesson, rec: Recording, *, base: str, page_url: str, admin: bool,
                  video_pending: bool = False) -> RecordingOut:
    """``base`` is the URL the files hang from (staff and students use different ones)."""
    ready = rec.state == RecordingState.ready
    files = [RecordingFile(name=name, bytes=int(size), url=f"{base}/{name}")
             for name, size in sorted((rec.outputs or {}).items()) if ready and name in FILES]
    return RecordingOut(
        lesson_id=lesson.id, class_id=lesson.class_id,
        title=lesson.title or lesson.classroom.name, state=rec.state.value,
        duration_s=rec.duration_s, slide_count=rec.slide_count, recovered=rec.recovered,
        files=files, total_bytes=sum(f.bytes for f in files if f.name not in VIRTUAL),
        error=rec.error if admin else None, video_pending=video_pending,
        lesson_started_at=lesson.started_at, lesson_ended_at=lesson.ended_at,
        created_at=rec.created_at, processed_at=rec.processed_at, page_url=page_url)


def _staff_out(v: Viewer, lesson: Lesson, rec: Recording, pending: set[int]) -> RecordingOut:
    return recording_out(lesson, rec, base=f"/recordings/{lesson.id}",
                         page_url=f"/recordings/{lesson.id}",
                         admin=v.can_manage_school(lesson.classroom.school_id),
                         video_pending=lesson.id in pending)


async def _class_recordings(db: AsyncSession, class_id: int, *, ready_only: bool
                            ) -> list[tuple[Lesson, Recording]]:
    query = (select(Lesson, Recording).join(Recording, Recording.lesson_id == Lesson.id)
             .where(Lesson.class_id == class_id)
             .order_by(Lesson.starts_at.desc(), Lesson.id.desc()))
    if ready_only:
        query = query.where(Recording.state == RecordingState.ready)
    return [(lesson, rec) for lesson, rec in (await db.execute(query)).unique().tuples().all()]


# --- what admins do ------------------------------------------------------------------------------

def _remove_files(data_dir: Path, lesson_id: int) -> None:
    directory = recording_dir(data_dir, lesson_id)
    shutil.rmtree(directory, ignore_errors=True)
    for aside in directory.parent.glob(f"{lesson_id}-part*"):  # earlier runs of the lesson
        shutil.rmtree(aside, ignore_errors=True)


def _require_idle(rec: Recording) -> None:
    if rec.state in (RecordingState.recording, RecordingState.processing):
        raise AppError("recording_busy", "The recording is still being made or processed. "
                       "Try again when it is finished.", status=409)


async def delete_recording(request: web.Request, v: Viewer, lesson_id: int) -> Lesson:
    """Remove a finished recording: its row, its queued jobs and its files. Admins only."""
    async with request.app[SESSIONS].begin() as db:
        lesson, rec = await _staff_lesson(db, v, lesson_id)
        v.require_school(lesson.classroom.school_id)
        _require_idle(rec)
        await db.execute(delete(Job).where(Job.lesson_id == lesson_id,
                                           Job.state == JobState.queued))
        await db.delete(rec)
    await asyncio.to_thread(_remove_files, request.app[SETTINGS].data_dir, lesson_id)
    return lesson


async def ask_for_video(request: web.Request, v: Viewer, lesson_id: int) -> RecordingOut:
    """Queue making ``video.webm`` (once: a request while one is pending adds nothing)."""
    async with request.app[SESSIONS].begin() as db:
        lesson, rec = await _staff_lesson(db, v, lesson_id)
        v.require_school(lesson.classroom.school_id)
        if rec.state != RecordingState.ready:
            raise AppError("recording_not_ready", "The recording is not ready yet.", status=409)
        if not await _pending_videos(db, [lesson_id]):
            await enqueue(db, "video", lesson_id)
        out = _staff_out(v, lesson, rec, {lesson_id})
    worker = request.app.get(JOBS)
    if worker is not None:
        worker.wake()
    return out


# --- manifest and files ------------------------------------------------------------------------

def _manifest(directory: Path, title: str, audio_url: str, duration_s: float) -> Manifest:
    """Blocking (reads the timeline). Slide events carry the small image and the large one."""
    events = read_timeline(directory)
    large: dict[str, str] = {}
    for event in events:
        data = event.get("data")
        if event.get("kind") == "slide" and isinstance(data, dict):
            small, big = data.get("image"), data.get("large")
            if isinstance(small, str) and isinstance(big, str) and FILE_NAME.match(big):
                large[small] = big
    changes = [c for c in slide_changes(events) if FILE_NAME.match(c.image)]
    slides = [ManifestSlide(at_ms=c.at_ms, small=f"/slides/{c.image}",
                            large=f"/slides/{large.get(c.image, c.image)}") for c in changes]
    ink, polls = overlays(events, changes)
    return Manifest(title=title, audio=audio_url, duration_s=duration_s, slides=slides,
                    ink=[ManifestClear(**i) if i.get("clear") else ManifestStroke(**i) for i in ink],
                    polls=[ManifestPoll(**p) for p in polls])


async def manifest_for(request: web.Request, lesson: Lesson, rec: Recording, base: str) -> Manifest:
    if rec.state != RecordingState.ready or LISTEN not in (rec.outputs or {}):
        raise not_found("recording")
    directory = recording_dir(request.app[SETTINGS].data_dir, lesson.id)
    return await asyncio.to_thread(_manifest, directory, lesson.title or lesson.classroom.name,
                                   f"{base}/{LISTEN}", rec.duration_s or 0.0)


RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
CHUNK = 64 * 1024


def _byte_range(request: web.Request, size: int, etag: str) -> Optional[tuple[int, int]]:
    """``(start, end)`` inclusive for a single satisfiable ``Range``, None for the whole file (no
    Range, a stale If-Range, or one this does not parse: several ranges); 416 if unsatisfiable."""
    header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if header is None or (if_range is not None and if_range != etag):
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:  # the last n bytes
        start, end = max(0, size - int(match[2])), size - 1
    if start > end or start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def member_response(request: web.Request, pack: Path, headers: dict[str, str]
                          ) -> web.StreamResponse:
    """The offline pack's stored MP3 as a file of its own: ranged reads at its bytes in the zip
    (Range, If-Range, ETag, HEAD), never a copy on disk. A pack without it (or damaged) is 404."""
    try:
        offset, size = await asyncio.to_thread(pack_member, pack)
        stat = await asyncio.to_thread(pack.stat)
    except (OSError, KeyError, ValueError):
        raise not_found("file") from None
    etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": FILE_CACHE})
    span = _byte_range(request, size, etag)
    start, end = span if span is not None else (0, size - 1)
    response = web.StreamResponse(status=206 if span is not None else 200,
                                  headers={**headers, "Accept-Ranges": "bytes", "ETag": etag})
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response.last_modified = stat.st_mtime
    response.content_length = end - start + 1
    fd = await asyncio.to_thread(os.open, pack, os.O_RDONLY)
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            position = offset + start
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, left), position)
                if not chunk:  # the pack shrank under us: end short, the client sees it
                    break
                await response.write(chunk)
                position += len(chunk)
                left -= len(chunk)
        await response.write_eof()
    finally:
        os.close(fd)
    return response


async def file_response(request: web.Request, lesson: Lesson, rec: Recording, name: str
                        ) -> web.StreamResponse:
    """One output file, or 404 for anything that is not one (no path ever comes from the URL:
    the name must be one of ``FILES`` and listed in the recording's outputs; ``listen.mp3`` is
    served out of ``offline.zip`` whenever the pack is, also for packs made before it was
    listed)."""
    outputs = rec.outputs or {}
    source = PACK if name in VIRTUAL else name
    if name not in FILES or rec.state != RecordingState.ready or source not in outputs:
        raise not_found("file")
    path = recording_dir(request.app[SETTINGS].data_dir, lesson.id) / source
    headers = {"Content-Type": FILES[name], "Cache-Control": FILE_CACHE}
    if name == MP3:
        headers["Content-Disposition"] = f'inline; filename="groom-lesson-{lesson.id}.mp3"'
        return await member_response(request, path, headers)
    if not path.is_file():
        raise not_found("file")
    if name == PACK:
        headers["Content-Disposition"] = f'attachment; filename="groom-lesson-{lesson.id}.zip"'
    return web.FileResponse(path, headers=headers)


# --- the JSON API ------------------------------------------------------------------------------

@endpoint("GET", "/api/classes/{class_id}/recordings",
          summary="A class's recordings, newest lesson first, with their state and files",
          tag="recordings", response=list[RecordingOut], errors=(404,))
async def list_class_recordings(request: web.Request) -> list[RecordingOut]:
    v = require_viewer(await viewer(request))
    class_id = _id(request, "class_id", "class")
    async with request.app[SESSIONS]() as db:
        await get_class(db, v, class_id)  # 404 unless this viewer may see the class
        rows = await _class_recordings(db, class_id, ready_only=False)
        pending = await _pending_videos(db, [lesson.id for lesson, _ in rows])
    return [_staff_out(v, lesson, rec, pending) for lesson, rec in rows]


@endpoint("GET", "/api/lessons/{lesson_id}/recording", summary="A lesson's recording",
          tag="recordings", response=RecordingOut, errors=(404,))
async def get_recording(request: web.Request) -> RecordingOut:
    v = require_viewer(await viewer(request))
    lesson_id = _id(request, "lesson_id")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await _staff_lesson(db, v, lesson_id)
        pending = await _pending_videos(db, [lesson_id])
    return _staff_out(v, lesson, rec, pending)


@endpoint("GET", "/api/lessons/{lesson_id}/recording/manifest",
          summary="The playback manifest of a ready recording (audio URL and slide times)",
          tag="recordings", response=Manifest, errors=(404,))
async def get_manifest(request: web.Request) -> Manifest:
    v = require_viewer(await viewer(request))
    lesson_id = _id(request, "lesson_id")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await _staff_lesson(db, v, lesson_id)
    return await manifest_for(request, lesson, rec, f"/recordings/{lesson_id}")


@endpoint("DELETE", "/api/lessons/{lesson_id}/recording",
          summary="Delete a recording and its files (admins of the school; not while it is "
                  "being made or processed)", tag="recordings", response=None, status=204,
          errors=(404, 409))
async def remove_recording(request: web.Request) -> None:
    v = require_viewer(await viewer(request))
    await delete_recording(request, v, _id(request, "lesson_id"))


@endpoint("POST", "/api/lessons/{lesson_id}/recording/video",
          summary="Make the video (slides + audio, WebM) of a ready recording (admins)",
          tag="recordings", response=RecordingOut, status=202, errors=(404, 409))
async def request_video(request: web.Request) -> RecordingOut:
    v = require_viewer(await viewer(request))
    return await ask_for_video(request, v, _id(request, "lesson_id"))


# --- pages: staff ------------------------------------------------------------------------------

def hms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


async def _clock(db: AsyncSession, school_id: int) -> Clock:
    school = await db.get(School, school_id)
    return Clock(school.timezone if school is not None else "Asia/Vientiane")


def _notice(request: web.Request) -> str:
    _ = tr(request)
    return {"deleted": _("The recording was deleted."),
            "video": _("The video is being made. It appears here when it is ready.")
            }.get(request.query.get("done", ""), "")


async def class_recordings_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    class_id = _id(request, "id", "class")
    async with request.app[SESSIONS]() as db:
        classroom = await get_class(db, v, class_id)
        rows = await _class_recordings(db, class_id, ready_only=False)
        pending = await _pending_videos(db, [lesson.id for lesson, _ in rows])
        clock = await _clock(db, classroom.school_id)
    items = [(lesson, _staff_out(v, lesson, rec, pending)) for lesson, rec in rows]
    return render(request, "recordings.html", classroom=classroom, items=items, t=clock,
                  staff=True, admin=v.can_manage_school(classroom.school_id), hms=hms,
                  mb=megabytes, notice=_notice(request),
                  student_link=f"{cards.public_base(request)}/r/{classroom.join_code}")


async def recording_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    lesson_id = _id(request, "id")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await _staff_lesson(db, v, lesson_id)
        pending = await _pending_videos(db, [lesson_id])
        clock = await _clock(db, lesson.classroom.school_id)
    out = _staff_out(v, lesson, rec, pending)
    return render(request, "playback.html", lesson=lesson, rec=out, t=clock, staff=True,
                  admin=v.can_manage_school(lesson.classroom.school_id), hms=hms, mb=megabytes,
                  notice=_notice(request), back=f"/classes/{lesson.class_id}/recordings",
                  manifest_url=f"/api/lessons/{lesson_id}/recording/manifest")


async def recording_delete_submit(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    lesson = await delete_recording(request, v, _id(request, "id"))
    raise web.HTTPFound(f"/classes/{lesson.class_id}/recordings?done=deleted")


async def recording_video_submit(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    out = await ask_for_video(request, v, _id(request, "id"))
    raise web.HTTPFound(f"/recordings/{out.lesson_id}?done=video")


async def recording_file(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    if v is None:
        raise not_found("file")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await _staff_lesson(db, v, _id(request, "id"))
    return await file_response(request, lesson, rec, request.match_info["name"])


# --- pages: students (by class code or card) ---------------------------------------------------

def _student_base(found: joining.JoinTarget, lesson_id: Optional[int] = None) -> str:
    base = f"/r/{found.code}"
    return base if lesson_id is None else f"{base}/{lesson_id}"


async def student_list_page(request: web.Request) -> web.StreamResponse:
    found = await joining.check_code(request, request.match_info["code"])
    async with request.app[SESSIONS]() as db:
        rows = await _class_recordings(db, found.classroom.id, ready_only=True)
    clock = Clock(found.school.timezone)
    base = _student_base(found)
    items = [(lesson, recording_out(lesson, rec, base=f"{base}/{lesson.id}",
                                    page_url=f"{base}/{lesson.id}", admin=False))
             for lesson, rec in rows]
    response = render(request, "recordings.html", classroom=found.classroom, items=items, t=clock,
                      staff=False, admin=False, hms=hms, mb=megabytes, notice="", student_link="")
    response.headers["Cache-Control"] = "no-store"
    return response


async def student_recording_page(request: web.Request) -> web.StreamResponse:
    lesson_id = _id(request, "id")
    found, lesson, rec = await _student_lesson(request, lesson_id)
    base = _student_base(found, lesson_id)
    out = recording_out(lesson, rec, base=base, page_url=base, admin=False)
    response = render(request, "playback.html", lesson=lesson, rec=out,
                      t=Clock(found.school.timezone), staff=False, admin=False, hms=hms,
                      mb=megabytes, notice="", back=_student_base(found),
                      manifest_url=f"{base}/manifest.json")
    response.headers["Cache-Control"] = "no-store"
    return response


async def student_manifest(request: web.Request) -> web.StreamResponse:
    lesson_id = _id(request, "id")
    found, lesson, rec = await _student_lesson(request, lesson_id)
    manifest = await manifest_for(request, lesson, rec, _student_base(found, lesson_id))
    return web.json_response(manifest.model_dump(mode="json"),
                             headers={"Cache-Control": "private, no-cache"})


async def student_file(request: web.Request) -> web.StreamResponse:
    _found, lesson, rec = await _student_lesson(request, _id(request, "id"))
    return await file_response(request, lesson, rec, request.match_info["name"])


def add_routes(r: web.UrlDispatcher) -> None:
    """The recordings' pages and files (the API registers itself with ``@endpoint``)."""
    n = r"{id:\d+}"
    r.add_get(f"/classes/{n}/recordings", class_recordings_page)
    r.add_get(f"/recordings/{n}", recording_page)
    r.add_post(f"/recordings/{n}/delete", recording_delete_submit)
    r.add_post(f"/recordings/{n}/video", recording_video_submit)
    r.add_get(f"/recordings/{n}/{{name}}", recording_file)
    r.add_get("/r/{code}", student_list_page)
    r.add_get(f"/r/{{code}}/{n}", student_recording_page)
    r.add_get(f"/r/{{code}}/{n}/manifest.json", student_manifest)
    r.add_get(f"/r/{{code}}/{n}/{{name}}", student_file)

