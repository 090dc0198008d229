"""Slides an API client hands over: by URL or inline (``create``'s and ``insertDocument``'s
``<modules>`` body, ``preUploadedPresentation``), made into the meeting class's deck.

The call answers at once (as BBB does); fetching and converting run in tasks this module's
``SlideJobs`` owns (cancelled at shutdown), the conversion through the app's deck importer with
the same limits and sandbox as a teacher's upload. When a deck is ready it becomes the
meeting's presentation: shown at once if the lesson is live (in whichever worker runs it:
``bbb_live.py``), else when the moderator starts it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Optional
from xml.etree import ElementTree as ET

from aiohttp import web

from groom.board.deck_import import MAX_UPLOAD_BYTES, DeckError
from groom.core.errors import AppError
from groom.live.rooms import ROOMS
from groom.office import api_clients

from . import bbb_fetch, bbb_live
from .decks import IMPORTS
from .plumbing import SESSIONS, SETTINGS

log = logging.getLogger("groom.web.bbb_slides")

MAX_DOCUMENTS = 5  # per call
FETCH_SECONDS = 60.0
MAX_XML_BYTES = MAX_UPLOAD_BYTES * 4 // 3 + 64 * 1024  # one inline document, base64


@dataclass(frozen=True)
class Document:
    """One document of a call: a URL to fetch, or the bytes given inline."""

    filename: str
    url: str = ""
    data: bytes = b""


def file_name(raw: str, fallback: str) -> str:
    name = raw.strip().rsplit("/", 1)[-1][:200]
    return name or fallback


def parse_modules(body: bytes) -> list[Document]:
    """The documents of ``<modules><module name="presentation"><document .../>``. DTDs are
    refused before parsing (no entity expansion, no external entities)."""
    if not body.strip():
        return []
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise api_clients.error("invalidDocument", "Document type declarations are not accepted.")
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise api_clients.error("invalidDocument", "The XML body could not be read.") from None
    documents: list[Document] = []
    for module in root.iter("module"):
        if module.get("name") != "presentation":
            continue
        for doc in module.iter("document"):
            url = (doc.get("url") or "").strip()
            if url:
                documents.append(Document(file_name(doc.get("filename") or url, "slides.pdf"), url=url))
                continue
            try:
                data = base64.b64decode("".join((doc.text or "").split()), validate=True)
            except (binascii.Error, ValueError):
                raise api_clients.error("invalidDocument", "A document is not valid base64.") from None
            if data:
                documents.append(Document(file_name(doc.get("name") or "", "slides.pdf"), data=data))
    if len(documents) > MAX_DOCUMENTS:
        raise api_clients.error("invalidDocument", f"At most {MAX_DOCUMENTS} documents per call.")
    return documents


class SlideJobs:
    """The app's slide fetches and conversions for API meetings."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()
        self._allowed = bbb_fetch.parse_networks(app[SETTINGS].bbb_private_hosts)

    def check(self, documents: list[Document]) -> None:
        """Refuse at once what can be refused without the network (scheme, literal
        addresses), so the client hears BBB's FAILED answer rather than silence later."""
        for doc in documents:
            if doc.url:
                bbb_fetch.check_url(doc.url, self._allowed)
            elif len(doc.data) > MAX_UPLOAD_BYTES:
                raise api_clients.error("invalidDocument", "The file is too large.")

    async def resolve_all(self, documents: list[Document]) -> None:
        """The names' addresses too, checked before the call answers (a name resolving to a
        private address is refused like the address itself); the fetch checks again."""
        resolver = bbb_fetch.CheckedResolver(self._allowed)
        try:
            for doc in documents:
                host = bbb_fetch.check_url(doc.url, self._allowed).host if doc.url else None
                if host is not None:
                    async with asyncio.timeout(bbb_fetch.CONNECT_SECONDS):
                        await resolver.resolve(host, 0)
        except TimeoutError:
            raise bbb_fetch.refused("The host could not be resolved in time.") from None
        finally:
            await resolver.close()

    def start(self, meeting_row_id: int, class_id: int, lesson_id: int, client_slot: int,
              documents: list[Document]) -> None:
        """Fetch and convert in the background; the first document becomes the meeting's
        presentation, each later one the presentation once it is ready (as BBB's
        insertDocument makes the new one current)."""
        for doc in documents:
            task = asyncio.create_task(self._one(meeting_row_id, class_id, lesson_id,
                                                 client_slot, doc), name="bbb-slides")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fetch(self, doc: Document) -> bytes:
        if not doc.url:
            return doc.data
        async with bbb_fetch.session(self._allowed, FETCH_SECONDS) as http:
            status, body, _ = await bbb_fetch.request(http, "GET", doc.url, self._allowed,
                                                      max_bytes=MAX_UPLOAD_BYTES)
        if status != 200:
            raise bbb_fetch.refused(f"The document URL answered {status}.")
        return body

    async def _one(self, meeting_row_id: int, class_id: int, lesson_id: int, client_slot: int,
                   doc: Document) -> None:
        try:
            slot = self._app[IMPORTS].reserve(client_slot)
            try:
                data = await self._fetch(doc)
            except BaseException:
                slot.release()
                raise
            title = doc.filename.rsplit(".", 1)[0] or doc.filename
            deck = await self._app[IMPORTS].submit(self._app, class_id, title, doc.filename,
                                                   data, slot)
            async with self._app[SESSIONS]() as db:
                await api_clients.set_deck(db, meeting_row_id, deck.id)
            await bbb_live.show_deck(self._app, class_id, lesson_id, deck.id)
            log.info("api slides ready", extra={"lesson_id": lesson_id, "deck_id": deck.id})
        except asyncio.CancelledError:
            raise
        except (AppError, DeckError) as exc:
            log.warning("api slides refused: %s", exc, extra={"lesson_id": lesson_id})
        except Exception:
            log.exception("api slides failed", extra={"lesson_id": lesson_id})

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


SLIDE_JOBS = web.AppKey("bbb_slide_jobs", SlideJobs)


async def slides_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SLIDE_JOBS] = SlideJobs(app)
    yield
    await app[SLIDE_JOBS].stop()


async def show_meeting_deck(app: web.Application, deck_id: Optional[int], lesson_id: int) -> None:
    """The moderator opened the room: show the meeting's presentation unless a deck is up.
    Called by the room's own worker (the ``hello`` that opens it is served there)."""
    room = app[ROOMS].by_lesson.get(lesson_id)
    if deck_id is None or room is None or room.snapshot().get("deck"):
        return
    try:
        await room.load_deck(deck_id)
    except AppError:
        log.warning("meeting deck gone", extra={"lesson_id": lesson_id, "deck_id": deck_id})
