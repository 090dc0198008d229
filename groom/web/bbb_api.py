"""``/bigbluebutton/api/``: G-Room answering BigBlueButton's API (``docs/bbb-api.md``).

Each request names its call, carries BBB's checksum (``bbb_xml.py``) which says which API client
(``settings.bbb_clients``) is asking, and is answered in BBB's XML. The calls map onto G-Room's
own office (``office/api_clients.py``: a meeting is a lesson), live rooms (running, attendees,
end; in whichever worker runs the room: ``bbb_live.py``), recordings (the playback page and the
offline pack) and slide import (``bbb_slides.py``); webhooks are ``bbb_hooks.py``, join links
``bbb_join.py``.

Wrong checksums are counted per client address like wrong join codes (``joining.CHECKSUM_LIMITS``,
across every process of a cluster when there is a Redis): past
``joining.CHECKSUM_FAILURES_PER_MINUTE`` the address is answered 429 until the minute is over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import zlib
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.config import ApiClientSpec
from groom.core.errors import AppError
from groom.core.models import ApiMeeting, Attendance, Job, JobState, Recording, RecordingState
from groom.office import api_clients
from groom.recordings.offline_pack import PACK

from . import bbb_hooks, bbb_join, bbb_live, bbb_slides, joining, proxy
from .bbb_slides import MAX_XML_BYTES
from .bbb_xml import element, failure, find_client, response, strip_checksum
from .plumbing import SESSIONS, SETTINGS
from .recordings import remove_files, require_idle

API_VERSION = "2.0"
BBB_VERSION = "2.7-groom"
FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024
XML_BODY_CALLS = frozenset({"create", "insertDocument"})
META_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

Params = MultiDictProxy[str]


@dataclass
class Call:
    request: web.Request
    client: ApiClientSpec
    params: Params
    body: bytes  # an XML body (create, insertDocument); empty otherwise


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


# --- reading a call ------------------------------------------------------------------------------

async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes whatever ``Content-Length`` says."""
    if request.content_length is not None and request.content_length > limit:
        raise AppError("too_large", "The request body is too large.", status=413)
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise AppError("too_large", "The request body is too large.", status=413)
    return bytes(body)


async def _params(request: web.Request) -> tuple[Params, str, bool]:
    """The parameters, the string the checksum covers, and whether a body may follow. GET:
    the query. POST with a form and nothing but the checksum in the query: the form (BBB
    2.6+), read here within ``MAX_FORM_BYTES``. Other POSTs: the query; their body (create's
    and insertDocument's XML) is read only once the checksum has passed."""
    query = request.rel_url.raw_query_string
    if request.method != "POST":
        return request.rel_url.query, strip_checksum(query), False
    if request.content_type == FORM and not strip_checksum(query):
        text = (await _read_at_most(request, MAX_FORM_BYTES)).decode("utf-8", "replace")
        merged: MultiDict[str] = MultiDict(request.rel_url.query)
        merged.extend(parse_qsl(text, keep_blank_values=True))
        return MultiDictProxy(merged), strip_checksum(text), False
    return request.rel_url.query, strip_checksum(query), True


async def api(request: web.Request) -> web.StreamResponse:
    """Every call: version at the root, else checksum, client, then the call's handler."""
    call = request.match_info.get("call", "").strip("/")
    if not call:
        return response({"version": API_VERSION, "apiVersion": API_VERSION,
                         "bbbVersion": BBB_VERSION})
    handler = CALLS.get(call)
    if handler is None:
        return failure("unsupportedRequest", "This request is not supported.")
    limits, address = request.app[joining.CHECKSUM_LIMITS], joining.client_address(request)
    wait = await limits.check(address, "")
    if wait is not None:
        answer = failure("tooManyRequests", "Too many requests with a wrong checksum.", status=429)
        answer.headers["Retry-After"] = str(wait)
        return answer
    try:
        params, signed, may_have_body = await _params(request)
        client = find_client(request.app[SETTINGS].bbb_clients, call, signed,
                             params.get("checksum", ""))
        if client is None:
            await limits.wrong(address)
            return failure("checksumError", "Checksums do not match")
        body = b""
        if may_have_body and call in XML_BODY_CALLS:  # up to the route's limit (an inline document)
            body = await _read_at_most(request, MAX_XML_BYTES)
        return await handler(Call(request, client, params, body))
    except AppError as exc:  # BBB's clients read XML, whatever went wrong
        return failure(exc.code, str(exc), status=exc.status)


