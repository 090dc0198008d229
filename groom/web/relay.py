"""Workers (``groom serve --workers N``): reaching the worker that runs a class's live room.

Every worker accepts connections on the public port (``SO_REUSEPORT``: the kernel spreads them),
so a student's ``/ws`` lands on any worker, but the class's room runs in one of them (its
owner, ``live/placement.py``). A connection that lands elsewhere is *relayed*: after its
``hello`` names the class, this worker opens a WebSocket to the owner's private loopback port
and pipes messages both ways, close codes included (``pipe_websocket``). The same for HTTP that
needs the room (the fallback ``/listen`` stream, the student page: ``forward``). Media does not
pass here: the owner's answer carries its own ICE candidates, so audio flows straight between
the phone and the owner.

A relayed request carries the relay token (``core.node.relay_token``, from the server's secret),
the client's address and scheme as this worker saw them (after the trusted-proxy middleware);
the ``relayed`` middleware of the owner restores them, so per-address limits, logs and links are
the client's. Views of every room (``/api/live``, ``/metrics``, closing a user's sockets) ask
the other workers over the same private port (``ask_others``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, AsyncIterator, Optional, Protocol
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from sqlalchemy import select

from groom.core.db import MAX_ID
from groom.core.models import Lesson
from groom.core.node import relay_token
from groom.live.placement import TOKEN_HEADER, Node, Placement
from groom.live.rooms import ROOMS

from . import proxy
from .plumbing import SESSIONS, SETTINGS

log = logging.getLogger("groom.web.relay")

CLIENT_HEADER = "X-Groom-Client"
SCHEME_HEADER = "X-Groom-Scheme"
WORKER_HEADER = "X-Groom-Worker"
RELAYED_BY_HEADER = "X-Groom-Relayed-By"
ASK_TIMEOUT_S = 5.0
_RELAYED = "groom.web.relay.relayed"

PLACEMENT = web.AppKey("placement", Placement)
RELAY_HTTP = web.AppKey("relay_http", aiohttp.ClientSession)
TOKEN = web.AppKey("relay_token", str)

# Not passed on: hop-by-hop and WebSocket handshake headers (the relay makes its own), and the
# forwarded headers (the client is named by CLIENT_HEADER, already resolved here).
_NOT_RELAYED = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding",
    "Upgrade", "Content-Length", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "Forwarded",
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP", TOKEN_HEADER, CLIENT_HEADER,
    SCHEME_HEADER))


class Outlet(Protocol):
    """The client side of a relayed socket: ``signaling.Connection``."""

    ws: web.WebSocketResponse

    def send_text(self, text: str, kind: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


def is_relayed(request: web.Request) -> bool:
    """Whether another worker relayed this request (it has been routed once: serve it here)."""
    return bool(request.get(_RELAYED))


@web.middleware
async def relayed(request: web.Request, handler: proxy.Handler) -> web.StreamResponse:
    """First middleware: a request with the right relay token gets the client's address and
    scheme back; a wrong token is refused (somebody on this host is guessing)."""
    claimed = request.headers.get(TOKEN_HEADER)
    if claimed is None:
        return await handler(request)
    if not hmac.compare_digest(claimed.encode(), request.app[TOKEN].encode()):
        return web.json_response({"error": {"code": "forbidden"}}, status=403)
    scheme = request.headers.get(SCHEME_HEADER, request.scheme)
    scheme = scheme if scheme in ("http", "https") else request.scheme
    proxy.remember_scheme(request, scheme)
    clone = request.clone(remote=request.headers.get(CLIENT_HEADER) or request.remote or "",
                          scheme=scheme)
    clone[_RELAYED] = True
    return await handler(clone)


def require_relayed(request: web.Request) -> None:
    """Private endpoints (``/_worker/...``) exist only for the other workers."""
    if not is_relayed(request):
        raise web.HTTPNotFound()


def relay_headers(request: web.Request) -> CIMultiDict[str]:
    headers = CIMultiDict((k, v) for k, v in request.headers.items()
                          if k.lower() not in _NOT_RELAYED)
    headers[TOKEN_HEADER] = request.app[TOKEN]
    headers[CLIENT_HEADER] = request.remote or ""
    headers[SCHEME_HEADER] = request.scheme
    return headers


async def owner_elsewhere(app: web.Application, class_id: int) -> Optional[Node]:
    """The worker that runs (or will run) this class's room, when it is not this one."""
    placement = app[PLACEMENT]
    node = await placement.place(class_id)
    return None if node.id == placement.me.id else node


