"""Webhooks of the BBB-compatible API: ``hooks/create|destroy|list`` and the signed callbacks.

Events, in bbb-webhooks' JSON shape (``{"data": {"type": "event", "id": ..., "attributes":
{...}, "event": {"ts": ...}}}``): ``meeting-created``, ``meeting-ended``, ``user-joined``,
``user-left`` and ``rap-publish-ended`` (the recording is ready). Each event becomes one job per
matching hook in the database job queue (``recordings/jobs.py``), run by a worker of its own so
a callback never waits behind a video being made; a failed callback is tried again after
``bbb_hook_retry_seconds``, doubling, ``bbb_hook_attempts`` times in all, then kept as failed.

A callback is a POST of the form fields ``event`` (a JSON list holding the event) and
``timestamp`` (ms) to the hook's URL with ``checksum`` added to its query, as bbb-webhooks
signs: ``sha1(callbackURL + '{"event":"<event>","timestamp":<ts>}' + secret)`` with the
client's first secret. URLs pass the same SSRF rules as slide URLs (``bbb_fetch.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from typing import Any, AsyncIterator, Optional

from aiohttp import web
from sqlalchemy import select

from groom.core.config import ApiClientSpec
from groom.core.models import ApiHook, ApiMeeting, Job, Recording, RecordingState
from groom.live.room import Participant, Room
from groom.live.rooms import ROOMS
from groom.office import api_clients
from groom.recordings.jobs import JobWorker, RetryLater, enqueue

from . import bbb_fetch
from .bbb_xml import element
from .live_pages import JOBS
from .plumbing import SESSIONS, SETTINGS

log = logging.getLogger("groom.web.bbb_hooks")

KIND = "bbb_hook"
CALLBACK_SECONDS = 10.0
MAX_ANSWER = 64 * 1024
MAX_PENDING = 1000  # event lookups in flight; beyond, events are dropped (logged)


def meeting_attributes(meeting: ApiMeeting) -> dict[str, Any]:
    return {"internal-meeting-id": meeting.internal_id, "external-meeting-id": meeting.meeting_id,
            "name": meeting.name, "metadata": meeting.meta or {}}


def event(kind: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"type": "event", "id": kind, "attributes": attributes,
                     "event": {"ts": int(time.time() * 1000)}}}


def signed_form(callback_url: str, event_json: str, secret: str) -> tuple[str, dict[str, str]]:
    """The URL (with ``checksum``) and form fields of one callback."""
    timestamp = int(time.time() * 1000)
    signed = json.dumps({"event": event_json, "timestamp": timestamp}, separators=(",", ":"),
                        ensure_ascii=False)
    checksum = hashlib.sha1(f"{callback_url}{signed}{secret}".encode()).hexdigest()
    joiner = "&" if "?" in callback_url else "?"
    return f"{callback_url}{joiner}checksum={checksum}", {"event": event_json,
                                                          "timestamp": str(timestamp)}


class Hooks:
    """Turns room events and API calls into queued callbacks, and delivers them."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        settings = app[SETTINGS]
        self._clients = {c.name: c for c in settings.bbb_clients}
        self._allowed = bbb_fetch.parse_networks(settings.bbb_private_hosts)
        self._attempts = max(1, settings.bbb_hook_attempts)
        self._retry = settings.bbb_hook_retry_seconds
        self._pending: set[asyncio.Task[None]] = set()
        self._api_lessons: dict[int, bool] = {}  # lesson id -> is an API meeting (cache)
        self.worker = JobWorker(app[SESSIONS], {KIND: self.deliver}, name=None,
                                poll_interval=2.0)

    # --- raising events ---------------------------------------------------------------------

    async def emit(self, meeting: ApiMeeting, kind: str, attributes: dict[str, Any]) -> None:
        """Queue ``kind`` for every hook of the meeting's client that wants its meetings."""
        body = event(kind, {"meeting": meeting_attributes(meeting), **attributes})
        async with self._app[SESSIONS].begin() as db:
            hooks = await api_clients.list_hooks(db, self._clients[meeting.client],
                                                 meeting.meeting_id)
            for hook in hooks:
                await enqueue(db, KIND, None, max_attempts=self._attempts,
                              payload={"hook": hook.id, "event": body})
        if hooks:
            self.worker.wake()

    def on_room(self, kind: str, room: Room, p: Optional[Participant]) -> None:
        """``Rooms`` observer: runs inside the room's call, so only starts a task."""
        known = self._api_lessons.get(room.lesson.id)
        if kind == "ended":
            self._api_lessons.pop(room.lesson.id, None)  # the cache holds live lessons only
        if known is False or len(self._pending) >= MAX_PENDING:
            return
        task = asyncio.create_task(self._room_event(kind, room.lesson.id, p), name="bbb-hook-event")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _room_event(self, kind: str, lesson_id: int, p: Optional[Participant]) -> None:
        try:
            async with self._app[SESSIONS]() as db:
                meeting = await api_clients.meeting_of_lesson(db, lesson_id)
            if kind != "ended":
                self._api_lessons[lesson_id] = meeting is not None
            if meeting is None or meeting.client not in self._clients:
                return
            if kind == "ended":
                await self.emit(meeting, "meeting-ended", {})
            elif p is not None:
                user = {"internal-user-id": p.id, "external-user-id": p.id, "name": p.name,
                        "role": "MODERATOR" if p.role == "teacher" else "VIEWER",
                        "presenter": p.role == "teacher"}
                await self.emit(meeting, f"user-{kind}", {"user": user})
        except Exception:
            log.exception("webhook event lost", extra={"lesson_id": lesson_id})

    async def recording_done(self, lesson_id: Optional[int]) -> None:
        """After post-processing: ``rap-publish-ended`` when the recording is ready."""
        if lesson_id is None:
            return
        async with self._app[SESSIONS]() as db:
            meeting = await api_clients.meeting_of_lesson(db, lesson_id)
            state = await db.scalar(select(Recording.state).where(Recording.lesson_id == lesson_id))
        if meeting is None or meeting.client not in self._clients:
            return
        await self.emit(meeting, "rap-publish-ended",
                        {"record-id": meeting.internal_id, "success": state == RecordingState.ready,
                         "step": "publish"})

    # --- delivering -------------------------------------------------------------------------

    async def deliver(self, job: Job) -> None:
        payload = job.payload or {}
        async with self._app[SESSIONS]() as db:
            hook = await db.get(ApiHook, int(payload.get("hook", 0)))
        client = self._clients.get(hook.client) if hook is not None else None
        if hook is None or client is None:
            return  # destroyed since, or its client removed: nothing to send
        event_json = json.dumps([payload.get("event")], separators=(",", ":"), ensure_ascii=False)
        url, form = signed_form(hook.callback_url, event_json, client.secrets[0])
        try:
            async with bbb_fetch.session(self._allowed, CALLBACK_SECONDS) as http:
                status, _, _ = await bbb_fetch.request(http, "POST", url, self._allowed,
                                                       max_bytes=MAX_ANSWER, data=form)
        except Exception as exc:
            raise RetryLater(str(exc), self._retry * 2 ** (job.attempts - 1)) from None
        if not 200 <= status < 300:
            raise RetryLater(f"callback answered {status}", self._retry * 2 ** (job.attempts - 1))

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.worker.stop()