# --- helpers ----------------------------------------------------------------------------------

def _bool(params: Params, name: str, default: bool = False) -> bool:
    value = params.get(name)
    return default if value is None else value.strip().lower() == "true"


def _ms(when: Optional[dt.datetime]) -> int:
    return int(when.timestamp() * 1000) if when is not None else 0


def _meeting_id(params: Params) -> str:
    meeting_id = params.get("meetingID", "").strip()
    if not meeting_id:
        raise api_clients.error("missingParamMeetingID", "You must specify a meeting ID for "
                                "the meeting.")
    if len(meeting_id) > 256:
        raise api_clients.error("sizeError", "Meeting ID cannot be longer than 256 characters.")
    return meeting_id


def _meta(params: Params) -> dict[str, str]:
    """``meta_*`` parameters, names lower-cased as BBB does. The names become XML element
    names in answers, so only plain ones are accepted (``bbb-origin``, ``course_id``)."""
    meta = {k[5:].lower(): v[:1000] for k, v in params.items() if k.startswith("meta_")}
    if len(meta) > api_clients.MAX_META:
        raise api_clients.error("invalidMeta", "Too many metadata values.")
    bad = [key for key in meta if not META_KEY.fullmatch(key)]
    if bad:
        raise api_clients.error("invalidMeta", f"Metadata names may hold only letters, digits, "
                                f"'-', '_' and '.': meta_{bad[0][:64]}")
    return meta


def _ids(params: Params, name: str) -> list[str]:
    return [part.strip() for part in params.get(name, "").split(",") if part.strip()]


def _client_slot(request: web.Request, client: ApiClientSpec) -> int:
    """The client's place in the deck importer's per-person budget (below every user id)."""
    return -1 - request.app[SETTINGS].bbb_clients.index(client)


def _voice_bridge(meeting: ApiMeeting) -> int:
    return 10000 + zlib.crc32(meeting.internal_id.encode()) % 90000


def _meeting_fields(request: web.Request, meeting: ApiMeeting,
                    live: dict[int, list[bbb_live.Attendee]]) -> dict[str, Any]:
    """getMeetingInfo's fields (getMeetings repeats them per meeting); ``live``: the live
    lessons with their attendees (``bbb_live.live_lessons``)."""
    people = live.get(meeting.lesson_id)
    running = people is not None
    people = people or []
    attendees = [element("attendee", {
        "userID": p.id, "fullName": p.name, "role": "MODERATOR" if p.moderator else "VIEWER",
        "isPresenter": p.moderator, "isListeningOnly": not p.moderator,
        "hasJoinedVoice": p.joined_voice, "hasVideo": False, "clientType": "HTML5"})
        for p in people]
    lesson = meeting.lesson
    moderators = sum(1 for p in people if p.moderator)
    return {
        "meetingName": meeting.name, "meetingID": meeting.meeting_id,
        "internalMeetingID": meeting.internal_id, "createTime": _ms(meeting.created_at),
        "createDate": meeting.created_at.strftime("%a %b %d %H:%M:%S UTC %Y"),
        "voiceBridge": _voice_bridge(meeting), "dialNumber": "",
        "attendeePW": meeting.attendee_pw, "moderatorPW": meeting.moderator_pw,
        "running": running, "duration": 0,
        "hasUserJoined": lesson.started_at is not None, "recording": running and meeting.record,
        "hasBeenForciblyEnded": meeting.forcibly_ended, "startTime": _ms(lesson.started_at),
        "endTime": _ms(lesson.ended_at), "participantCount": len(people),
        "listenerCount": len(people) - moderators, "voiceParticipantCount": len(people),
        "videoCount": 0, "maxUsers": request.app[SETTINGS].students_per_lesson,
        "moderatorCount": moderators, "attendees": attendees,
        "metadata": meeting.meta or {}, "isBreakout": False,
    }


# --- the calls ----------------------------------------------------------------------------------