async def owner_or_none(app: web.Application, class_id: int) -> Optional[Node]:
    """The class's owner, if placed; None also when the supervisor does not answer (a page
    that only shows the lesson is better drawn here than not at all)."""
    try:
        return await app[PLACEMENT].owner(class_id)
    except (aiohttp.ClientError, asyncio.TimeoutError, LookupError) as exc:
        log.warning("placement unavailable", extra={"error": type(exc).__name__})
        return None


async def class_of_lesson(app: web.Application, lesson_id: int) -> Optional[int]:
    if not 1 <= lesson_id <= MAX_ID:
        return None
    async with app[SESSIONS]() as db:
        found: Optional[int] = await db.scalar(select(Lesson.class_id).where(Lesson.id == lesson_id))
        return found


async def find_holder(app: web.Application, kind: str, token: str) -> Optional[Node]:
    """The other worker whose room holds this ``resume`` or ``listen`` token, if any."""
    query = urlencode({"kind": kind, "token": token})
    for node, answer in await ask_others(app, "GET", f"/_worker/holds?{query}"):
        if answer.get("holds"):
            return node
    return None


async def holds(request: web.Request) -> web.Response:
    """``GET /_worker/holds?kind=resume|listen&token=...``: is that seat in a room here?"""
    require_relayed(request)
    rooms, token = request.app[ROOMS], request.query.get("token", "")
    kind = request.query.get("kind")
    found = (rooms.find_resume(token) is not None if kind == "resume"
             else rooms.find_listener(token) is not None if kind == "listen" else False)
    return web.json_response({"holds": bool(token) and found})


async def close_user(app: web.Application, user_id: int, session_key: Optional[str] = None) -> int:
    """Close this user's live sockets (of one session, when given) on every worker."""
    closed = app[ROOMS].close_user(user_id, session_key)
    for _, answer in await ask_others(app, "POST", "/_worker/close-user",
                                      {"user_id": user_id, "session_key": session_key}):
        closed += int(answer.get("closed", 0))
    return closed


async def close_user_here(request: web.Request) -> web.Response:
    require_relayed(request)
    body = await request.json()
    key = body.get("session_key")
    closed = request.app[ROOMS].close_user(int(body["user_id"]), str(key) if key else None)
    return web.json_response({"closed": closed})


