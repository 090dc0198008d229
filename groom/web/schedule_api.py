"""The schedule's JSON API: lessons and weekly series, changes, attendance, week and agenda.

Why a module of its own: these handlers are thin over ``office/scheduling.py`` (and the lookups),
as ``api.py``'s are over the schools, classes and rosters of ``office/schools.py``; each reads
the viewer, opens one session, calls one domain function and shapes rows into ``schemas.py``'s
models. They register themselves with ``@endpoint``.
"""

from __future__ import annotations

from typing import Sequence

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import require_viewer
from groom.core.models import Attendance, Lesson, Series, User
from groom.office import lookup, scheduling

from .openapi import endpoint
from .params import path_id
from .plumbing import SESSIONS, viewer
from .schemas import (
    AgendaQuery,
    AttendanceOut,
    CancelIn,
    DayOut,
    LessonIn,
    LessonOut,
    RescheduleIn,
    SeriesIn,
    SeriesOut,
    WeekOut,
    WeekQuery,
)

# --- rows -> response models ---------------------------------------------------------------

async def lesson_outs(db: AsyncSession, lessons: Sequence[Lesson]) -> list[LessonOut]:
    zones = await scheduling.zones_of(db, lessons)
    teacher_ids = {x.teacher_id for x in lessons if x.teacher_id is not None}
    names: dict[int, str] = {}
    if teacher_ids:
        names = dict((await db.execute(select(User.id, User.display_name)
                                       .where(User.id.in_(teacher_ids)))).tuples().all())
    out = []
    for x in lessons:
        tz = zones[x.id]
        out.append(LessonOut(
            id=x.id, class_id=x.class_id, class_name=x.classroom.name, teacher_id=x.teacher_id,
            teacher_name=names.get(x.teacher_id) if x.teacher_id is not None else None,
            series_id=x.series_id, title=x.title, state=x.state.value, starts_at=x.starts_at,
            ends_at=x.ends_at, local_start=scheduling.local(x.starts_at, tz),
            local_end=scheduling.local(x.ends_at, tz), timezone=str(tz),
            duration_minutes=int((x.ends_at - x.starts_at).total_seconds() // 60)))
    return out


def attendance_out(row: Attendance) -> AttendanceOut:
    return AttendanceOut(id=row.id, student_id=row.student_id, name=row.name,
                         joined_at=row.joined_at, left_at=row.left_at,
                         seconds_present=row.seconds_present, bytes_sent=row.bytes_sent)


# --- lessons -------------------------------------------------------------------------------------

@endpoint("GET", "/api/classes/{class_id}/lessons",
          summary="A class's lessons that are not over yet", tag="lessons",
          response=list[LessonOut])
async def list_lessons(request: web.Request) -> list[LessonOut]:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        lessons = await scheduling.upcoming(db, v, path_id(request, "class_id", "class"))
        return await lesson_outs(db, lessons)


@endpoint("POST", "/api/classes/{class_id}/lessons", summary="Schedule a one-off lesson",
          tag="lessons", body=LessonIn, response=LessonOut, status=201, errors=(409,))
async def create_lesson(request: web.Request, body: LessonIn) -> LessonOut:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        lesson = await scheduling.create_lesson(db, v, path_id(request, "class_id", "class"), body.title,
                                                body.starts_at, body.duration_minutes)
        return (await lesson_outs(db, [lesson]))[0]


def _weekdays(series: Series) -> list[int]:
    return [int(d) for d in series.weekdays.split(",") if d]


@endpoint("POST", "/api/classes/{class_id}/series",
          summary="Schedule a weekly series (all or nothing: one clash refuses it)",
          tag="lessons", body=SeriesIn, response=SeriesOut, status=201, errors=(409,))
async def create_series(request: web.Request, body: SeriesIn) -> SeriesOut:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        series, lessons = await scheduling.create_series(
            db, v, path_id(request, "class_id", "class"), body.title, body.weekdays, body.start_time,
            body.duration_minutes, body.first_date, body.last_date)
        return SeriesOut(id=series.id, class_id=series.class_id, title=series.title,
                         weekdays=_weekdays(series),
                         start_time=series.start_time.strftime("%H:%M"),
                         duration_minutes=series.duration_minutes, first_date=series.first_date,
                         last_date=series.last_date, lessons=await lesson_outs(db, lessons))


@endpoint("GET", "/api/lessons/{lesson_id}", summary="A lesson", tag="lessons",
          response=LessonOut)
async def get_lesson(request: web.Request) -> LessonOut:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        lesson = await lookup.get_lesson(db, v, path_id(request, "lesson_id", "lesson"))
        return (await lesson_outs(db, [lesson]))[0]


@endpoint("POST", "/api/lessons/{lesson_id}/reschedule",
          summary="Move a lesson, or it and the rest of its series", tag="lessons",
          body=RescheduleIn, response=list[LessonOut], errors=(409,))
async def reschedule_lesson(request: web.Request, body: RescheduleIn) -> list[LessonOut]:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        lessons = await scheduling.reschedule(db, v, path_id(request, "lesson_id", "lesson"),
                                              body.starts_at, body.duration_minutes, body.scope)
        return await lesson_outs(db, lessons)


@endpoint("POST", "/api/lessons/{lesson_id}/cancel",
          summary="Cancel a lesson, or it and the rest of its series", tag="lessons",
          body=CancelIn, response=list[LessonOut], errors=(409,))
async def cancel_lesson(request: web.Request, body: CancelIn) -> list[LessonOut]:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        lessons = await scheduling.cancel(db, v, path_id(request, "lesson_id", "lesson"), body.scope)
        return await lesson_outs(db, lessons)


@endpoint("GET", "/api/lessons/{lesson_id}/attendance", summary="Who came to a lesson",
          tag="lessons", response=list[AttendanceOut])
async def lesson_attendance(request: web.Request) -> list[AttendanceOut]:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        rows = await scheduling.attendance(db, v, path_id(request, "lesson_id", "lesson"))
        return [attendance_out(r) for r in rows]


@endpoint("GET", "/api/week",
          summary="Week view of a school, a teacher or a class (default: my own)",
          tag="lessons", query=WeekQuery, response=WeekOut)
async def week_view(request: web.Request, query: WeekQuery) -> WeekOut:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        week = await scheduling.week(db, v, query.week_start, school_id=query.school_id,
                                     teacher_id=query.teacher_id, class_id=query.class_id)
        outs = iter(await lesson_outs(db, [x for day in week.days for x in day.lessons]))
        days = [DayOut(date=day.date, lessons=[next(outs) for _ in day.lessons])
                for day in week.days]
        return WeekOut(week_start=week.start, timezone=week.timezone, days=days)


@endpoint("GET", "/api/agenda",
          summary="Today's and upcoming lessons (a teacher's own; an admin's schools')",
          tag="lessons", query=AgendaQuery, response=list[LessonOut])
async def agenda(request: web.Request, query: AgendaQuery) -> list[LessonOut]:
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        return await lesson_outs(db, await scheduling.agenda(db, v, query.days))
