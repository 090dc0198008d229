"""HTTP Ogg/Opus fallback: real server on loopback, real tier encoder, decoded with PyAV."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiohttp import web
from aiortc.contrib.media import MediaPlayer

from groom.audio.ogg import ogg_crc, ogg_page
from groom.audio.packets import EncodedPacket
from groom.live.fallback import FallbackStream, OggOpusWriter, silent_packets
from groom.live.mixer import Mixer
from groom.live.tiers import TierSet

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"


def reference_crc(data: bytes) -> int:
    """The Ogg CRC the slow, obvious way (RFC 3533 / libogg), to check the fast one."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def parse_pages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(flags, granule, sequence, whole page) of each complete page in ``data``."""
    pages, at = [], 0
    while at + 27 <= len(data):
        assert data[at:at + 4] == b"OggS"
        flags, granule, _serial, seq, _crc, nseg = struct.unpack_from("<BqIIIB", data, at + 5)
        if at + 27 + nseg > len(data):
            break
        size = 27 + nseg + sum(data[at + 27:at + 27 + nseg])
        if at + size > len(data):
            break
        pages.append((flags, granule, seq, data[at:at + size]))
        at += size
    return pages


def check_crc(page: bytes) -> None:
    zeroed = page[:22] + b"\0\0\0\0" + page[26:]
    assert struct.unpack_from("<I", page, 22)[0] == reference_crc(zeroed)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def speech_packets(tier: str) -> list[EncodedPacket]:
    """The whole speech file encoded by a real tier encoder, as fast as it goes."""
    out: list[EncodedPacket] = []

    class Keep:
        def push(self, packet: EncodedPacket) -> None:
            out.append(packet)

    tiers = TierSet()
    tiers.subscribe(Keep(), tier)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000, frame_size=960)
    pts = 0
    with av.open(str(SPEECH)) as container:
        for frame in container.decode(audio=0):
            for chunk in resampler.resample(frame):
                if chunk.samples == 960:
                    chunk.pts = pts
                    pts += 960
                    tiers.feed(chunk, 0.0)
    tiers.close()
    return out


class Server:
    def __init__(self, stream: FallbackStream) -> None:
        self.stream = stream
        app = web.Application()
        app.router.add_get("/listen", self._listen)
        self.runner = web.AppRunner(app)
        self.url = ""

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        return await self.stream.serve(request)

    async def __aenter__(self) -> Server:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/listen"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.close()
        await self.runner.cleanup()


@pytest.fixture
async def live_lesson() -> AsyncIterator[tuple[FallbackStream, TierSet]]:
    """Speech played as the teacher through the real mixer into real tiers, 'standard' streamed."""
    player = MediaPlayer(str(SPEECH))
    assert player.audio is not None
    tiers = TierSet()
    stream = FallbackStream("standard", burst_seconds=2.5)
    tiers.subscribe(stream, "standard")
    mixer = Mixer(tiers.feed)
    await mixer.set_teacher(player.audio)
    mixer.start()
    yield stream, tiers
    await mixer.stop()
    player.audio.stop()
    tiers.close()


async def test_listener_gets_a_short_burst_then_live_audio_that_decodes(
        live_lesson: tuple[FallbackStream, TierSet], tmp_path: Path) -> None:
    stream, _ = live_lesson
    await asyncio.sleep(4.0)  # the lesson is under way: the ring holds its last 2.5 s
    async with Server(stream) as server, aiohttp.ClientSession() as session:
        async with session.get(server.url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "audio/ogg"
            assert "no-cache" in resp.headers["Cache-Control"]
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            t0 = time.monotonic()
            first, data = b"", b""
            while time.monotonic() - t0 < 3.0:
                chunk = await resp.content.readany()
                data += chunk
                if time.monotonic() - t0 < 0.3:
                    first = data
            assert stream.listeners == 1
        for _ in range(100):  # the client left: its handler ends at the next page write
            if stream.listeners == 0:
                break
            await asyncio.sleep(0.01)
        assert stream.listeners == 0
    # the burst: what arrived at once covers only the last ~2.5 s, not the whole lesson
    burst_pages = parse_pages(first)
    assert burst_pages[0][0] & 0x02 and burst_pages[0][3][28:36] == b"OpusHead"
    burst_seconds = (burst_pages[-1][1] - 312) / 48_000
    assert 1.8 <= burst_seconds <= 3.0, burst_seconds
    pages = parse_pages(data)
    for _, _, _, page in pages:
        check_crc(page)
    assert [seq for _, _, seq, _ in pages] == list(range(len(pages)))
    path = tmp_path / "listened.ogg"
    path.write_bytes(data)
    pcm = decode(path)
    seconds = len(pcm) / 48_000
    # burst + ~3 s of live audio (minus the page being filled when we stopped)
    assert burst_seconds + 2.4 <= seconds <= burst_seconds + 3.3, (seconds, burst_seconds)
    rms = float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))
    assert rms > 0.01


