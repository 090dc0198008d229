"""The lesson's event timeline: everything the class saw, in order, with its time.

Events go two places: the recorder's ``timeline.jsonl`` beside the audio (so a recording can be
replayed, and survives a crash with the audio), and ``LessonEvent`` rows in the database (so
the office can read a lesson's history). Rows are written in batches by one task, never from
the message path, so a burst of ink costs one transaction, not one per stroke.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.models import LessonEvent
from groom.core.tasks import cancel

from .recorder import Recorder

log = logging.getLogger("groom.recordings.timeline")

FLUSH_SECONDS = 2.0
MAX_PENDING = 10_000  # beyond this (a stuck database), the oldest unsaved rows are dropped


class Timeline:
    def __init__(self, lesson_id: int, started: float,
                 sessions: async_sessionmaker[AsyncSession]) -> None:
        self.lesson_id = lesson_id
        self.started = started
        self._sessions = sessions
        self.recorder: Optional[Recorder] = None
        self._pending: list[LessonEvent] = []
        self._task: Optional[asyncio.Task[None]] = None
        self._saving: Optional[asyncio.Task[None]] = None  # the batch being committed, if any

    def now_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def add(self, kind: str, data: dict[str, Any]) -> None:
        at_ms = self.now_ms()
        if self.recorder is not None:
            self.recorder.add_event(at_ms, kind, data)
        if len(self._pending) >= MAX_PENDING:
            del self._pending[0]
        self._pending.append(LessonEvent(lesson_id=self.lesson_id, at_ms=at_ms, kind=kind, data=data))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"timeline-{self.lesson_id}")

    async def stop(self) -> None:
        """Stop the writer, let a commit it started finish, then save what is left.

        The commit is not cancelled halfway: its rows would be lost, and a database call cut
        mid-transaction leaves the driver's connection broken (as attendance writes once did)."""
        await cancel(self._task)
        if self._saving is not None:
            await asyncio.wait({self._saving})
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            # Its own task: cancelling this loop (``stop``) leaves a started commit running.
            self._saving = asyncio.create_task(self.flush(), name=f"timeline-{self.lesson_id}-save")
            await asyncio.wait({self._saving})

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            async with self._sessions() as db:
                db.add_all(batch)
                await db.commit()
        except Exception:
            log.exception("timeline rows not saved", extra={"lesson_id": self.lesson_id,
                                                           "events": len(batch)})