async def ask_others(app: web.Application, method: str, path: str,
                     body: Optional[dict[str, Any]] = None) -> list[tuple[Node, Any]]:
    """Ask every other worker (private port) at once; one that fails to answer is left out
    (a worker restarting must not break a view of the others)."""
    placement = app[PLACEMENT]
    if placement.solo:
        return []
    try:
        nodes = [n for n in await placement.nodes() if n.id != placement.me.id]
    except LookupError:  # the cluster's registry is away: this node's own view only
        return []

    async def one(node: Node) -> Optional[tuple[Node, Any]]:
        try:
            return node, await ask(app, node, method, path, body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("worker did not answer", extra={"node": node.id, "path": path.split("?")[0],
                                                        "error": type(exc).__name__})
            return None

    return [r for r in await asyncio.gather(*(one(n) for n in nodes)) if r is not None]


async def ask(app: web.Application, node: Node, method: str, path: str,
              body: Optional[dict[str, Any]] = None, timeout: float = ASK_TIMEOUT_S) -> Any:
    """One private endpoint of one worker (the owner's, for an action on its room): the JSON
    (or text) answer; raises ``aiohttp.ClientError``, ``TimeoutError`` or ``ValueError``."""
    # The relay's client passes bodies through still compressed (``relay_ctx``); an answer read
    # here must come uncompressed (a room list with Lao names is big enough to be gzipped).
    headers = {TOKEN_HEADER: app[TOKEN], "Accept-Encoding": "identity"}
    async with asyncio.timeout(timeout):
        async with app[RELAY_HTTP].request(method, node.url + path, json=body,
                                           headers=headers) as resp:
            resp.raise_for_status()
            if resp.content_type == "application/json":
                return await resp.json()
            return await resp.text()


async def forward(request: web.Request, node: Node) -> web.StreamResponse:
    """Serve this request from the owner: its status, headers and body, streamed (a
    ``/listen`` stream lasts the lesson)."""
    body = await request.read() if request.can_read_body else None
    async with request.app[RELAY_HTTP].request(
            request.method, node.url + request.path_qs, headers=relay_headers(request), data=body,
            allow_redirects=False) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _NOT_RELAYED or key.lower() == "content-length":
                response.headers.add(key, value)
        response.headers[RELAYED_BY_HEADER] = request.app[PLACEMENT].me.id
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:  # the client went away (a listener closed the stream)
            pass
        return response


def _sendable(code: Optional[int]) -> bool:
    """Close codes one may put in a close frame (1005, 1006 and 1015 only describe)."""
    return code is not None and (1000 <= code <= 1014 or 3000 <= code <= 4999) \
        and code not in (1005, 1006)


async def pipe_websocket(request: web.Request, conn: Outlet, node: Node, first: str) -> None:
    """Relay this socket to the owner's ``/ws``, starting with the ``hello`` already read.

    Messages go both ways unchanged (the owner validates and rate-limits them as for any
    socket); whichever side closes, the other is closed with the same code. When the owner
    cannot be reached, the client is told to come back (1013, not a final code: the page
    reconnects and is placed again)."""
    try:
        upstream = await request.app[RELAY_HTTP].ws_connect(
            node.url + "/ws", headers=relay_headers(request), autoping=True, max_msg_size=0)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        log.warning("relay to worker failed", extra={"node": node.id, "error": type(exc).__name__})
        conn.close(1013, "try again")
        return
    log.info("ws relayed", extra={"worker": request.app[PLACEMENT].me.id, "node": node.id})
    await upstream.send_str(first)
    down = asyncio.create_task(_down(upstream, conn), name="relay-down")
    try:
        while not down.done():
            msg = await conn.ws.receive()
            if msg.type == WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            else:  # the client closed (or the socket failed): close the owner's side the same way
                if msg.type == WSMsgType.ERROR and "size" in str(msg.data).lower():
                    conn.close(1009, "message too big")
                break
    except (ConnectionError, RuntimeError):
        pass
    finally:
        code = conn.ws.close_code
        await upstream.close(code=code if code is not None and _sendable(code) else 1000)
        await asyncio.wait({down}, timeout=5)
        down.cancel()


async def _down(upstream: aiohttp.ClientWebSocketResponse, conn: Outlet) -> None:
    code, reason = 1012, "worker restarting"  # the owner vanished without a close frame
    while True:
        msg = await upstream.receive()
        if msg.type == WSMsgType.TEXT:
            conn.send_text(msg.data, "")
        elif msg.type == WSMsgType.CLOSE:
            code, reason = msg.data, msg.extra or ""
            break
        elif msg.type != WSMsgType.BINARY:
            break
    conn.close(code if _sendable(code) else 1012, reason)


async def worker_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: which worker answered (support, tests, the bench)."""
    response.headers.setdefault(WORKER_HEADER, request.app[PLACEMENT].me.id)


async def relay_ctx(app: web.Application) -> AsyncIterator[None]:
    """The token and the HTTP client of the private port, for the life of the app."""
    app[TOKEN] = relay_token(app[SETTINGS].secret)
    # No total timeout: a relayed socket or stream lasts a lesson. No connection limit: one
    # connection per relayed socket.
    app[RELAY_HTTP] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        auto_decompress=False)
    yield
    await app[RELAY_HTTP].close()
