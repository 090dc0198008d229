"""Attendance rows: who came to a lesson, when, for how long, with how much data, on which tiers.

The live room calls ``save`` when someone joins or leaves, every half minute, and at the end.
One writer at a time: a join and a leave in quick succession must not both insert the row.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.models import Attendance, utcnow

from .participant import Participant


class AttendanceBook:
    def __init__(self, lesson_id: int, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.lesson_id = lesson_id
        self._sessions = sessions
        self._one_writer = asyncio.Lock()

    async def save(self, p: Participant, seconds_present: float, tier_seconds: dict[str, float],
                   *, left: bool) -> None:
        async with self._one_writer, self._sessions() as db:
            row = (await db.execute(select(Attendance).where(
                Attendance.lesson_id == self.lesson_id,
                Attendance.participant_key == p.key))).scalar_one_or_none()
            if row is None:
                row = Attendance(lesson_id=self.lesson_id, participant_key=p.key,
                                 student_id=p.student_id, name=p.name, joined_at=p.joined_at)
                db.add(row)
            row.seconds_present = round(seconds_present, 1)
            row.bytes_sent = p.data_used()
            row.tier_seconds = {k: round(v, 1) for k, v in tier_seconds.items()}
            row.left_at = utcnow() if left else None
            await db.commit()