async def create(call: Call) -> web.StreamResponse:
    params, request = call.params, call.request
    meeting_id = _meeting_id(params)
    logout_url = params.get("logoutURL", "").strip()
    if logout_url and not logout_url.lower().startswith(("http://", "https://")):
        logout_url = ""  # never a javascript: or data: link on a page
    try:
        duration = int(params.get("duration", "0") or 0)
    except ValueError:
        duration = 0
    documents = bbb_slides.parse_modules(call.body)
    preuploaded = params.get("preUploadedPresentation", "").strip()
    if preuploaded:
        name = params.get("preUploadedPresentationName", "") or preuploaded
        documents.insert(0, bbb_slides.Document(bbb_slides.file_name(name, "slides.pdf"),
                                                  url=preuploaded))
    jobs = request.app[bbb_slides.SLIDE_JOBS]
    jobs.check(documents)
    await jobs.resolve_all(documents)
    meeting_params = api_clients.MeetingParams(
        meeting_id=meeting_id, name=(params.get("name") or meeting_id).strip()[:200],
        attendee_pw=params.get("attendeePW", "")[:128], moderator_pw=params.get("moderatorPW", "")[:128],
        welcome=params.get("welcome", "")[:5000], logout_url=logout_url[:1000],
        record=_bool(params, "record"), duration_minutes=duration, meta=_meta(params))
    async with request.app[SESSIONS]() as db:
        meeting, duplicate = await api_clients.create_meeting(db, call.client, meeting_params)
    if not duplicate:
        await request.app[bbb_hooks.HOOKS].emit(meeting, "meeting-created", {})
    if documents:
        jobs.start(meeting.id, meeting.lesson.class_id, meeting.lesson_id,
                   _client_slot(request, call.client), documents)
    fields: dict[str, Any] = {
        "meetingID": meeting.meeting_id, "internalMeetingID": meeting.internal_id,
        "parentMeetingID": "bbb-none", "attendeePW": meeting.attendee_pw,
        "moderatorPW": meeting.moderator_pw, "createTime": _ms(meeting.created_at),
        "voiceBridge": _voice_bridge(meeting), "dialNumber": "",
        "createDate": meeting.created_at.strftime("%a %b %d %H:%M:%S UTC %Y"),
        "hasUserJoined": meeting.lesson.started_at is not None, "duration": duration,
        "hasBeenForciblyEnded": meeting.forcibly_ended}
    if duplicate:
        fields.update(messageKey="duplicateWarning", message="This conference was already in "
                      "existence and may currently be in progress.")
    return response(fields)


async def join(call: Call) -> web.StreamResponse:
    params, request = call.params, call.request
    name = params.get("fullName", "").strip()[:80]
    if not name:
        raise api_clients.error("missingParamFullName", "You must specify a name for the "
                                "attendee who will be joining the meeting.")
    meeting_id = _meeting_id(params)
    async with request.app[SESSIONS]() as db:
        meeting = await api_clients.current_meeting(db, call.client, meeting_id)
    if meeting is None:
        raise api_clients.error("invalidMeetingIdentifier", "The meeting ID that you supplied "
                                "did not match any existing meetings")
    create_time = params.get("createTime", "").strip()
    if create_time and create_time != str(_ms(meeting.created_at)):
        raise api_clients.error("mismatchCreateTimeParam", "The createTime parameter submitted "
                                "mismatches with the current meeting.")
    role = params.get("role", "").strip().upper()
    password = params.get("password", "")
    if role not in (bbb_join.MODERATOR, bbb_join.VIEWER):
        if password and password == meeting.moderator_pw:
            role = bbb_join.MODERATOR
        elif password and password == meeting.attendee_pw:
            role = bbb_join.VIEWER
        else:
            raise api_clients.error("invalidPassword", "The password you submitted is not valid.")
    user_id = params.get("userID", "")[:100]
    url = bbb_join.join_url(request, meeting, role, name, user_id)
    if _bool(params, "redirect", default=True):
        raise web.HTTPFound(url)
    return response({"messageKey": "successfullyJoined", "message": "You have joined successfully.",
                     "meeting_id": meeting.internal_id, "user_id": user_id or name,
                     "auth_token": "", "session_token": url.rsplit("/", 1)[-1],
                     "guestStatus": "ALLOW", "url": url})


async def is_meeting_running(call: Call) -> web.StreamResponse:
    async with call.request.app[SESSIONS]() as db:
        meeting = await api_clients.current_meeting(db, call.client, _meeting_id(call.params))
    if meeting is None:
        return response({"running": False})
    live = await bbb_live.live_lessons(call.request.app, [meeting.lesson_id])
    return response({"running": meeting.lesson_id in live})


