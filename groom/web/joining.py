"""Joining: a typed code -> the class (or roster student) and the lesson to join.

Students have no accounts. A class code (8 characters) lets anyone in the class join under a name
they type; a personal card code (10 characters) also says who they are. Codes are printed on
cards, spoken aloud and shared in chat groups: they are public to whoever is near a class, and
secret only from guessers. They come from a 23-character alphabet (``codes.py``), so guessing is
hopeless as long as wrong attempts are limited.

The limiter: each client address may make ``settings.join_attempts_per_minute`` wrong attempts
in any 60 seconds. An address is one IPv4 address or one IPv6 /64 (one home or phone gets a
whole /64, so limiting a /128 would give a guesser billions of addresses). Right codes never
count. Over the limit, the address is refused (429 with ``Retry-After``) for every code except
the codes already used successfully from that address in the last ``KNOWN_CODE_SECONDS``.

Why that rule: a whole school shares one public address behind its NAT, so one pupil guessing
codes must not lock the class out of its own lesson. A code that already let someone in from
this address is one the people behind it demonstrably have (the first pupil of the class joined
with it); letting it through teaches a guesser nothing new, since answering "known" for a code
needs it to be one already in use at that address. A code never used there stays behind the
limit, so guessing other classes' codes is exactly as slow as before. The alternatives were
weaker: a budget per code (right attempts pass, budgeted per code) answers a locked-out guesser
"yes" for any right code, i.e. is an oracle again; a device cookie misses the first pupil on a
new phone. A student reconnecting with a valid ``resume`` token never reaches the limiter
(``signaling.py``): the token is unguessable and already names their seat.

Where the counts live is chosen once, at start (``shared_limits.limits_ctx``), behind one async
interface, ``JoinLimits``: in memory (``JoinLimiter``, one per process; a restart forgets it, which
costs an attacker a restart per few guesses), or, in a cluster (``--redis-url``), in Redis, so every
process of every machine counts the same address together (``shared_limits.py``, with the same rule).

The address is ``request.remote``: the TCP peer, or, when that peer is one of
``settings.trusted_proxies``, the client it names in ``X-Forwarded-For`` (``proxy.py``; from anyone
else the header is ignored, since anyone can forge it).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional, Protocol

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.errors import AppError
from groom.core.models import Classroom, Lesson, LessonState, School, Student, utcnow
from groom.office import codes

from .plumbing import SESSIONS, SETTINGS

WINDOW_SECONDS = 60.0
MAX_TRACKED_ADDRESSES = 50_000  # bounded memory under a spray from many addresses
KNOWN_CODE_SECONDS = 12 * 3600.0  # a code used from an address still passes its lock-out a school day
MAX_KNOWN_CODES = 200  # codes remembered per address (every class and card of a big school)


class JoinLimits(Protocol):
    """Where wrong join codes are counted: this process (``JoinLimiter``) or the cluster
    (``shared_limits.SharedJoinLimits``). Every join goes through ``check_code``, which uses only this."""

    async def check(self, address: str, code: str) -> Optional[int]:
        """Seconds this address must wait before trying ``code`` (over the limit, and the code not
        one already used from it), or None: it may try now."""

    async def wrong(self, address: str) -> None:
        """A wrong code from this address."""

    async def right(self, address: str, code: str) -> None:
        """A right code from this address: it passes this address's lock-out for a while."""


JOIN_LIMITS = web.AppKey("join_limits", JoinLimits)
# The BigBlueButton API's wrong checksums (``bbb_api.py``) are limited by the same rule, counted
# apart and without known codes (its ``check`` is asked with the code ""): guessing a client's
# secret is guessing a code.
CHECKSUM_LIMITS = web.AppKey("checksum_limits", JoinLimits)
CHECKSUM_FAILURES_PER_MINUTE = 20


class JoinLimiter:
    """Wrong join attempts per client address over the last minute (sliding window), in memory.

    Its synchronous methods take a clock (tests pass a fake one); ``check``, ``wrong`` and
    ``right`` are the same rule as ``JoinLimits``.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = max(1, per_minute)
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._known: dict[str, dict[str, float]] = {}  # address -> code -> last right use

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

    def succeeded(self, address: str, code: str) -> None:
        """A right code from this address: it passes this address's lock-out for a while."""
        known = self._known.pop(address, None) or {}
        known.pop(code, None)
        known[code] = self._clock()
        while len(known) > MAX_KNOWN_CODES:
            known.pop(next(iter(known)))
        self._known[address] = known  # re-inserted: the most recently used address is last
        while len(self._known) > MAX_TRACKED_ADDRESSES:
            self._known.pop(next(iter(self._known)))

    def known(self, address: str, code: str) -> bool:
        used = self._known.get(address, {}).get(code)
        return used is not None and self._clock() - used < KNOWN_CODE_SECONDS

    def failed(self, address: str) -> None:
        if len(self._failures) >= MAX_TRACKED_ADDRESSES:
            for key in list(self._failures)[:MAX_TRACKED_ADDRESSES // 10]:
                self._recent(key)  # drops expired entries
            while len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(address, deque()).append(self._clock())

    async def check(self, address: str, code: str) -> Optional[int]:
        wait = self.retry_after(address)
        return None if wait is None or self.known(address, code) else wait

    async def wrong(self, address: str) -> None:
        self.failed(address)

    async def right(self, address: str, code: str) -> None:
        self.succeeded(address, code)


class OpenSockets:
    """Live sockets (``/ws``) open per client address, counted from the upgrade (before hello)."""

    def __init__(self, per_address: int) -> None:
        self.per_address = max(1, per_address)
        self.by_address: dict[str, int] = {}

    def open(self, address: str) -> bool:
        """Count one more socket from ``address``; False (nothing counted) when over budget."""
        count = self.by_address.get(address, 0)
        if count >= self.per_address:
            return False
        self.by_address[address] = count + 1
        return True

    def closed(self, address: str) -> None:
        count = self.by_address.get(address, 0) - 1
        if count > 0:
            self.by_address[address] = count
        else:
            self.by_address.pop(address, None)


_sockets: "weakref.WeakKeyDictionary[web.Application, OpenSockets]" = weakref.WeakKeyDictionary()


def open_sockets(app: web.Application) -> OpenSockets:
    found = _sockets.get(app)
    if found is None:
        found = _sockets[app] = OpenSockets(app[SETTINGS].sockets_per_address)
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


def address_key(address: str) -> str:
    """The unit budgets count: an IPv4 address, or an IPv6 /64 (IPv4-mapped: the IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def client_address(request: web.Request) -> str:
    return address_key(request.remote or "unknown")


async def check_code(request: web.Request, raw_code: str) -> JoinTarget:
    """The rate-limited lookup every join goes through (API, pages and the live room).

    Raises 429 (with ``retry_after`` in the details, for the ``Retry-After`` header) when this
    address made too many wrong attempts in the last minute and the code is not one already
    used from it, and 404 for a wrong code.
    """
    limits = request.app[JOIN_LIMITS]
    address = client_address(request)
    wait = await limits.check(address, codes.normalize(raw_code))
    if wait is not None:
        raise too_many(wait)
    async with request.app[SESSIONS]() as db:
        target = await resolve(db, raw_code)
    if target is None:
        await limits.wrong(address)
        raise AppError("bad_code", "This code is not known. Check it and try again.", status=404)
    await limits.right(address, target.code)
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
