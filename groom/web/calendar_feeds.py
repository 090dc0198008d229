"""Calendar feeds over HTTP: the feed URLs shown to people, and the ``.ics`` answers.

Why a module of its own: the feeds' domain (tokens, which lessons, the iCalendar text) is the
office's (``office/calendars.py``), which knows nothing of requests; the absolute URL needs the
server's public base (``proxy.public_base``) and the answer is an HTTP response, both web things.
Phone calendars fetch these without a session: the token in the path is the permission, and a
bad id, a wrong token and a deactivated teacher all answer the same bare 404.
"""

from __future__ import annotations

from aiohttp import web

from groom.core.errors import AppError
from groom.core.models import Classroom, User
from groom.office import calendars
from groom.office.calendars import Kind

from . import proxy
from .params import parse_id
from .plumbing import SESSIONS, SETTINGS


def class_feed_url(request: web.Request, classroom: Classroom) -> str:
    path = calendars.class_feed_path(request.app[SETTINGS].secret, classroom)
    return proxy.public_base(request) + path  # --public-url, else the (proxy-trusted) scheme/host


def teacher_feed_url(request: web.Request, teacher: User) -> str:
    path = calendars.teacher_feed_path(request.app[SETTINGS].secret, teacher)
    return proxy.public_base(request) + path


async def _feed(request: web.Request, kind: Kind) -> web.StreamResponse:
    try:
        ident = parse_id(request.match_info["ident"], "calendar")
    except AppError:
        raise web.HTTPNotFound() from None  # like a wrong token: a bare 404 for the calendar app
    async with request.app[SESSIONS]() as db:
        feed = await calendars.load_feed(db, request.app[SETTINGS].secret, kind, ident,
                                         request.match_info["token"])
    if feed is None:
        raise web.HTTPNotFound()
    return web.Response(body=feed.ics(), content_type="text/calendar", charset="utf-8",
                        headers={"Cache-Control": "private, max-age=300",
                                 "Content-Disposition": f'inline; filename="{kind}-{ident}.ics"'})


async def class_feed(request: web.Request) -> web.StreamResponse:
    return await _feed(request, "class")


async def teacher_feed(request: web.Request) -> web.StreamResponse:
    return await _feed(request, "teacher")
