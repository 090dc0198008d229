"""Slide images to a student in a live lesson: paced so they never starve the voice, and timed.

On a thin link a slide image sent at once fills the cell's queue: the voice packets behind it wait
0.5-1 s or are dropped, and the lesson is heard with holes while the slide loads. A student's page
asks for its slides with its ``listen_token`` (``/slides/<name>?t=<token>``), so the server knows
whose link the image crosses. The image is written in small pieces (one TCP segment each), one
image at a time per student:

- While the link's capacity is unknown, two pieces are in flight at a time (``TCP_INFO``: the
  next goes when one is acknowledged), so at most ~0.1-0.2 s of slide ever sits in the cell's
  queue ahead of a voice packet, and the image's own pace measures what the link has left.
- Once it is known, the pieces go at ``TierController.slide_kbps``: 90 % of the capacity less
  the voice (audio first), with as many more in flight as that rate fills in one round trip; on
  a link with plenty of room the image goes at once.

The time until the last byte is acknowledged gives the rate the image reached the student at,
handed to ``RoomMedia.slide_delivered`` (the tier controller's capacity evidence). With several
workers the request may land on one that does not run the student's room: that one asks the
room's worker for the rate and hands its measurement back (``decks.slide_here``), and the page's
own figure (``stats.slide_kbps``) reaches the room too. One image at a time holds per worker:
two requests landing on different workers are paced side by side. Requests without a token are
served as plain files.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable, Optional

from aiohttp import web

log = logging.getLogger("groom.web.slides")

# One piece is one TCP segment: 256 bytes (~100 ms of a 24 kbit/s link with its headers) while the
# link is unknown or thin, up to ~0.1 s of the paced rate on faster ones.
MIN_PIECE_BYTES = 256
MAX_PIECE_BYTES = 1200
PIECE_SECONDS = 0.1
# Pieces in flight while the capacity is unknown: two, because a receiver acknowledges every
# second segment at once but a lone one only after its delayed-ACK timer (40-200 ms).
PROBE_WINDOW = 2
ACK_WAIT_SECONDS = 30.0  # give up timing a download whose bytes are not acknowledged by then
ROOM_WAIT_SECONDS = 5.0  # a piece waits at most this long for the link to take it
_POLL_SECONDS = 0.02
# struct tcp_info (linux/tcp.h): tcpi_unacked (segments) at byte 24, tcpi_notsent_bytes at 144,
# tcpi_min_rtt (microseconds) at 148.
_TCP_INFO_BYTES = 152
_U32 = struct.Struct("=I")


def _in_flight(sock: socket.socket) -> Optional[tuple[int, int, float]]:
    """(segments sent and not acknowledged, bytes not sent yet, lowest round trip in seconds)
    on ``sock``; None when the kernel gives no ``TCP_INFO`` (not Linux, not TCP)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_BYTES:
        return None
    return (int(_U32.unpack_from(info, 24)[0]), int(_U32.unpack_from(info, 144)[0]),
            int(_U32.unpack_from(info, 148)[0]) / 1e6)


async def _room(transport: Any, sock: socket.socket, window: Callable[[float], int],
                deadline: float) -> Optional[tuple[int, int, float]]:
    """Wait until fewer than ``window(min_rtt)`` pieces are in flight and nothing waits to be
    sent (or ``deadline``); the last ``TCP_INFO`` figures, None without them."""
    while True:
        figures = _in_flight(sock)
        if figures is None:
            return None
        unacked, notsent, min_rtt = figures
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if (buffered == 0 and notsent == 0 and unacked < window(min_rtt)) \
                or time.monotonic() >= deadline:
            return figures
        await asyncio.sleep(_POLL_SECONDS)


# Per student (listen token): one image at a time, and how many requests hold or wait for it.
_turns: dict[str, tuple[asyncio.Lock, int]] = {}


