"""The WebSocket at ``/ws``: one per participant, JSON messages as in ``docs/protocol.md``.

Each connection has one reader (this handler), one writer task draining a bounded outbox, a
deadline for ``hello``, a message-rate limit, and a log context carrying the connection id. A
client whose outbox fills up (it stopped reading) is dropped rather than waited for, so one stuck
phone never holds up a room. Messages are validated by the pydantic models of ``messages.py``
before anything acts on them; a bad one gets an ``error`` message and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from typing import Any, Optional

import aiohttp
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from groom.core import logs, text
from groom.core.errors import AppError
from groom.live.placement import Node
from groom.live.room import Participant, Room
from groom.live.rooms import ROOMS
from groom.office import codes

from . import bbb_join, bbb_slides, joining, proxy, relay
from .live_pages import waiting_lesson
from .messages import (
    MAX_MESSAGE,
    STUDENT_ONLY,
    TEACHER_ONLY,
    ChatEnabled,
    ChatMsg,
    DataSaver,
    DeckMsg,
    End,
    Floor,
    Hand,
    Hello,
    Ink,
    InkClear,
    Kick,
    Offer,
    Ping,
    Pointer,
    PollClose,
    PollMsg,
    SlideMsg,
    Stats,
    Vote,
    parse,
)
from .plumbing import SESSIONS, SETTINGS, tr, viewer

log = logging.getLogger("groom.web.signaling")


OUTBOX_SIZE = 64
HELLO_SECONDS = 10.0
RATE_PER_SECOND = 10.0  # sustained messages per second per connection
RATE_BURST = 40.0




# State messages where only the newest matters: a burst (many joins at once) replaces the
# queued copy instead of filling the outbox, so a busy room cannot push its teacher out.
LATEST_ONLY = frozenset({"room", "participants", "hands", "usage", "level", "poll_counts",
                         "pointer", "tier"})


class Connection:
    """The outbox of one socket: bounded, drained by one writer task."""

    def __init__(self, ws: web.WebSocketResponse, cid: str) -> None:
        self.ws = ws
        self.cid = cid
        self._queue: asyncio.Queue[Optional[str]] = asyncio.Queue(OUTBOX_SIZE)
        self._latest: dict[str, str] = {}  # state type -> newest text, queued once by its type
        self._close: Optional[tuple[int, str]] = None
        self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{cid}")

    def send(self, message: dict[str, Any]) -> None:
        self.send_text(json.dumps(message, ensure_ascii=False), message.get("type", ""))

    def send_text(self, text: str, kind: str) -> None:
        """Queue a serialized message of type ``kind``; never blocks."""
        if self._close is not None:
            return
        if kind in LATEST_ONLY:
            if kind in self._latest:
                self._latest[kind] = text  # still queued: send the newest instead
                return
            self._latest[kind] = text
            text = "\0" + kind  # placeholder, resolved by the writer
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("client too slow; dropping", extra={"conn": self.cid})
            self.close(1013, "too slow")

    def close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                self._writer.cancel()
                asyncio.ensure_future(self.ws.close(code=code, message=reason.encode()))

    async def _write(self) -> None:
        try:
            while True:
                text = await self._queue.get()
                if text is None:
                    break
                if text.startswith("\0"):
                    text = self._latest.pop(text[1:])
                await asyncio.wait_for(self.ws.send_str(text), timeout=10)
        except (ConnectionError, asyncio.TimeoutError, RuntimeError):
            pass
        code, reason = self._close or (1000, "")
        await self.ws.close(code=code, message=reason.encode())

    async def stop(self) -> None:
        self.close(1000, "")
        try:
            await asyncio.wait_for(self._writer, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._writer.cancel()


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (aiortc clients, scripts): cookies are not ambient there
    # The page's own host, or the public URL's (a proxy may pass Host without the port).
    host = origin.split("://", 1)[-1]
    return host == request.host or host == (proxy.public_host(request.app[SETTINGS]) or None)


async def websocket(request: web.Request) -> web.StreamResponse:
    if not _same_origin(request):
        raise AppError("forbidden", "You are not allowed to do this.", status=403)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=25)
    await ws.prepare(request)
    if relay.is_relayed(request):  # counted by the worker it came in through
        return await _serve(request, ws)
    sockets, address = joining.open_sockets(request.app), joining.client_address(request)
    if not sockets.open(address):  # settings.sockets_per_address, counted before hello
        error = AppError("too_many_connections", "Too many connections from this network.",
                         status=429)
        await ws.send_json(_error(error.code, tr(request)(error.template)))
        await ws.close(code=4429, message=error.code.encode())
        return ws
    try:
        return await _serve(request, ws)
    finally:
        sockets.closed(address)


async def _serve(request: web.Request, ws: web.WebSocketResponse) -> web.WebSocketResponse:
    cid = secrets.token_hex(4)
    token = logs.request_id.set("ws-" + cid)
    conn = Connection(ws, cid)
    session = _Session(request, conn)
    try:
        await session.run()
    except Exception:
        log.exception("websocket handler failed", extra={"conn": cid})
    finally:
        session.leave()
        await session.stop_reading()
        await conn.stop()
        logs.request_id.reset(token)
    return ws


class _Session:
    """What one socket is doing: first the hello, then the participant's messages."""

    def __init__(self, request: web.Request, conn: Connection) -> None:
        self.request = request
        self.conn = conn
        self.rooms = request.app[ROOMS]
        self.room: Optional[Room] = None
        self.me: Optional[Participant] = None
        self.user_id: Optional[int] = None
        self._allowance = RATE_BURST
        self._last = time.monotonic()
        self._pending: Optional[asyncio.Task[Optional[Any]]] = None  # a read begun while waiting
        self._text = ""  # the last message as it came (the hello, when relayed to its worker)

    def _error(self, exc: AppError) -> dict[str, Any]:
        """An ``error`` message in the participant's language (their page's cookie/header)."""
        return _error(exc.code, tr(self.request)(exc.template, **exc.params))

    def leave(self) -> None:
        if self.user_id is not None:
            self.rooms.forget_user(self.user_id, self.conn)
        if self.room is not None and self.me is not None:
            self.room.detach(self.me, self.conn)

    def _within_rate(self) -> bool:
        now = time.monotonic()
        self._allowance = min(RATE_BURST, self._allowance + (now - self._last) * RATE_PER_SECOND)
        self._last = now
        self._allowance -= 1
        return self._allowance >= 0

    async def _next(self, timeout: Optional[float] = None) -> Optional[Any]:
        """The next valid message, None when the socket closed. Bad ones answered with error."""
        while True:
            msg = await self.conn.ws.receive(timeout=timeout)
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    self.conn.send(_error("bad_message", "Send JSON text messages."))
                    continue
                if msg.type == WSMsgType.ERROR and isinstance(msg.data, Exception) \
                        and "size" in str(msg.data).lower():
                    self.conn.close(1009, "message too big")
                return None
            if not self._within_rate():
                self.conn.close(4429, "too many messages")
                return None
            self._text = msg.data
            try:
                return parse.validate_json(msg.data)
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                self.conn.send(_error("bad_message", f"Message not valid: {where}: {first['msg']}"))

    async def run(self) -> None:
        try:
            hello = await self._next(timeout=HELLO_SECONDS)
        except asyncio.TimeoutError:
            self.conn.close(4408, "no hello")
            return
        if hello is None:
            return
        if not isinstance(hello, Hello):
            self.conn.close(4400, "hello expected")
            return
        try:
            owner = await self._owner_elsewhere(hello)
        except (aiohttp.ClientError, asyncio.TimeoutError, LookupError):
            log.warning("placement unavailable", exc_info=True)
            self.conn.close(1013, "try again")  # not final: the page comes back and is placed
            return
        if owner is not None:
            await relay.pipe_websocket(self.request, self.conn, owner, self._text)
            return
        try:
            await self._hello(hello)
        except AppError as exc:
            self.conn.send(self._error(exc))
            self.conn.close(_CLOSE_FOR_STATUS.get(exc.status, 4400), exc.code)
            return
        if self.room is None or self.me is None:
            return
        while True:
            pending, self._pending = self._pending, None  # the read the wait started, if any
            message = await (pending if pending is not None else self._next())
            if message is None:
                return
            try:
                await self._handle(message)
            except AppError as exc:
                self.conn.send(self._error(exc))

    async def _owner_elsewhere(self, hello: Hello) -> Optional[Node]:
        """The worker that runs this hello's class, when it is not this one. None: serve it
        here (one process; a socket another worker relayed; a wrong code, lesson or token,
        which is answered here like any other)."""
        app = self.request.app
        if app[relay.PLACEMENT].solo or relay.is_relayed(self.request):
            return None
        class_id: Optional[int] = None
        if hello.role == "teacher":
            if hello.lesson_id is not None:
                class_id = await relay.class_of_lesson(app, hello.lesson_id)
        elif hello.resume and self.rooms.find_resume(hello.resume) is not None:
            return None
        elif hello.card or hello.code:
            # A locked-out address is answered here (429, as its class's node would) before
            # the code is looked up: relaying only right codes would tell a guesser which
            # codes are right by the time the answer takes. Otherwise check_code counts it
            # where it is served.
            code = codes.normalize(hello.card or hello.code or "")
            if await app[joining.JOIN_LIMITS].check(joining.client_address(self.request), code):
                return None
            async with app[SESSIONS]() as db:
                target = await joining.resolve(db, hello.card or hello.code or "")
            class_id = target.classroom.id if target is not None else None
        elif hello.resume:
            return await relay.find_holder(app, "resume", hello.resume)
        return await relay.owner_elsewhere(app, class_id) if class_id is not None else None

    async def _hello(self, hello: Hello) -> None:
        room: Optional[Room]  # None only while a student waits for the lesson to start
        if hello.role == "teacher" and hello.lesson_pass is not None:
            grant, deck_id = await bbb_join.lesson_pass(self.request, hello.lesson_pass)
            if hello.lesson_id != grant.lesson_id:
                raise AppError("forbidden", "You are not allowed to do this.", status=403)
            room = await self.rooms.open(grant.lesson_id, grant)
            # Every pass holder shares one seat (user id 0 is nobody's): the latest takes it.
            me = room.add_teacher(grant.name, 0, self.conn, hello.resume)
            await bbb_slides.show_meeting_deck(self.request.app, deck_id, grant.lesson_id)
        elif hello.role == "teacher":
            v = await viewer(self.request)
            if v is None:
                raise AppError("unauthorized", "Please log in.", status=401)
            if hello.lesson_id is None:
                raise AppError("bad_message", "A teacher's hello needs lesson_id.", status=400)
            room = await self.rooms.open(hello.lesson_id, v)
            me = room.add_teacher(v.user.display_name, v.user.id, self.conn, hello.resume)
            self.user_id = v.user.id  # closed when this login ends (logout, password, deactivation)
            self.rooms.track_user(v.user.id, v.session.key, self.conn)
        else:
            address = joining.client_address(self.request)
            resumed = self.rooms.find_resume(hello.resume) if hello.resume else None
            if resumed is not None:  # an unguessable token naming a seat: no code, no limiter
                me = resumed.add_student("", "", None, self.conn, hello.resume, address)
                room = resumed
                self._welcome(room, me)
                return
            found = await joining.check_code(self.request, hello.card or hello.code or "")
            name = (found.student.name if found.student else text.clean(hello.name or ""))
            if not name:
                raise AppError("name_required", "Please enter your name.", status=400)
            room = self.rooms.for_student(found.classroom.id)  # lesson_over while ending
            if room is None:
                self.rooms.reserve_wait(found.classroom.id, address)
                try:
                    self.conn.send({"type": "waiting", "lesson": waiting_lesson(found)})
                    room = await self._wait_for_start(found.classroom.id)
                finally:
                    self.rooms.release_wait(found.classroom.id, address)
                if room is None:
                    return
            # A guest is their name (as typed, cleaned) from their address: the same person
            # coming back gets their seat, vote and kick back (``seats.py``).
            person = hashlib.sha256(f"{name.casefold()}\0{address}".encode()).hexdigest()[:24]
            key = f"student:{found.student.id}" if found.student else f"guest:{person}"
            me = room.add_student(name, key, found.student.id if found.student else None,
                                  self.conn, hello.resume, address)
        self._welcome(room, me)

    def _welcome(self, room: Room, me: Participant) -> None:
        self.room, self.me = room, me
        self.conn.send({"type": "welcome", "participant_id": me.id, "resume": me.resume,
                        "listen_token": me.listen_token, "role": me.role,
                        "lesson": room.lesson.public(), "ice_servers": room.ice_servers_for(me.id),
                        "tier": me.controller.tier, "room": room.room_state(),
                        **room.snapshot()})
        if me.role == "teacher":
            room.send_participants()
            self.conn.send({"type": "hands", "queue": room.hands()})

    async def _wait_for_start(self, class_id: int) -> Optional[Room]:
        """Hold a waiting student until the lesson starts, answering pings meanwhile."""
        waiter = asyncio.create_task(self.rooms.wait_for_class(class_id))
        try:
            while not waiter.done():
                # One reader per socket: a read still pending when the lesson starts is kept and
                # awaited by ``run`` (cancelling it leaves aiohttp mid-receive: the next call
                # raises "Concurrent call to receive()" and the student is dropped).
                if self._pending is None:
                    self._pending = asyncio.create_task(self._next())
                reader = self._pending
                done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    self._pending = None
                    message = reader.result()
                    if message is None:
                        return None
                    if isinstance(message, Ping):
                        self.conn.send({"type": "pong"})
            return waiter.result()
        finally:
            waiter.cancel()

    async def stop_reading(self) -> None:
        """Cancel a read left pending by the wait (the session ended before taking it over)."""
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            try:
                await pending
            except (asyncio.CancelledError, Exception):
                pass

    async def _handle(self, message: Any) -> None:
        room, me = self.room, self.me
        assert room is not None and me is not None
        if isinstance(message, TEACHER_ONLY) and me.role != "teacher":
            raise AppError("forbidden", "Only the teacher can do this.", status=403)
        if isinstance(message, STUDENT_ONLY) and me.role != "student":
            raise AppError("forbidden", "Only students can do this.", status=403)
        if isinstance(message, Ping):
            self.conn.send({"type": "pong"})
        elif isinstance(message, Offer):
            if me.role == "student" and me.pc is not None and room.floor != me.id \
                    and "a=sendrecv" in message.sdp:
                raise AppError("no_floor", "You do not have the floor.", status=403)
            answer = await room.answer(me, message.sdp)
            self.conn.send({"type": "answer", "sdp": answer})
        elif isinstance(message, Stats):
            room.client_stats(me, message.model_dump(exclude={"type"}))
        elif isinstance(message, DataSaver):
            room.set_data_saver(me, message.on)
        elif isinstance(message, Hand):
            room.raise_hand(me, message.up)
        elif isinstance(message, Floor):
            await room.give_floor(message.participant_id)
        elif isinstance(message, Kick):
            await room.kick(message.participant_id)
        elif isinstance(message, End):
            await room.end("teacher_ended")
        elif isinstance(message, DeckMsg):
            await room.load_deck(message.deck_id)
        elif isinstance(message, SlideMsg):
            room.show_slide(message.page)
        elif isinstance(message, Ink):
            if len(message.points) % 2:
                raise AppError("bad_message", "Ink points come in x, y pairs.", status=400)
            room.add_ink(message.points, message.color, message.width)
        elif isinstance(message, InkClear):
            room.clear_ink()
        elif isinstance(message, Pointer):
            room.point(message.x, message.y)
        elif isinstance(message, ChatMsg):
            room.post_chat(me, message.text)
        elif isinstance(message, ChatEnabled):
            room.set_chat(message.on)
        elif isinstance(message, PollMsg):
            room.ask_poll(message.question, message.choices)
        elif isinstance(message, PollClose):
            room.close_poll(message.show)
        elif isinstance(message, Vote):
            room.vote(me, message.poll_id, message.choice)
        elif isinstance(message, Hello):
            raise AppError("bad_message", "Already joined.", status=400)


_CLOSE_FOR_STATUS = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 409: 4409, 410: 4410, 429: 4429}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
