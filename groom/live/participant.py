"""Who is in a live room: a participant, their way back (the outbox), and their time.

A participant outlives their WebSocket (a student who drops keeps their place, tier and
attendance and comes back with ``resume``), so the time they were present and the time they
spent on each tier are counted here, across reconnects, for the attendance record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack

from groom.core.models import utcnow

from .adaptation import TierController
from .ingress import OpusIngress
from .sender import StudentSender


class Outbox(Protocol):
    """A participant's way back: ``send`` never blocks; ``close`` ends the socket."""

    def send(self, message: dict[str, Any]) -> None: ...

    def send_text(self, text: str, kind: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class LessonInfo:
    id: int
    class_id: int
    school_id: int
    title: str
    class_name: str
    teacher_name: str
    teacher_id: Optional[int] = None  # the class's teacher: may take the teacher's seat over

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "class_name": self.class_name,
                "teacher_name": self.teacher_name}


@dataclass
class Participant:
    id: str
    role: str  # "teacher" or "student"
    name: str
    key: str  # attendance key, stable across reconnects
    address: str = ""  # the client address (IPv6: /64) a student joined from: per-address budget
    student_id: Optional[int] = None
    resume: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    listen_token: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    outbox: Optional[Outbox] = None
    pc: Optional[RTCPeerConnection] = None
    sender: Optional[StudentSender] = None
    controller: TierController = field(default_factory=TierController)
    hand_since: Optional[float] = None
    joined_at: dt.datetime = field(default_factory=utcnow)
    present_since: Optional[float] = None  # monotonic, while the socket is attached
    seconds_present: float = 0.0
    tier_seconds: dict[str, float] = field(default_factory=dict)
    tier_since: Optional[float] = None
    bytes_before: int = 0  # data sent over earlier peer connections
    last_client: dict[str, float] = field(default_factory=dict)  # cumulative figures, for deltas
    detached_task: Optional[asyncio.Task[None]] = None
    mic: Optional[OpusIngress] = None  # the student's microphone while holding the floor
    hears: Optional[MediaStreamTrack] = None  # the teacher's return audio (the floor student)

    @property
    def connected(self) -> bool:
        return self.sender is not None and self.sender.ready

    def data_used(self) -> int:
        return self.bytes_before + (self.sender.data_used() if self.sender else 0)

    def send(self, message: dict[str, Any]) -> None:
        if self.outbox is not None:
            self.outbox.send(message)

    def present_seconds(self, now: float) -> float:
        return self.seconds_present + (now - self.present_since if self.present_since else 0.0)

    def tier_time(self, now: float, current_tier: Optional[str]) -> dict[str, float]:
        """Seconds per tier so far, the running stretch on ``current_tier`` included."""
        tiers = dict(self.tier_seconds)
        if self.tier_since is not None and current_tier is not None:
            tiers[current_tier] = tiers.get(current_tier, 0.0) + now - self.tier_since
        return tiers

    def close_tier_time(self, now: float, current_tier: Optional[str]) -> None:
        """Book the running stretch on a tier (before a move, a drop or the end)."""
        self.tier_seconds = self.tier_time(now, current_tier)
        if self.tier_since is not None:
            self.tier_since = now

    def leave_time(self, now: float, current_tier: Optional[str]) -> None:
        self.seconds_present = self.present_seconds(now)
        self.present_since = None
        self.close_tier_time(now, current_tier)
