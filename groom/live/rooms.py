"""The registry of live rooms in this process: start, find, wait for, and shut down.

A room lives in one process (docs/design.md, "Scale"); many rooms run side by side, isolated: each has
its own mixer, tiers and participants, and nothing is shared between them but the event loop.
Students who arrive before the teacher wait on a per-class event and are let in at start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Callable, Optional

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.auth import ClassAccess
from groom.core.config import Settings
from groom.core.db import load
from groom.core.errors import AppError
from groom.core.models import Lesson, LessonState, User, utcnow
from groom.recordings.jobs import JobWorker

from .participant import Outbox
from .placement import Load
from .room import LessonInfo, Participant, Room

log = logging.getLogger("groom.live.rooms")

# A lesson may be started this early, and a late one this long after its end.
START_EARLY = dt.timedelta(hours=1)
START_LATE = dt.timedelta(hours=2)


class Rooms:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings,
                 worker: Optional[JobWorker] = None) -> None:
        self._sessions = sessions
        self._settings = settings
        self._worker = worker
        self.by_lesson: dict[int, Room] = {}
        self._class_started: dict[int, asyncio.Event] = {}
        self._starting: dict[int, asyncio.Lock] = {}
        self._ending: set[asyncio.Task[None]] = set()
        # Open sockets of logged-in users (teachers, admins): user id -> [(session key, outbox)],
        # so that logging out, a password change or a deactivation closes them at once.
        self._user_sockets: dict[int, list[tuple[str, Outbox]]] = {}
        # Rooms whose lesson is marked ended but which are still closing (connections, the
        # recording's files, attendance): kept until closed, so a reopen waits for them.
        self.closing: dict[int, Room] = {}
        self._waiting: dict[int, dict[str, int]] = {}  # class -> client address -> sockets waiting
        # Told when someone joins or leaves a room and when a lesson ends (the API's webhooks);
        # each must return at once (queue its work), as it runs inside the room's calls.
        self.observers: list[Callable[[str, Room, Optional[Participant]], None]] = []

    def for_class(self, class_id: int) -> Optional[Room]:
        """The class's live room; one that is ending is not (the next lesson may start)."""
        return next((r for r in self.by_lesson.values()
                     if r.lesson.class_id == class_id and r.ending is None), None)

    def for_student(self, class_id: int) -> Optional[Room]:
        """The room a student of this class joins now: its live room, None (wait for the
        lesson), or ``lesson_over`` while the class's lesson is ending (closing, not gone)."""
        room = self.for_class(class_id)
        if room is None and any(r.lesson.class_id == class_id
                                for r in (*self.by_lesson.values(), *self.closing.values())):
            raise AppError("lesson_over", "This lesson has ended or was cancelled.", status=410)
        return room

    async def wait_for_class(self, class_id: int) -> Room:
        """Wait until a lesson of this class goes live (students who came early)."""
        while True:
            room = self.for_class(class_id)
            if room is not None:
                return room
            event = self._class_started.setdefault(class_id, asyncio.Event())
            await event.wait()

    def reserve_wait(self, class_id: int, address: str) -> None:
        """Count one more student waiting for this class to start, within the same budgets as
        the room's seats (``students_per_lesson`` in all, ``students_per_address`` from one
        address); over budget: ``room_full`` / ``too_many_from_address``, nothing counted."""
        waiting = self._waiting.setdefault(class_id, {})
        if sum(waiting.values()) >= self._settings.students_per_lesson:
            raise AppError("room_full", "This lesson is full.", status=429)
        if waiting.get(address, 0) >= self._settings.students_per_address:
            raise AppError("too_many_from_address", "Too many students from this network "
                           "are in this lesson.", status=429)
        waiting[address] = waiting.get(address, 0) + 1

    def release_wait(self, class_id: int, address: str) -> None:
        waiting = self._waiting.get(class_id, {})
        waiting[address] = waiting.get(address, 0) - 1
        if waiting[address] <= 0:
            del waiting[address]
        if not waiting:
            self._waiting.pop(class_id, None)

    def load(self) -> Load:
        """What this process holds, for placement (``placement.py``): the classes with a room
        (live or still closing) or with students waiting, and the students seated."""
        rooms = (*self.by_lesson.values(), *self.closing.values())
        return Load(frozenset({r.lesson.class_id for r in rooms} | set(self._waiting)),
                    sum(len(r.students) for r in self.by_lesson.values()))

    def find_resume(self, token: str) -> Optional[Room]:
        """The live room whose seat (or kicked student) this ``resume`` token is."""
        return next((r for r in self.by_lesson.values()
                     if r.ending is None and r.seats.holds_resume(token)), None)

    def find_listener(self, token: str) -> Optional[tuple[Room, Participant]]:
        for room in self.by_lesson.values():
            for p in room.students.values():
                if p.listen_token == token:
                    return room, p
        return None

    async def open(self, lesson_id: int, viewer: ClassAccess) -> Room:
        """The teacher (or an admin) opens a lesson: start its room, or rejoin the running one."""
        lock = self._starting.setdefault(lesson_id, asyncio.Lock())
        async with lock:
            # The lesson's previous room, if it is still closing, finishes first: its
            # recording is never moved aside (``start_recording``) while it is being written.
            previous = self.closing.get(lesson_id) or self.by_lesson.get(lesson_id)
            if previous is not None and previous.ending is not None:
                await asyncio.wait({previous.ending})
            info = await self._check_startable(lesson_id, viewer)
            room = self.by_lesson.get(lesson_id)
            if room is not None and room.ending is None:
                return room
            room = Room(info, self._sessions, self._settings, worker=self._worker,
                        on_closed=self._closed, on_event=self._notify)
            self.by_lesson[lesson_id] = room
            await room.start()
            event = self._class_started.pop(info.class_id, None)
            if event is not None:
                event.set()
            log.info("lesson live", extra={"lesson_id": lesson_id})
            return room

    async def _check_startable(self, lesson_id: int, viewer: ClassAccess) -> LessonInfo:
        async with self._sessions() as db:
            # The same check as ``office.lookup.get_lesson`` (the live layer may not import the
            # office): an unknown id and another class's lesson both answer 404.
            lesson = await load(db, Lesson, lesson_id)
            if lesson is None:
                raise AppError("not_found", "Not found: {what}", status=404, what="lesson")
            classroom = lesson.classroom
            viewer.require_class(classroom)
            if lesson.state in (LessonState.ended, LessonState.cancelled):
                raise AppError("lesson_over", "This lesson has ended or was cancelled.", status=410)
            if lesson.state == LessonState.scheduled:
                now = utcnow()
                if not (lesson.starts_at - START_EARLY <= now <= lesson.ends_at + START_LATE):
                    raise AppError("not_now", "This lesson is not scheduled for now.", status=409)
                other = self.for_class(classroom.id)
                if other is not None and other.lesson.id != lesson_id:
                    raise AppError("class_busy", "Another lesson of this class is live.", status=409)
                lesson.state = LessonState.live
                lesson.started_at = now
                await db.commit()
            teacher = await db.get(User, lesson.teacher_id) if lesson.teacher_id else None
            return LessonInfo(id=lesson.id, class_id=classroom.id, school_id=classroom.school_id,
                              title=lesson.title or classroom.name,
                              class_name=classroom.name,
                              teacher_name=teacher.display_name if teacher else "",
                              teacher_id=lesson.teacher_id)

    def _notify(self, kind: str, room: Room, p: Optional[Participant]) -> None:
        for observer in self.observers:
            try:
                observer(kind, room, p)
            except Exception:  # an observer's bug must not break a join or an ending
                log.exception("room observer failed", extra={"lesson_id": room.lesson.id})

    def _closed(self, room: Room) -> None:
        """A room's lesson is marked ended: no longer live, but kept as closing (and awaited at
        shutdown) until its connections and files are closed."""
        if self.by_lesson.get(room.lesson.id) is room:
            del self.by_lesson[room.lesson.id]
        self.closing[room.lesson.id] = room
        if room.ending is not None:
            self._ending.add(room.ending)
            room.ending.add_done_callback(self._ending.discard)
            room.ending.add_done_callback(lambda _: self._gone(room))

    def _gone(self, room: Room) -> None:
        if self.closing.get(room.lesson.id) is room:
            del self.closing[room.lesson.id]
        lock = self._starting.get(room.lesson.id)
        if lock is not None and not lock.locked():
            del self._starting[room.lesson.id]

    def track_user(self, user_id: int, session_key: str, outbox: Outbox) -> None:
        self._user_sockets.setdefault(user_id, []).append((session_key, outbox))

    def forget_user(self, user_id: int, outbox: Outbox) -> None:
        left = [(k, o) for k, o in self._user_sockets.get(user_id, []) if o is not outbox]
        if left:
            self._user_sockets[user_id] = left
        else:
            self._user_sockets.pop(user_id, None)

    def close_user(self, user_id: int, session_key: Optional[str] = None) -> int:
        """Close the open sockets of this user (of one session only, when given): their login
        ended. Code 4401, as for a hello without login; the lesson itself goes on (the teacher's
        seat waits ``grace_seconds`` for a new login). Returns how many were closed."""
        closing = [(k, o) for k, o in self._user_sockets.get(user_id, [])
                   if session_key is None or k == session_key]
        for _, outbox in closing:
            outbox.close(4401, "logged out")
            self.forget_user(user_id, outbox)
        return len(closing)

    async def shutdown(self) -> None:
        """Server stopping: every live lesson ends cleanly (attendance and recording kept). A
        node of a cluster (``--redis-url``) hands its lessons over instead: the cluster goes on,
        so its lessons go on, on another node."""
        rooms = list(self.by_lesson.values())
        handing_over = bool(self._settings.redis_url)
        await asyncio.gather(*(room.hand_over() if handing_over else room.end("server_stopping")
                               for room in rooms),
                             *list(self._ending), return_exceptions=True)

    async def end_orphans(self) -> list[int]:
        """At start: lessons a crash left "live" have no room any more; mark them ended."""
        async with self._sessions() as db:
            live = select(Lesson).where(Lesson.state == LessonState.live)
            lessons = (await db.execute(live)).scalars().all()
            for lesson in lessons:
                lesson.state = LessonState.ended
                lesson.ended_at = utcnow()
            await db.commit()
            return [lesson.id for lesson in lessons]



ROOMS = web.AppKey("rooms", Rooms)
