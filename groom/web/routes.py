"""Every URL of the server, in one place.

API handlers register themselves with ``@endpoint`` (see ``openapi.py``) in the modules imported
here; pages and static files are listed below.
"""

from __future__ import annotations

from aiohttp import web

from groom.board.deck_import import MAX_UPLOAD_BYTES
from groom.office.schools import MAX_CSV_BYTES

from . import (
    accounts,
    api,  # noqa: F401  (its handlers register themselves with @endpoint)
    bbb_api,
    bbb_live,
    calendar_feeds,
    decks,
    health,
    live_pages,
    prometheus,
    recording_pages,
    recordings_api,  # noqa: F401  (its handlers register themselves with @endpoint)
    relay,
    schedule_api,  # noqa: F401  (its handlers register themselves with @endpoint)
    signaling,
    teacher_pages,
)
from . import admin_pages as office_pages
from . import pages as views
from .bbb_slides import MAX_XML_BYTES
from .openapi import add_api_routes, document
from .plumbing import BODY_LIMITS, STATIC, viewer


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


async def index(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    raise web.HTTPFound(accounts.home_for(v.user) if v else "/join")


async def set_language(request: web.Request) -> web.StreamResponse:
    lang = request.match_info["lang"]
    target = accounts.safe_next(request.query.get("next", "/")) or "/"  # never another site
    response = web.HTTPFound(target)
    if lang in ("lo", "en"):
        response.set_cookie("lang", lang, max_age=365 * 24 * 3600, samesite="Lax", path="/")
    raise response


def setup_routes(app: web.Application) -> None:
    add_api_routes(app)
    r = app.router
    r.add_get("/api/openapi.json", openapi_json)
    r.add_get("/healthz", health.healthz)
    r.add_get("/metrics", prometheus.metrics)
    # Worker to worker (groom serve --workers N), on the private loopback port: relay.py.
    r.add_get("/_worker/holds", relay.holds)
    r.add_post("/_worker/slide", decks.slide_here)
    r.add_post("/_worker/close-user", relay.close_user_here)
    r.add_get("/_worker/rooms", live_pages.rooms_here)
    r.add_get("/_worker/metrics", prometheus.metrics_here)
    r.add_post("/_worker/bbb/live", bbb_live.live_here)
    r.add_post("/_worker/bbb/end", bbb_live.end_here)
    r.add_post("/_worker/bbb/deck", bbb_live.show_deck_here)
    r.add_get("/", index)
    r.add_get("/lang/{lang}", set_language)
    r.add_get("/login", accounts.login_page)
    r.add_post("/login", accounts.login_submit)
    r.add_post("/logout", accounts.logout_submit)
    r.add_post("/logout-everywhere", accounts.logout_everywhere_submit)
    r.add_get("/password", accounts.password_page)
    r.add_post("/password", accounts.password_submit)
    r.add_get("/ws", signaling.websocket)
    r.add_get("/join/{code}", live_pages.join_code_page)
    r.add_get("/c/{card}", live_pages.card_page)
    r.add_get("/lessons/{lesson_id}/teach", live_pages.teach_page)
    r.add_get("/listen/{token}.ogg", live_pages.listen)
    r.add_get("/slides/{name}", decks.slide_image)
    r.add_get("/calendar/class/{ident}/{token}.ics", calendar_feeds.class_feed)
    r.add_get("/calendar/teacher/{ident}/{token}.ics", calendar_feeds.teacher_feed)
    add_page_routes(r)
    recording_pages.add_routes(r)
    bbb_api.add_routes(r)
    app[BODY_LIMITS] = body_limits()
    r.add_get("/static/{name}", app[STATIC].serve)


def body_limits() -> dict[str, int]:
    """The routes that take files, and their body limits (every other route: max_body_kb)."""
    form = 64 * 1024  # the form's other fields and the multipart framing
    return {"/api/classes/{class_id}/decks": MAX_UPLOAD_BYTES + form,
            "/api/classes/{class_id}/students/import": MAX_CSV_BYTES,
            "/classes/{id}/import": MAX_CSV_BYTES + 4 * office_pages.MAX_PASTE_CHARS + form,
            # create / insertDocument may carry a document inline, base64 in XML
            "/bigbluebutton/api/{call}": MAX_XML_BYTES}


def add_page_routes(r: web.UrlDispatcher) -> None:
    """The office and teacher pages (``views*.py``); ids in URLs are digits only."""
    o, n = office_pages, r"{id:\d+}"
    r.add_get("/admin", o.admin_home)
    r.add_post("/admin/schools", o.school_create)
    r.add_get(f"/schools/{n}", o.school_page)
    r.add_post(f"/schools/{n}", o.school_update)
    r.add_post(f"/schools/{n}/teachers", o.teacher_create)
    r.add_post(f"/schools/{n}/classes", o.class_create)
    r.add_get(f"/schools/{n}/week", o.school_week)
    r.add_post(f"/teachers/{n}/active", o.teacher_active)
    r.add_get(f"/teachers/{n}/week", o.teacher_week)
    r.add_get(f"/classes/{n}", o.class_page)
    r.add_post(f"/classes/{n}", o.class_update)
    r.add_post(f"/classes/{n}/students", o.student_add)
    r.add_post(f"/classes/{n}/import", o.roster_import)
    r.add_post(f"/classes/{n}/code", o.join_code_renew)
    r.add_post(f"/classes/{n}/lessons", o.lesson_schedule)
    r.add_get(f"/classes/{n}/week", o.class_week)
    r.add_get(f"/classes/{n}/cards", o.cards_sheet)
    r.add_post(f"/students/{n}/remove", o.student_remove)
    r.add_post(f"/students/{n}/card", o.student_card_renew)
    r.add_get(f"/lessons/{n}", o.lesson_page)
    r.add_post(f"/lessons/{n}/reschedule", o.lesson_reschedule)
    r.add_post(f"/lessons/{n}/cancel", o.lesson_cancel)
    r.add_get("/teacher", teacher_pages.teacher_home)
    r.add_post("/teacher/calendar/rotate", teacher_pages.calendar_rotate)
    r.add_get("/join", views.join_page)
    r.add_post("/join", views.join_submit)
