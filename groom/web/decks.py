"""HTTP for slide decks: upload, list, look at, delete, and the slide images themselves.

Conversion (``deck_import.import_deck``) runs in an app-owned task, one deck at a time, so that a
teacher closing the page does not waste the work and two uploads cannot take both cores from
the live rooms. The request waits for the result through ``asyncio.shield``.
Slide images are named by content hash, so they are served with immutable caching: a phone
downloads each slide once, ever.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from typing import AsyncIterator, Optional

import aiohttp
from aiohttp import web
from pydantic import BaseModel, Field

from groom.board import sandbox
from groom.board.deck_import import DEFAULT_LIMITS, MAX_UPLOAD_BYTES, DeckError, import_deck
from groom.board.slides import deck_slides, delete_deck, list_decks, slide_file, sweep
from groom.core.auth import require_viewer
from groom.core.db import load
from groom.core.errors import AppError, not_found
from groom.core.models import Classroom, Deck, Slide
from groom.live.placement import Node
from groom.live.rooms import ROOMS
from groom.office.lookup import get_class

from . import relay
from .openapi import endpoint, read_body
from .params import path_id
from .plumbing import SESSIONS, SETTINGS, viewer
from .slide_delivery import send_paced

log = logging.getLogger("groom.web.decks")


class Slot:
    """One upload's place among the held ones, from before its body is read until its
    conversion ends (or the request fails first). ``release`` may be called more than once."""

    def __init__(self, imports: "Imports", user_id: int) -> None:
        self._imports = imports
        self.user_id = user_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._imports._release(self.user_id)


class Imports:
    """Deck conversions owned by the app: at most one at a time, cancelled at shutdown.

    Each waiting or converting upload holds up to 50 MB in memory, so how many may be held is
    bounded per person (``settings.deck_imports_per_user``) and in all
    (``settings.deck_imports_total``); one more is refused before its body is read."""

    def __init__(self, per_user: int = 2, total: int = 4) -> None:
        self._one_at_a_time = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task[Deck]] = set()
        self._per_user = per_user
        self._total = total
        self._held: dict[int, int] = {}  # user id -> uploads held

    def reserve(self, user_id: int) -> Slot:
        if self._held.get(user_id, 0) >= self._per_user:
            raise AppError("too_many_imports", "You already have {count} slide uploads being "
                           "prepared. Wait until they are done.", status=429, count=self._per_user)
        if sum(self._held.values()) >= self._total:
            raise AppError("imports_busy", "The server is preparing other slide uploads. Try "
                           "again in a minute.", status=429)
        self._held[user_id] = self._held.get(user_id, 0) + 1
        return Slot(self, user_id)

    def _release(self, user_id: int) -> None:
        left = self._held.get(user_id, 0) - 1
        if left > 0:
            self._held[user_id] = left
        else:
            self._held.pop(user_id, None)

    def submit(self, app: web.Application, class_id: int, title: str, filename: str,
               data: bytes, slot: Optional[Slot] = None) -> asyncio.Task[Deck]:
        """Queue the conversion; ``slot`` is released when it ends, however it ends."""
        settings = app[SETTINGS]
        limits = replace(DEFAULT_LIMITS, sandbox=settings.deck_sandbox)

        async def run() -> Deck:
            async with self._one_at_a_time:
                return await import_deck(app[SESSIONS], settings.data_dir, class_id, title,
                                         filename, data, limits=limits)

        task = asyncio.create_task(run(), name=f"deck-import-{class_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if slot is not None:
            task.add_done_callback(lambda _: slot.release())
        return task

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


IMPORTS = web.AppKey("deck_imports", Imports)


async def imports_ctx(app: web.Application) -> AsyncIterator[None]:
    """Deck conversions; at start, files a crash left half-made are swept away."""
    settings = app[SETTINGS]
    await sweep(app[SESSIONS], settings.data_dir)
    await asyncio.to_thread(sandbox.check_at_start, settings.deck_sandbox)
    app[IMPORTS] = Imports(settings.deck_imports_per_user, settings.deck_imports_total)
    yield
    await app[IMPORTS].stop()


class SlideOut(BaseModel):
    index: int
    width: int
    height: int
    small: str
    large: str
    thumb: str
    jpeg: str
    phone: str = Field(description="The first image on a thin link; the small one in older decks")
    small_bytes: int
    large_bytes: int


class DeckOut(BaseModel):
    id: int
    class_id: int
    title: str
    filename: str
    pages: int
    small_bytes: int = Field(description="What a student downloads for every slide at the small size")


class DeckDetail(DeckOut):
    slides: list[SlideOut]


class UploadQuery(BaseModel):
    title: str = Field(default="", max_length=200)
    filename: str = Field(default="deck.pdf", min_length=1, max_length=255)


def deck_out(deck: Deck) -> DeckOut:
    return DeckOut(id=deck.id, class_id=deck.class_id, title=deck.title, filename=deck.filename,
                   pages=deck.pages, small_bytes=deck.small_bytes)


def slide_out(slide: Slide) -> SlideOut:
    return SlideOut(index=slide.index, width=slide.width, height=slide.height, small=slide.small,
                    large=slide.large, thumb=slide.thumb, jpeg=slide.jpeg, phone=slide.phone_name,
                    small_bytes=slide.small_bytes, large_bytes=slide.large_bytes)


async def _class_for_teaching(request: web.Request, class_id: int) -> Classroom:
    """The class's teacher and the school's admins manage its decks; others get 404."""
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        return await get_class(db, v, class_id)


def _deck_error(exc: DeckError) -> AppError:
    """The refusal as an AppError keeping template and params, so it is translated at the edge."""
    return AppError(exc.code, exc.template, status=exc.status, **exc.params)


@endpoint("POST", "/api/classes/{class_id}/decks", summary="Upload a deck (PDF, PNG, JPEG; "
          "PPTX/ODP when LibreOffice is installed) as the raw request body", tag="slides",
          query=UploadQuery, response=DeckDetail, status=201, raw_body="application/octet-stream",
          errors=(404, 409, 413, 415, 422, 429))
async def upload_deck(request: web.Request, query: UploadQuery) -> DeckDetail:
    class_id = path_id(request, "class_id", "class")
    v = require_viewer(await viewer(request))
    async with request.app[SESSIONS]() as db:
        await get_class(db, v, class_id)
    imports = request.app[IMPORTS]
    slot = imports.reserve(v.user.id)  # 429 before a byte of the body is read
    try:
        data = await read_body(request, MAX_UPLOAD_BYTES)
        if len(data) > MAX_UPLOAD_BYTES:
            raise AppError("too_large", "The file is too large (at most {mb} MB).", status=413,
                           mb=MAX_UPLOAD_BYTES // (1024 * 1024))
        task = imports.submit(request.app, class_id, query.title.strip(), query.filename, data,
                              slot)
    except BaseException:
        slot.release()
        raise
    try:
        deck = await asyncio.shield(task)
    except DeckError as exc:
        raise _deck_error(exc) from None
    slides = await deck_slides(request.app[SESSIONS], class_id, deck.id) or []
    return DeckDetail(**deck_out(deck).model_dump(), slides=[slide_out(s) for s in slides])


@endpoint("GET", "/api/classes/{class_id}/decks", summary="The class's decks, newest first",
          tag="slides", response=list[DeckOut], errors=(404,))
async def class_decks(request: web.Request) -> list[DeckOut]:
    class_id = path_id(request, "class_id", "class")
    await _class_for_teaching(request, class_id)
    return [deck_out(d) for d in await list_decks(request.app[SESSIONS], class_id)]


async def _deck(request: web.Request) -> tuple[Deck, list[Slide]]:
    deck_id = path_id(request, "deck_id", "deck")
    async with request.app[SESSIONS]() as db:
        deck: Optional[Deck] = await load(db, Deck, deck_id)
    if deck is None:
        raise not_found("deck")
    try:
        await _class_for_teaching(request, deck.class_id)
    except AppError as exc:
        if exc.status == 404:  # another class's deck answers like a missing deck
            raise not_found("deck") from None
        raise
    slides = await deck_slides(request.app[SESSIONS], deck.class_id, deck.id) or []
    return deck, slides


@endpoint("GET", "/api/decks/{deck_id}", summary="A deck with its slide images", tag="slides",
          response=DeckDetail, errors=(404,))
async def get_deck(request: web.Request) -> DeckDetail:
    deck, slides = await _deck(request)
    return DeckDetail(**deck_out(deck).model_dump(), slides=[slide_out(s) for s in slides])


@endpoint("DELETE", "/api/decks/{deck_id}", summary="Delete a deck (and images no other deck "
          "uses)", tag="slides", response=None, status=204, errors=(404,))
async def remove_deck(request: web.Request) -> None:
    deck, _ = await _deck(request)
    await delete_deck(request.app[SESSIONS], request.app[SETTINGS].data_dir, deck.class_id, deck.id)


async def slide_image(request: web.Request) -> web.StreamResponse:
    """A slide image by content hash: public (names are unguessable), cached forever."""
    found = slide_file(request.app[SETTINGS].data_dir, request.match_info["name"])
    if found is None:
        raise AppError("not_found", "Not found: {what}", status=404, what="slide")
    path, content_type = found
    headers = {"Content-Type": content_type, "Cache-Control": "public, max-age=31536000, immutable"}
    # A live student's page names itself (its listen token): that image crosses a link the
    # server paces and measures (slide_delivery); anything else is a plain file.
    token = request.query.get("t")
    if not token or request.method != "GET" or "Range" in request.headers:
        return web.FileResponse(path, headers=headers)
    rooms = request.app.get(ROOMS)
    listener = rooms.find_listener(token) if rooms is not None else None
    if listener is not None:
        room, student = listener
        return await send_paced(request, path, headers, token, student.controller.slide_kbps,
                                lambda kbps, paced: room.media.slide_delivered(student, kbps, paced))
    # With several workers the kernel hands the request to any of them: the one whose room holds
    # the student gives the rate and gets the measurement, as if the request had reached it.
    elsewhere = await _listener_elsewhere(request.app, token)
    if elsewhere is None:  # no room holds the token (it just ended): gently, unmeasured
        return await send_paced(request, path, headers, token, lambda: None, lambda *_: None)
    node, rate = elsewhere
    return await send_paced(request, path, headers, token, lambda: rate,
                            lambda kbps, paced: _report_elsewhere(request.app, node, token, kbps,
                                                                  paced))


async def _listener_elsewhere(app: web.Application, token: str
                              ) -> Optional[tuple[Node, Optional[float]]]:
    """The other worker whose room holds the listen token, and the rate to send at there."""
    for node, answer in await relay.ask_others(app, "POST", "/_worker/slide", {"token": token}):
        if isinstance(answer, dict) and answer.get("holds"):
            rate = answer.get("rate")
            return node, math.inf if answer.get("free") else (
                float(rate) if isinstance(rate, (int, float)) else None)
    return None


_reports: set[asyncio.Task[None]] = set()  # measurements on their way to the room's worker


def _report_elsewhere(app: web.Application, node: Node, token: str, kbps: float,
                      paced: bool) -> None:
    async def report() -> None:
        try:
            await relay.ask(app, node, "POST", "/_worker/slide",
                            {"token": token, "kbps": kbps, "paced": paced})
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("slide delivery not reported", extra={"node": node.id,
                                                              "error": type(exc).__name__})

    task = asyncio.create_task(report())
    _reports.add(task)
    task.add_done_callback(_reports.discard)


async def slide_here(request: web.Request) -> web.Response:
    """``POST /_worker/slide`` ``{"token", ["kbps", "paced"]}`` from another worker: whether a
    room here holds that listen token, the rate to send the student's slides at (``free``: no
    limit), and, with ``kbps``, that worker's measurement of a slide it sent the student."""
    relay.require_relayed(request)
    try:
        body = await request.json()
    except ValueError:
        raise AppError("malformed_json", "The body is not valid JSON.", status=400) from None
    if not isinstance(body, dict):
        return web.json_response({"holds": False})
    token = body.get("token")
    rooms = request.app.get(ROOMS)
    listener = rooms.find_listener(token) if isinstance(token, str) and token and rooms else None
    if listener is None:
        return web.json_response({"holds": False})
    room, student = listener
    kbps = body.get("kbps")
    if isinstance(kbps, (int, float)) and not isinstance(kbps, bool) and math.isfinite(kbps) \
            and kbps > 0:
        room.media.slide_delivered(student, float(kbps), bool(body.get("paced")))
    rate = student.controller.slide_kbps()
    free = rate is not None and math.isinf(rate)
    return web.json_response({"holds": True, "free": free, "rate": None if free else rate})
