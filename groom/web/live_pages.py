"""Pages and streams of the live lesson: the student page, the teacher page, the fallback stream.

The pages are rendered once and then driven by ``/ws`` (``signaling.py``); the student page
stays tiny because a 2G phone pays for every byte of it.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select

from groom.core.auth import require_viewer
from groom.core.db import MAX_ID
from groom.core.errors import AppError
from groom.core.models import LessonEvent
from groom.live.orphans import OrphanSweeper
from groom.live.rooms import ROOMS, Rooms
from groom.office.lookup import get_lesson
from groom.recordings.jobs import JobWorker
from groom.recordings.postprocess import job_handlers, recover_recordings

from . import joining, proxy, relay
from .openapi import endpoint
from .params import path_id
from .plumbing import LIVE_PERMISSIONS, SESSIONS, SETTINGS, render, viewer

JOBS = web.AppKey("jobs", JobWorker)


EVENTS_PAGE = 500  # events per page when the caller does not say
EVENTS_PAGE_MAX = 1000


class EventsQuery(BaseModel):
    limit: int = Field(default=EVENTS_PAGE, ge=1, le=EVENTS_PAGE_MAX,
                       description="Events per page (at most 1000)")
    after: int = Field(default=0, ge=0, le=MAX_ID,
                       description="Cursor: the id of the last event of the previous page; 0 for "
                                   "the first page. A page shorter than limit is the last one.")


class EventOut(BaseModel):
    id: int = Field(description="The event's id: pass the last one as `after` for the next page")
    at_ms: int
    kind: str
    data: dict[str, Any]


class LiveRoom(BaseModel):
    lesson: dict[str, Any]
    class_id: int
    seconds: float
    teacher_present: bool
    students_joined: int
    students_connected: int
    receivers_decoding: int = 0  # remote tracks decoded: the teacher's, the floor student's
    floor: Optional[str]
    tiers: dict[str, dict[str, int]]
    packets_sent: int
    packets_dropped: int
    wire_bytes: int
    latency: dict[str, Optional[float]]
    mixer: dict[str, int]
    teacher_uplink: dict[str, int] = Field(
        default_factory=dict, description="The teacher's packets: received, rebuilt from in-band "
        "FEC after a loss (recovered), concealed, dropped as too late")
    worker: Optional[str] = Field(default=None, description="The worker process running the "
                                  "room (groom serve --workers N); null with one process")


@endpoint("GET", "/api/live", summary="What is live now in my schools: rooms, students per tier, "
          "packets, server-added latency", tag="lessons", response=list[LiveRoom])
async def live_now(request: web.Request) -> list[LiveRoom]:
    v = require_viewer(await viewer(request))
    v.require_admin()
    found = [*_rooms_here(request.app)]
    for _, answer in await relay.ask_others(request.app, "GET", "/_worker/rooms"):
        found.extend(answer)
    return [LiveRoom(**item["figures"]) for item in found
            if v.can_manage_school(int(item["school_id"]))]


def _rooms_here(app: web.Application) -> list[dict[str, Any]]:
    placement = app[relay.PLACEMENT]
    worker = None if placement.solo else placement.me.id
    return [{"school_id": room.lesson.school_id, "figures": {**room.figures(), "worker": worker}}
            for room in app[ROOMS].by_lesson.values()]


async def rooms_here(request: web.Request) -> web.Response:
    """``GET /_worker/rooms``: this worker's rooms, for another worker's ``/api/live``."""
    relay.require_relayed(request)
    return web.json_response(_rooms_here(request.app))


@endpoint("GET", "/api/lessons/{lesson_id}/events", summary="The lesson's timeline: slides, ink, "
          "hands, chat, polls, in order, a page at a time (limit, after: the last id seen)",
          tag="lessons", query=EventsQuery, response=list[EventOut], errors=(404,))
async def lesson_events(request: web.Request, query: EventsQuery) -> list[EventOut]:
    lesson_id = path_id(request, "lesson_id", "lesson")
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        await get_lesson(db, v, lesson_id)  # 404 unless this viewer may see the lesson
        # Keyset pages by id: rows are written in the order they happened, so id order is time
        # order, and a page costs an index range, however long the lesson.
        rows = (await db.execute(select(LessonEvent)
                                 .where(LessonEvent.lesson_id == lesson_id, LessonEvent.id > query.after)
                                 .order_by(LessonEvent.id).limit(query.limit))).scalars().all()
    return [EventOut(id=r.id, at_ms=r.at_ms, kind=r.kind, data=r.data) for r in rows]


def _ws_url(request: web.Request) -> str:
    return proxy.ws_url(request)  # wss when the public URL or the (trusted) scheme is https


async def _student_page(request: web.Request, *, code: Optional[str],
                        card: Optional[str]) -> web.StreamResponse:
    found = await joining.check_code(request, card or code or "")
    room = request.app[ROOMS].for_class(found.classroom.id)
    if room is None and not request.app[relay.PLACEMENT].solo and not relay.is_relayed(request):
        owner = await relay.owner_or_none(request.app, found.classroom.id)
        if owner is not None and owner.id != request.app[relay.PLACEMENT].me.id:
            return await relay.forward(request, owner)  # its live lesson is there
    lesson = room.lesson.public() if room is not None else waiting_lesson(found)
    join: dict[str, Any] = ({"card": card, "name": found.student.name} if found.student
                            else {"code": code})
    response = render(request, "student.html", lesson=lesson, join=join,
                      class_name=found.classroom.name, ws_url=_ws_url(request))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Permissions-Policy"] = LIVE_PERMISSIONS  # a student given the floor speaks
    return response


def waiting_lesson(found: joining.JoinTarget) -> Optional[dict[str, Any]]:
    """What a student sees before the teacher starts: the class's next lesson, if any."""
    if found.lesson is None:
        return None
    teacher = found.classroom.teacher
    return {"id": found.lesson.id, "title": found.lesson.title or found.classroom.name,
            "class_name": found.classroom.name, "starts_at": found.lesson.starts_at.isoformat(),
            "teacher_name": teacher.display_name if teacher else ""}


