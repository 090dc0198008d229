"""A live lesson: the owner that wires its parts together, and every timer and task it runs.

One ``Room`` per live lesson, owned by the ``Rooms`` registry. The room's state lives in parts
that each own one thing and can be read (and most of them tested) alone: ``Seats`` (who is in
the room, resume keys, the size bound), ``Floor`` (raised hands and who may speak),
``ClassBoard`` (slides, ink, chat, polls, and what a late joiner is sent), ``AttendanceSaves``
(when attendance rows are written), ``RecordingLink`` (the recorder and the lesson timeline)
and ``RoomMedia`` (peer connections, the mixer, the tiers, each student's sender). The room
wires them: it decides the order things happen in when someone joins, drops, is kicked or
given the floor, and it owns every timer and task (the 2 s tick, the teacher's grace timer,
each dropped student's media timeout, short jobs such as attendance writes), cancelling or
awaiting each as it closes. Signaling (``signaling.py``) turns WebSocket messages into calls
on the room's public methods; the room talks back through each participant's ``Outbox`` (a
bounded, non-blocking queue).

Stays one module (about 440 lines): what is left here is the ordering between the parts (who is
seated before media starts, what is saved before a kicked student's socket closes) and the tasks
that carry it out; split further, each step would be read in two files.

Participants outlive their WebSocket: a student whose socket drops keeps their place, tier and
attendance, and comes back with the ``resume`` token; the teacher's drop starts a grace timer
(``settings.grace_seconds``) before the lesson ends by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine, Optional

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.board.slides import deck_slides
from groom.core.config import Settings
from groom.core.errors import AppError
from groom.core.models import Deck, Lesson, LessonState, utcnow
from groom.core.tasks import cancel
from groom.recordings.jobs import JobWorker
from groom.recordings.recorder import Recorder

from .adaptation import Timing
from .attendance import AttendanceBook
from .attendance_saves import AttendanceSaves
from .classboard import ClassBoard
from .fallback import FallbackStream
from .floor import Floor, HandRecords
from .ice import ice_servers_for
from .media import RoomMedia
from .participant import LessonInfo, Outbox, Participant
from .recording_link import RecordingLink
from .seats import Seats

__all__ = ["LessonInfo", "Outbox", "Participant", "Room"]

log = logging.getLogger("groom.live.room")

# What a room tells its registry's observers (the API's webhooks): someone "joined" or "left"
# (a socket bound or dropped; a reconnect is a new "joined"), and the lesson "ended".
EventHandler = Callable[[str, "Room", Optional[Participant]], None]


def _no_events(kind: str, room: "Room", p: Optional[Participant]) -> None:
    """A room nobody observes (tests that build one alone)."""


TICK_SECONDS = 2.0  # participants list, RTCP-driven adaptation
USAGE_TICKS = 5  # "data used" every 10 s: the figure shown changes slowly
REPORT_TICKS = 2  # an RTCP sender report every 4 s per student: receiver reports then carry RTT
LIST_SECONDS = 1.0  # the teacher's participant list is rebuilt at most this often
DETACHED_PC_SECONDS = 45.0  # a student's media outlives a dropped socket this long


class Room:
    def __init__(self, lesson: LessonInfo, sessions: async_sessionmaker[AsyncSession],
                 settings: Settings, *, worker: Optional[JobWorker],
                 on_closed: Callable[["Room"], None], on_event: EventHandler = _no_events) -> None:
        self.lesson = lesson
        self._on_event = on_event
        self._sessions = sessions
        self._settings = settings
        self._grace_seconds = settings.grace_seconds
        self._on_closed = on_closed
        self.started = time.monotonic()
        self.state = "live"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: Optional[asyncio.Task[None]] = None
        self._grace_task: Optional[asyncio.Task[None]] = None
        self._ending = False
        self.ending: Optional[asyncio.Task[None]] = None  # set once the lesson is ending
        self._list_timer: Optional[asyncio.TimerHandle] = None
        self.seats = Seats(Timing(good_seconds_to_step_up=settings.tier_up_seconds),
                           max_students=settings.students_per_lesson,
                           per_address=settings.students_per_address)
        self.floor_state = Floor(settings.hand_changes_per_minute)
        self.media = RoomMedia(self.ice_servers_for(f"room{lesson.id}"),
                               floor_holder=lambda: self.floor,
                               on_change=self.send_participants, on_level=self._on_level,
                               allow_link_local=settings.ice_link_local)
        self.tiers = self.media.tiers
        self.mixer = self.media.mixer
        self.latency = self.media.latency
        self._fallbacks = self.media.fallbacks  # prometheus.py counts their listeners here
        self.recording = RecordingLink(lesson.id, self.started, self.tiers, sessions,
                                       settings.data_dir, worker)
        self.hand_records = HandRecords(self.recording.add)  # hand toggles coalesced
        self.classboard = ClassBoard(self.broadcast, self._to_teacher, self.recording.add,
                                     chat_per_minute=settings.chat_class_per_minute)
        self.attendance = AttendanceSaves(AttendanceBook(lesson.id, sessions), self.seats,
                                          self.media.current_tier, self._spawn)

    # ---- the parts' state, as callers have always read it ------------------------------------

    @property
    def teacher(self) -> Optional[Participant]:
        return self.seats.teacher

    @property
    def students(self) -> dict[str, Participant]:
        return self.seats.students

    @property
    def floor(self) -> Optional[str]:
        """The id of the student holding the floor, if any."""
        return self.floor_state.holder

    @property
    def recorder(self) -> Optional[Recorder]:
        return self.recording.recorder

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the recording (a subscriber of the top tier), the audio clock and the timer."""
        await self.recording.start()
        self.mixer.start()
        self._tick_task = asyncio.create_task(self._tick(), name=f"room-{self.lesson.id}-tick")

    async def end(self, reason: str) -> None:
        """End the lesson for everyone (once, whoever asks first) and wait until it is done.

        The ending runs as a task of its own, shielded from the caller: a teacher's socket
        handler cancelled halfway (the server stopping, say) must not cut attendance or the
        recording short. From the moment it starts nobody may start or join the lesson (the
        registry answers ``lesson_over``); the lesson is marked ended in the database first,
        then the room leaves the live rooms (the class may start its next lesson at once) but
        stays in the registry as closing until its connections and files are closed."""
        if self.ending is None:
            self.ending = asyncio.create_task(self._end(reason), name=f"room-{self.lesson.id}-end")
        await asyncio.shield(self.ending)

    async def _end(self, reason: str) -> None:
        try:
            await self._mark_ended()
        except Exception:  # a database down must not keep the room open
            log.exception("lesson not marked ended", extra={"lesson_id": self.lesson.id})
        self._on_closed(self)
        self._on_event("ended", self, None)
        try:
            await self.close(reason)
        except Exception:  # whatever failed while closing, the lesson is over all the same
            log.exception("closing the room failed", extra={"lesson_id": self.lesson.id})
        log.info("lesson ended", extra={"lesson_id": self.lesson.id, "reason": reason})

    async def hand_over(self) -> None:
        """This process stops but its cluster goes on (a node's upgrade, ``--redis-url``): close
        the room without ending the lesson. Attendance is saved and the recording closed as a
        part; every page is told "service restart" (1012, not final), reconnects through a live
        node, and the lesson goes on there when its teacher is back (or is ended by the
        cluster's orphan sweeper if nobody comes)."""
        if self.ending is None:
            self.ending = asyncio.create_task(self._hand_over(),
                                              name=f"room-{self.lesson.id}-handover")
        await asyncio.shield(self.ending)

    async def _hand_over(self) -> None:
        self._on_closed(self)
        try:
            await self.close("node_stopping", final=False)
        except Exception:
            log.exception("handing the room over failed", extra={"lesson_id": self.lesson.id})
        log.info("lesson handed over", extra={"lesson_id": self.lesson.id})

    async def _mark_ended(self) -> None:
        async with self._sessions() as db:
            lesson = await db.get(Lesson, self.lesson.id)
            if lesson is not None and lesson.state == LessonState.live:
                lesson.state = LessonState.ended
                lesson.ended_at = utcnow()
                await db.commit()

    async def close(self, reason: str, *, final: bool = True) -> None:
        """Stop media and recording, close sockets, save attendance. ``final``: the lesson is
        over (pages show it ended); else pages are told to reconnect (``hand_over``)."""
        self._ending = True
        self.state = "ended"
        me = asyncio.current_task()  # the grace timer ends the lesson from inside itself
        detached = [p.detached_task for p in self.everyone()]
        for task in (self._tick_task, self._grace_task, *detached):
            if task is not None and task is not me:
                await cancel(task)
        # Short jobs (attendance writes) are let finish, not cancelled: a database call cut
        # halfway leaves the driver's connection broken.
        await asyncio.gather(*(t for t in self._tasks if t is not me), return_exceptions=True)
        if self._list_timer is not None:
            self._list_timer.cancel()
        if not final:  # the recording is closed before the pages come back on another node,
            self.hand_records.flush(time.monotonic(), everything=True)  # whose room takes it
            await self.recording.stop()  # over as a part: never while this one still writes
        for p in self.everyone():
            if final:
                p.send({"type": "ended", "reason": reason})
            if p.outbox is not None:
                p.outbox.close(*((4410, "lesson ended") if final else (1012, "service restart")))
            self.media.leave_time(p)
        await self.media.stop(self.everyone())
        if final:
            self.hand_records.flush(time.monotonic(), everything=True)
            await self.recording.stop()
        self.tiers.close()
        await self.attendance.save_all(final=True)

    def ice_servers_for(self, name: str) -> list[dict[str, Any]]:
        """STUN/TURN servers for one peer (TURN with its own time-limited credentials)."""
        return ice_servers_for(self._settings.ice_servers, self._settings.turn_secret, name,
                               ttl=self._settings.turn_ttl_seconds)

    def everyone(self) -> list[Participant]:
        return self.seats.everyone()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("room task failed", exc_info=task.exception(),
                      extra={"lesson_id": self.lesson.id, "task": task.get_name()})

    # ---- audio -------------------------------------------------------------------------------

    def fallback(self, tier: str) -> FallbackStream:
        """The HTTP stream of one tier: made on first use, a subscriber like any student."""
        return self.media.fallback(tier)

    async def listen(self, p: Participant, request: Any) -> Any:
        """A student's fallback stream (``/listen/<token>``): one per listen token, on any
        tier; a newer one ends the older, a kick ends it."""
        for stream in self.media.fallbacks.values():
            stream.drop(p.listen_token)
        return await self.fallback(p.controller.tier).serve(request, p.listen_token)

    async def answer(self, p: Participant, offer_sdp: str) -> str:
        """Answer a participant's offer: a new connection, or a renegotiation (the floor)."""
        return await self.media.answer(p, offer_sdp)

    def client_stats(self, p: Participant, stats: dict[str, float]) -> None:
        self.media.client_stats(p, stats)

    def set_data_saver(self, p: Participant, on: bool) -> None:
        self.media.set_data_saver(p, on)

    def _on_level(self, dbfs: float) -> None:
        self._to_teacher({"type": "level", "dbfs": round(dbfs, 1)})

    # ---- joining and leaving -----------------------------------------------------------------

    def attach(self, p: Participant, outbox: Outbox) -> None:
        """Bind a (new) socket to a participant; an older socket of theirs is closed."""
        self.seats.attach(p, outbox)

    def add_teacher(self, user_name: str, user_id: int, outbox: Outbox,
                    resume: Optional[str]) -> Participant:
        teacher = self.seats.seat_teacher(user_name, user_id, outbox, self.lesson.teacher_id)
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
        self.broadcast_room()
        self._on_event("joined", self, teacher)
        return teacher

    def add_student(self, name: str, key: str, student_id: Optional[int], outbox: Outbox,
                    resume: Optional[str], address: str = "") -> Participant:
        """A student joins, or comes back (same ``resume`` token or same roster card)."""
        p = self.seats.seat_student(name, key, student_id, outbox, resume, address)
        self.attendance.soon(p)
        self.broadcast_room()
        self.send_participants()
        self._on_event("joined", self, p)
        return p

    def detach(self, p: Participant, outbox: Outbox) -> None:
        """The participant's socket closed (their media may still be flowing)."""
        if p.outbox is not outbox or self._ending:
            return
        p.outbox = None
        self.media.leave_time(p)
        self._on_event("left", self, p)
        if p.role == "teacher":
            log.info("teacher disconnected; waiting", extra={"lesson_id": self.lesson.id,
                                                            "grace_s": self._grace_seconds})
            self._grace_task = asyncio.create_task(self._teacher_grace(), name="teacher-grace")
            self.broadcast_room()
            return
        self.set_hand(p, False)
        if self.floor == p.id:
            self._spawn(self.give_floor(None), "floor-back")
        p.detached_task = asyncio.create_task(self._drop_detached(p), name="detached")
        self.attendance.soon(p)
        self.broadcast_room()
        self.send_participants()

    async def _drop_detached(self, p: Participant) -> None:
        await asyncio.sleep(DETACHED_PC_SECONDS)
        await self.media.close_media(p)
        self.send_participants()

    async def _teacher_grace(self) -> None:
        await asyncio.sleep(self._grace_seconds)
        await self.end("teacher_gone")

    async def kick(self, pid: str) -> None:
        p = self.seats.student(pid)
        self.seats.remember_kick(p)
        self.seats.eject(p)
        self._on_event("left", self, p)
        for stream in self.media.fallbacks.values():
            stream.drop(p.listen_token)
        self.media.leave_time(p)
        if self.floor == pid:
            await self.give_floor(None)
        self.set_hand(p, False)
        await self.media.close_media(p)
        self.seats.unseat(pid)
        try:
            await self.attendance.save_one(p)
        except Exception:
            log.exception("attendance row not saved", extra={"lesson_id": self.lesson.id})
        self.broadcast_room()
        self.send_participants()

    def current_tier(self, p: Participant) -> Optional[str]:
        """The tier whose packets the student is getting now (None: no media)."""
        return self.media.current_tier(p)

    async def _tick(self) -> None:
        """Every 2 s: RTCP-driven adaptation, data used, the teacher's list, attendance."""
        ticks = 0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            ticks += 1
            for p in list(self.students.values()):
                if p.sender is None or not p.sender.ready:
                    continue
                self.media.server_report(p)
                if ticks % REPORT_TICKS == 1:
                    p.sender.send_report()
                if ticks % USAGE_TICKS == 1:
                    self.send_usage(p)
            self.send_participants()
            self.attendance.tick(time.monotonic())
            self.hand_records.flush(time.monotonic())

    # ---- hands and the floor -----------------------------------------------------------------

    def set_hand(self, p: Participant, up: bool) -> None:
        if not self.floor_state.set_hand(p.id, up):
            return
        self.hand_records.changed(p.id, p.name, up, time.monotonic())
        self._to_teacher({"type": "hands", "queue": self.hands()})
        self.send_participants()

    def raise_hand(self, p: Participant, up: bool) -> None:
        """A student's own hand, within ``settings.hand_changes_per_minute``."""
        if not self.floor_state.may_change(p.id, time.monotonic()):
            raise AppError("hand_too_fast", "You are raising and lowering your hand too often; "
                           "wait a little.", status=429)
        self.set_hand(p, up)

    def hands(self) -> list[str]:
        return self.floor_state.queue()

    async def give_floor(self, pid: Optional[str]) -> None:
        """One floor at a time: the previous holder stops, the new one is asked to publish."""
        if pid is not None:
            self.seats.student(pid)  # unknown_participant if not in the room
        previous_id = self.floor_state.give(pid)
        previous = self.students.get(previous_id) if previous_id else None
        if previous is not None:
            previous.send({"type": "floor", "you": False})
            self.media.stop_hearing(previous)  # their phone may go on sending: not decoded
        await self.mixer.set_floor(None)
        if pid is not None:
            holder = self.students[pid]
            self.set_hand(holder, False)
            holder.send({"type": "floor", "you": True})
        self.recording.add("floor", {"id": pid, "name": self.students[pid].name if pid else None})
        self.broadcast_room()

    # ---- what the room looks like --------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """What is happening in this room right now, for admins and benchmarks."""
        return {"lesson": self.lesson.public(), "class_id": self.lesson.class_id,
                "seconds": round(time.monotonic() - self.started, 1),
                "teacher_present": self.seats.teacher_present,
                "students_joined": len(self.students), "floor": self.floor,
                **self.media.figures(list(self.students.values()), self.everyone())}

    def room_state(self) -> dict[str, Any]:
        return {"type": "room", "teacher_present": self.seats.teacher_present,
                "floor": self.floor, "students": self.seats.students_present(),
                "state": self.state}

    def broadcast(self, message: dict[str, Any], *, students_only: bool = False) -> None:
        """One message to everyone in the room, serialized once (not once per student)."""
        self.seats.broadcast(message, students_only=students_only)

    def broadcast_room(self) -> None:
        self.broadcast(self.room_state())

    def _to_teacher(self, message: dict[str, Any]) -> None:
        if self.teacher is not None:
            self.teacher.send(message)

    def send_usage(self, p: Participant) -> None:
        present = p.seconds_present + (time.monotonic() - p.present_since if p.present_since else 0)
        p.send({"type": "usage", "bytes": p.data_used(), "seconds": round(present)})

    def send_participants(self) -> None:
        """The teacher's list, debounced: a storm of joins costs one list a second, not one
        list (of every student) per join."""
        if self._list_timer is None:
            self._list_timer = asyncio.get_running_loop().call_later(LIST_SECONDS,
                                                                     self._send_participants)

    def _send_participants(self) -> None:
        self._list_timer = None
        if self.teacher is None or self.teacher.outbox is None:
            return
        self.teacher.send({"type": "participants",
                           "list": self.seats.listing(self.floor_state.has_hand)})

    # ---- the class board: slides, ink, chat, polls -------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a (late) joiner needs at once: the deck, the slide and its ink, chat, the poll."""
        return self.classboard.snapshot()

    async def load_deck(self, deck_id: int) -> None:
        slides = await deck_slides(self._sessions, self.lesson.class_id, deck_id)
        if slides is None:
            raise AppError("not_found", "Not found: {what}", status=404, what="deck")
        async with self._sessions() as db:
            deck = await db.get(Deck, deck_id)
            title = deck.title if deck is not None else ""
        self.classboard.load_deck(deck_id, title, slides)

    def show_slide(self, page: int) -> None:
        self.classboard.show_slide(page)

    def add_ink(self, points: list[int], color: int, width: int) -> None:
        self.classboard.add_ink(points, color, width)

    def clear_ink(self) -> None:
        self.classboard.clear_ink()

    def point(self, x: Optional[int], y: Optional[int]) -> None:
        self.classboard.point(x, y)

    def post_chat(self, p: Participant, text: str) -> None:
        self.classboard.post_chat(p, text)

    def set_chat(self, on: bool) -> None:
        self.classboard.set_chat(on)

    def ask_poll(self, question: str, choices: list[str]) -> None:
        self.classboard.ask_poll(question, choices)

    def vote(self, p: Participant, poll_id: str, choice: int) -> None:
        self.classboard.vote(p, poll_id, choice)

    def close_poll(self, show: bool) -> None:
        self.classboard.close_poll(show)
