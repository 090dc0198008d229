"""The live room's parts, each alone: seats, the floor, the class board, attendance saves and
the recording link. Real objects throughout; the pure parts need no server, socket, peer
connection or event loop, and the two that write (attendance, recording) use a real SQLite
database migrated like the server's."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core import db
from groom.core.errors import AppError
from groom.core.models import (
    Attendance,
    Classroom,
    Lesson,
    LessonEvent,
    Recording,
    RecordingState,
    School,
    Slide,
    utcnow,
)
from groom.live.adaptation import Timing
from groom.live.attendance import AttendanceBook
from groom.live.attendance_saves import AttendanceSaves
from groom.live.classboard import ClassBoard
from groom.live.floor import Floor
from groom.live.participant import Participant
from groom.live.recording_link import RecordingLink
from groom.live.seats import Seats
from groom.live.tiers import RECORDING_TIER, TierSet
from groom.recordings.recorder import TIMELINE, recording_dir


class Inbox:
    """A participant's way back, keeping what it was sent."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.closed: Optional[tuple[int, str]] = None

    def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def send_text(self, text: str, kind: str) -> None:
        message = json.loads(text)
        assert message["type"] == kind
        self.messages.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.messages]


def student(name: str = "Noy", key: str = "guest:1") -> Participant:
    return Participant(id=f"s-{name}", role="student", name=name, key=key)


def slide(n: int) -> Slide:
    return Slide(index=n, width=1280, height=720, small=f"s{n}.webp", large=f"l{n}.webp",
                 thumb=f"t{n}.webp", jpeg=f"j{n}.jpg")


# ---- the floor -------------------------------------------------------------------------------

def test_hands_queue_in_the_order_they_went_up() -> None:
    floor = Floor()
    for pid in ("a", "b", "c"):
        assert floor.set_hand(pid, True)
    assert not floor.set_hand("a", True)  # raising again changes nothing, keeps the place
    assert floor.queue() == ["a", "b", "c"]
    assert floor.set_hand("b", False)
    assert not floor.set_hand("b", False)
    assert floor.set_hand("b", True)  # down and up again: the back of the queue
    assert floor.queue() == ["a", "c", "b"]
    assert floor.has_hand("c") and not floor.has_hand("z")


def test_one_floor_at_a_time_and_taking_it_back() -> None:
    floor = Floor()
    assert floor.holder is None
    assert floor.give("a") is None
    assert floor.holds("a")
    assert floor.give("b") == "a"  # giving it to another takes it from the previous holder
    assert floor.holds("b") and not floor.holds("a")
    assert floor.give(None) == "b"  # the teacher takes it back
    assert floor.holder is None and not floor.holds("b")


# ---- seats -----------------------------------------------------------------------------------

def test_room_size_bound_counts_new_people_only() -> None:
    seats = Seats(Timing(), max_students=2)
    a = seats.seat_student("A", "guest:a", None, Inbox(), None)
    seats.seat_student("B", "guest:b", 7, Inbox(), None)
    with pytest.raises(AppError) as full:
        seats.seat_student("C", "guest:c", None, Inbox(), None)
    assert full.value.code == "room_full" and full.value.status == 429
    # Coming back is not a new person: the resume token and the roster card both find the seat.
    assert seats.seat_student("A", "guest:a", None, Inbox(), a.resume) is a
    b = seats.seat_student("B again", "student:7", 7, Inbox(), None)
    assert b.name == "B" and len(seats.students) == 2


def test_resume_keeps_the_seat_and_replaces_the_old_socket() -> None:
    seats = Seats(Timing())
    first, second = Inbox(), Inbox()
    p = seats.seat_student("Noy", "guest:1", None, first, None)
    assert p.present_since is not None and p.controller is not None
    assert seats.seat_student("Noy", "guest:1", None, second, p.resume) is p
    assert p.outbox is second and first.closed == (4409, "replaced by a newer connection")
    stranger = seats.seat_student("Noy", "guest:2", None, Inbox(), "not-the-token")
    assert stranger is not p and len(seats.students) == 2


def test_kick_tells_the_student_and_gives_up_the_seat() -> None:
    seats = Seats(Timing())
    inbox = Inbox()
    p = seats.seat_student("Noy", "guest:1", None, inbox, None)
    seats.eject(p)
    assert inbox.messages == [{"type": "ended", "reason": "kicked"}]
    assert inbox.closed == (4403, "removed by the teacher") and p.outbox is None
    assert seats.student(p.id) is p  # the room closes their media before unseating them
    seats.unseat(p.id)
    with pytest.raises(AppError) as gone:
        seats.student(p.id)
    assert gone.value.code == "unknown_participant" and gone.value.status == 404


