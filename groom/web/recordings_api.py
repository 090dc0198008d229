"""The recordings' JSON API: list, look at, play (the manifest), delete, ask for a video.

Why a module of its own: these handlers register themselves with ``@endpoint`` and are thin over
``recordings.py`` (who may see what, the admin actions), like ``api.py`` is over the office.
"""

from __future__ import annotations

from aiohttp import web

from groom.core.auth import require_viewer
from groom.office.lookup import get_class

from .openapi import endpoint
from .params import path_id
from .plumbing import SESSIONS, viewer
from .recordings import (
    Manifest,
    RecordingOut,
    ask_for_video,
    class_recordings,
    delete_recording,
    manifest_for,
    pending_videos,
    staff_lesson,
    staff_out,
)


@endpoint("GET", "/api/classes/{class_id}/recordings",
          summary="A class's recordings, newest lesson first, with their state and files",
          tag="recordings", response=list[RecordingOut], errors=(404,))
async def listclass_recordings(request: web.Request) -> list[RecordingOut]:
    v = require_viewer(await viewer(request))
    class_id = path_id(request, "class_id", "class")
    async with request.app[SESSIONS]() as db:
        await get_class(db, v, class_id)  # 404 unless this viewer may see the class
        rows = await class_recordings(db, class_id, ready_only=False)
        pending = await pending_videos(db, [lesson.id for lesson, _ in rows])
    return [staff_out(v, lesson, rec, pending) for lesson, rec in rows]


@endpoint("GET", "/api/lessons/{lesson_id}/recording", summary="A lesson's recording",
          tag="recordings", response=RecordingOut, errors=(404,))
async def get_recording(request: web.Request) -> RecordingOut:
    v = require_viewer(await viewer(request))
    lesson_id = path_id(request, "lesson_id", "lesson")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await staff_lesson(db, v, lesson_id)
        pending = await pending_videos(db, [lesson_id])
    return staff_out(v, lesson, rec, pending)


@endpoint("GET", "/api/lessons/{lesson_id}/recording/manifest",
          summary="The playback manifest of a ready recording (audio URL and slide times)",
          tag="recordings", response=Manifest, errors=(404,))
async def get_manifest(request: web.Request) -> Manifest:
    v = require_viewer(await viewer(request))
    lesson_id = path_id(request, "lesson_id", "lesson")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await staff_lesson(db, v, lesson_id)
    return await manifest_for(request, lesson, rec, f"/recordings/{lesson_id}")


@endpoint("DELETE", "/api/lessons/{lesson_id}/recording",
          summary="Delete a recording and its files (admins of the school; not while it is "
                  "being made or processed)", tag="recordings", response=None, status=204,
          errors=(404, 409))
async def remove_recording(request: web.Request) -> None:
    v = require_viewer(await viewer(request))
    await delete_recording(request, v, path_id(request, "lesson_id", "lesson"))


@endpoint("POST", "/api/lessons/{lesson_id}/recording/video",
          summary="Make the video (slides + audio, WebM) of a ready recording (admins)",
          tag="recordings", response=RecordingOut, status=202, errors=(404, 409))
async def request_video(request: web.Request) -> RecordingOut:
    v = require_viewer(await viewer(request))
    return await ask_for_video(request, v, path_id(request, "lesson_id", "lesson"))
