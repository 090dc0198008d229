"""The live room of an API meeting, wherever it runs: the one seam between the BBB calls and
the workers of ``groom serve --workers N``.

A meeting's lesson is live in one worker (``live/placement.py``), but an API call lands on
whichever worker the kernel picked, so the BBB modules never read this process's ``ROOMS``
for a meeting: they ask here. Views (``running``, attendees) look here and ask every other
worker at once, as ``/api/live`` does (one round for a whole ``getMeetings``); actions (``end``,
showing a new deck) go to the class's owner over the private port (``relay.py``). With one
worker everything is local and no request leaves the process.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional

import aiohttp
from aiohttp import web

from groom.core.errors import AppError
from groom.live.placement import Node
from groom.live.room import Room
from groom.live.rooms import ROOMS
from groom.office import api_clients

from . import relay

log = logging.getLogger("groom.web.bbb_live")

END_TIMEOUT_S = 30.0  # ending a big lesson saves everyone's attendance and closes the recording


@dataclass(frozen=True)
class Attendee:
    """One person with a socket open in a live meeting (``getMeetingInfo``'s ``attendee``)."""

    id: str
    name: str
    moderator: bool
    joined_voice: bool


def _here(app: web.Application, lesson_id: int) -> Optional[Room]:
    room = app[ROOMS].by_lesson.get(lesson_id)
    return room if room is not None and room.ending is None else None


def _attendees(room: Room) -> list[Attendee]:
    return [Attendee(p.id, p.name, p.role == "teacher", p.role == "teacher" or p.connected)
            for p in room.everyone() if p.outbox is not None]


async def live_lessons(app: web.Application, lesson_ids: list[int]) -> dict[int, list[Attendee]]:
    """Those of these lessons that are live in any worker, each with its attendees. A worker
    that does not answer in time is left out (its lessons read as not running), as in every
    view of all rooms."""
    found = {lid: _attendees(room) for lid in lesson_ids if (room := _here(app, lid)) is not None}
    missing = [lid for lid in lesson_ids if lid not in found]
    if missing:
        for _, answer in await relay.ask_others(app, "POST", "/_worker/bbb/live",
                                                {"lessons": missing}):
            for lesson_id, people in answer.get("lessons", {}).items():
                found[int(lesson_id)] = [Attendee(**p) for p in people]
    return found


async def live_here(request: web.Request) -> web.Response:
    """``POST /_worker/bbb/live`` ``{"lessons": [ids]}``: those live in this worker."""
    relay.require_relayed(request)
    body = await request.json()
    lessons = {}
    for lesson_id in body.get("lessons", []):
        room = _here(request.app, int(lesson_id))
        if room is not None:
            lessons[str(lesson_id)] = [asdict(a) for a in _attendees(room)]
    return web.json_response({"lessons": lessons})


async def _owner_elsewhere(app: web.Application, class_id: int) -> Optional[Node]:
    owner = await relay.owner_or_none(app, class_id)
    return owner if owner is not None and owner.id != app[relay.PLACEMENT].me.id else None


async def end(app: web.Application, class_id: int, lesson_id: int) -> bool:
    """End the lesson's live room for everyone, in whichever worker runs it; False when no
    room is open (the meeting was never started, or has ended)."""
    room = _here(app, lesson_id)
    if room is not None:
        await room.end("api_ended")
        return True
    owner = await _owner_elsewhere(app, class_id)
    if owner is None:
        return False
    try:
        answer = await relay.ask(app, owner, "POST", "/_worker/bbb/end", {"lesson_id": lesson_id},
                                 timeout=END_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("room's worker did not end it", extra={"node": owner.id, "lesson_id": lesson_id,
                                                          "error": type(exc).__name__})
        raise api_clients.error("internalError", "The meeting's server did not answer; try "
                                "again.") from None
    return bool(answer.get("ended"))


async def end_here(request: web.Request) -> web.Response:
    """``POST /_worker/bbb/end`` ``{"lesson_id": id}``: end that room if it runs here."""
    relay.require_relayed(request)
    room = _here(request.app, int((await request.json())["lesson_id"]))
    if room is not None:
        await room.end("api_ended")
    return web.json_response({"ended": room is not None})


async def show_deck(app: web.Application, class_id: int, lesson_id: int, deck_id: int) -> None:
    """Put this deck on screen in the lesson's live room, wherever it runs (nothing when the
    lesson is not live: the moderator's room opens with the meeting's deck)."""
    room = _here(app, lesson_id)
    if room is not None:
        await room.load_deck(deck_id)
        return
    owner = await _owner_elsewhere(app, class_id)
    if owner is not None:
        try:
            await relay.ask(app, owner, "POST", "/_worker/bbb/deck",
                            {"lesson_id": lesson_id, "deck_id": deck_id})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AppError("unavailable", "The meeting's server did not answer.",
                           status=503) from exc


async def show_deck_here(request: web.Request) -> web.Response:
    """``POST /_worker/bbb/deck`` ``{"lesson_id": id, "deck_id": id}``."""
    relay.require_relayed(request)
    body: dict[str, Any] = await request.json()
    room = _here(request.app, int(body["lesson_id"]))
    if room is not None:
        await room.load_deck(int(body["deck_id"]))
    return web.json_response({"shown": room is not None})
