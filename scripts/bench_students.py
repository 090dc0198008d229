#!/usr/bin/env python
"""Student load for ``bench_relay.py``: COUNT aiortc students in one process, against a real server.

    python scripts/bench_students.py --url http://127.0.0.1:8080 --code ABCD-1234 --count 50 \
        --tier standard

Each student speaks docs/protocol.md like the student page: opens ``/ws``, ``hello`` with the
class code and a name, a recvonly offer with ICE gathered, applies the answer, sends ``stats``
every 2 s. The tier is reached from outside, as a phone would: ``data_saver`` for low; good
``stats`` (every 0.5 s until the server says ``tier: high``) and a ``slide_kbps`` with room for
it (a step up needs proven capacity) for high, with the server started with a short
``--tier-up-seconds``; for standard, as the page does after a slide download, a ``slide_kbps``
that shows room for standard but not for high (without a capacity figure the server would try
the tier above after a good run).

Packets are counted right off the ICE socket: SRTP-unprotected with the student's own DTLS keys
(so each one counted is authenticated, i.e. intact), sequence gaps counted as lost, the Opus TOC
checked against the tier's frame size. aiortc's receive path (jitter buffer, decoder thread) never
sees the RTP: that keeps a load client cheap enough to run hundreds on two cores, and it also means
aiortc sends receiver reports without report blocks, so the server's RTCP-driven adaptation has
nothing to act on and tiers stay where the bench put them. One student per process also decodes
every packet with PyAV and measures the RMS, to show the audio is speech, not silence. With
``--quality LOOP`` that student also keeps the window's Opus payloads and, at ``report``, scores
them with PESQ against media/speech.wav (``speech_quality.py``; LOOP: the teacher's loop length
in 48 kHz samples).

The protected variants (``--tier low-red`` / ``standard-red``, RFC 2198 RED) are reached as a
lossy phone reaches them: RED offered as Chromium offers it, stats reporting 4 % loss (the real
link loses nothing: the bench measures the server, and the quality score simulates loss) and,
as the page does after a slide download, a ``slide_kbps`` that shows the link has room for the
variant but not for the tier above.

Talks to the driver by lines: prints ``{"ready": ...}`` when every student is connected (or
failed); then reads ``mark`` (start of the window), ``report`` (prints the window's counts) and
``quit`` on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from typing import Any, Optional

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import is_rtcp

from speech_quality import Window, parse_red, score

TIER_FRAME_SAMPLES = {"low": 2880, "standard": 2880, "high": 960,  # groom.live.tiers.ROOM_TIERS
                      "low-red": 2880, "standard-red": 2880}
# What each tier's stats say about the link (jitter, s): good moves a student up, fair holds it.
STATS_JITTER = {"low": 0.005, "standard": 0.08, "high": 0.005, "low-red": 0.005,
                "standard-red": 0.08}
RED_PT = 63  # RFC 2198 RED offered over Opus, as Chromium offers it
RED_LOSS = 0.04  # the loss the protected variants' stats report (protection starts at 2.5 %)
# slide_kbps in the stats, the link's capacity as the page measures it (groom.live.adaptation:
# a tier fits at 1.5x its TIER_KBPS / PROTECTED_KBPS): room for the tier or variant, not for the
# tier above.
SLIDE_KBPS = {"standard": 45.0, "high": 100.0, "low-red": 30.0, "standard-red": 50.0}


def toc_samples(payload: bytes) -> int:
    """Samples (48 kHz) an Opus packet covers, from its TOC byte (RFC 6716 3.1)."""
    if not payload:
        return 0
    per_frame = ([480, 960, 1920, 2880] * 3 + [480, 960] * 4 + [120, 240, 480, 960] * 4)[payload[0] >> 3]
    code = payload[0] & 3
    if code == 3 and len(payload) < 2:
        return 0
    return per_frame * (1 if code == 0 else 2 if code in (1, 2) else payload[1] & 0x3F)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Student:
    def __init__(self, index: int, tier: str, decode: bool, stats_interval: float = 2.0,
                 quality: bool = False) -> None:
        self.index = index
        self.stats_interval = stats_interval
        self.target = tier
        self.frame_samples = TIER_FRAME_SAMPLES[tier]
        self.tier = ""  # what the server says we are on
        self.pc: Optional[RTCPeerConnection] = None
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[Any]] = []
        self.error = ""
        # counters, cumulative
        self.received = 0  # authenticated RTP packets with the expected TOC
        self.bad = 0  # failed SRTP authentication, or a TOC of the wrong frame size
        self.rtp_bytes = 0
        self.highest: Optional[int] = None  # extended sequence number
        self.base: Optional[int] = None
        self.mark_at: dict[str, int] = {}
        self.decoder: Any = av.CodecContext.create("opus", "r") if decode else None
        if self.decoder is not None:
            self.decoder.sample_rate = 48000
            self.decoder.layout = "mono"
        self.square_sum = 0.0
        self.samples = 0
        self.in_window = False
        self.red = tier.endswith("-red")
        self.kept: Optional[Window] = Window() if decode and quality else None
        # What the stats report, like the page's getStats: every Opus packet, whatever its tier
        # (a student still climbing to high gets none of high's 20 ms packets yet).
        self.arrived = 0
        self.arrived_samples = 0

    # ---- joining ------------------------------------------------------------------------------

    async def join(self, http: aiohttp.ClientSession, url: str, code: str) -> None:
        self.ws = await http.ws_connect(url.replace("http", "ws", 1) + "/ws", max_msg_size=1 << 22)
        self.tasks.append(asyncio.create_task(self._read()))
        await self.send({"type": "hello", "role": "student", "code": code,
                         "name": f"Bench student {self.index}"})
        welcome = await asyncio.wait_for(self.welcome, 60)
        self.tier = welcome.get("tier", "")
        if self.target == "low":  # not low-red: data saver never serves a protected variant
            await self.send({"type": "data_saver", "on": True})
        self.tasks.append(asyncio.create_task(self._stats()))
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())  # gathers ICE
        self._tap_socket()
        offer = pc.localDescription.sdp
        await self.send({"type": "offer", "sdp": self._offer_red(offer) if self.red else offer})
        answer = await asyncio.wait_for(self.answer, 60)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        for _ in range(1200):
            if pc.connectionState == "connected":
                return
            if pc.connectionState in ("failed", "closed"):
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"connection state {pc.connectionState}")

    def _offer_red(self, sdp: str) -> str:
        """The offer with RED over Opus added, as Chromium offers it (aiortc knows no RED)."""
        lines = sdp.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("a=rtpmap:") and " opus/48000" in line:
                opus_pt = int(line.split(":", 1)[1].split()[0])
                lines[i + 1:i + 1] = [f"a=rtpmap:{RED_PT} red/48000/2",
                                      f"a=fmtp:{RED_PT} {opus_pt}/{opus_pt}"]
                break
        lines = [f"{line} {RED_PT}" if line.startswith("m=audio") else line for line in lines]
        return "\r\n".join(lines) + "\r\n"

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            kind = data.get("type")
            if kind == "welcome" and not self.welcome.done():
                self.welcome.set_result(data)
            elif kind == "answer" and not self.answer.done():
                self.answer.set_result(data)
            elif kind == "tier":
                self.tier = data["tier"] + ("-red" if data.get("protected") else "")
            elif kind in ("error", "ended"):
                self.error = self.error or json.dumps(data)[:200]
                for fut in (self.welcome, self.answer):
                    if not fut.done():
                        fut.set_exception(RuntimeError(self.error))
        for fut in (self.welcome, self.answer):
            if not fut.done():
                fut.set_exception(RuntimeError(f"socket closed {self.ws.close_code}"))

    async def _stats(self) -> None:
        """Like the student page: cumulative inbound figures every 2 s (0.5 s while climbing)."""
        try:
            while True:
                climbing = self.target == "high" and self.tier != "high"
                if not climbing and self.stats_interval <= 0:
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.sleep(0.5 if climbing else self.stats_interval)
                stats: dict[str, Any] = {
                    "type": "stats", "packets_received": self.arrived,
                    "packets_lost": self._lost_total(), "jitter": STATS_JITTER[self.target],
                    "concealed_samples": 0, "total_samples": self.arrived_samples,
                    "bytes_received": self.rtp_bytes}
                if self.red:  # see the module's docstring
                    stats["packets_lost"] += round(self.received * RED_LOSS)
                if self.target in SLIDE_KBPS:
                    stats["slide_kbps"] = SLIDE_KBPS[self.target]
                await self.send(stats)
        except (ConnectionError, RuntimeError):
            pass

    # ---- counting -----------------------------------------------------------------------------

    def _tap_socket(self) -> None:
        """Take RTP straight off the ICE socket; RTCP, STUN and DTLS keep aiortc's normal path."""
        assert self.pc is not None
        dtls = self.pc.getTransceivers()[0].receiver.transport
        for protocol in dtls.transport._connection._protocols:
            original = protocol.datagram_received

            def received(data: bytes, addr: Any, original: Any = original) -> None:
                srtp = dtls._rx_srtp
                if srtp is None or not (127 < data[0] < 192) or is_rtcp(data):
                    original(data, addr)
                    return
                try:
                    plain = srtp.unprotect(data)
                except Exception:
                    self.bad += 1
                    return
                self._count(plain, len(data))

            protocol.datagram_received = received

    def _count(self, plain: bytes, size: int) -> None:
        seq = (plain[2] << 8) | plain[3]
        if self.highest is None:
            self.highest = self.base = seq
        else:
            delta = (seq - self.highest) & 0xFFFF
            if delta < 0x8000:
                self.highest += delta
        payload = plain[12:]
        redundant: tuple[tuple[int, bytes], ...] = ()
        if plain[1] & 0x7F == RED_PT and self.red:
            parsed = parse_red(payload)
            if parsed is None:
                self.bad += 1
                return
            payload, redundant = parsed
        samples = toc_samples(payload)
        if samples:
            self.arrived += 1
            self.arrived_samples += samples
        if self.kept is not None and self.in_window and samples:
            # Whatever tier it came from (labelled with the tier the server said): the quality
            # of what the student heard, even if adaptation moved it off the bench's tier.
            self.kept.add(seq, int.from_bytes(plain[4:8], "big"), payload, redundant, self.tier)
        if samples != self.frame_samples:
            self.bad += 1
            return
        self.received += 1
        self.rtp_bytes += size
        if self.decoder is not None:
            for frame in self.decoder.decode(av.Packet(payload)):
                if self.in_window:
                    raw = frame.to_ndarray()
                    pcm = raw.astype(np.float64) * (32768.0 if raw.dtype.kind == "f" else 1.0)
                    self.square_sum += float((pcm ** 2).sum())
                    self.samples += pcm.size

    def _lost_total(self) -> int:
        if self.highest is None or self.base is None:
            return 0
        return max(self.highest - self.base + 1 - self.received - self.bad, 0)

    def snapshot(self) -> dict[str, int]:
        return {"received": self.received, "bad": self.bad, "bytes": self.rtp_bytes,
                "seq": (self.highest if self.highest is not None else -1)}

    def mark(self) -> None:
        self.mark_at = self.snapshot()
        self.in_window = True

    def window(self) -> dict[str, int]:
        now, then = self.snapshot(), self.mark_at
        received = now["received"] - then["received"]
        bad = now["bad"] - then["bad"]
        by_seq = now["seq"] - then["seq"] if then["seq"] >= 0 else received + bad
        return {"received": received, "bad": bad, "bytes": now["bytes"] - then["bytes"],
                "lost": max(by_seq - received - bad, 0)}

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()


