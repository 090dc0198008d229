"""No-WebRTC fallback: one tier as a plain HTTP Ogg/Opus stream (``<audio>``, VLC, a radio box).

Like the recorder, the stream is just another subscriber of a tier: a ``FallbackStream`` is one
``PacketSink`` per tier, keeping a ring of the last few seconds of packets shared by all its
listeners, so a new listener's player fills its buffer at once (a short burst) and then follows
live. Each listener has its own Ogg framing (its granule positions start at 0), a bounded queue
of packets, and one writer: the aiohttp handler task, which aiohttp cancels when the client goes
away. A listener whose queue overflows or whose write stalls is dropped, never waited for, so
one listener on a dying link cannot hold up the tier or the other listeners.

The tiers drop Opus DTX packets during silence (a timestamp gap). A player reading a file has
no clock to fill the gap, so the writer fills it with 2-byte Opus packets of empty frames
(RFC 6716 3.2.5 code 3, frames of length 0 = "lost": the decoder conceals with silence/comfort
noise), keeping the stream's audio time equal to the room's time.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import socket
import struct
import zlib
from collections.abc import Iterable

from aiohttp import web

from .packets import SAMPLE_RATE, EncodedPacket

log = logging.getLogger(__name__)

PRE_SKIP = 312  # libopus' lookahead at 48 kHz (voip): samples to drop at the start of a stream
PAGE_SAMPLES = 12 * 960  # close an Ogg page every ~240 ms: ~1 kbps of framing, not ~4
MAX_GAP_FILL = 30 * SAMPLE_RATE  # a longer jump (an upstream clock reset) is not filled

# ---- Ogg -----------------------------------------------------------------------------------

_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(data: bytes) -> int:
    """CRC-32 of Ogg (poly 0x04C11DB7, init 0, not reflected, no final xor), at C speed.

    zlib's CRC-32 is the same polynomial, reflected, with init and final xor 0xFFFFFFFF: feed it
    bit-reversed bytes with the register pre-set to 0, undo the final xor, and reverse the result.
    """
    crc = zlib.crc32(data.translate(_REVERSE_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{crc:032b}"[::-1], 2)


def ogg_page(packets: list[bytes], granule: int, serial: int, sequence: int,
             first: bool = False, last: bool = False) -> bytes:
    """One Ogg page holding whole ``packets`` (at most 255 lacing values in total)."""
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    if len(lacing) > 255:
        raise ValueError("too many packets for one Ogg page")
    flags = (0x02 if first else 0) | (0x04 if last else 0)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0,
                         len(lacing))
    page = bytearray(header + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_head(pre_skip: int = PRE_SKIP) -> bytes:
    """RFC 7845 5.1 identification header: mono, 48 kHz input, no gain, mapping family 0."""
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, SAMPLE_RATE, 0, 0)


def opus_tags(vendor: str = "G-Room", comments: Iterable[str] = ()) -> bytes:
    items = [c.encode() for c in comments]
    body = struct.pack("<I", len(vendor.encode())) + vendor.encode() + struct.pack("<I", len(items))
    for item in items:
        body += struct.pack("<I", len(item)) + item
    return b"OpusTags" + body


def silent_packets(samples: int) -> list[tuple[bytes, int]]:
    """(Opus packet, samples) of empty (concealed) 20 ms frames covering ``samples``, rounded
    down."""
    frames = samples // 960
    out = [(b"\x0b\x06", 6 * 960)] * (frames // 6)  # code 3: six 20 ms frames of length 0
    rest = frames % 6
    if rest == 1:
        out.append((b"\x08", 960))  # code 0: one 20 ms frame of length 0
    elif rest:
        out.append((bytes([0x0B, rest]), rest * 960))
    return out


class OggOpusWriter:
    """Turns one tier's packets into an Ogg Opus byte stream for one listener. No I/O.

    Granule positions count samples from this listener's first packet (plus pre-skip), so every
    listener's file starts at time 0 whatever the room's clock says.
    """

    def __init__(self, serial: int | None = None, page_samples: int = PAGE_SAMPLES) -> None:
        self.serial = secrets.randbits(32) if serial is None else serial
        self._page_samples = page_samples
        self._sequence = 0
        self._next: int | None = None  # room timestamp the next packet should start at
        self._granule = PRE_SKIP  # granule at the end of the packets written so far
        self._pending: list[bytes] = []
        self._pending_samples = 0
        self._lacing = 0

    def headers(self) -> bytes:
        head = self._page([opus_head()], 0, first=True)
        return head + self._page([opus_tags()], 0)

    def add(self, packet: EncodedPacket) -> bytes:
        """Queue ``packet``; return the bytes of any page(s) it completed (often b"")."""
        out = bytearray()
        gap = 0 if self._next is None else packet.timestamp - self._next
        if -MAX_GAP_FILL < gap < 0:
            return b""  # a packet from before the last one (a repeat): already written
        if 0 < gap <= MAX_GAP_FILL:  # DTX: keep the stream's time equal to the room's
            for filler, samples in silent_packets(gap):
                out += self._append(filler, samples)
        self._next = packet.timestamp + packet.duration
        out += self._append(packet.payload, packet.duration)
        return bytes(out)

    def flush(self, last: bool = False) -> bytes:
        if not self._pending and not last:
            return b""
        page = self._page(self._pending, self._granule, last=last)
        self._pending, self._pending_samples, self._lacing = [], 0, 0
        return page

    def _append(self, payload: bytes, samples: int) -> bytes:
        lacing = len(payload) // 255 + 1
        out = b""
        if self._lacing + lacing > 255:
            out = self.flush()
        self._pending.append(payload)
        self._pending_samples += samples
        self._lacing += lacing
        self._granule += samples
        if self._pending_samples >= self._page_samples:
            out += self.flush()
        return out

    def _page(self, packets: list[bytes], granule: int, first: bool = False,
              last: bool = False) -> bytes:
        page = ogg_page(packets, granule, self.serial, self._sequence, first=first, last=last)
        self._sequence += 1
        return page


# ---- HTTP ----------------------------------------------------------------------------------

class _TooSlow(Exception):
    """The listener's queue overflowed or a write missed its deadline."""


