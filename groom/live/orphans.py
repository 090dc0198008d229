"""Lessons left "live" by a process that died, when nobody takes them over.

One process repairs what its own crash left at its next start (``Rooms.end_orphans``). With
several processes (``--workers N``, or nodes on Redis) a process that dies is not the one that
starts next, and the others' lessons are live for real: a start must not end them. A killed
process's lesson usually comes back by itself (its teacher's page reconnects through a live
process, the class is placed again and the same lesson goes on, its recording in a second part).
When nobody comes back, the lesson would stay "live" forever: listed as running, its recording
never closed or processed.

So every process of a cluster sweeps, every ``SWEEP_S``: a lesson in the database as live whose
class has no owner (no live process holds it) for longer than the teacher's grace plus
``MARGIN_S`` is ended and its recording repaired and queued, exactly as a room's own end would.
The end is claimed in the database (``UPDATE ... WHERE state = 'live'``), so when two processes
sweep the same lesson, one of them does the work. When placement does not answer (Redis away),
nothing is swept: a lesson whose owner cannot be seen is not an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Optional

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.models import Lesson, LessonState, utcnow
from groom.core.tasks import cancel
from groom.recordings.jobs import JobWorker
from groom.recordings.postprocess import recover_lesson_recording

from .placement import Placement

log = logging.getLogger("groom.live.orphans")

SWEEP_S = 5.0
MARGIN_S = 5.0  # beyond the teacher's grace: a placement made just now has time to open its room


class OrphanSweeper:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], data_dir: Path,
                 placement: Placement, worker: Optional[JobWorker], grace_s: float) -> None:
        self._sessions = sessions
        self._data_dir = data_dir
        self._placement = placement
        self._worker = worker
        self.after_s = grace_s + MARGIN_S
        self._unowned_since: dict[int, float] = {}  # lesson id -> first seen without an owner
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orphan-sweeper")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except LookupError:
                self._unowned_since.clear()  # placement away: start counting again after it
            except Exception:  # a database hiccup: the next sweep tries again
                log.exception("orphan sweep failed")

    async def sweep(self, now: Optional[float] = None) -> list[int]:
        """One pass; returns the lessons ended in it."""
        now = time.monotonic() if now is None else now
        async with self._sessions() as db:
            live = (await db.execute(select(Lesson.id, Lesson.class_id)
                                     .where(Lesson.state == LessonState.live))).all()
        unowned: dict[int, float] = {}
        for lesson_id, class_id in live:
            if await self._placement.owner(class_id) is None:  # LookupError: Redis away
                unowned[lesson_id] = self._unowned_since.get(lesson_id, now)
        self._unowned_since = unowned
        ended = [lesson_id for lesson_id, since in unowned.items() if now - since >= self.after_s]
        return [lesson_id for lesson_id in ended if await self._end(lesson_id)]

    async def _end(self, lesson_id: int) -> bool:
        async with self._sessions.begin() as db:
            claimed = await db.execute(update(Lesson)
                                       .where(Lesson.id == lesson_id, Lesson.state == LessonState.live)
                                       .values(state=LessonState.ended, ended_at=utcnow()))
        self._unowned_since.pop(lesson_id, None)
        if not getattr(claimed, "rowcount", 0):
            return False  # another process ended it, or its teacher came back just now
        log.warning("lesson left live by a gone process; ended", extra={"lesson_id": lesson_id})
        await recover_lesson_recording(self._sessions, self._data_dir, lesson_id, self._worker)
        return True
