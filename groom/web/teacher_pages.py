"""The teacher's pages: today's and upcoming lessons with a Start button, and the calendar link.

Start leads to the live room's teacher page, ``/lessons/{id}/teach`` (``live_pages.py``).
"""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from groom.core.models import LessonState, Role
from groom.office import calendars, lookup, scheduling
from groom.office import schools as office

from .calendar_feeds import teacher_feed_url
from .pages import Clock, done, page, page_viewer
from .plumbing import SESSIONS

AGENDA_DAYS = 14


async def teacher_home(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    async with request.app[SESSIONS]() as db:
        lessons = await scheduling.agenda(db, v, days=AGENDA_DAYS)
        zones = await scheduling.zones_of(db, lessons)
        tz = "UTC"
        if v.user.school_id is not None:
            tz = (await lookup.school_of(db, v.user.school_id)).timezone
        clock = Clock(tz)
        clocks = {lesson.id: Clock(str(zones[lesson.id])) for lesson in lessons}
        classes = await office.list_classes(db, v)
    today = clock.today()
    todays = [x for x in lessons if clocks[x.id].local(x.starts_at).date() <= today]
    later = [x for x in lessons if clocks[x.id].local(x.starts_at).date() > today]
    now = dt.datetime.now(dt.timezone.utc)
    return page(request, "teacher.html", todays=todays, later=later, clocks=clocks, t=clock,
                classes=classes, now=now, soon=dt.timedelta(minutes=15),
                ics=teacher_feed_url(request, v.user) if v.user.role == Role.teacher else "",
                LessonState=LessonState)


async def calendar_rotate(request: web.Request) -> web.StreamResponse:
    """The teacher's own feed gets a new URL; the old one (shared too widely) stops working."""
    v = await page_viewer(request)
    async with request.app[SESSIONS]() as db:
        await calendars.rotate_teacher_feed(db, v, v.user.id)
    raise done("/teacher", "calendar_rotated")