async def get_meeting_info(call: Call) -> web.StreamResponse:
    async with call.request.app[SESSIONS]() as db:
        meeting = await api_clients.require_meeting(db, call.client, _meeting_id(call.params))
    live = await bbb_live.live_lessons(call.request.app, [meeting.lesson_id])
    return response(_meeting_fields(call.request, meeting, live))


async def get_meetings(call: Call) -> web.StreamResponse:
    async with call.request.app[SESSIONS]() as db:
        meetings = await api_clients.open_meetings(db, call.client)
    if not meetings:
        return response({"meetings": [], "messageKey": "noMeetings",
                         "message": "no meetings were found on this server"})
    live = await bbb_live.live_lessons(call.request.app, [m.lesson_id for m in meetings])
    return response({"meetings": [element("meeting", _meeting_fields(call.request, m, live))
                                  for m in meetings]})


async def end(call: Call) -> web.StreamResponse:
    request = call.request
    async with request.app[SESSIONS]() as db:
        meeting = await api_clients.require_meeting(db, call.client, _meeting_id(call.params))
        password = call.params.get("password")
        if password is not None and password != meeting.moderator_pw:
            raise api_clients.error("invalidPassword", "You must supply the moderator password "
                                    "for this call.")
        # Marked first, so that whoever reads the meeting once the room has ended sees why.
        await api_clients.mark_forcibly_ended(db, meeting)
        # The room's worker ends it (its observers send ``meeting-ended``), wherever it runs.
        ended = await bbb_live.end(request.app, meeting.lesson.class_id, meeting.lesson_id)
        if not ended:
            await api_clients.end_unstarted(db, meeting)
    if not ended:
        await request.app[bbb_hooks.HOOKS].emit(meeting, "meeting-ended", {})
    return response({"messageKey": "sentEndMeetingRequest", "message": "A request to end the "
                     "meeting was sent. Please wait a few seconds, and then use the "
                     "getMeetingInfo or isMeetingRunning API calls to verify that it was ended."})


# --- recordings ---------------------------------------------------------------------------------

STATES = {"processing", "processed", "published", "unpublished", "deleted"}


def _recording_state(meeting: ApiMeeting, rec: Recording) -> str:
    if rec.state in (RecordingState.recording, RecordingState.processing):
        return "processing"
    if rec.state != RecordingState.ready:
        return "deleted"  # failed or silent: nothing to play, as BBB lists a lost recording
    return "published" if meeting.published else "unpublished"


def _recording_xml(request: web.Request, meeting: ApiMeeting, rec: Recording,
                   state: str, participants: int) -> Any:
    lesson = meeting.lesson
    code = lesson.classroom.join_code
    base = f"{proxy.public_base(request)}/r/{code}/{lesson.id}"
    minutes = round((rec.duration_s or 0) / 60)
    formats = []
    if state in ("published", "unpublished"):
        outputs = rec.outputs or {}
        formats = [
            element("format", {"type": "presentation", "url": base, "processingTime": 0,
                               "length": minutes, "size": sum(outputs.values())}),
            element("format", {"type": "offline", "url": f"{base}/{PACK}", "processingTime": 0,
                               "length": minutes, "size": outputs.get(PACK, 0)}),
        ]
    return element("recording", {
        "recordID": meeting.internal_id, "meetingID": meeting.meeting_id,
        "internalMeetingID": meeting.internal_id, "name": meeting.name, "isBreakout": False,
        "published": state == "published", "state": state,
        "startTime": _ms(lesson.started_at), "endTime": _ms(lesson.ended_at),
        "participants": participants, "rawSize": 0, "size": sum((rec.outputs or {}).values()),
        "metadata": meeting.meta or {}, "playback": formats})


async def get_recordings(call: Call) -> web.StreamResponse:
    params, request = call.params, call.request
    wanted = {s.lower() for s in _ids(params, "state")} or {"published", "unpublished"}
    if "any" in wanted:
        wanted = set(STATES)
    async with request.app[SESSIONS]() as db:
        rows = await api_clients.recordings(db, call.client, meeting_ids=_ids(params, "meetingID"),
                                            record_ids=_ids(params, "recordID"))
        counts = await _attendance_counts(db, [m.lesson_id for m, _ in rows])
    found = [(m, r, _recording_state(m, r)) for m, r in rows]
    items = [_recording_xml(request, m, r, s, counts.get(m.lesson_id, 0))
             for m, r, s in found if s in wanted]
    if not items:
        return response({"recordings": [], "messageKey": "noRecordings",
                         "message": "There are no recordings for the meeting(s)."})
    return response({"recordings": items})


