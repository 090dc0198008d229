"""The recordings' pages: a class's recordings and one recording's player, for staff and students.

Why a module of its own: these are the HTML answers (templates, notices, the two forms admins
post), over the lookups of ``recordings.py``. Staff pages are ``/classes/{id}/recordings`` and
``/recordings/{lesson_id}``; students, with the class code or a card, have ``/r/{code}`` (the
class's ready recordings) and ``/r/{code}/{lesson_id}`` (one of them).
"""

from __future__ import annotations

from typing import Optional

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from groom.office.lookup import get_class, school_of

from . import joining, proxy
from .pages import Clock, page_viewer
from .params import path_id
from .plumbing import SESSIONS, render, tr
from .recording_files import staff_file, student_file
from .recordings import (
    ask_for_video,
    class_recordings,
    delete_recording,
    manifest_for,
    pending_videos,
    recording_out,
    staff_lesson,
    staff_out,
    student_lesson,
)

# --- staff ---------------------------------------------------------------------------------------

def hms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


async def _clock(db: AsyncSession, school_id: int) -> Clock:
    return Clock((await school_of(db, school_id)).timezone)


def _notice(request: web.Request) -> str:
    _ = tr(request)
    return {"deleted": _("The recording was deleted."),
            "video": _("The video is being made. It appears here when it is ready.")
            }.get(request.query.get("done", ""), "")


async def class_recordings_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    class_id = path_id(request, "id", "class")
    async with request.app[SESSIONS]() as db:
        classroom = await get_class(db, v, class_id)
        rows = await class_recordings(db, class_id, ready_only=False)
        pending = await pending_videos(db, [lesson.id for lesson, _ in rows])
        clock = await _clock(db, classroom.school_id)
    items = [(lesson, staff_out(v, lesson, rec, pending)) for lesson, rec in rows]
    return render(request, "recordings.html", classroom=classroom, items=items, t=clock,
                  staff=True, admin=v.can_manage_school(classroom.school_id), hms=hms,
                  mb=megabytes, notice=_notice(request),
                  student_link=f"{proxy.public_base(request)}/r/{classroom.join_code}")


async def recording_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    lesson_id = path_id(request, "id", "lesson")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await staff_lesson(db, v, lesson_id)
        pending = await pending_videos(db, [lesson_id])
        clock = await _clock(db, lesson.classroom.school_id)
    out = staff_out(v, lesson, rec, pending)
    return render(request, "playback.html", lesson=lesson, rec=out, t=clock, staff=True,
                  admin=v.can_manage_school(lesson.classroom.school_id), hms=hms, mb=megabytes,
                  notice=_notice(request), back=f"/classes/{lesson.class_id}/recordings",
                  manifest_url=f"/api/lessons/{lesson_id}/recording/manifest")


async def recording_delete_submit(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    lesson = await delete_recording(request, v, path_id(request, "id", "lesson"))
    raise web.HTTPFound(f"/classes/{lesson.class_id}/recordings?done=deleted")


async def recording_video_submit(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    out = await ask_for_video(request, v, path_id(request, "id", "lesson"))
    raise web.HTTPFound(f"/recordings/{out.lesson_id}?done=video")


# --- students (by class code or card) ------------------------------------------------------------

def _student_base(found: joining.JoinTarget, lesson_id: Optional[int] = None) -> str:
    base = f"/r/{found.code}"
    return base if lesson_id is None else f"{base}/{lesson_id}"


async def student_list_page(request: web.Request) -> web.StreamResponse:
    found = await joining.check_code(request, request.match_info["code"])
    async with request.app[SESSIONS]() as db:
        rows = await class_recordings(db, found.classroom.id, ready_only=True)
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
    lesson_id = path_id(request, "id", "lesson")
    found, lesson, rec = await student_lesson(request, lesson_id)
    base = _student_base(found, lesson_id)
    out = recording_out(lesson, rec, base=base, page_url=base, admin=False)
    response = render(request, "playback.html", lesson=lesson, rec=out,
                      t=Clock(found.school.timezone), staff=False, admin=False, hms=hms,
                      mb=megabytes, notice="", back=_student_base(found),
                      manifest_url=f"{base}/manifest.json")
    response.headers["Cache-Control"] = "no-store"
    return response


async def student_manifest(request: web.Request) -> web.StreamResponse:
    lesson_id = path_id(request, "id", "lesson")
    found, lesson, rec = await student_lesson(request, lesson_id)
    manifest = await manifest_for(request, lesson, rec, _student_base(found, lesson_id))
    return web.json_response(manifest.model_dump(mode="json"),
                             headers={"Cache-Control": "private, no-cache"})


def add_routes(r: web.UrlDispatcher) -> None:
    """The recordings' pages and files (the API registers itself with ``@endpoint``)."""
    n = r"{id:\d+}"
    r.add_get(f"/classes/{n}/recordings", class_recordings_page)
    r.add_get(f"/recordings/{n}", recording_page)
    r.add_post(f"/recordings/{n}/delete", recording_delete_submit)
    r.add_post(f"/recordings/{n}/video", recording_video_submit)
    r.add_get(f"/recordings/{n}/{{name}}", staff_file)
    r.add_get("/r/{code}", student_list_page)
    r.add_get(f"/r/{{code}}/{n}", student_recording_page)
    r.add_get(f"/r/{{code}}/{n}/manifest.json", student_manifest)
    r.add_get(f"/r/{{code}}/{n}/{{name}}", student_file)
