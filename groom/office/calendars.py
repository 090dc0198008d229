"""iCalendar (.ics) feeds of a class's and a teacher's lessons, for phone calendars.

Phone calendars subscribe to a URL and fetch it on their own, without our session cookie, so the
URL itself is the key: ``/calendar/<kind>/<id>/<token>.ics`` where the token is an HMAC of the
kind and id (and, for a class, its join code) under the server secret. It cannot be guessed or
derived from another feed's URL; giving a class a new join code also changes its feed URL, and a
deactivated teacher's feed stops answering. A wrong token answers 404, like an unknown id.

Events carry the school's time zone (``TZID`` plus a ``VTIMEZONE``), so phones show the lesson at
the school's wall-clock time wherever they are; cancelled lessons stay in the feed with
``STATUS:CANCELLED`` so that subscribed calendars remove them instead of keeping stale events.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from typing import Literal, Optional, Sequence

from aiohttp import web
from icalendar import Calendar, Event
from sqlalchemy import select

from groom.core.models import Classroom, Lesson, LessonState, Role, School, User, utcnow
from groom.web import proxy
from groom.web.plumbing import SESSIONS, SETTINGS

from .scheduling import zone
from .schools import MAX_ID

Kind = Literal["class", "teacher"]
PAST_DAYS, FUTURE_DAYS, MAX_EVENTS = 60, 400, 2000


def feed_token(secret: str, kind: Kind, ident: int, salt: str = "") -> str:
    mac = hmac.new(secret.encode(), f"groom.office.calendars:{kind}:{ident}:{salt}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode().rstrip("=")


def public_base(request: web.Request) -> str:
    return proxy.public_base(request)  # --public-url, else the (proxy-trusted) scheme and host


def class_feed_url(request: web.Request, classroom: Classroom) -> str:
    token = feed_token(request.app[SETTINGS].secret, "class", classroom.id, classroom.join_code)
    return f"{public_base(request)}/calendar/class/{classroom.id}/{token}.ics"


def teacher_feed_url(request: web.Request, teacher: User) -> str:
    token = feed_token(request.app[SETTINGS].secret, "teacher", teacher.id)
    return f"{public_base(request)}/calendar/teacher/{teacher.id}/{token}.ics"


def webcal(url: str) -> str:
    return "webcal://" + url.split("://", 1)[1]


def build_calendar(name: str, timezone: str, lessons: Sequence[Lesson]) -> bytes:
    tz = zone(School(timezone=timezone))
    cal = Calendar()
    cal.add("prodid", "-//G-Room//School office//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("method", "PUBLISH")
    cal.add("x-wr-calname", name)
    cal.add("x-wr-timezone", timezone)
    cal.add("refresh-interval", dt.timedelta(hours=1), parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", "PT1H")
    stamp = utcnow()
    for lesson in lessons:
        event = Event()
        event.add("uid", f"lesson-{lesson.id}@groom")
        event.add("dtstamp", stamp)
        event.add("dtstart", lesson.starts_at.astimezone(tz))
        event.add("dtend", lesson.ends_at.astimezone(tz))
        event.add("summary", lesson.title)
        details = [lesson.classroom.name]
        if lesson.classroom.subject:
            details.append(lesson.classroom.subject)
        event.add("description", " - ".join(details))
        event.add("status", "CANCELLED" if lesson.state == LessonState.cancelled else "CONFIRMED")
        cal.add_component(event)
    cal.add_missing_timezones()
    return cal.to_ical()


async def _feed(request: web.Request, kind: Kind) -> web.StreamResponse:
    raw_id, token = request.match_info["ident"], request.match_info["token"]
    if not (raw_id.isascii() and raw_id.isdigit()) or not 1 <= int(raw_id) <= MAX_ID:
        raise web.HTTPNotFound()
    ident = int(raw_id)
    secret = request.app[SETTINGS].secret
    async with request.app[SESSIONS]() as db:
        query = select(Lesson).where(Lesson.starts_at > utcnow() - dt.timedelta(days=PAST_DAYS),
                                     Lesson.starts_at < utcnow() + dt.timedelta(days=FUTURE_DAYS))
        school: Optional[School]
        if kind == "class":
            classroom = await db.get(Classroom, ident)
            if classroom is None or not hmac.compare_digest(
                    token, feed_token(secret, kind, ident, classroom.join_code)):
                raise web.HTTPNotFound()
            school = await db.get(School, classroom.school_id)
            name = classroom.name
            query = query.where(Lesson.class_id == ident)
        else:
            teacher = await db.get(User, ident)
            if (teacher is None or not teacher.active or teacher.school_id is None
                    or teacher.role != Role.teacher
                    or not hmac.compare_digest(token, feed_token(secret, kind, ident))):
                raise web.HTTPNotFound()
            school = await db.get(School, teacher.school_id)
            name = teacher.display_name
            query = query.where(Lesson.teacher_id == ident)
        assert school is not None
        lessons = list((await db.execute(query.order_by(Lesson.starts_at, Lesson.id)
                                         .limit(MAX_EVENTS))).unique().scalars())
    body = build_calendar(f"G-Room: {name}", school.timezone, lessons)
    return web.Response(body=body, content_type="text/calendar", charset="utf-8",
                        headers={"Cache-Control": "private, max-age=300",
                                 "Content-Disposition": f'inline; filename="{kind}-{ident}.ics"'})


async def class_feed(request: web.Request) -> web.StreamResponse:
    return await _feed(request, "class")


async def teacher_feed(request: web.Request) -> web.StreamResponse:
    return await _feed(request, "teacher")