async def send_paced(request: web.Request, path: Path, headers: dict[str, str], student: str,
                     rate_kbps: Callable[[], Optional[float]],
                     delivered: Callable[[float, bool], None]) -> web.StreamResponse:
    """``send_one``, one image at a time per ``student``: a page asks for the new slide while
    the last still loads (and prefetches the next two); their pieces would add up in the
    queue. The others wait their turn (in order)."""
    turn, count = _turns.get(student, (asyncio.Lock(), 0))
    _turns[student] = (turn, count + 1)
    try:
        async with turn:
            return await send_one(request, path, headers, rate_kbps, delivered)
    finally:
        turn, count = _turns[student]
        if count <= 1:
            del _turns[student]
        else:
            _turns[student] = (turn, count - 1)


async def send_one(request: web.Request, path: Path, headers: dict[str, str],
                   rate_kbps: Callable[[], Optional[float]],
                   delivered: Callable[[float, bool], None]) -> web.StreamResponse:
    """Send the file at ``path`` to a live student, then report the rate it reached them at.

    ``rate_kbps()`` (asked again for each piece) is what the link has left beside the voice:
    None while unknown (``PROBE_WINDOW`` pieces in flight at a time, so at most ~0.1-0.2 s of
    slide sits in the cell's queue ahead of a voice packet, and the image's own pace measures
    the link), ``math.inf`` on a link with plenty of room (sent at once), else the rate to pace
    the pieces at, with as many more in flight as that rate fills in one round trip.
    ``delivered(kbps, paced)``: ``paced`` when our pacing, not the link, set that rate."""
    data = await asyncio.to_thread(path.read_bytes)
    response = web.StreamResponse(headers=headers)
    response.content_length = len(data)
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    started = time.monotonic()
    try:
        await response.prepare(request)
        paced = await _write(response, transport, sock, data, rate_kbps)
        await response.write_eof()
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the student left
        return response
    seconds = await _acknowledged(transport, sock, started)
    if seconds is not None and seconds > 0:
        kbps = len(data) * 8 / seconds / 1000
        log.debug("slide delivered", extra={"kbps": round(kbps, 1), "paced": paced,
                                            "bytes": len(data)})
        delivered(kbps, paced)
    return response


async def _write(response: web.StreamResponse, transport: Any, sock: Optional[socket.socket],
                 data: bytes, rate_kbps: Callable[[], Optional[float]]) -> bool:
    """Write ``data`` piece by piece as ``send_paced`` says; True if our pacing slowed it."""
    paced = False
    sent = 0
    while sent < len(data):
        rate = rate_kbps()
        if sock is None or (rate is not None and math.isinf(rate)):
            await response.write(data[sent:])
            return paced

        size = MIN_PIECE_BYTES if rate is None else int(
            min(max(rate * 1000 / 8 * PIECE_SECONDS, MIN_PIECE_BYTES), MAX_PIECE_BYTES))

        def window(min_rtt: float, rate: Optional[float] = rate, size: int = size) -> int:
            if rate is None:
                return PROBE_WINDOW
            return PROBE_WINDOW + int(rate * 1000 / 8 * min_rtt / size)

        await _room(transport, sock, window, time.monotonic() + ROOM_WAIT_SECONDS)
        piece = data[sent:sent + size]
        await response.write(piece)
        sent += len(piece)
        if rate is not None:
            paced = True
            await asyncio.sleep(len(piece) * 8 / (rate * 1000))
    return paced


async def _acknowledged(transport: Any, sock: Optional[socket.socket],
                        started: float) -> Optional[float]:
    """Seconds from ``started`` until everything written was acknowledged (None: unknown).
    A socket the student closed meanwhile had it all (the length was announced)."""
    if sock is None:
        return None
    deadline = started + ACK_WAIT_SECONDS
    while time.monotonic() < deadline:
        figures = _in_flight(sock) if sock.fileno() >= 0 else (0, 0, 0.0)
        if figures is None:
            return None
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if buffered == 0 and figures[0] == 0 and figures[1] == 0:
            return time.monotonic() - started
        await asyncio.sleep(_POLL_SECONDS)
    return None
