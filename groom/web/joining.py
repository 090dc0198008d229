"""Joining: a typed code -> the class (or roster student) and the lesson to join.

Students have no accounts. A class code (8 characters) lets anyone in the class join under a name
they type; a personal card code (10 characters) also says who they are. Codes come from a
23-character alphabet (``codes.py``), so guessing is hopeless as long as wrong attempts are
limited: each client address may make ``settings.join_attempts_per_minute`` wrong attempts in
any 60 seconds, after which every attempt from it is refused with 429 and ``Retry-After`` until
the oldest wrong attempt is a minute old. Right codes never count.

The limiter lives in memory (one per application): a restart forgets it, which costs an attacker
a restart per few guesses. The address is ``request.remote``: the TCP peer, or, when that peer is
one of ``settings.trusted_proxies``, the client it names in ``X-Forwarded-For`` (``proxy.py``;
from anyone else the header is ignored, since anyone can forge it).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.errors import AppError
from groom.core.models import Classroom, Lesson, LessonState, School, Student, utcnow
from groom.office import codes

from .plumbing import SESSIONS, SETTINGS

WINDOW_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 50_000  # bounded memory under a spray from many addresses


class JoinLimiter:
    """Wrong join attempts per client address over the last minute (sliding window)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = max(1, per_minute)
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> Optional[deque[float]]:
        failures = self._failures.get(address)
        if failures is None:
            return None
        cutoff = self._clock() - WINDOW_SECONDS
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> Optional[int]:
        """Seconds to wait before this address may try again, or None if it may try now."""
        failures = self._recent(address)
        if failures is None or len(failures) < self.per_minute:
            return None
        return max(1, math.ceil(failures[0] + WINDOW_SECONDS - self._clock()))

    def failed(self, address: str) -> None:
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:
            for key in list(self._failures)[:MAX_TRACKED_ADDRESSES // 10]:
                self._recent(key)  # drops expired entries
            while len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(self._clock())


_limiters: "weakref.WeakKeyDictionary[web.Application, JoinLimiter]" = weakref.WeakKeyDictionary()


def limiter(app: web.Application) -> JoinLimiter:
    """The application's limiter, made on first use (no app key needed at start-up)."""
    found = _limiters.get(app)
    if found is None:
        found = _limiters[app] = JoinLimiter(app[SETTINGS].join_attempts_per_minute)
    return found


@dataclass
class JoinTarget:
    code: str
    classroom: Classroom
    school: School
    student: Optional[Student]
    lesson: Optional[Lesson]  # live now, else the next scheduled one that is not over

    @property
    def kind(self) -> Literal["student", "class"]:
        return "student" if self.student is not None else "class"


async def live_or_next(db: AsyncSession, class_id: int) -> Optional[Lesson]:
    """The lesson a student joining now should land in: the live one, else the next one."""
    live = (await db.execute(select(Lesson).where(
        Lesson.class_id == class_id, Lesson.state == LessonState.live)
        .order_by(Lesson.starts_at.desc()).limit(1))).unique().scalar_one_or_none()
    if live is not None:  # a live lesson that overran its planned end is still the one to join
        return live
    query = (select(Lesson).where(Lesson.class_id == class_id, Lesson.ends_at > utcnow(),
                                  Lesson.state == LessonState.scheduled)
             .order_by(Lesson.starts_at, Lesson.id).limit(1))
    return (await db.execute(query)).unique().scalar_one_or_none()


async def resolve(db: AsyncSession, raw_code: str) -> Optional[JoinTarget]:
    """The class or student a code belongs to, or None. No rate limit here: see ``check_code``."""
    code = codes.normalize(raw_code)
    if not codes.is_well_formed(code):
        return None
    student: Optional[Student] = None
    if len(code) == codes.CARD_CODE_LENGTH:
        student = (await db.execute(select(Student).where(Student.card_code == code))
                   ).scalar_one_or_none()
        if student is None:
            return None
        classroom = await db.get(Classroom, student.class_id)
    else:
        classroom = (await db.execute(select(Classroom).where(Classroom.join_code == code))
                     ).unique().scalar_one_or_none()
    if classroom is None:
        return None
    school = await db.get(School, classroom.school_id)
    assert school is not None
    return JoinTarget(code, classroom, school, student, await live_or_next(db, classroom.id))


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


async def check_code(request: web.Request, raw_code: str) -> JoinTarget:
    """The rate-limited lookup every join goes through (API, pages and the live room).

    Raises 429 (with ``retry_after`` in the details, for the ``Retry-After`` header) when this
    address made too many wrong attempts in the last minute, and 404 for a wrong code.
    """
    limits = limiter(request.app)
    address = client_address(request)
    wait = limits.retry_after(address)
    if wait is not None:
        raise too_many(wait)
    async with request.app[SESSIONS]() as db:
        target = await resolve(db, raw_code)
    if target is None:
        limits.failed(address)
        raise AppError("bad_code", "This code is not known. Check it and try again.", status=404)
    return target


def too_many(wait: int) -> AppError:
    return AppError("too_many_attempts", "Too many wrong codes. Try again in {retry_after} "
                    "seconds.", status=429, retry_after=wait)


def retry_after_header(exc: AppError) -> dict[str, str]:
    wait = exc.params.get("retry_after")
    return {"Retry-After": str(wait)} if wait is not None else {}


def lesson_local_start(lesson: Lesson, school: School) -> dt.datetime:
    from groom.office.scheduling import local, zone
    return local(lesson.starts_at, zone(school))
