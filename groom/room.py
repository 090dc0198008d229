"""A live lesson: the teacher, the students, their peer connections and the shared audio.

One ``Room`` per live lesson, owned by the ``Rooms`` registry. The room owns everything live:
the mixer (teacher + floor, decoded once), the tiers (encoded once per tier), one
``StudentSender`` per student (packets straight to the student's socket), each student's
``TierController``, hands and the floor, and the attendance bookkeeping written to the database
when people come and go. Signaling (``signaling.py``) turns WebSocket messages into calls on the
room; the room talks back through each participant's ``Outbox`` (a bounded, non-blocking queue).

Participants outlive their WebSocket: a student whose socket drops keeps their place, tier and
attendance, and comes back with the ``resume`` token; the teacher's drop starts a grace timer
(``settings.grace_seconds``) before the lesson ends by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any, Callable, Optional

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import sdp
from .adaptation import TierController, Timing
from .board import Board
from .chat import Chat
from .errors import AppError
from .config import Settings
from .fallback import FallbackStream
from .jobs import JobWorker
from .metrics import Latency
from .mixer import Mixer
from .polls import Polls
from .postprocess import start_recording, stop_recording
from .recorder import Recorder
from .attendance import AttendanceBook
from .models import Deck, Lesson, LessonState, utcnow
from .participant import LessonInfo, Outbox, Participant
from .slides import deck_slides
from .student_sender import add_student_audio
from .tasks import cancel
from .tiers import TierSet
from .timeline import Timeline
from .turn import ice_servers_for

log = logging.getLogger("groom.room")

TICK_SECONDS = 2.0  # participants list, RTCP-driven adaptation
USAGE_TICKS = 5  # "data used" every 10 s: the figure shown changes slowly
LIST_SECONDS = 1.0  # the teacher's participant list is rebuilt at most this often
SAVE_SECONDS = 30.0  # attendance rows refreshed this often while a lesson runs
DETACHED_PC_SECONDS = 45.0  # a student's media outlives a dropped socket this long
MAX_STUDENTS = 2000  # joins without a resume token are new people: bound them


class Room:
    def __init__(self, lesson: LessonInfo, sessions: async_sessionmaker[AsyncSession],
                 settings: Settings, *, worker: Optional[JobWorker],
                 on_closed: Callable[["Room"], None]) -> None:
        self.lesson = lesson
        self._sessions = sessions
        self._settings = settings
        self._ice = RTCConfiguration(iceServers=[
            RTCIceServer(**s) for s in self.ice_servers_for(f"room{lesson.id}")])
        self._grace_seconds = settings.grace_seconds
        self._timing = Timing(good_seconds_to_step_up=settings.tier_up_seconds)
        self._on_closed = on_closed
        self.tiers = TierSet()
        self.mixer = Mixer(self.tiers.feed, on_level=self._on_level)
        self.teacher: Optional[Participant] = None
        self.students: dict[str, Participant] = {}
        self.floor: Optional[str] = None
        self.started = time.monotonic()
        self.state = "live"
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: Optional[asyncio.Task[None]] = None
        self._grace_task: Optional[asyncio.Task[None]] = None
        self._ending = False
        self.ending: Optional[asyncio.Task[None]] = None  # set once the lesson is ending
        self._fallbacks: dict[str, FallbackStream] = {}
        self._worker = worker
        self.recorder: Optional[Recorder] = None
        self.board = Board()
        self.chat = Chat()
        self.polls = Polls()
        self.timeline = Timeline(lesson.id, self.started, sessions)
        self.latency = Latency()
        self.attendance = AttendanceBook(lesson.id, sessions)
        self._list_timer: Optional[asyncio.TimerHandle] = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the audio clock and the recorder: the recorder is one more subscriber of the
        top tier (what the best-connected students hear), so recording costs no encoding."""
        self.recorder = await start_recording(self._sessions, self._settings.data_dir,
                                              self.lesson.id, self.started)
        self.tiers.subscribe(self.recorder, self.tiers.specs[-1].name)
        self.timeline.recorder = self.recorder
        self.timeline.start()
        self.mixer.start()
        self._tick_task = asyncio.create_task(self._tick(), name=f"room-{self.lesson.id}-tick")

    async def end(self, reason: str) -> None:
        """End the lesson for everyone (once, whoever asks first) and wait until it is done.

        The ending runs as a task of its own, shielded from the caller: a teacher's socket
        handler cancelled halfway (the server stopping, say) must not cut attendance or the
        recording short. The room leaves the registry first, so the class may start its next
        lesson at once while this one is still closing its connections and files."""
        if self.ending is None:
            self.ending = asyncio.create_task(self._end(reason), name=f"room-{self.lesson.id}-end")
            self._on_closed(self)
        await asyncio.shield(self.ending)

    async def _end(self, reason: str) -> None:
        await self.close(reason)
        async with self._sessions() as db:
            lesson = await db.get(Lesson, self.lesson.id)
            if lesson is not None and lesson.state == LessonState.live:
                lesson.state = LessonState.ended
                lesson.ended_at = utcnow()
                await db.commit()
        log.info("lesson ended", extra={"lesson_id": self.lesson.id, "reason": reason})

    async def close(self, reason: str) -> None:
        """Stop media and recording, close sockets, save attendance."""
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
        for p in self.everyone():
            p.send({"type": "ended", "reason": reason})
            if p.outbox is not None:
                p.outbox.close(4410, "lesson ended")
            self._leave_time(p)
        await self.mixer.stop()
        await asyncio.gather(*(self._close_media(p) for p in self.everyone()),
                             *(stream.close() for stream in self._fallbacks.values()),
                             return_exceptions=True)
        await self.timeline.stop()
        if self.recorder is not None:
            self.tiers.unsubscribe(self.recorder)
            await stop_recording(self._sessions, self.lesson.id, self.recorder, self._worker)
        self.tiers.close()
        await self._save_attendance(final=True)

    def ice_servers_for(self, name: str) -> list[dict[str, Any]]:
        """STUN/TURN servers for one peer (TURN with its own time-limited credentials)."""
        return ice_servers_for(self._settings.ice_servers, self._settings.turn_secret, name)

    def everyone(self) -> list[Participant]:
        return ([self.teacher] if self.teacher else []) + list(self.students.values())

    def _spawn(self, coro: Any, name: str) -> None:
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
        stream = self._fallbacks.get(tier)
        if stream is None:
            stream = self._fallbacks[tier] = FallbackStream(tier)
            self.tiers.subscribe(stream, tier)
        return stream

    def _on_level(self, dbfs: float) -> None:
        if self.teacher is not None:
            self.teacher.send({"type": "level", "dbfs": round(dbfs, 1)})

    # ---- joining and leaving -----------------------------------------------------------------

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

    def add_teacher(self, user_name: str, user_id: int, outbox: Outbox,
                    resume: Optional[str]) -> Participant:
        if self.teacher is None:
            self.teacher = Participant(id="t-" + secrets.token_urlsafe(6), role="teacher",
                                       name=user_name, key=f"teacher:{user_id}")
        self.attach(self.teacher, outbox)
        if self._grace_task is not None:
            self._grace_task.cancel()
            self._grace_task = None
        self.broadcast_room()
        return self.teacher

    def add_student(self, name: str, key: str, student_id: Optional[int], outbox: Outbox,
                    resume: Optional[str]) -> Participant:
        """A student joins, or comes back (same ``resume`` token or same roster card)."""
        p = next((s for s in self.students.values()
                  if (resume and secrets.compare_digest(s.resume, resume)) or
                  (student_id is not None and s.student_id == student_id)), None)
        if p is None:
            if len(self.students) >= MAX_STUDENTS:
                raise AppError("room_full", "This lesson is full.", status=429)
            p = Participant(id="s-" + secrets.token_urlsafe(6), role="student", name=name,
                            key=key, student_id=student_id,
                            controller=TierController(timing=self._timing))
            self.students[p.id] = p
        self.attach(p, outbox)
        self._spawn(self._save_one(p), "attendance")
        self.broadcast_room()
        self.send_participants()
        return p

    def detach(self, p: Participant, outbox: Outbox) -> None:
        """The participant's socket closed (their media may still be flowing)."""
        if p.outbox is not outbox or self._ending:
            return
        p.outbox = None
        self._leave_time(p)
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
        self._spawn(self._save_one(p), "attendance")
        self.broadcast_room()
        self.send_participants()

    async def _drop_detached(self, p: Participant) -> None:
        await asyncio.sleep(DETACHED_PC_SECONDS)
        await self._close_media(p)
        self.send_participants()

    async def _teacher_grace(self) -> None:
        await asyncio.sleep(self._grace_seconds)
        await self.end("teacher_gone")

    async def kick(self, pid: str) -> None:
        p = self.students.get(pid)
        if p is None:
            raise AppError("unknown_participant", "No such participant.", status=404)
        p.send({"type": "ended", "reason": "kicked"})
        if p.outbox is not None:
            p.outbox.close(4403, "removed by the teacher")
            p.outbox = None
        self._leave_time(p)
        if self.floor == pid:
            await self.give_floor(None)
        self.set_hand(p, False)
        await self._close_media(p)
        del self.students[pid]
        await self._save_one(p)
        self.broadcast_room()
        self.send_participants()

    def current_tier(self, p: Participant) -> Optional[str]:
        """The tier whose packets the student is getting now (None: no media)."""
        return self.tiers.tier_of(p.sender) or p.controller.tier if p.sender else None

    def _leave_time(self, p: Participant) -> None:
        p.leave_time(time.monotonic(), self.current_tier(p))

    def _close_tier_time(self, p: Participant, now: float) -> None:
        p.close_tier_time(now, self.current_tier(p))

    # ---- WebRTC --------------------------------------------------------------------------------

    async def answer(self, p: Participant, offer_sdp: str) -> str:
        """Answer a participant's offer: a new connection, or a renegotiation (the floor)."""
        if not sdp.has_audio(offer_sdp):
            raise AppError("no_audio", "The offer has no audio.", status=400)
        offer = RTCSessionDescription(sdp=offer_sdp, type="offer")
        if p.pc is not None and p.pc.connectionState in ("connected", "connecting", "new") \
                and p.role == "student" and p.sender is not None and p.sender.ready:
            return await self._renegotiate(p, offer)
        await self._close_media(p)
        pc = RTCPeerConnection(self._ice)
        p.pc = pc
        if p.role == "teacher":
            await pc.setRemoteDescription(offer)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio":
                    p.hears = self.mixer.floor_track()
                    pc.addTrack(p.hears)
                    receiver_track = transceiver.receiver.track
                    await self.mixer.set_teacher(receiver_track)
                    break
            await pc.setLocalDescription(await pc.createAnswer())
            self._watch(p, pc)
            return sdp.teacher_answer(pc.localDescription.sdp)
        await pc.setRemoteDescription(offer)
        p.sender = add_student_audio(pc)
        p.sender.latency = self.latency
        await pc.setLocalDescription(await pc.createAnswer())
        self._watch(p, pc)
        return sdp.student_answer(pc.localDescription.sdp)

    async def _renegotiate(self, p: Participant, offer: RTCSessionDescription) -> str:
        """The floor student adds (or drops) their microphone on the same connection.

        Our side of the transceiver receives only while the student holds the floor, so an
        offer to publish without it is answered "sendonly" and no audio is accepted."""
        assert p.pc is not None
        await p.pc.setRemoteDescription(offer)
        holds_floor = self.floor == p.id
        audio = [t for t in p.pc.getTransceivers() if t.kind == "audio"]
        for transceiver in audio:
            transceiver.direction = "sendrecv" if holds_floor else "sendonly"
        await p.pc.setLocalDescription(await p.pc.createAnswer())
        mic = next((t.receiver.track for t in audio if t.receiver.track is not None), None)
        if holds_floor and mic is not None and mic is not p.mic:
            p.mic = mic
            await self.mixer.set_floor(mic)
        return sdp.student_answer(p.pc.localDescription.sdp)

    def _watch(self, p: Participant, pc: RTCPeerConnection) -> None:
        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if p.pc is not pc:
                return
            state = pc.connectionState
            if state == "connected" and p.sender is not None and not p.sender.ready:
                try:
                    p.sender.start()
                except RuntimeError:
                    log.exception("student sender did not start", extra={"participant": p.id})
                    return
                self.tiers.subscribe(p.sender, p.controller.tier)
                p.tier_since = time.monotonic()
                self.send_participants()
            elif state in ("failed", "closed"):
                await self._close_media(p)
                self.send_participants()

    async def _close_media(self, p: Participant) -> None:
        pc, p.pc = p.pc, None
        if p.sender is not None:
            self._close_tier_time(p, time.monotonic())
            p.tier_since = None
            p.bytes_before += p.sender.data_used()
            self.tiers.unsubscribe(p.sender)
            p.sender.stop()
            p.sender = None
        if p.role == "teacher" and pc is not None:
            await self.mixer.set_teacher(None)
        if p.hears is not None:
            p.hears.stop()
            p.hears = None
        if p.mic is not None:
            p.mic = None
            if self.floor == p.id:
                await self.mixer.set_floor(None)
        if pc is not None:
            await pc.close()

    # ---- tiers and link quality --------------------------------------------------------------

    def apply_tier(self, p: Participant, reason: str) -> None:
        tier = p.controller.tier
        if p.sender is not None and p.sender.ready and self.tiers.tier_of(p.sender) != tier:
            self._close_tier_time(p, time.monotonic())
            self.tiers.move(p.sender, tier)
        p.send({"type": "tier", "tier": tier, "data_saver": p.controller.data_saver,
                "reason": reason})

    def client_stats(self, p: Participant, stats: dict[str, float]) -> None:
        """Cumulative ``getStats`` figures from the student page, turned into deltas."""
        last, p.last_client = p.last_client, stats

        def delta(name: str) -> int:
            return max(int(stats.get(name, 0) - last.get(name, 0)), 0)

        if not last:
            return
        changed = p.controller.client_report(
            packets_lost=delta("packets_lost"), packets_received=delta("packets_received"),
            jitter_s=stats.get("jitter"), concealed_samples=delta("concealed_samples"),
            total_samples=delta("total_samples"),
            silent_concealed_samples=delta("silent_concealed_samples"))
        if changed:
            self.apply_tier(p, "link")

    def set_data_saver(self, p: Participant, on: bool) -> None:
        p.controller.set_data_saver(on)
        self.apply_tier(p, "data_saver")

    async def _tick(self) -> None:
        """Every 2 s: RTCP-driven adaptation, data used, the teacher's participant list."""
        last_report: dict[str, Any] = {}
        last_save = time.monotonic()
        ticks = 0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            ticks += 1
            for p in list(self.students.values()):
                if p.sender is None or not p.sender.ready:
                    continue
                q = p.sender.link_quality()
                if q.reported_at is not None and last_report.get(p.id) != q.reported_at:
                    last_report[p.id] = q.reported_at
                    if p.controller.rtcp_report(int((q.fraction_lost or 0) * 256),
                                                (q.jitter_ms or 0) * 48,
                                                None if q.rtt_ms is None else q.rtt_ms / 1000):
                        self.apply_tier(p, "link")
                if ticks % USAGE_TICKS == 1:
                    self.send_usage(p)
            self.send_participants()
            if time.monotonic() - last_save > SAVE_SECONDS:
                last_save = time.monotonic()
                self._spawn(self._save_attendance(), "attendance")

    # ---- hands, floor, room state ------------------------------------------------------------

    def set_hand(self, p: Participant, up: bool) -> None:
        if up == (p.hand_since is not None):
            return
        p.hand_since = time.monotonic() if up else None
        self.timeline.add("hand", {"id": p.id, "name": p.name, "up": up})
        if self.teacher is not None:
            self.teacher.send({"type": "hands", "queue": self.hands()})
        self.send_participants()

    def hands(self) -> list[str]:
        raised = [p for p in self.students.values() if p.hand_since is not None]
        return [p.id for p in sorted(raised, key=lambda p: p.hand_since or 0.0)]

    async def give_floor(self, pid: Optional[str]) -> None:
        """One floor at a time: the previous holder stops, the new one is asked to publish."""
        if pid is not None and pid not in self.students:
            raise AppError("unknown_participant", "No such participant.", status=404)
        previous = self.students.get(self.floor) if self.floor else None
        self.floor = pid
        if previous is not None:
            previous.send({"type": "floor", "you": False})
            previous.mic = None
        await self.mixer.set_floor(None)
        if pid is not None:
            holder = self.students[pid]
            self.set_hand(holder, False)
            holder.send({"type": "floor", "you": True})
        self.timeline.add("floor", {"id": pid, "name": self.students[pid].name if pid else None})
        self.broadcast_room()

    def figures(self) -> dict[str, Any]:
        """What is happening in this room right now, for admins and benchmarks."""
        tiers: dict[str, Any] = {}
        for name, encoder in self.tiers.encoders.items():
            tiers[name] = {"students": sum(1 for p in self.students.values() if p.sender is not None
                                           and self.tiers.tier_of(p.sender) == name),
                           "packets_encoded": encoder.packets, "payload_bytes": encoder.payload_bytes}
        senders = [p.sender for p in self.students.values() if p.sender is not None]
        return {"lesson": self.lesson.public(), "class_id": self.lesson.class_id,
                "seconds": round(time.monotonic() - self.started, 1),
                "teacher_present": bool(self.teacher and self.teacher.outbox),
                "students_joined": len(self.students),
                "students_connected": sum(1 for s in senders if s.ready),
                "floor": self.floor, "tiers": tiers,
                "packets_sent": sum(s.packets_sent for s in senders),
                "packets_dropped": sum(s.dropped for s in senders),
                "wire_bytes": sum(s.wire_bytes for s in senders),
                "latency": self.latency.percentiles(),
                "mixer": {"frames_out": self.mixer.frames_out,
                          "frames_skipped": self.mixer.frames_skipped}}

    def room_state(self) -> dict[str, Any]:
        return {"type": "room", "teacher_present": bool(self.teacher and self.teacher.outbox),
                "floor": self.floor, "students": sum(1 for s in self.students.values() if s.outbox),
                "state": self.state}

    def broadcast(self, message: dict[str, Any], *, students_only: bool = False) -> None:
        """One message to everyone in the room, serialized once (not once per student)."""
        text = json.dumps(message, ensure_ascii=False)
        for p in (self.students.values() if students_only else self.everyone()):
            if p.outbox is not None:
                p.outbox.send_text(text, message["type"])

    def broadcast_room(self) -> None:
        self.broadcast(self.room_state())

    def snapshot(self) -> dict[str, Any]:
        """What a (late) joiner needs at once: the deck, the slide and its ink, chat, the poll."""
        poll = self.polls.current
        return {"deck": self.board.deck(), "slide": self.board.current(),
                "chat": {"enabled": self.chat.enabled, "recent": self.chat.recent},
                "poll": poll.public() if poll is not None and poll.open else None}

    # ---- slides, ink, chat, polls ------------------------------------------------------------

    async def load_deck(self, deck_id: int) -> None:
        slides = await deck_slides(self._sessions, self.lesson.class_id, deck_id)
        if slides is None:
            raise AppError("not_found", "Not found: {what}", status=404, what="deck")
        async with self._sessions() as db:
            deck = await db.get(Deck, deck_id)
            title = deck.title if deck is not None else ""
        self.board.load_deck(deck_id, title, slides)
        self.broadcast({"type": "deck", "deck": self.board.deck()})
        if slides:
            self.show_slide(0)

    def show_slide(self, page: int) -> None:
        self.board.show(page)
        current = self.board.current()
        assert current is not None
        self.broadcast({"type": "slide", "slide": current})
        self.timeline.add("slide", {"deck_id": self.board.deck_id, "page": page,
                                    "image": current["small"], "large": current["large"]})

    def add_ink(self, points: list[int], color: int, width: int) -> None:
        stroke = self.board.add_stroke(points, color, width)
        self.broadcast({"type": "ink", "page": self.board.page, "stroke": stroke},
                       students_only=True)
        self.timeline.add("ink", {"page": self.board.page, **stroke})

    def clear_ink(self) -> None:
        self.board.clear()
        self.broadcast({"type": "ink_clear", "page": self.board.page}, students_only=True)
        self.timeline.add("ink_clear", {"page": self.board.page})

    def point(self, x: Optional[int], y: Optional[int]) -> None:
        """The teacher's pointer: transient, not kept in the timeline."""
        self.broadcast({"type": "pointer", "x": x, "y": y}, students_only=True)

    def post_chat(self, p: Participant, text: str) -> None:
        message = self.chat.post(p.id, p.name, text, teacher=p.role == "teacher")
        self.broadcast({"type": "chat", **message})
        self.timeline.add("chat", message)

    def set_chat(self, on: bool) -> None:
        self.chat.enabled = on
        self.broadcast({"type": "chat_enabled", "on": on})
        self.timeline.add("chat_enabled", {"on": on})

    def ask_poll(self, question: str, choices: list[str]) -> None:
        poll = self.polls.ask(question, choices)
        self.broadcast({"type": "poll", "poll": poll.public()})
        self.timeline.add("poll", poll.public())
        self._poll_counts()

    def vote(self, p: Participant, poll_id: str, choice: int) -> None:
        self.polls.vote(p.key, poll_id, choice)
        p.send({"type": "voted", "poll_id": poll_id, "choice": choice})
        self._poll_counts()

    def close_poll(self, show: bool) -> None:
        poll = self.polls.close()
        result = {"type": "poll_result", "id": poll.id, "question": poll.question,
                  "choices": poll.choices, "counts": poll.counts(), "shown": show}
        if show:
            self.broadcast(result)
        elif self.teacher is not None:
            self.teacher.send(result)
        self.timeline.add("poll_result", {k: v for k, v in result.items() if k != "type"})

    def _poll_counts(self) -> None:
        poll = self.polls.current
        if poll is not None and self.teacher is not None:
            self.teacher.send({"type": "poll_counts", "id": poll.id, "counts": poll.counts(),
                               "voters": len(poll.votes)})

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
        listing = []
        for p in self.students.values():
            if p.outbox is None and not p.connected:
                continue  # gone (attendance keeps them); the list stays as long as the class
            q = p.controller.link_quality()
            listing.append({"id": p.id, "name": p.name, "tier": p.controller.tier,
                            "quality": q.grade.value, "loss_pct": q.loss_pct,
                            "jitter_ms": q.jitter_ms, "rtt_ms": q.rtt_ms,
                            "hand": p.hand_since is not None,
                            "connected": p.outbox is not None and p.connected})
        self.teacher.send({"type": "participants", "list": listing})

    # ---- attendance --------------------------------------------------------------------------

    async def _save_attendance(self, final: bool = False) -> None:
        for p in list(self.students.values()):
            await self._save_one(p, final)

    async def _save_one(self, p: Participant, final: bool = False) -> None:
        now = time.monotonic()
        await self.attendance.save(p, p.present_seconds(now), p.tier_time(now, self.current_tier(p)),
                                   left=final or p.outbox is None)
