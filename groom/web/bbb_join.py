"""Joining an API meeting: the signed join link and the page it opens.

``join`` (``bbb_api.py``) answers with ``/bigbluebutton/enter/<token>``: a link signed with the
server's secret, naming the lesson, the role and the person's name, valid ``JOIN_SECONDS`` (the
LMS makes it when the user clicks, and the browser follows it at once). Opening it:

- a moderator gets the teacher page of that lesson with a *lesson pass* in it: another signed
  token, valid ``PASS_SECONDS``, that the page's ``hello`` carries instead of a session cookie
  (``signaling.py``). It opens that one lesson and nothing else; there is no account, no
  cookie, no other page it unlocks. Several moderators share the one teacher seat (the latest
  takes it over), since a G-Room lesson has one voice at the front.
- an attendee gets the student page of the meeting's class, their name filled in: one tap
  joins, as for any student.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer

from groom.core.auth import LessonPass
from groom.core.errors import AppError
from groom.core.models import ApiMeeting
from groom.office import api_clients

from . import proxy
from .plumbing import LIVE_PERMISSIONS, SESSIONS, SETTINGS, render

JOIN_SECONDS = 300
PASS_SECONDS = 12 * 3600  # a long lesson, joined early; the lesson's end closes it anyway
MODERATOR, VIEWER = "MODERATOR", "VIEWER"


@dataclass(frozen=True)
class Join:
    lesson_id: int
    role: str
    name: str
    user_id: str


def _serializer(request: web.Request, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app[SETTINGS].secret, salt=salt)


def join_url(request: web.Request, meeting: ApiMeeting, role: str, name: str, user_id: str) -> str:
    token = _serializer(request, "groom.bbb-join").dumps(
        {"l": meeting.lesson_id, "r": role, "n": name, "u": user_id})
    return f"{proxy.public_base(request)}/bigbluebutton/enter/{token}"


def _read_join(request: web.Request, token: str) -> Join:
    try:
        data = _serializer(request, "groom.bbb-join").loads(token, max_age=JOIN_SECONDS)
        return Join(int(data["l"]), str(data["r"]), str(data["n"]), str(data["u"]))
    except (BadSignature, KeyError, TypeError, ValueError):
        raise AppError("join_link_expired", "This join link has expired. Go back and join "
                       "again.", status=410) from None


def read_pass(request: web.Request, token: str) -> tuple[int, str]:
    """The lesson id and moderator name of a lesson pass, or 401."""
    try:
        data = _serializer(request, "groom.bbb-teach").loads(token, max_age=PASS_SECONDS)
        return int(data["l"]), str(data["n"])
    except (BadSignature, KeyError, TypeError, ValueError):
        raise AppError("unauthorized", "Please log in.", status=401) from None


async def lesson_pass(request: web.Request, token: str) -> tuple[LessonPass, Optional[int]]:
    """The pass of a ``hello`` and the meeting's presentation deck, if it has one yet."""
    lesson_id, name = read_pass(request, token)
    async with request.app[SESSIONS]() as db:
        meeting = await api_clients.meeting_of_lesson(db, lesson_id)
        if meeting is None:
            raise AppError("unauthorized", "Please log in.", status=401)
        return LessonPass(lesson_id, meeting.lesson.class_id, name), meeting.deck_id


async def enter(request: web.Request) -> web.StreamResponse:
    """``GET /bigbluebutton/enter/{token}``: the teacher or student page of the meeting."""
    join = _read_join(request, request.match_info["token"])
    async with request.app[SESSIONS]() as db:
        meeting = await api_clients.meeting_of_lesson(db, join.lesson_id)
        if meeting is None:
            raise AppError("lesson_over", "This lesson has ended or was cancelled.", status=410)
        lesson, classroom = meeting.lesson, meeting.lesson.classroom
        info: dict[str, Any] = {"id": lesson.id, "title": lesson.title or classroom.name,
                                "class_name": classroom.name, "state": lesson.state.value}
        code = classroom.join_code
    ws_url = proxy.ws_url(request)
    if join.role == MODERATOR:
        token = _serializer(request, "groom.bbb-teach").dumps({"l": lesson.id, "n": join.name})
        response = render(request, "teach.html", lesson=info, class_id=classroom.id,
                          ws_url=ws_url, lesson_pass=token)
    else:
        teacher = {"teacher_name": ""}
        response = render(request, "student.html", lesson={**info, **teacher},
                          join={"code": code, "name": join.name}, class_name=classroom.name,
                          ws_url=ws_url)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Permissions-Policy"] = LIVE_PERMISSIONS
    return response
