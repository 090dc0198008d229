"""Recordings over HTTP: who may see which recording, what it offers, and what admins do to it.

A lesson's recording is made by the room (``recorder.py``) and post-processed by the job worker
(``postprocess.py``); the web layer only shows it. Two kinds of people reach it:

- staff, logged in: the school's admins and the class's teacher (``Viewer.can_see_class``), and
  the teacher who gave the lesson. Admins also see the processing state and its error, delete a
  recording and ask for its video.
- students, with no account: the class code or a personal card, as for joining
  (``joining.check_code``, rate limited).

Whatever does not belong to the asker answers 404, exactly like a missing id: another class's
lesson, a file that is not one of the recording's outputs, a name that is not a plain file name.

This module is what the others share: the response models, the lookups (staff and students),
the admin actions and the playback manifest. The JSON API is ``recordings_api.py``, the pages
``recording_pages.py`` and the files themselves ``recording_files.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.board.slides import FILE_NAME
from groom.core.auth import Viewer
from groom.core.db import load
from groom.core.errors import AppError, not_found
from groom.core.models import ApiMeeting, Job, JobState, Lesson, Recording, RecordingState
from groom.office import api_clients
from groom.recordings.jobs import enqueue
from groom.recordings.offline_pack import MP3, PACK, VIRTUAL
from groom.recordings.playback import overlays, read_timeline, slide_changes
from groom.recordings.postprocess import LISTEN
from groom.recordings.recorder import TIMELINE, recording_dir
from groom.recordings.video import VIDEO

from . import joining
from .live_pages import JOBS
from .plumbing import SESSIONS, SETTINGS

# The files a recording may offer: name -> content type. Anything else is a 404.
FILES = {LISTEN: "audio/ogg; codecs=opus", PACK: "application/zip", VIDEO: "video/webm",
         MP3: "audio/mpeg"}

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

def _staff_may_see(v: Viewer, lesson: Lesson) -> bool:
    return v.can_see_class(lesson.classroom) or (lesson.teacher_id is not None
                                                 and lesson.teacher_id == v.user.id)


async def staff_lesson(db: AsyncSession, v: Viewer, lesson_id: int) -> tuple[Lesson, Recording]:
    """The lesson and its recording, if this user may see them; else 404 (never 403, so that
    another school's ids are not confirmed to exist).

    Not ``office.lookup.get_lesson``: besides those who may see the class, the teacher who gave
    this one lesson (a substitute, say) may see its recording too."""
    lesson = await load(db, Lesson, lesson_id)
    if lesson is None or not _staff_may_see(v, lesson):
        raise not_found("lesson")
    recording = await db.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
    if recording is None:
        raise not_found("recording")
    return lesson, recording


async def student_lesson(request: web.Request, lesson_id: int
                          ) -> tuple[joining.JoinTarget, Lesson, Recording]:
    """A ready (and, for an API meeting, published) recording of the code's class; any other
    lesson is 404. No viewer here (students have no account): the class code or card is the
    permission, checked by ``joining``."""
    found = await joining.check_code(request, request.match_info["code"])
    async with request.app[SESSIONS]() as db:
        lesson = await load(db, Lesson, lesson_id)
        recording = await db.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
        meeting = await api_clients.meeting_of_lesson(db, lesson_id)
    if (lesson is None or lesson.class_id != found.classroom.id or recording is None
            or recording.state != RecordingState.ready
            or (meeting is not None and not meeting.published)):  # unpublished by its API client
        raise not_found("recording")
    return found, lesson, recording


async def pending_videos(db: AsyncSession, lesson_ids: Sequence[int]) -> set[int]:
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


def staff_out(v: Viewer, lesson: Lesson, rec: Recording, pending: set[int]) -> RecordingOut:
    return recording_out(lesson, rec, base=f"/recordings/{lesson.id}",
                         page_url=f"/recordings/{lesson.id}",
                         admin=v.can_manage_school(lesson.classroom.school_id),
                         video_pending=lesson.id in pending)


async def class_recordings(db: AsyncSession, class_id: int, *, ready_only: bool
                            ) -> list[tuple[Lesson, Recording]]:
    query = (select(Lesson, Recording).join(Recording, Recording.lesson_id == Lesson.id)
             .where(Lesson.class_id == class_id)
             .order_by(Lesson.starts_at.desc(), Lesson.id.desc()))
    if ready_only:  # what students see: ready, and not unpublished by an API client
        query = (query.where(Recording.state == RecordingState.ready)
                 .outerjoin(ApiMeeting, ApiMeeting.lesson_id == Lesson.id)
                 .where(or_(ApiMeeting.id.is_(None), ApiMeeting.published)))
    return [(lesson, rec) for lesson, rec in (await db.execute(query)).unique().tuples().all()]


# --- what admins do ------------------------------------------------------------------------------

def remove_files(data_dir: Path, lesson_id: int) -> None:
    directory = recording_dir(data_dir, lesson_id)
    shutil.rmtree(directory, ignore_errors=True)
    for aside in directory.parent.glob(f"{lesson_id}-part*"):  # earlier runs of the lesson
        shutil.rmtree(aside, ignore_errors=True)


def require_idle(rec: Recording) -> None:
    if rec.state in (RecordingState.recording, RecordingState.processing):
        raise AppError("recording_busy", "The recording is still being made or processed. "
                       "Try again when it is finished.", status=409)


async def delete_recording(request: web.Request, v: Viewer, lesson_id: int) -> Lesson:
    """Remove a finished recording: its row, its queued jobs and its files. Admins only."""
    async with request.app[SESSIONS].begin() as db:
        lesson, rec = await staff_lesson(db, v, lesson_id)
        v.require_school(lesson.classroom.school_id)
        require_idle(rec)
        await db.execute(delete(Job).where(Job.lesson_id == lesson_id,
                                           Job.state == JobState.queued))
        await db.delete(rec)
    await asyncio.to_thread(remove_files, request.app[SETTINGS].data_dir, lesson_id)
    return lesson


async def ask_for_video(request: web.Request, v: Viewer, lesson_id: int) -> RecordingOut:
    """Queue making ``video.webm`` (once: a request while one is pending adds nothing)."""
    async with request.app[SESSIONS].begin() as db:
        lesson, rec = await staff_lesson(db, v, lesson_id)
        v.require_school(lesson.classroom.school_id)
        if rec.state != RecordingState.ready:
            raise AppError("recording_not_ready", "The recording is not ready yet.", status=409)
        if not await pending_videos(db, [lesson_id]):
            await enqueue(db, "video", lesson_id)
        out = staff_out(v, lesson, rec, {lesson_id})
    worker = request.app.get(JOBS)
    if worker is not None:
        worker.wake()
    return out


# --- the playback manifest ---------------------------------------------------------------------

# Built manifests, newest use last: a flood of manifest requests (or a class opening the replay
# at once) reads the timeline once. An entry is valid while the timeline file keeps its mtime
# and size (a repaired or re-run recording changes them).
MANIFEST_CACHE_SIZE = 64
ManifestKey = tuple[str, str, str, float]
MANIFESTS: OrderedDict[ManifestKey, tuple[Optional[tuple[int, int]], Manifest]] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()


def _stamp(directory: Path) -> Optional[tuple[int, int]]:
    try:
        st = (directory / TIMELINE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _cached_manifest(key: ManifestKey, stamp: Optional[tuple[int, int]]) -> Optional[Manifest]:
    with _MANIFESTS_LOCK:
        found = MANIFESTS.get(key)
        if found is None or found[0] != stamp:
            return None
        MANIFESTS.move_to_end(key)
        return found[1]


def _manifest(directory: Path, title: str, audio_url: str, duration_s: float) -> Manifest:
    """The manifest, from the cache while the timeline is unchanged. Blocking on a miss."""
    key = (str(directory), title, audio_url, duration_s)
    stamp = _stamp(directory)
    cached = _cached_manifest(key, stamp)
    if cached is not None:
        return cached
    manifest = _build_manifest(directory, title, audio_url, duration_s)
    with _MANIFESTS_LOCK:
        MANIFESTS[key] = (stamp, manifest)
        MANIFESTS.move_to_end(key)
        while len(MANIFESTS) > MANIFEST_CACHE_SIZE:
            MANIFESTS.popitem(last=False)
    return manifest


def _build_manifest(directory: Path, title: str, audio_url: str, duration_s: float) -> Manifest:
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
    args = (directory, lesson.title or lesson.classroom.name, f"{base}/{LISTEN}", rec.duration_s or 0.0)
    cached = _cached_manifest((str(directory), *args[1:]), _stamp(directory))  # one stat, no thread
    if cached is not None:
        return cached
    return await asyncio.to_thread(_manifest, *args)