async def run(args: argparse.Namespace) -> None:
    students = [Student(args.first + i, args.tier, decode=(i == 0), stats_interval=args.stats_interval,
                        quality=args.quality > 0)
                for i in range(args.count)]
    gate = asyncio.Semaphore(args.concurrency)
    loop = asyncio.get_running_loop()
    http = aiohttp.ClientSession()

    async def join(student: Student) -> None:
        async with gate:
            try:
                await student.join(http, args.url, args.code)
            except Exception as exc:  # reported, not fatal: the driver decides
                student.error = student.error or f"{type(exc).__name__}: {exc}"[:200]

    started = time.monotonic()
    await asyncio.gather(*(join(s) for s in students))
    failed = [s for s in students if s.error]
    emit({"ready": len(students) - len(failed), "failed": len(failed),
          "errors": sorted({s.error for s in failed})[:3],
          "join_seconds": round(time.monotonic() - started, 2)})
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "tiers":
            tiers: dict[str, int] = {}
            for s in students:
                tiers[s.tier] = tiers.get(s.tier, 0) + 1
            emit({"tiers": tiers})
        elif line == "mark":
            for s in students:
                s.mark()
            emit({"marked": time.monotonic()})
        elif line == "report":
            windows = [s.window() for s in students if not s.error]
            rms = [math.sqrt(s.square_sum / s.samples) for s in students if s.samples]
            for s in students:
                s.in_window = False
            # PESQ takes seconds of CPU: off the event loop, so the students stay connected.
            quality = [await loop.run_in_executor(None, score, s.kept, args.quality)
                       for s in students if s.kept is not None]
            emit({"received": sum(w["received"] for w in windows),
                  "bad": sum(w["bad"] for w in windows),
                  "lost": sum(w["lost"] for w in windows),
                  "bytes": sum(w["bytes"] for w in windows),
                  "students_without_packets": sum(1 for w in windows if w["received"] == 0),
                  "errors_since": sorted({s.error for s in students if s.error})[:3],
                  "decoded_rms": [round(r) for r in rms],
                  **({"quality": quality} if args.quality else {})})
        else:  # "quit" or EOF
            break
    try:
        await asyncio.wait_for(asyncio.gather(*(s.close() for s in students),
                                              return_exceptions=True), 10)
        await http.close()
    finally:
        sys.stdout.flush()
        os._exit(0)  # aiortc/aioice leftovers must not keep a load client alive


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="server base URL, http://host:port")
    parser.add_argument("--code", required=True, help="class code")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first student (names)")
    parser.add_argument("--tier", default="standard", choices=sorted(TIER_FRAME_SAMPLES))
    parser.add_argument("--stats-interval", type=float, default=2.0,
                        help="seconds between stats messages once on the tier (0: none)")
    parser.add_argument("--concurrency", type=int, default=10, help="students joining at once")
    parser.add_argument("--quality", type=int, default=0, metavar="LOOP",
                        help="score the decoding student's window with PESQ; LOOP: the teacher's "
                             "loop length in 48 kHz samples (0: no scoring)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
