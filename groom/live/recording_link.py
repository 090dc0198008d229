"""The live room's link to its recording: the recorder on a tier, and the lesson timeline.

A live lesson is recorded as it happens: the recorder is one more subscriber of the recording
tier (``tiers.RECORDING_TIER``, what most students hear), so recording costs no encoding of its
own in a class on that tier, and every event the
class saw (slides, ink, chat, polls, hands, the floor) goes into the timeline, which writes it
beside the audio and into the database. This part owns both for one room: it starts them when
the lesson goes live, is where the room's events go (``add``), and stops them, in order, when
the lesson closes (timeline flushed first, then the recorder unsubscribed, closed and queued
for post-processing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.recordings.jobs import JobWorker
from groom.recordings.postprocess import start_recording, stop_recording
from groom.recordings.recorder import Recorder
from groom.recordings.timeline import Timeline

from .tiers import RECORDING_TIER, TierSet


class RecordingLink:
    def __init__(self, lesson_id: int, started: float, tiers: TierSet,
                 sessions: async_sessionmaker[AsyncSession], data_dir: Path,
                 worker: Optional[JobWorker]) -> None:
        self.lesson_id = lesson_id
        self.started = started
        self._tiers = tiers
        self._sessions = sessions
        self._data_dir = data_dir
        self._worker = worker
        self.recorder: Optional[Recorder] = None
        self.timeline = Timeline(lesson_id, started, sessions)

    async def start(self) -> None:
        """Open the recording, subscribe it to the recording tier, start the timeline's writer."""
        self.recorder = await start_recording(self._sessions, self._data_dir, self.lesson_id,
                                              self.started)
        tier = RECORDING_TIER if RECORDING_TIER in self._tiers.encoders else self._tiers.specs[-1].name
        self._tiers.subscribe(self.recorder, tier)
        self.timeline.recorder = self.recorder
        self.timeline.start()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        """One event of the lesson, at the time it happens."""
        self.timeline.add(kind, data)

    async def stop(self) -> None:
        """At the close: the timeline's last rows, then the recording closed and queued."""
        await self.timeline.stop()
        if self.recorder is not None:
            self._tiers.unsubscribe(self.recorder)
            await stop_recording(self._sessions, self.lesson_id, self.recorder, self._worker)
