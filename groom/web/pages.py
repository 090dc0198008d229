"""What the office pages share: the page viewer, forms, notices, local times, and student stubs.

Page handlers live in ``admin_pages.py`` (schools, classes, rosters, schedule, attendance) and
``teacher_pages.py`` (the teacher's home). They call the domain functions in ``schools.py`` and
``scheduling.py`` (which check role and school and raise ``AppError``) and only turn forms into
arguments and results into templates. A form error re-renders the page with the translated
message and the user's input, with the error's 4xx status; a success redirects with ``?done=``
(POST-redirect-GET) so that reloading never repeats a change.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Optional
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import MultiDictProxy

from groom.core.auth import Viewer
from groom.core.errors import AppError
from groom.office.codes import CARD_CODE_LENGTH, normalize

from .plumbing import render, tr, viewer

# AppError parameters that are English words chosen by the code (not user input): translated too.
TRANSLATED_PARAMS = ("field", "what", "reason")


async def page_viewer(request: web.Request) -> Viewer:
    """The logged-in user, or a redirect to the login page (which comes back here after a GET)."""
    v = await viewer(request)
    if v is None:
        if request.method == "GET":
            raise web.HTTPFound("/login?" + urlencode({"next": request.path_qs}))
        raise web.HTTPFound("/login")
    return v


def error_text(request: web.Request, exc: AppError) -> str:
    _ = tr(request)
    params = {k: (_(v) if k in TRANSLATED_PARAMS and isinstance(v, str) else v)
              for k, v in exc.params.items()}
    return _(exc.template, **params)


def done(path: str, what: str, **extra: Any) -> web.HTTPFound:
    """The redirect after a successful form: ``path?done=what`` (the page shows a notice)."""
    return web.HTTPFound(f"{path}?{urlencode({'done': what, **extra})}")


def text_fields(form: MultiDictProxy[Any]) -> dict[str, str]:
    """A form's text fields (first value of each), for re-showing what the user typed."""
    out: dict[str, str] = {}
    for key in form.keys():
        value = form.get(key)
        if isinstance(value, str) and key not in out:
            out[key] = value
    return out


class Clock:
    """Shows UTC instants on a school's wall clock (templates call ``t.time(lesson.starts_at)``)."""

    def __init__(self, timezone: str) -> None:
        self.name = timezone
        self.zone = ZoneInfo(timezone)

    def local(self, when: dt.datetime) -> dt.datetime:
        return when.astimezone(self.zone)

    def date(self, when: dt.datetime) -> str:
        return self.local(when).strftime("%d/%m/%Y")

    def iso_date(self, when: dt.datetime) -> str:
        return self.local(when).date().isoformat()

    def time(self, when: Optional[dt.datetime]) -> str:
        return self.local(when).strftime("%H:%M") if when else ""

    def weekday(self, when: dt.datetime) -> int:
        return self.local(when).weekday()

    def today(self) -> dt.date:
        return dt.datetime.now(self.zone).date()

    def minutes(self, start: dt.datetime, end: dt.datetime) -> int:
        return round((end - start).total_seconds() / 60)


def parse_week(raw: Optional[str], today: dt.date) -> dt.date:
    """``?week=YYYY-MM-DD`` (any day of it) -> that week's Monday; this week when absent/bad."""
    day = today
    if raw:
        try:
            day = dt.date.fromisoformat(raw[:10])
        except ValueError:
            day = today
    return day - dt.timedelta(days=day.weekday())


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """``render`` plus what every office page shows: the ``?done=`` notice."""
    context.setdefault("notice", request.query.get("done", "")[:40])
    context.setdefault("error", None)
    context.setdefault("form", {})
    context.setdefault("failed", "")
    context.setdefault("request_n", request.query.get("n", "")[:6])
    return render(request, template, status=status, **context)


# --- students: typing a code (``/join/{code}`` and ``/c/{card}`` are the live room's, live_pages.py) ---

async def join_page(request: web.Request) -> web.StreamResponse:
    return page(request, "join.html", code="")


async def join_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw = str(form.get("code", ""))[:40]
    code = normalize(raw)
    if not code:
        _ = tr(request)
        return page(request, "join.html", status=422, code=raw,
                    error=_("Type the code from your card or from your teacher."))
    # A personal card code goes to the card's page (which knows the student), else the class's.
    raise web.HTTPFound(f"/c/{code}" if len(code) == CARD_CODE_LENGTH else f"/join/{code}")