def test_everyone_broadcast_and_the_teachers_list() -> None:
    seats = Seats(Timing())
    t_inbox, s_inbox = Inbox(), Inbox()
    assert not seats.teacher_present and seats.everyone() == []
    teacher = seats.seat_teacher("Ms Ket", 3, t_inbox)
    assert seats.seat_teacher("Ms Ket", 3, Inbox()) is teacher  # one teacher's seat
    teacher.outbox = t_inbox
    p = seats.seat_student("Noy", "guest:1", None, s_inbox, None)
    gone = seats.seat_student("Gone", "guest:2", None, Inbox(), None)
    gone.outbox = None
    assert seats.everyone() == [teacher, p, gone]
    assert seats.teacher_present and seats.students_present() == 1
    seats.broadcast({"type": "pointer", "x": 1, "y": 2}, students_only=True)
    seats.broadcast({"type": "room", "floor": None})
    assert t_inbox.kinds() == ["room"] and s_inbox.kinds() == ["pointer", "room"]
    floor = Floor()
    floor.set_hand(p.id, True)
    listing = seats.listing(floor.has_hand)
    assert [row["id"] for row in listing] == [p.id]  # gone and not connected: left off
    assert listing[0]["hand"] is True and listing[0]["connected"] is False


# ---- the class board -------------------------------------------------------------------------

class Room:
    """What the class board talks to: everyone, the teacher, the timeline."""

    def __init__(self) -> None:
        self.everyone: list[tuple[dict[str, Any], bool]] = []
        self.teacher: list[dict[str, Any]] = []
        self.timeline: list[tuple[str, dict[str, Any]]] = []

    def broadcast(self, message: dict[str, Any], *, students_only: bool = False) -> None:
        self.everyone.append((message, students_only))

    def board(self) -> ClassBoard:
        return ClassBoard(self.broadcast, self.teacher.append,
                          lambda kind, data: self.timeline.append((kind, data)))


def test_late_joiner_snapshot_follows_slides_ink_chat_and_polls() -> None:
    room = Room()
    board = room.board()
    assert board.snapshot() == {"deck": None, "slide": None,
                                "chat": {"enabled": True, "recent": []}, "poll": None}
    board.load_deck(5, "Plants", [slide(0), slide(1)])
    assert [m["type"] for m, _ in room.everyone] == ["deck", "slide"]
    board.show_slide(1)
    board.add_ink([10, 10, 20, 20], 1, 2)
    board.post_chat(Participant(id="t-1", role="teacher", name="Ms Ket", key="teacher:3"), "Look")
    board.set_chat(False)
    board.ask_poll("Is a tomato a fruit?", ["Yes", "No"])
    snap = board.snapshot()
    assert snap["deck"]["deck_id"] == 5 and snap["deck"]["title"] == "Plants"
    assert len(snap["deck"]["slides"]) == 2
    assert snap["slide"]["page"] == 1 and snap["slide"]["large"] == "l1.webp"
    assert snap["slide"]["ink"] == [{"points": [10, 10, 20, 20], "color": 1, "width": 2}]
    assert snap["chat"]["enabled"] is False
    assert [m["text"] for m in snap["chat"]["recent"]] == ["Look"]
    assert snap["poll"]["question"] == "Is a tomato a fruit?" and snap["poll"]["open"]
    board.show_slide(0)  # ink belongs to its slide
    assert board.snapshot()["slide"]["ink"] == []
    board.show_slide(1)
    board.clear_ink()
    assert board.snapshot()["slide"]["ink"] == []
    board.close_poll(show=False)
    assert board.snapshot()["poll"] is None  # a closed poll is not sent to late joiners
    assert [kind for kind, _ in room.timeline] == [
        "slide", "slide", "ink", "chat", "chat_enabled", "poll", "slide", "slide", "ink_clear",
        "poll_result"]