async def test_slow_listener_is_dropped_others_keep_listening(tmp_path: Path) -> None:
    packets = speech_packets("high")
    stream = FallbackStream("high", queue_seconds=3.0, write_timeout=2.0)
    async with Server(stream) as server, aiohttp.ClientSession() as session:
        # a listener that never reads, with a tiny receive window
        port = int(server.url.split(":")[2].split("/")[0])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", port))
        stalled.send(b"GET /listen HTTP/1.1\r\nHost: x\r\n\r\n")
        async with session.get(server.url) as resp:
            while stream.listeners < 2:
                await asyncio.sleep(0.01)
            received = bytearray()

            async def read() -> None:
                async for chunk in resp.content.iter_any():
                    received.extend(chunk)

            reader = asyncio.create_task(read())
            # feed ~30x faster than real time, with timestamps running on
            offset, sent, t0 = 0, 0, time.monotonic()
            while stream.dropped_listeners == 0 and time.monotonic() - t0 < 20:
                for packet in packets[sent % len(packets):][:15]:
                    stream.push(EncodedPacket(packet.tier, packet.payload,
                                              packet.timestamp + offset, packet.duration, 0.0))
                    sent += 1
                    if sent % len(packets) == 0:
                        offset += packets[-1].timestamp + packets[-1].duration
                await asyncio.sleep(0.01)
            assert stream.dropped_listeners == 1
            assert stream.listeners == 1  # the reader is still there
            before = len(received)
            for packet in packets[:100]:
                stream.push(EncodedPacket(packet.tier, packet.payload,
                                          packet.timestamp + 10**9, packet.duration, 0.0))
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.3)
            assert len(received) > before
            await stream.close()  # ends the stream cleanly: last page has the EOS flag
            await asyncio.wait_for(reader, 5)
        stalled.close()
    pages = parse_pages(bytes(received))
    assert pages[-1][0] & 0x04
    path = tmp_path / "fast.ogg"
    path.write_bytes(bytes(received))
    assert len(decode(path)) > 48_000 * 10


async def test_too_many_listeners_get_503() -> None:
    stream = FallbackStream("low", max_listeners=1)
    async with Server(stream) as server, aiohttp.ClientSession() as session:
        async with session.get(server.url) as first:
            assert first.status == 200
            while stream.listeners < 1:
                await asyncio.sleep(0.01)
            async with session.get(server.url) as second:
                assert second.status == 503
                assert (await second.json())["error"]
            await stream.close()
            assert (await first.read()).startswith(b"OggS")  # ended cleanly
            async with session.get(server.url) as late:
                assert late.status == 410


def test_ogg_framing_details() -> None:
    # lacing: a 255-byte packet needs a terminating 0; CRC matches the slow reference
    page = ogg_page([b"x" * 255, b"y" * 3], 1234, serial=7, sequence=2)
    assert page[26] == 3 and page[27:30] == bytes([255, 0, 3])
    check_crc(page)
    assert ogg_crc(b"") == 0 and ogg_crc(b"OggS") == reference_crc(b"OggS")
    with pytest.raises(ValueError):
        ogg_page([b"z"] * 256, 0, 1, 0)
    # a DTX gap is filled with empty frames of the right total length
    assert sum(n for _, n in silent_packets(960 * 13)) == 960 * 13
    assert silent_packets(500) == []


def test_writer_rebases_granule_fills_gaps_and_ignores_repeats() -> None:
    writer = OggOpusWriter(serial=1, page_samples=960 * 3)
    out = writer.headers()
    base = 10_000_000
    for i in range(3):  # 3 x 20 ms: one page
        out += writer.add(EncodedPacket("t", b"\xfc" + b"a" * 40, base + 960 * i, 960, 0.0))
    pages = parse_pages(out)
    assert [g for _, g, _, _ in pages] == [0, 0, 312 + 2880]
    # a 200 ms DTX gap, then a packet: the gap's time is kept
    out = writer.add(EncodedPacket("t", b"\xfc" + b"b" * 40, base + 2880 + 9600, 960, 0.0))
    repeat = EncodedPacket("t", b"\xfc" + b"c" * 40, base + 2880 + 9600, 960, 0.0)
    out += writer.add(repeat)
    out += writer.flush(last=True)
    last = parse_pages(out)[-1]
    assert last[0] & 0x04 and last[1] == 312 + 2880 + 9600 + 960
