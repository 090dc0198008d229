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

from aiohttp import web

from groom.audio.ogg import PRE_SKIP, ogg_page, opus_head, opus_tags
from groom.audio.packets import SAMPLE_RATE, EncodedPacket

log = logging.getLogger(__name__)

PAGE_SAMPLES = 12 * 960  # close an Ogg page every ~240 ms: ~1 kbps of framing, not ~4
MAX_GAP_FILL = 30 * SAMPLE_RATE  # a longer jump (an upstream clock reset) is not filled

# Chromium's <audio> waits for about 32 KB of an Ogg stream before it plays a sound: at 16 kbps
# that is 17 s of silence and then 17 s of lag behind the teacher. So the first packets of each
# listener's stream are padded (bytes the decoder skips) until this much has been written:
# sound in well under a second, for 34 KB once per listener.
START_PADDING = 34 * 1024
MAX_PADDED = 1200


def padded(payload: bytes, size: int) -> bytes:
    """A one-frame Opus packet grown to ``size`` bytes with padding decoders skip (RFC 6716
    3.2.5: re-framed as code 3, one frame, with padding). Other packets are left as they are."""
    if not payload or payload[0] & 0x03 != 0 or len(payload) + 2 >= size:
        return payload
    extra = size - len(payload) - 1  # beyond the frame-count byte: length bytes + padding
    k, b = divmod(extra - 1, 255)  # k bytes of 255 (254 padding each), then b
    return (bytes([payload[0] | 0x03, 0x41]) + b"\xff" * k + bytes([b]) + payload[1:]
            + bytes(254 * k + b))


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

    def __init__(self, serial: int | None = None, page_samples: int = PAGE_SAMPLES,
                 start_padding: int = 0) -> None:
        self.serial = secrets.randbits(32) if serial is None else serial
        self._page_samples = page_samples
        self._sequence = 0
        self._next: int | None = None  # room timestamp the next packet should start at
        self._granule = PRE_SKIP  # granule at the end of the packets written so far
        self._pending: list[bytes] = []
        self._pending_samples = 0
        self._lacing = 0
        self._padding_left = start_padding

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
        if self._padding_left > 0:
            grown = padded(payload, min(MAX_PADDED, len(payload) + self._padding_left))
            self._padding_left -= len(grown) - len(payload)
            payload = grown
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
        self._by_key: dict[str, _Listener] = {}  # one stream per listen token
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

    def drop(self, key: str) -> None:
        """End the stream opened with ``key`` (a newer one replaces it, or the student was
        kicked): its writer finishes the Ogg stream and the response ends."""
        listener = self._by_key.pop(key, None)
        if listener is not None:
            listener.closed = True
            listener.wakeup.set()

    async def serve(self, request: web.Request, key: str = "") -> web.StreamResponse:
        """Stream the tier to this client until it leaves, is too slow, or the stream closes.
        ``key`` (the listen token): one stream per key, a newer one ends the older."""
        if key:
            self.drop(key)
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
        if key:
            self.drop(key)  # another stream of this key started while this one was preparing
            self._by_key[key] = listener
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
            if key and self._by_key.get(key) is listener:
                del self._by_key[key]
            async with self._done:
                self._done.notify_all()
        return response

    async def _write(self, listener: _Listener, response: web.StreamResponse) -> None:
        writer = OggOpusWriter(start_padding=START_PADDING)
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