async def _attendance_counts(db: AsyncSession, lesson_ids: list[int]) -> dict[int, int]:
    """People who came to each lesson (BBB's ``participants``)."""
    if not lesson_ids:
        return {}
    rows = await db.execute(select(Attendance.lesson_id, func.count()).where(
        Attendance.lesson_id.in_(lesson_ids)).group_by(Attendance.lesson_id))
    return {lesson_id: count for lesson_id, count in rows.tuples().all()}


async def publish_recordings(call: Call) -> web.StreamResponse:
    publish = call.params.get("publish")
    if publish is None:
        raise api_clients.error("missingParamPublish", "You must specify a publish value true "
                                "or false.")
    async with call.request.app[SESSIONS]() as db:
        await api_clients.publish(db, call.client, _ids(call.params, "recordID"),
                                  publish.strip().lower() == "true")
    return response({"published": publish.strip().lower() == "true"})


async def delete_recordings(call: Call) -> web.StreamResponse:
    request = call.request
    async with request.app[SESSIONS].begin() as db:
        found = await api_clients.require_recordings(db, call.client, _ids(call.params, "recordID"))
        for _, rec in found:
            try:
                require_idle(rec)
            except AppError:
                raise api_clients.error("recordingBusy", "The recording is still being made or "
                                        "processed.") from None
        lesson_ids = [m.lesson_id for m, _ in found]
        await db.execute(delete(Job).where(Job.lesson_id.in_(lesson_ids),
                                           Job.state == JobState.queued))
        for _, rec in found:
            await db.delete(rec)
    for lesson_id in lesson_ids:
        await asyncio.to_thread(remove_files, request.app[SETTINGS].data_dir, lesson_id)
    return response({"deleted": True})


async def update_recordings(call: Call) -> web.StreamResponse:
    async with call.request.app[SESSIONS]() as db:
        await api_clients.update_meta(db, call.client, _ids(call.params, "recordID"),
                                      _meta(call.params))
    return response({"updated": True})


async def insert_document(call: Call) -> web.StreamResponse:
    request = call.request
    async with request.app[SESSIONS]() as db:
        meeting = await api_clients.require_meeting(db, call.client, _meeting_id(call.params))
    documents = bbb_slides.parse_modules(call.body)
    if not documents:
        raise api_clients.error("missingDocument", "You must send at least one document.")
    jobs = request.app[bbb_slides.SLIDE_JOBS]
    jobs.check(documents)
    await jobs.resolve_all(documents)
    jobs.start(meeting.id, meeting.lesson.class_id, meeting.lesson_id,
               _client_slot(request, call.client), documents)
    return response({"messageKey": "documentInserted", "message": "The documents are being "
                     "fetched and converted."})


def _hooks(fn: Callable[[web.Request, ApiClientSpec, Any], Awaitable[dict[str, Any]]]) -> Handler:
    async def handler(call: Call) -> web.StreamResponse:
        return response(await fn(call.request, call.client, call.params))
    return handler


CALLS: dict[str, Handler] = {
    "create": create, "join": join, "isMeetingRunning": is_meeting_running,
    "getMeetingInfo": get_meeting_info, "getMeetings": get_meetings, "end": end,
    "getRecordings": get_recordings, "publishRecordings": publish_recordings,
    "deleteRecordings": delete_recordings, "updateRecordings": update_recordings,
    "insertDocument": insert_document,
    "hooks/create": _hooks(bbb_hooks.create), "hooks/destroy": _hooks(bbb_hooks.destroy),
    "hooks/list": _hooks(bbb_hooks.list_),
}


def add_routes(r: web.UrlDispatcher) -> None:
    r.add_route("GET", "/bigbluebutton/api", api)
    r.add_route("*", "/bigbluebutton/api/{call:[A-Za-z/]*}", api)
    r.add_get("/bigbluebutton/enter/{token}", bbb_join.enter)

