"""Request plumbing shared by every handler: app keys, middlewares, templates, the viewer.

The middlewares give every request an id (in logs and the ``X-Request-Id`` header), security
headers (strict CSP, nosniff), a CSRF check for cookie-authenticated unsafe requests, and one
place where errors become responses: JSON under ``/api/``, a translated page elsewhere, and
never a stack trace to the client.
"""

from __future__ import annotations

import gettext
import logging
import secrets
import time
from typing import Any, Awaitable, Callable, Optional

import jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from groom.core import logs
from groom.core.auth import COOKIE, CSRF_FIELD, CSRF_HEADER, SessionCodec, Viewer, csrf_matches, load_viewer
from groom.core.config import WEB_DIR, Settings
from groom.core.errors import AppError
from groom.core.i18n import DEFAULT_LANGUAGE, LANGUAGE_NAMES, choose_language, translator

from .static import StaticFiles

log = logging.getLogger("groom.http")

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONS = web.AppKey("sessions", async_sessionmaker[AsyncSession])
CODEC = web.AppKey("codec", SessionCodec)
JINJA = web.AppKey("jinja", jinja2.Environment)
CATALOGS = web.AppKey("catalogs", dict[str, gettext.NullTranslations])
STATIC = web.AppKey("static", StaticFiles)

# Text worth compressing on the way out (pages, API answers, calendars); media is compressed
# already and streams are written piecewise.
COMPRESSIBLE = ("text/html", "application/json", "text/calendar", "text/csv")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Unsafe requests that may come without a session (they create one, or need none): exact paths,
# each a POST route (tests/test_attacks_accounts.py checks), never prefixes.
CSRF_EXEMPT = frozenset({"/login", "/api/login", "/api/join", "/join"})

# What pages may use: nothing but the microphone, and that only on the live pages (teacher and
# student on the floor) that set ``LIVE_PERMISSIONS`` themselves.
_FEATURES = ("camera", "geolocation", "payment", "usb", "serial", "bluetooth", "midi",
             "display-capture", "interest-cohort")
PERMISSIONS = ", ".join(["microphone=()", *(f"{f}=()" for f in _FEATURES)])
LIVE_PERMISSIONS = ", ".join(["microphone=(self)", *(f"{f}=()" for f in _FEATURES)])

# Request bodies: ``settings.max_body_kb`` for every route but these (route path -> bytes), set
# by ``routes.py`` for the routes that take files.
BODY_LIMITS = web.AppKey("body_limits", dict[str, int])

CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "style-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


async def viewer(request: web.Request) -> Optional[Viewer]:
    """The logged-in user, loaded once per request (None for students and strangers)."""
    if "viewer" not in request:
        async with request.app[SESSIONS]() as db:
            request["viewer"] = await load_viewer(db, request.app[CODEC], request.cookies.get(COOKIE))
    loaded: Optional[Viewer] = request["viewer"]
    return loaded


def pick_language(request: web.Request, default: str = DEFAULT_LANGUAGE) -> str:
    """The page's language: ``?lang=``, the ``lang`` cookie, ``Accept-Language``, ``default``."""
    return choose_language(request.query.get("lang"), request.cookies.get("lang"),
                           request.headers.get("Accept-Language", ""), default)


def tr(request: web.Request) -> Callable[..., str]:
    return translator(request.app[CATALOGS], pick_language(request))


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    lang = pick_language(request)
    v: Optional[Viewer] = request.get("viewer")
    html = request.app[JINJA].get_template(template).render(
        _=translator(request.app[CATALOGS], lang), lang=lang, languages=LANGUAGE_NAMES,
        viewer=v, csrf_token=v.session.csrf if v else "", csrf_field=CSRF_FIELD,
        path_qs=request.path_qs, **context)
    return web.Response(text=html, status=status, content_type="text/html")


def make_jinja(static: StaticFiles) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.globals["static"] = static.url
    return env


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(6)
    token = logs.request_id.set(rid)
    started = time.monotonic()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    finally:
        logs.request_id.reset(token)
    if (isinstance(response, web.Response) and not response.prepared
            and response.content_type in COMPRESSIBLE
            and isinstance(response.body, (bytes, bytearray)) and len(response.body) > 1024):
        response.enable_compression()
    response.headers["X-Request-Id"] = rid
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Permissions-Policy", PERMISSIONS)
    if response.content_type in ("text/html", "application/json"):
        # Pages and answers carry class codes, card codes, feed tokens and CSRF tokens: never
        # kept by a shared school computer's cache or a proxy. Files set their own caching.
        response.headers.setdefault("Cache-Control", "no-store")
    log.info("request", extra={"request_id": rid, "method": request.method,
                               "client": request.remote,
                               "path": logs.redact(request.path_qs), "status": response.status,
                               "ms": round((time.monotonic() - started) * 1000, 1)})
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AppError as exc:
        return error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status >= 400 and is_api(request):
            code = exc.reason.lower().replace(" ", "_")
            return web.json_response({"error": {"code": code, "message": exc.reason}},
                                     status=exc.status, headers=_allow_header(exc))
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": logs.redact(request.path_qs)})
        return error_response(request, AppError("internal", "Something went wrong on the server.",
                                                status=500))


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def error_response(request: web.Request, exc: AppError) -> web.StreamResponse:
    if is_api(request) or request.headers.get("Accept", "").startswith("application/json"):
        # The message in the asker's language (English for scripts that state none); the
        # code stays the same in every language, for programs.
        lang = pick_language(request, default="en")
        body = exc.to_json()
        body["error"]["message"] = translator(request.app[CATALOGS], lang)(exc.template, **exc.params)
        response: web.Response = web.json_response(body, status=exc.status)
    else:
        _ = tr(request)
        message = _(exc.template, **exc.params)
        response = render(request, "error.html", status=exc.status, message=message)
    wait = exc.params.get("retry_after")
    if wait is not None and exc.status in (429, 503):
        response.headers["Retry-After"] = str(wait)
    return response


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each route reads at most its own body size: a larger ``Content-Length`` is refused before
    a byte is read, and ``post()``/``read()`` stop a chunked body at the limit (413)."""
    route = request.match_info.route.resource
    path = route.canonical if route is not None else ""
    limit = request.app[BODY_LIMITS].get(path, request.app[SETTINGS].max_body_kb * 1024)
    if request.content_length is not None and request.content_length > limit:
        raise AppError("too_large", "The request body is too large.", status=413)
    if request.client_max_size != limit:
        # A clone forgets what ``proxy.forwarded`` set unless it is passed again: without these,
        # the routes with their own limit (uploads, the BBB API) saw the proxy, not the client.
        if request.remote is not None:
            request = request.clone(client_max_size=limit, scheme=request.scheme,
                                    host=request.host, remote=request.remote)
        else:
            request = request.clone(client_max_size=limit, scheme=request.scheme, host=request.host)
    return await handler(request)


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unsafe requests carrying a session cookie must echo the session's CSRF token."""
    if request.method in ("GET", "HEAD", "OPTIONS") or request.path in CSRF_EXEMPT:
        return await handler(request)
    if COOKIE not in request.cookies:
        return await handler(request)  # no session: the handler's own auth check answers 401
    v = await viewer(request)
    if v is None:
        return await handler(request)
    token = request.headers.get(CSRF_HEADER)
    if token is None and request.content_type in ("application/x-www-form-urlencoded",
                                                  "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        token = value if isinstance(value, str) else None
    if not csrf_matches(v.session, token):
        raise AppError("csrf", "The form has expired or the security token is wrong. "
                       "Reload the page and try again.", status=403)
    return await handler(request)