async def join_code_page(request: web.Request) -> web.StreamResponse:
    return await _student_page(request, code=request.match_info["code"], card=None)


async def card_page(request: web.Request) -> web.StreamResponse:
    return await _student_page(request, code=None, card=request.match_info["card"])


async def teach_page(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    if v is None:
        raise web.HTTPFound(f"/login?next={request.path}")
    lesson_id = path_id(request, "lesson_id", "lesson")
    async with request.app[SESSIONS]() as db:
        lesson = await get_lesson(db, v, lesson_id)
        info = {"id": lesson.id, "title": lesson.title or lesson.classroom.name,
                "class_name": lesson.classroom.name, "state": lesson.state.value}
        class_id = lesson.classroom.id
    response = render(request, "teach.html", lesson=info, class_id=class_id, ws_url=_ws_url(request))
    response.headers["Permissions-Policy"] = LIVE_PERMISSIONS  # the microphone, for this page only
    return response


async def listen(request: web.Request) -> web.StreamResponse:
    """The no-WebRTC fallback: the student's tier as an endless Ogg/Opus stream."""
    token = request.match_info["token"]
    found = request.app[ROOMS].find_listener(token)
    if found is None and not relay.is_relayed(request):
        owner = await relay.find_holder(request.app, "listen", token)
        if owner is not None:
            return await relay.forward(request, owner)
    if found is None:
        raise AppError("not_found", "Not found: {what}", status=404, what="stream")
    room, participant = found
    response: web.StreamResponse = await room.listen(participant, request)
    return response


async def close_rooms(app: web.Application) -> None:
    """``on_shutdown``: end (or, in a cluster, hand over) the live lessons while their sockets
    are still open, so every page hears why (``ended``, or 1012 "reconnect") instead of a cut
    connection when the server cancels its handlers a moment later."""
    await app[ROOMS].shutdown()


async def rooms_ctx(app: web.Application) -> AsyncIterator[None]:
    """The live rooms of this process and the worker that post-processes their recordings.

    At start, recordings a crash left open are repaired and queued, and lessons it left "live"
    are ended; at shutdown, live lessons end cleanly before the worker stops. Under
    ``--workers N`` the supervisor does the repairs once, before any worker starts: a worker
    that restarts must not end its siblings' lessons or touch the recordings they write; what
    a dead worker or node left is ended by ``OrphanSweeper`` once nobody has taken it over."""
    settings, sessions = app[SETTINGS], app[SESSIONS]
    worker = JobWorker(sessions, job_handlers(sessions, settings.data_dir))
    rooms = app[ROOMS] = Rooms(sessions, settings, worker)
    placement = app[relay.PLACEMENT]
    sweeper: Optional[OrphanSweeper] = None
    if placement.solo:
        await rooms.end_orphans()
        await recover_recordings(sessions, settings.data_dir, worker)
    else:  # another process's crash: ended here only if nobody took its lessons over
        sweeper = OrphanSweeper(sessions, settings.data_dir, placement, worker,
                                settings.grace_seconds)
    await worker.start()
    app[JOBS] = worker
    if sweeper is not None:
        sweeper.start()
    yield
    if sweeper is not None:
        await sweeper.stop()
    await rooms.shutdown()
    await worker.stop()
