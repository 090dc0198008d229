"""The registry of live rooms in this process: start, find, wait for, and shut down.

A room lives in one process (docs/design.md, "Scale"); many rooms run side by side, isolated: each has
its own mixer, tiers and participants, and nothing is shared between them but the event loop.
Students who arrive before the teacher wait on a per-class event and are let in at start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Optional

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.auth import Viewer
from groom.core.config import Settings
from groom.core.db import load
from groom.core.errors import AppError
from groom.core.models import Lesson, LessonState, User, utcnow
from groom.recordings.jobs import JobWorker

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

    def for_class(self, class_id: int) -> Optional[Room]:
        return next((r for r in self.by_lesson.values() if r.lesson.class_id == class_id), None)

    async def wait_for_class(self, class_id: int) -> Room:
        """Wait until a lesson of this class goes live (students who came early)."""
        while True:
            room = self.for_class(class_id)
            if room is not None:
                return room
            event = self._class_started.setdefault(class_id, asyncio.Event())
            await event.wait()

    def find_listener(self, token: str) -> Optional[tuple[Room, Participant]]:
        for room in self.by_lesson.values():
            for p in room.students.values():
                if p.listen_token == token:
                    return room, p
        return None

    async def open(self, lesson_id: int, viewer: Viewer) -> Room:
        """The teacher (or an admin) opens a lesson: start its room, or rejoin the running one."""
        lock = self._starting.setdefault(lesson_id, asyncio.Lock())
        async with lock:
            info = await self._check_startable(lesson_id, viewer)
            room = self.by_lesson.get(lesson_id)
            if room is not None:
                return room
            room = Room(info, self._sessions, self._settings, worker=self._worker,
                        on_closed=self._closed)
            self.by_lesson[lesson_id] = room
            await room.start()
            event = self._class_started.pop(info.class_id, None)
            if event is not None:
                event.set()
            log.info("lesson live", extra={"lesson_id": lesson_id})
            return room

    async def _check_startable(self, lesson_id: int, viewer: Viewer) -> LessonInfo:
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
                              teacher_name=teacher.display_name if teacher else "")

    def _closed(self, room: Room) -> None:
        """A room started ending: out of the registry, but awaited at shutdown until done."""
        self.by_lesson.pop(room.lesson.id, None)
        self._starting.pop(room.lesson.id, None)
        if room.ending is not None:
            self._ending.add(room.ending)
            room.ending.add_done_callback(self._ending.discard)

    async def shutdown(self) -> None:
        """Server stopping: every live lesson ends cleanly (attendance and recording kept)."""
        rooms = list(self.by_lesson.values())
        await asyncio.gather(*(room.end("server_stopping") for room in rooms),
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
