"""When a live room writes attendance: on a join or a leave, every half minute, and at the end.

``AttendanceBook`` knows how to write one row; this part knows when, and with which figures:
the seconds a student was present and the seconds on each tier, counted up to now, the running
stretch included. Writes started from the message path (a join, a dropped socket) and the
periodic save run as the room's short jobs (``spawn``): the room lets them finish when it
closes instead of cancelling them, because a database call cut halfway leaves the driver's
connection broken. The final save is awaited by the room itself, after everyone has left.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Coroutine, Optional

from .attendance import AttendanceBook
from .participant import Participant
from .seats import Seats

log = logging.getLogger("groom.live.attendance")

SAVE_SECONDS = 30.0  # attendance rows refreshed this often while a lesson runs

Spawn = Callable[[Coroutine[Any, Any, None], str], None]
CurrentTier = Callable[[Participant], Optional[str]]


class AttendanceSaves:
    def __init__(self, book: AttendanceBook, seats: Seats, current_tier: CurrentTier,
                 spawn: Spawn, *, every: float = SAVE_SECONDS) -> None:
        self.book = book
        self._seats = seats
        self._current_tier = current_tier
        self._spawn = spawn
        self.every = every
        self._last_save = time.monotonic()

    def soon(self, p: Participant) -> None:
        """Write one student's row as a room job (someone joined, came back or dropped)."""
        self._spawn(self.save_one(p), "attendance")

    def tick(self, now: float) -> bool:
        """From the room's timer: refresh every row once ``every`` seconds have passed."""
        if now - self._last_save <= self.every:
            return False
        self._last_save = now
        self._spawn(self.save_all(), "attendance")
        return True

    async def save_all(self, final: bool = False) -> None:
        """Every student's row; one that cannot be written (a value the database refuses, a
        dropped connection) is logged and skipped, never stopping the others or the end."""
        for p in list(self._seats.students.values()):
            try:
                await self.save_one(p, final)
            except Exception:
                log.exception("attendance row not saved", extra={"lesson_id": self.book.lesson_id,
                                                                 "participant": p.id})

    async def save_one(self, p: Participant, final: bool = False) -> None:
        now = time.monotonic()
        await self.book.save(p, p.present_seconds(now), p.tier_time(now, self._current_tier(p)),
                             left=final or p.outbox is None)
