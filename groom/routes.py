"""Every URL of the server, in one place.

API handlers register themselves with ``@endpoint`` (see ``openapi.py``) in the modules imported
here; pages and static files are listed below.
"""

from __future__ import annotations

from aiohttp import web

from . import accounts, api, ical, live, signaling  # noqa: F401  (api registers endpoints)
from .config import WEB_DIR
from .openapi import add_api_routes, document
from .plumbing import viewer


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


async def index(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    raise web.HTTPFound(accounts.home_for(v.user) if v else "/join")


async def set_language(request: web.Request) -> web.StreamResponse:
    lang = request.match_info["lang"]
    target = request.query.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = web.HTTPFound(target)
    if lang in ("lo", "en"):
        response.set_cookie("lang", lang, max_age=365 * 24 * 3600, samesite="Lax", path="/")
    raise response


def setup_routes(app: web.Application) -> None:
    add_api_routes(app)
    r = app.router
    r.add_get("/api/openapi.json", openapi_json)
    r.add_get("/", index)
    r.add_get("/lang/{lang}", set_language)
    r.add_get("/login", accounts.login_page)
    r.add_post("/login", accounts.login_submit)
    r.add_post("/logout", accounts.logout_submit)
    r.add_get("/password", accounts.password_page)
    r.add_post("/password", accounts.password_submit)
    r.add_get("/ws", signaling.websocket)
    r.add_get("/join/{code}", live.join_code_page)
    r.add_get("/c/{card}", live.card_page)
    r.add_get("/lessons/{lesson_id}/teach", live.teach_page)
    r.add_get("/listen/{token}.ogg", live.listen)
    r.add_get("/calendar/class/{ident}/{token}.ics", ical.class_feed)
    r.add_get("/calendar/teacher/{ident}/{token}.ics", ical.teacher_feed)
    r.add_static("/static/", WEB_DIR / "static", append_version=True)
