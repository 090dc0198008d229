"""The teacher's pages: today's and upcoming lessons with a Start button, and the calendar link.

The live room (``/lessons/{id}/teach``) arrives with the live-lesson work; until then Start leads
to a placeholder page that says so.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web

from . import office, scheduling
from .models import LessonState
from .plumbing import SESSIONS
from .views import Clock, match_id, page, page_viewer
from .views_admin import _feeds

AGENDA_DAYS = 14


async def teacher_home(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    async with request.app[SESSIONS]() as db:
        lessons = await scheduling.agenda(db, v, days=AGENDA_DAYS)
        zones = await scheduling.zones_of(db, lessons)
        tz = "UTC"
        if v.user.school_id is not None:
            tz = (await office.school_of(db, v.user.school_id)).timezone
        clock = Clock(tz)
        clocks = {lesson.id: Clock(str(zones[lesson.id])) for lesson in lessons}
        classes = await office.list_classes(db, v)
    today = clock.today()
    todays = [x for x in lessons if clocks[x.id].local(x.starts_at).date() <= today]
    later = [x for x in lessons if clocks[x.id].local(x.starts_at).date() > today]
    now = dt.datetime.now(dt.timezone.utc)
    return page(request, "teacher.html", todays=todays, later=later, clocks=clocks, t=clock,
                classes=classes, now=now, soon=dt.timedelta(minutes=15),
                ics=_feeds(request, teacher_id=v.user.id), LessonState=LessonState)


async def teach_placeholder(request: web.Request) -> web.StreamResponse:
    """Where Start leads until the live room exists: the lesson, checked like every page."""
    v = await page_viewer(request)
    async with request.app[SESSIONS]() as db:
        lesson = await scheduling.get_lesson(db, v, match_id(request))
        school = await office.school_of(db, lesson.classroom.school_id)
    context: dict[str, Any] = {"lesson": lesson, "t": Clock(school.timezone)}
    return page(request, "teach.html", **context)