def test_board_messages_go_to_the_right_people() -> None:
    room = Room()
    board = room.board()
    board.load_deck(5, "Plants", [slide(0)])
    room.everyone.clear()
    board.add_ink([1, 2], 0, 0)
    board.point(3, 4)
    assert [(m["type"], only) for m, only in room.everyone] == [("ink", True), ("pointer", True)]
    assert not any(kind == "pointer" for kind, _ in room.timeline)  # the pointer is transient
    board.ask_poll("Sun or moon?", ["Sun", "Moon"])
    inbox = Inbox()
    voter = student()
    voter.outbox = inbox
    poll_id = board.snapshot()["poll"]["id"]
    board.vote(voter, poll_id, 1)
    assert inbox.messages == [{"type": "voted", "poll_id": poll_id, "choice": 1}]
    with pytest.raises(AppError) as twice:
        board.vote(voter, poll_id, 0)
    assert twice.value.code == "already_voted"
    assert [m["counts"] for m in room.teacher if m["type"] == "poll_counts"] == [[0, 0], [0, 1]]
    room.everyone.clear()
    board.close_poll(show=False)  # results kept for the teacher only...
    assert room.everyone == [] and room.teacher[-1]["type"] == "poll_result"
    board.close_poll(show=True)  # ...until shown to the class
    assert room.everyone[-1][0]["type"] == "poll_result" and room.everyone[-1][0]["shown"]


def test_chat_off_stops_students_not_the_teacher() -> None:
    room = Room()
    board = room.board()
    board.set_chat(False)
    with pytest.raises(AppError) as off:
        board.post_chat(student(), "hello")
    assert off.value.code == "chat_off"
    board.post_chat(Participant(id="t-1", role="teacher", name="Ms Ket", key="teacher:3"), "hi")
    assert room.everyone[-1][0] == {"type": "chat", "from": "Ms Ket", "id": "t-1", "text": "hi",
                                    "teacher": True}


# ---- attendance saves and the recording link (a real database) -------------------------------

@pytest.fixture
async def lesson(tmp_path: Path) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], int]]:
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path}/t.sqlite3")
    await db.migrate(engine)
    sessions = db.make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        school = School(name="Ban Na School")
        session.add(school)
        await session.flush()
        classroom = Classroom(school_id=school.id, name="P5 science", join_code="AAA111")
        session.add(classroom)
        await session.flush()
        now = utcnow()
        row = Lesson(class_id=classroom.id, starts_at=now, ends_at=now + dt.timedelta(hours=1))
        session.add(row)
        await session.flush()
        lesson_id = row.id
    yield sessions, lesson_id
    await engine.dispose()


async def test_attendance_saves_on_join_periodically_and_at_the_end(
        lesson: tuple[async_sessionmaker[AsyncSession], int]) -> None:
    sessions, lesson_id = lesson
    jobs: list[asyncio.Task[None]] = []

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
        jobs.append(asyncio.create_task(coro, name=name))

    seats = Seats(Timing())
    saves = AttendanceSaves(AttendanceBook(lesson_id, sessions), seats, lambda p: None, spawn,
                            every=30.0)
    p = seats.seat_student("Noy", "guest:1", None, Inbox(), None)
    saves.soon(p)
    saves.soon(p)  # a join and a leave in quick succession: one row, one writer at a time
    assert not saves.tick(saves._last_save + 29.0)  # not due yet
    assert saves.tick(saves._last_save + 31.0) and len(jobs) == 3
    await asyncio.gather(*jobs)  # the room lets these finish rather than cancel them

    async def rows() -> list[Attendance]:
        async with sessions() as session:
            return list((await session.scalars(select(Attendance))).all())

    [row] = await rows()
    assert row.participant_key == "guest:1" and row.name == "Noy" and row.left_at is None
    await saves.save_all(final=True)
    [row] = await rows()
    assert row.left_at is not None and row.seconds_present >= 0


async def test_recording_link_records_the_timeline_and_closes(
        lesson: tuple[async_sessionmaker[AsyncSession], int], tmp_path: Path) -> None:
    sessions, lesson_id = lesson
    tiers = TierSet()
    link = RecordingLink(lesson_id, time.monotonic(), tiers, sessions,
                         tmp_path / "data", None)
    await link.start()
    assert link.recorder is not None and tiers.tier_of(link.recorder) == RECORDING_TIER
    assert tiers.running == (RECORDING_TIER,)  # nobody else listens: one encoder runs
    link.add("slide", {"deck_id": 5, "page": 0})
    await link.stop()
    assert tiers.tier_of(link.recorder) is None
    lines = (recording_dir(tmp_path / "data", lesson_id) / TIMELINE).read_text().splitlines()
    assert any(json.loads(line).get("kind") == "slide" for line in lines)
    async with sessions() as session:
        events = (await session.scalars(select(LessonEvent))).all()
        recording = await session.scalar(select(Recording))
    assert [e.kind for e in events] == ["slide"]
    assert recording is not None and recording.state != RecordingState.recording
    tiers.close()
