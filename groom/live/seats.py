"""Who is in a live room: the teacher's seat, the students' seats, and the way back to each.

The room used to keep this in the middle of its media and timers; it lives here so the rules
of joining can be read (and tested) alone: a student who comes back with their ``resume``
token or their roster card gets their old seat (tier, attendance and all) instead of a new one;
joins that are new people are bounded (``max_students``); a newer socket replaces an older one;
a kicked student is told why, their socket closed and their seat given up. No peer connection
or event loop is needed here: media and timers stay with the room.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Optional

from groom.core.errors import AppError

from .adaptation import TierController, Timing
from .participant import Outbox, Participant

MAX_STUDENTS = 2000  # joins without a resume token are new people: bound them


class Seats:
    def __init__(self, timing: Timing, *, max_students: int = MAX_STUDENTS) -> None:
        self._timing = timing
        self.max_students = max_students
        self.teacher: Optional[Participant] = None
        self.students: dict[str, Participant] = {}

    def everyone(self) -> list[Participant]:
        return ([self.teacher] if self.teacher else []) + list(self.students.values())

    # ---- sitting down and getting up ---------------------------------------------------------

    def attach(self, p: Participant, outbox: Outbox) -> None:
        """Bind a (new) socket to a participant; an older socket of theirs is closed."""
        if p.outbox is not None and p.outbox is not outbox:
            p.outbox.close(4409, "replaced by a newer connection")
        p.outbox = outbox
        if p.present_since is None:
            p.present_since = time.monotonic()
        if p.detached_task is not None:
            p.detached_task.cancel()
            p.detached_task = None

    def seat_teacher(self, name: str, user_id: int, outbox: Outbox) -> Participant:
        """The teacher's seat: one per room, kept across the teacher's reconnects."""
        if self.teacher is None:
            self.teacher = Participant(id="t-" + secrets.token_urlsafe(6), role="teacher",
                                       name=name, key=f"teacher:{user_id}")
        self.attach(self.teacher, outbox)
        return self.teacher

    def returning(self, resume: Optional[str], student_id: Optional[int]) -> Optional[Participant]:
        """The seat of a student coming back: same ``resume`` token or same roster card."""
        return next((s for s in self.students.values()
                     if (resume and secrets.compare_digest(s.resume, resume)) or
                     (student_id is not None and s.student_id == student_id)), None)

    def seat_student(self, name: str, key: str, student_id: Optional[int], outbox: Outbox,
                     resume: Optional[str]) -> Participant:
        """A student joins (a new seat, if the room has one left) or comes back to theirs."""
        p = self.returning(resume, student_id)
        if p is None:
            if len(self.students) >= self.max_students:
                raise AppError("room_full", "This lesson is full.", status=429)
            p = Participant(id="s-" + secrets.token_urlsafe(6), role="student", name=name,
                            key=key, student_id=student_id,
                            controller=TierController(timing=self._timing))
            self.students[p.id] = p
        self.attach(p, outbox)
        return p

    def student(self, pid: str) -> Participant:
        p = self.students.get(pid)
        if p is None:
            raise AppError("unknown_participant", "No such participant.", status=404)
        return p

    def eject(self, p: Participant) -> None:
        """Tell a kicked student why and close their socket (their seat is given up later,
        once their media is closed)."""
        p.send({"type": "ended", "reason": "kicked"})
        if p.outbox is not None:
            p.outbox.close(4403, "removed by the teacher")
            p.outbox = None

    def unseat(self, pid: str) -> None:
        self.students.pop(pid, None)

    # ---- what the room looks like --------------------------------------------------------------

    @property
    def teacher_present(self) -> bool:
        return bool(self.teacher and self.teacher.outbox)

    def students_present(self) -> int:
        return sum(1 for s in self.students.values() if s.outbox)

    def broadcast(self, message: dict[str, Any], *, students_only: bool = False) -> None:
        """One message to everyone in the room, serialized once (not once per student)."""
        text = json.dumps(message, ensure_ascii=False)
        for p in (self.students.values() if students_only else self.everyone()):
            if p.outbox is not None:
                p.outbox.send_text(text, message["type"])

    def listing(self, has_hand: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The teacher's participant list: everyone still here or still connected."""
        listing = []
        for p in self.students.values():
            if p.outbox is None and not p.connected:
                continue  # gone (attendance keeps them); the list stays as long as the class
            q = p.controller.link_quality()
            listing.append({"id": p.id, "name": p.name, "tier": p.controller.tier,
                            "quality": q.grade.value, "loss_pct": q.loss_pct,
                            "jitter_ms": q.jitter_ms, "rtt_ms": q.rtt_ms,
                            "hand": has_hand(p.id),
                            "connected": p.outbox is not None and p.connected})
        return listing
