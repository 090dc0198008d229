"""Who is in a live room: the teacher's seat, the students' seats, and the way back to each.

The room used to keep this in the middle of its media and timers; it lives here so the rules
of joining can be read (and tested) alone: a student who comes back with their ``resume``
token or their roster card gets their old seat (tier, attendance and all) instead of a new one;
so does a guest who comes back under the same name from the same address (IPv6: /64) while
their old seat is not connected (the same name from the same address while it is connected is
refused: ``name_taken``). Joins that are new people are bounded: ``max_students`` seats in all
(``settings.students_per_lesson``), ``per_address`` from one client address
(``settings.students_per_address``: a class behind one school NAT fits). A seat whose socket
and media are both gone gives way to a new student when the room is full, so seats left behind
by a flood of joins cannot keep the class out. A newer socket replaces an older one.

A kicked student is told why, their socket closed and their seat given up, and the kick is
remembered for the lesson: their card, their resume token and their guest key (name + address)
are refused with ``kicked`` from then on.

The teacher's seat belongs to the user who holds it; another user may take it over only if they
are the class's own teacher (an admin who started the lesson for them hands over when they
arrive). Anyone else who passes the class check (an admin, say) is refused with
``teacher_seat_taken`` instead of cutting the teacher off. No peer connection or event loop is
needed here: media and timers stay with the room.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Optional

from groom.core.errors import AppError

from .adaptation import TierController, Timing
from .participant import Outbox, Participant

MAX_STUDENTS = 300  # the room's design size (settings.students_per_lesson)
PER_ADDRESS = 60  # seats from one client address (settings.students_per_address)


class Seats:
    def __init__(self, timing: Timing, *, max_students: int = MAX_STUDENTS,
                 per_address: int = PER_ADDRESS) -> None:
        self._timing = timing
        self.max_students = max_students
        self.per_address = per_address
        self.teacher: Optional[Participant] = None
        self.students: dict[str, Participant] = {}
        self.kicked_keys: set[str] = set()  # student:<id> and guest keys (name + address)
        self.kicked_resumes: set[str] = set()

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

    def seat_teacher(self, name: str, user_id: int, outbox: Outbox,
                     class_teacher_id: Optional[int] = None) -> Participant:
        """The teacher's seat: one per room, kept across the teacher's reconnects; only its
        holder or the class's own teacher may sit in it."""
        key = f"teacher:{user_id}"
        if self.teacher is None:
            self.teacher = Participant(id="t-" + secrets.token_urlsafe(6), role="teacher",
                                       name=name, key=key)
        elif self.teacher.key != key:
            if class_teacher_id is None or user_id != class_teacher_id:
                raise AppError("teacher_seat_taken", "Someone else is teaching this lesson.",
                               status=409)
            self.teacher.name, self.teacher.key = name, key  # the class's teacher takes over
        self.attach(self.teacher, outbox)
        return self.teacher

    def holds_resume(self, resume: str) -> bool:
        """Whether this token is a seat's here, or a kicked student's (refused in seat_student)."""
        return resume in self.kicked_resumes or any(
            secrets.compare_digest(s.resume, resume) for s in self.students.values())

    def returning(self, resume: Optional[str], student_id: Optional[int],
                  key: str = "") -> Optional[Participant]:
        """The seat of a student coming back: same ``resume`` token, same roster card, or (a
        guest) the same key while that seat's socket is gone."""
        for s in self.students.values():
            if (resume and secrets.compare_digest(s.resume, resume)) or \
                    (student_id is not None and s.student_id == student_id):
                return s
        if key.startswith("guest:"):
            for s in self.students.values():
                if s.key == key:
                    if s.outbox is not None:
                        raise AppError("name_taken", "Someone with this name is already in the "
                                       "lesson. Add your family name.", status=409)
                    return s
        return None

    def seat_student(self, name: str, key: str, student_id: Optional[int], outbox: Outbox,
                     resume: Optional[str], address: str = "") -> Participant:
        """A student joins (a new seat, if the room has one left) or comes back to theirs."""
        if key in self.kicked_keys or (resume and resume in self.kicked_resumes):
            raise AppError("kicked", "The teacher removed you from this lesson.", status=403)
        p = self.returning(resume, student_id, key)
        if p is None:
            if address and sum(1 for s in self.students.values()
                               if s.address == address and not self._gone(s)) >= self.per_address:
                raise AppError("too_many_from_address", "Too many students from this network "
                               "are in this lesson.", status=429)
            if len(self.students) >= self.max_students:
                gone = next((s for s in self.students.values() if self._gone(s)), None)
                if gone is None:
                    raise AppError("room_full", "This lesson is full.", status=429)
                self.unseat(gone.id)  # left long ago: attendance kept their row
            p = Participant(id="s-" + secrets.token_urlsafe(6), role="student", name=name,
                            key=key, student_id=student_id, address=address,
                            controller=TierController(timing=self._timing))
            self.students[p.id] = p
        self.attach(p, outbox)
        return p

    @staticmethod
    def _gone(p: Participant) -> bool:
        """Neither a socket nor media: the seat is only a record (attendance has it)."""
        return p.outbox is None and p.pc is None and (p.detached_task is None
                                                      or p.detached_task.done())

    def remember_kick(self, p: Participant) -> None:
        self.kicked_keys.add(p.key)
        self.kicked_resumes.add(p.resume)

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
                            "protected": q.protect, "failed_step_ups": q.failed_step_ups,
                            "capacity_kbps": q.capacity_kbps,
                            "hand": has_hand(p.id),
                            "connected": p.outbox is not None and p.connected})
        return listing
