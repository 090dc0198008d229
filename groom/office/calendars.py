"""iCalendar (.ics) feeds of a class's and a teacher's lessons, for phone calendars.

Phone calendars subscribe to a URL and fetch it on their own, without our session cookie, so the
URL itself is the key: ``/calendar/<kind>/<id>/<token>.ics`` where the token is an HMAC of the
kind and id (and, for a class, its join code) under the server secret. It cannot be guessed or
derived from another feed's URL; giving a class a new join code also changes its feed URL, a
teacher may rotate theirs (a random salt in the token), and a deactivated teacher's feed stops
answering. A wrong token answers 404, like an unknown id.

Events carry the school's time zone (``TZID`` plus a ``VTIMEZONE``), so phones show the lesson at
the school's wall-clock time wherever they are; cancelled lessons stay in the feed with
``STATUS:CANCELLED`` so that subscribed calendars remove them instead of keeping stale events.

This module is the domain part (tokens, paths, which lessons a feed holds, the .ics itself); the
URLs with the server's public base and the HTTP handlers are ``web/calendar_feeds.py``'s.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from icalendar import Calendar, Event
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import Viewer
from groom.core.db import load
from groom.core.errors import not_found
from groom.core.models import Classroom, Lesson, LessonState, Role, School, User, utcnow

from .lookup import get_teacher
from .scheduling import zone

Kind = Literal["class", "teacher"]
PAST_DAYS, FUTURE_DAYS, MAX_EVENTS = 60, 400, 2000


def feed_token(secret: str, kind: Kind, ident: int, salt: str = "") -> str:
    mac = hmac.new(secret.encode(), f"groom.office.calendars:{kind}:{ident}:{salt}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode().rstrip("=")


def class_feed_path(secret: str, classroom: Classroom) -> str:
    """``/calendar/class/<id>/<token>.ics``: the token changes with the class's join code."""
    token = feed_token(secret, "class", classroom.id, classroom.join_code)
    return feed_path("class", classroom.id, token)


def teacher_feed_path(secret: str, teacher: User) -> str:
    """``/calendar/teacher/<id>/<token>.ics``: the token changes when the feed is rotated."""
    return feed_path("teacher", teacher.id,
                     feed_token(secret, "teacher", teacher.id, teacher.calendar_salt))


async def rotate_teacher_feed(db: AsyncSession, viewer: Viewer, teacher_id: int) -> User:
    """A new feed URL for the teacher (the old one answers 404 from now on): for a URL that was
    shared too widely. The teacher themselves or an admin of their school. Commits."""
    teacher = await get_teacher(db, viewer, teacher_id)
    if teacher.role != Role.teacher:
        raise not_found("teacher")
    teacher.calendar_salt = secrets.token_urlsafe(16)
    await db.commit()
    return teacher


def feed_path(kind: Kind, ident: int, token: str) -> str:
    return f"/calendar/{kind}/{ident}/{token}.ics"


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
    ical: bytes = cal.to_ical()  # icalendar leaves to_ical() unannotated
    return ical


@dataclass(frozen=True)
class Feed:
    """What one feed URL shows: its name, the school's time zone and the lessons."""

    name: str
    timezone: str
    lessons: list[Lesson]

    def ics(self) -> bytes:
        return build_calendar(f"G-Room: {self.name}", self.timezone, self.lessons)


async def load_feed(db: AsyncSession, secret: str, kind: Kind, ident: int,
                    token: str) -> Optional[Feed]:
    """The feed at ``/calendar/<kind>/<ident>/<token>.ics``, or None when the id is unknown, the
    token is wrong (another secret, or a class code since renewed) or the teacher deactivated:
    all of these answer the same 404. No viewer: the token is the permission."""
    query = select(Lesson).where(Lesson.starts_at > utcnow() - dt.timedelta(days=PAST_DAYS),
                                 Lesson.starts_at < utcnow() + dt.timedelta(days=FUTURE_DAYS))
    school: Optional[School]
    if kind == "class":
        classroom = await load(db, Classroom, ident)
        if classroom is None or not hmac.compare_digest(
                token, feed_token(secret, kind, ident, classroom.join_code)):
            return None
        school = await db.get(School, classroom.school_id)
        name = classroom.name
        query = query.where(Lesson.class_id == ident)
    else:
        teacher = await load(db, User, ident)
        if (teacher is None or not teacher.active or teacher.school_id is None
                or teacher.role != Role.teacher
                or not hmac.compare_digest(token, feed_token(secret, kind, ident,
                                                             teacher.calendar_salt))):
            return None
        school = await db.get(School, teacher.school_id)
        name = teacher.display_name
        query = query.where(Lesson.teacher_id == ident)
    assert school is not None
    lessons = list((await db.execute(query.order_by(Lesson.starts_at, Lesson.id)
                                     .limit(MAX_EVENTS))).unique().scalars())
    return Feed(name, school.timezone, lessons)