class _Listener:
    """One HTTP client: a bounded packet queue filled by ``push``, drained by its handler."""

    def __init__(self, capacity: int) -> None:
        self.queue: collections.deque[EncodedPacket] = collections.deque()
        self.capacity = capacity
        self.wakeup = asyncio.Event()
        self.dropped = False  # too slow: the writer ends the response
        self.closed = False  # the stream is shutting down

    def push(self, packet: EncodedPacket) -> None:
        if len(self.queue) >= self.capacity:
            self.dropped = True
        else:
            self.queue.append(packet)
        self.wakeup.set()


class FallbackStream:
    """One tier's HTTP Ogg/Opus stream. Subscribe it to the tier, route a GET to ``serve``.

    Usage (room)::

        stream = FallbackStream("low")
        tiers.subscribe(stream, "low")
        ...
        async def listen(request): return await stream.serve(request)   # aiohttp handler
        ...
        await stream.close(); tiers.unsubscribe(stream)
    """

    def __init__(self, tier: str, burst_seconds: float = 2.5, max_listeners: int = 200,
                 queue_seconds: float = 10.0, write_timeout: float = 10.0,
                 send_buffer: int = 32 * 1024) -> None:
        self.tier = tier
        self._burst = int(burst_seconds * SAMPLE_RATE)
        self._ring: collections.deque[EncodedPacket] = collections.deque()
        self._max_listeners = max_listeners
        self._queue_packets = int(queue_seconds * 50)  # sized for the smallest packets (20 ms)
        self._write_timeout = write_timeout
        self._send_buffer = send_buffer
        self._listeners: set[_Listener] = set()
        self._done = asyncio.Condition()
        self._closed = False
        self.dropped_listeners = 0

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def push(self, packet: EncodedPacket) -> None:
        """PacketSink: remember it in the ring and hand it to every listener. Never blocks."""
        ring = self._ring
        ring.append(packet)
        while ring[-1].timestamp - ring[0].timestamp >= self._burst:
            ring.popleft()
        for listener in self._listeners:
            listener.push(packet)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """Stream the tier to this client until it leaves, is too slow, or the stream closes."""
        if self._closed:
            raise web.HTTPGone(text='{"error": "the lesson has ended"}',
                               content_type="application/json")
        if len(self._listeners) >= self._max_listeners:
            raise web.HTTPServiceUnavailable(text='{"error": "too many listeners"}',
                                             content_type="application/json")
        response = web.StreamResponse(headers={
            "Content-Type": "audio/ogg",
            "Cache-Control": "no-cache, no-store",
            "X-Content-Type-Options": "nosniff",
        })
        response.enable_chunked_encoding()
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None and self._send_buffer:
            # A small kernel buffer makes a stalled client visible in seconds, not minutes,
            # and bounds the memory a stalled client can pin.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        await response.prepare(request)
        listener = _Listener(self._queue_packets)
        listener.queue.extend(self._ring)  # the burst: only the last few seconds
        self._listeners.add(listener)
        peer = request.remote
        log.info("fallback %s: listener %s joined (%d)", self.tier, peer, len(self._listeners))
        try:
            await self._write(listener, response)
        except ConnectionError:
            log.info("fallback %s: listener %s left", self.tier, peer)
        except _TooSlow as exc:
            self.dropped_listeners += 1
            log.info("fallback %s: listener %s too slow, dropped: %s", self.tier, peer, exc)
            if request.transport is not None:
                request.transport.abort()  # do not let aiohttp wait on a stalled socket either
        finally:
            self._listeners.discard(listener)
            async with self._done:
                self._done.notify_all()
        return response

    async def _write(self, listener: _Listener, response: web.StreamResponse) -> None:
        writer = OggOpusWriter()
        await self._send(response, writer.headers())
        while True:
            if listener.dropped:
                raise _TooSlow("queue full")
            if listener.closed:
                await self._send(response, writer.flush(last=True))
                await response.write_eof()
                return
            if not listener.queue:
                listener.wakeup.clear()
                await listener.wakeup.wait()
                continue
            data = bytearray()
            while listener.queue:
                data += writer.add(listener.queue.popleft())
            if data:
                await self._send(response, bytes(data))

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await response.write(data)
        except TimeoutError:
            raise _TooSlow(f"write stalled for {self._write_timeout:g} s") from None

    async def close(self, timeout: float = 5.0) -> None:
        """End every listener's stream cleanly (last Ogg page) and wait for them to go."""
        self._closed = True
        for listener in self._listeners:
            listener.closed = True
            listener.wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                async with self._done:
                    await self._done.wait_for(lambda: not self._listeners)
        except TimeoutError:
            log.warning("fallback %s: %d listeners did not finish", self.tier, len(self._listeners))
        self._ring.clear()
