"""Logging in and out, and changing one's password (API and pages), and the session cookie.

The accounts themselves (checking a login, creating a user, the password rules) are the
office's: ``groom/office/users.py``; here are the requests, the pages and the cookie."""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from groom.core.auth import (
    COOKIE,
    SESSION_MAX_AGE,
    Session,
    SessionCodec,
    Viewer,
    end_session,
    require_viewer,
    start_session,
)
from groom.core.errors import AppError
from groom.core.models import Role, User
from groom.office.users import authenticate, log_out_everywhere, normal_username
from groom.office.users import change_password as change_user_password

from . import login_limits, proxy, relay
from .openapi import endpoint
from .plumbing import CODEC, SESSIONS, render, viewer


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str
    role: str
    school_id: Optional[int]


class LoginOut(BaseModel):
    user: UserOut
    csrf_token: str


class PasswordIn(BaseModel):
    old_password: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=8, max_length=200)


def user_out(user: User) -> UserOut:
    return UserOut(id=user.id, username=user.username, display_name=user.display_name,
                   role=user.role.value, school_id=user.school_id)


def set_session_cookie(response: web.StreamResponse, codec: SessionCodec, session: Session,
                       secure: bool) -> None:
    response.set_cookie(COOKIE, codec.dump(session), max_age=SESSION_MAX_AGE, httponly=True,
                        samesite="Lax", secure=secure, path="/")


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/")


async def _login_response(request: web.Request, user: User, body: web.StreamResponse) -> str:
    async with request.app[SESSIONS]() as db:
        session = await start_session(db, user)
    set_session_cookie(body, request.app[CODEC], session, secure=proxy.is_https(request))
    return session.csrf


async def _authenticate(request: web.Request, username: str, password: str) -> User:
    """A login attempt within the limits (``login_limits.py``): 429 before any password check
    when this address made too many wrong ones; a wrong one counts. The username is counted as
    stored (lower-case): "Admin" and "admin" are one account's budget, not two."""
    username = normal_username(username)
    await login_limits.check(request, username)
    try:
        async with request.app[SESSIONS]() as db:
            return await authenticate(db, username, password)
    except AppError as exc:
        if exc.code == "bad_login":
            await login_limits.failed(request, username)
        raise


@endpoint("POST", "/api/login", summary="Log in (sets the session cookie)", tag="accounts",
          body=LoginIn, response=LoginOut, auth=False, errors=(401, 429, 503))
async def api_login(request: web.Request, body: LoginIn) -> web.StreamResponse:
    user = await _authenticate(request, body.username, body.password)
    response = web.json_response({})
    csrf = await _login_response(request, user, response)
    response.text = LoginOut(user=user_out(user), csrf_token=csrf).model_dump_json()
    return response


async def _log_out(request: web.Request, v: Viewer) -> None:
    """This session ends (the cookie and any copy of it), and its open live sockets close."""
    async with request.app[SESSIONS]() as db:
        await end_session(db, v.session)
    await relay.close_user(request.app, v.user.id, v.session.key)


async def _log_out_everywhere(request: web.Request, v: Viewer) -> None:
    async with request.app[SESSIONS]() as db:
        await log_out_everywhere(db, v.user.id)
    await relay.close_user(request.app, v.user.id)


@endpoint("POST", "/api/logout", summary="Log out", tag="accounts", response=None, status=204)
async def api_logout(request: web.Request) -> web.StreamResponse:
    v = require_viewer(await viewer(request))
    await _log_out(request, v)
    response = web.Response(status=204)
    clear_session_cookie(response)
    return response


@endpoint("POST", "/api/logout-everywhere", summary="Log out on every device (ends all my sessions "
          "and closes my open live connections)", tag="accounts", response=None, status=204)
async def api_logout_everywhere(request: web.Request) -> web.StreamResponse:
    v = require_viewer(await viewer(request))
    await _log_out_everywhere(request, v)
    response = web.Response(status=204)
    clear_session_cookie(response)
    return response


@endpoint("GET", "/api/me", summary="The logged-in user", tag="accounts", response=LoginOut)
async def api_me(request: web.Request) -> LoginOut:
    v = require_viewer(await viewer(request))
    return LoginOut(user=user_out(v.user), csrf_token=v.session.csrf)


async def change_password(request: web.Request, v: Viewer, old: str, new: str) -> User:
    """Every session of the user ends (the caller starts a new one) and their live sockets close."""
    async with request.app[SESSIONS]() as db:
        user = await change_user_password(db, v.user.id, old, new)
    await relay.close_user(request.app, user.id)
    return user


@endpoint("POST", "/api/password", summary="Change my password (ends other sessions)",
          tag="accounts", body=PasswordIn, response=LoginOut)
async def api_password(request: web.Request, body: PasswordIn) -> web.StreamResponse:
    v = require_viewer(await viewer(request))
    user = await change_password(request, v, body.old_password, body.new_password)
    response = web.json_response({})
    csrf = await _login_response(request, user, response)
    response.text = LoginOut(user=user_out(user), csrf_token=csrf).model_dump_json()
    return response


# --- pages -----------------------------------------------------------------------------------

def home_for(user: User) -> str:
    return "/admin" if user.role == Role.admin else "/teacher"


def safe_next(value: Any) -> str:
    """``next`` when it is a path on this site, else "" (never an open redirect).

    Only ``/something``: not ``//host`` (another site to a browser), no scheme or host, no
    backslash (browsers read ``/`` + backslash + host as another site too), no spaces or control
    characters (browsers drop tabs and newlines, so slash-tab-slash-host would become ``//host``).
    """
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return ""
    if len(value) > 2000 or "\\" in value or any(c <= " " or c == "\x7f" for c in value):
        return ""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return ""
    return value


async def login_page(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    v = await viewer(request)
    if v is not None:
        raise web.HTTPFound(next_path or home_for(v.user))
    return render(request, "login.html", error=None, username="", next=next_path)


async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))[:200]
    next_path = safe_next(form.get("next"))
    try:
        user = await _authenticate(request, username, password)
    except AppError as exc:
        if exc.code != "bad_login":  # too many tries, or the server busy: say so
            response = render(request, "login.html", status=exc.status, error=exc.template,
                              error_params=exc.params, username=username, next=next_path)
            if "retry_after" in exc.params:
                response.headers["Retry-After"] = str(exc.params["retry_after"])
            return response
        return render(request, "login.html", status=401, error="Wrong username or password.",
                      error_params={}, username=username, next=next_path)
    response = web.HTTPFound(next_path or home_for(user))
    await _login_response(request, user, response)
    raise response


async def logout_submit(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    if v is not None:
        await _log_out(request, v)
    response = web.HTTPFound("/login")
    clear_session_cookie(response)
    raise response


async def logout_everywhere_submit(request: web.Request) -> web.StreamResponse:
    v = require_viewer(await viewer(request))
    await _log_out_everywhere(request, v)
    response = web.HTTPFound("/login")
    clear_session_cookie(response)
    raise response


async def password_page(request: web.Request) -> web.StreamResponse:
    require_viewer(await viewer(request))
    return render(request, "password.html", error=None, done=False)


async def password_submit(request: web.Request) -> web.StreamResponse:
    v = require_viewer(await viewer(request))
    form = await request.post()
    try:
        user = await change_password(request, v, str(form.get("old_password", "")),
                                     str(form.get("new_password", "")))
    except AppError as exc:
        return render(request, "password.html", status=exc.status, error=exc.template,
                      error_params=exc.params, done=False)
    response = render(request, "password.html", error=None, done=True)
    request["viewer"] = None
    await _login_response(request, user, response)
    return response