HOOKS = web.AppKey("bbb_hooks", Hooks)


async def hooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The webhook worker, the rooms observer, and ``rap-publish-ended`` after each
    recording's post-processing (the recordings worker's handler, wrapped)."""
    hooks = app[HOOKS] = Hooks(app)
    app[ROOMS].observers.append(hooks.on_room)
    recordings = app[JOBS]
    process = recordings.handlers["recording"]

    async def process_and_tell(job: Job) -> None:
        await process(job)
        await hooks.recording_done(job.lesson_id)

    recordings.handlers["recording"] = process_and_tell
    await hooks.worker.start()
    yield
    await hooks.stop()


# --- the API calls ----------------------------------------------------------------------------

def _hook_xml(hook: ApiHook) -> Any:
    return element("hook", {"hookID": hook.id, "callbackURL": hook.callback_url,
                            "meetingID": hook.meeting_id or "", "permanentHook": False,
                            "rawData": hook.raw})


async def create(request: web.Request, client: ApiClientSpec,
                 params: Any) -> dict[str, Any]:
    callback = str(params.get("callbackURL", "")).strip()
    if not callback or len(callback) > 1000:
        raise api_clients.error("missingParamCallbackURL", "You must specify a callbackURL.")
    bbb_fetch.check_url(callback, bbb_fetch.parse_networks(request.app[SETTINGS].bbb_private_hosts))
    meeting_id = params.get("meetingID") or None
    raw = str(params.get("getRaw", "false")).lower() == "true"
    async with request.app[SESSIONS]() as db:
        hook, existed = await api_clients.create_hook(db, client, callback, meeting_id, raw)
    fields: dict[str, Any] = {"hookID": hook.id, "permanentHook": False, "rawData": hook.raw}
    if existed:
        fields.update(messageKey="duplicateWarning",
                      message="There is already a hook for this callback URL.")
    return fields


async def destroy(request: web.Request, client: ApiClientSpec, params: Any) -> dict[str, Any]:
    try:
        hook_id = int(params.get("hookID", ""))
    except ValueError:
        raise api_clients.error("missingParamHookID", "You must specify a hookID.") from None
    async with request.app[SESSIONS]() as db:
        await api_clients.destroy_hook(db, client, hook_id)
    return {"removed": True}


async def list_(request: web.Request, client: ApiClientSpec, params: Any) -> dict[str, Any]:
    async with request.app[SESSIONS]() as db:
        hooks = await api_clients.list_hooks(db, client, params.get("meetingID") or None)
    return {"hooks": [_hook_xml(h) for h in hooks]}
