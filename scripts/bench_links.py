#!/usr/bin/env python
"""One student on each emulated link (tests/netlab.py): what the lesson is like on 2G/3G.

    sudo .venv/bin/python scripts/bench_links.py                       # every profile, 20 s each
    sudo .venv/bin/python scripts/bench_links.py --profiles 2g,lossy --seconds 30

For each profile: a fresh ``python -m groom serve --demo --json --host 0.0.0.0`` (SQLite in a new
temporary folder), an aiortc teacher on loopback (``media/speech.wav`` looped) who uploads
``media/sample-deck.pdf``, shows it and turns a slide every ``--slide-every`` seconds, and ONE
aiortc student running inside a network namespace behind the profile's link (this script again,
``--student``, under ``ip netns exec``). The student joins with the class code at
``ws://<host end of the veth>:<port>/ws``, negotiates as a browser would (RED offered over Opus,
consent checks that retransmit), decodes what it hears (undoing RED, counting what it recovers),
fetches each slide image as the student page would (over the same shaped link, named with its
listen token so the server paces it), sends honest ``stats`` every 2 s, and after ``--seconds``
prints what it measured. One JSON line per profile on stdout; progress on stderr.
docs/netlab.md says what each key means and what is not measured yet (null).

Needs root (namespaces, tc, nftables) and the Debian packages iproute2 and nftables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_relay import Server, Teacher, log, login, speech_packets  # noqa: E402
from groom.live import consent  # noqa: E402
from netlab import PROFILES, Link, Namespace, NetLab, UdpDelayRelay  # noqa: E402
from page_student import page_student  # noqa: E402

DECK = ROOT / "media" / "sample-deck.pdf"
STUDENT_NAME = "Link student"
TIERS = ("low", "standard", "high")
RED_PT = 63  # RFC 2198 RED offered over Opus, as Chromium offers it
UP_REVERTED_SECONDS = 15.0  # a step up followed by a step down this soon failed
SILENCE_RMS = 200.0  # decoded int16 RMS below this is silence (speech.wav talks at ~2000-4000)
GAP_SECONDS = 1.0
SMALL_PX = 854  # the small slide image's width (groom/board/rasterize.py SMALL)
PHONE_PX = 720  # a 360-px-wide phone screen at 2 device pixels per CSS pixel


# ==== the student (inside the namespace) =======================================================

class LinkStudent:
    """An aiortc student measuring its own link: RTP arrivals, decoded audio, tiers, slides."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url
        self.t0 = time.monotonic()
        self.hello_at = 0.0
        self.welcome_at: Optional[float] = None
        self.first_audio_at: Optional[float] = None
        self.tiers: list[tuple[float, str]] = []
        self.timeline: list[tuple[float, str, bool, str]] = []  # (t, tier, protected, reason)
        self.arrivals: list[tuple[float, int, int, int]] = []  # (t, extended seq, rtp ts, bytes)
        self.covered: set[int] = set()  # extended seqs whose packet carried the previous one (RED)
        self.opus_pt = 0
        self.listen_token = ""
        self.measured = False  # the page's rule: small first image until the link is measured
        self.slide: Optional[dict[str, Any]] = None
        self.fetched: set[str] = set()  # image names asked for: the browser's cache has them
        self.copies: dict[str, str] = {}  # slide (its large name) -> the image last asked for
        self._last_ext: Optional[int] = None
        # (asked, headers in, end, bytes) of each slide image
        self.downloads: list[tuple[float, float, float, int]] = []
        self.loading: dict[int, float] = {}  # downloads still running: id -> start
        self.unfinished: list[tuple[float, float]] = []  # (start, the end of the run) of those
        self.slide_kbps = 0.0  # the last image's rate, for the next stats (as the page sends it)
        self.slide_errors: list[str] = []
        self.pending: set[asyncio.Task[Any]] = set()
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.http: Optional[aiohttp.ClientSession] = None
        self.welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.error = ""
        self.stage = "start"
        self.relay: Optional[UdpDelayRelay] = None
        self.jitter = 0.0  # RFC 3550 interarrival jitter, seconds
        self._transit: Optional[tuple[float, int]] = None
        self.ts_jumps = 0
        self._highest: Optional[int] = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self) -> dict[str, Any]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        self.stage = "tcp-rtt"
        tcp_rtt = await self._tcp_rtt()
        self.stage = "websocket"
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url.replace("http", "ws", 1) + "/ws")
        tasks = [asyncio.create_task(self._read())]
        self.hello_at = self.now()
        await self.send({"type": "hello", "role": "student", "code": self.args.code,
                         "name": STUDENT_NAME})
        self.stage = "welcome"
        welcome = await asyncio.wait_for(self.welcome, 60)
        self.stage = "offer"
        self.tiers.append((self.now(), welcome.get("tier", "")))
        self.listen_token = str(welcome.get("listen_token", ""))
        if welcome.get("slide"):
            self._fetch_slide(welcome["slide"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("audio", direction="recvonly")
        consent.install_on(pc)  # a browser's consent checks retransmit (RFC 7675), aioice's not

        @pc.on("track")
        def on_track(track: Any) -> None:
            tasks.append(asyncio.create_task(self._listen(track)))

        await pc.setLocalDescription(await pc.createOffer())
        self._tap(pc)
        await self.send({"type": "offer", "sdp": self._offer_red(pc.localDescription.sdp)})
        self.stage = "answer"
        answer = await asyncio.wait_for(self.answer, 60)
        self.stage = "media"
        sdp = answer["sdp"]
        if self.args.extra_rtt_ms:
            sdp = await self._through_relay(sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        tasks.append(asyncio.create_task(self._stats()))
        deadline = self.hello_at + self.args.seconds
        while self.now() < deadline and pc.connectionState not in ("failed", "closed"):
            await asyncio.sleep(0.2)
        connection = pc.connectionState
        self.unfinished = [(start, self.now()) for start in self.loading.values()]
        for task in (*tasks, *self.pending):
            task.cancel()
        try:
            await asyncio.wait_for(pc.close(), 5)
            await self.ws.close()
            await self.http.close()
        except Exception:
            pass
        return self.report(tcp_rtt, connection)

    async def _tcp_rtt(self) -> Optional[float]:
        """Median time of 5 TCP connects to the server (SYN -> SYN-ACK: one idle round trip)."""
        host, port = self.url.split("//", 1)[1].rsplit(":", 1)
        times = []
        for _ in range(5):
            started = time.monotonic()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10)
            except (OSError, asyncio.TimeoutError):
                continue
            times.append(time.monotonic() - started)
            writer.close()
        return round(1000 * statistics.median(times), 1) if times else None

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
                self.welcome_at = self.now()
                self.welcome.set_result(data)
            elif kind == "answer" and not self.answer.done():
                self.answer.set_result(data)
            elif kind == "tier":
                before = self.tiers[-1][1] if self.tiers else ""
                self.tiers.append((self.now(), data["tier"]))
                self.timeline.append((self.now(), data["tier"], bool(data.get("protected")),
                                      str(data.get("reason", ""))))
                up = TIERS.index(data["tier"]) > TIERS.index(before) if before in TIERS else False
                first = not self.measured and data["tier"] != "low"
                self.measured = True
                if (up or first) and self.slide is not None:
                    self._fetch_slide(self.slide, fresh=True)  # the page sharpens the image on a step up
            elif kind == "slide" and data.get("slide"):
                self.measured = True
                self._fetch_slide(data["slide"])
            elif kind in ("error", "ended"):
                self.error = self.error or json.dumps(data)[:200]
                for fut in (self.welcome, self.answer):
                    if not fut.done():
                        fut.set_exception(RuntimeError(self.error))

    # ---- slides -------------------------------------------------------------------------------

    def _fetch_slide(self, slide: dict[str, Any], fresh: bool = False) -> None:
        """The student page's rule (web/static/student.js): the phone image on the low tier and
        until the link is measured; else the small image on a screen (``--screen-px`` device
        pixels wide) it fills, the large one otherwise; a slide with a copy fetched already shows
        that one, unless ``fresh`` (a step up). Named with the listen token so the server paces
        and times it; an image already asked for comes from the browser's cache."""
        self.slide = slide
        if not fresh and slide.get("large") in self.copies:
            return
        tier = self.tiers[-1][1] if self.tiers else ""
        if tier == "low" or not self.measured:
            name = slide.get("phone") or slide.get("small")
        elif self.args.screen_px <= SMALL_PX:
            name = slide.get("small")
        else:
            name = slide.get("large") or slide.get("small")
        if name:
            self.copies[str(slide.get("large"))] = name
        if name and name not in self.fetched:
            self.fetched.add(name)
            task = asyncio.create_task(self._download(f"{name}?t={self.listen_token}"))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _download(self, name: str) -> None:
        assert self.http is not None
        started = self.now()
        self.loading[id(asyncio.current_task())] = started
        try:
            async with self.http.get(f"{self.url}/slides/{name}") as resp:
                first_byte = self.now()  # the headers are in
                body = await resp.read()
                seconds = self.now() - first_byte
                if resp.status != 200:
                    self.slide_errors.append(f"{resp.status} {name}")
                    return
        except aiohttp.ClientError as exc:
            self.slide_errors.append(repr(exc)[:100])
            return
        finally:
            self.loading.pop(id(asyncio.current_task()), None)
        self.downloads.append((started, first_byte, self.now(), len(body)))
        if len(body) > 2000 and seconds > 0.02:  # as the page's Resource Timing figure
            self.slide_kbps = len(body) * 8 / seconds / 1000

    # ---- audio --------------------------------------------------------------------------------

    def _tap(self, pc: Any) -> None:
        """Count every SRTP packet as it comes off the transport (the RTP header is in clear),
        then let aiortc handle it as usual (jitter buffer, decoder, receiver reports)."""
        dtls = pc.getTransceivers()[0].receiver.transport
        original = dtls._handle_rtp_data

        async def handle(data: bytes, arrival_time_ms: int) -> None:
            self._count(data)
            await original(self._unred(data), arrival_time_ms)

        dtls._handle_rtp_data = handle

    def _offer_red(self, sdp: str) -> str:
        """The offer with RED over Opus added, as Chromium offers it (aiortc knows no RED)."""
        lines = sdp.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("a=rtpmap:") and " opus/48000" in line:
                self.opus_pt = int(line.split(":", 1)[1].split()[0])
                lines[i + 1:i + 1] = [f"a=rtpmap:{RED_PT} red/48000/2",
                                      f"a=fmtp:{RED_PT} {self.opus_pt}/{self.opus_pt}"]
                break
        lines = [f"{line} {RED_PT}" if line.startswith("m=audio") else line for line in lines]
        return "\r\n".join(lines) + "\r\n"

    def _unred(self, data: bytes) -> bytes:
        """A RED packet (RFC 2198) as the primary Opus packet aiortc can decode; a packet that
        carried a redundant block makes the previous one recoverable (``covered``)."""
        if len(data) < 13 or data[1] & 0x7F != RED_PT:
            return data
        head = 12 + 4 * (data[0] & 0x0F)
        i, blocks = head, 0
        while i < len(data) and data[i] & 0x80:
            blocks += int.from_bytes(data[i + 2:i + 4], "big") & 0x3FF
            i += 4
        primary = i + 1 + blocks
        if blocks and self._last_ext is not None:
            self.covered.add(self._last_ext)  # _count ran first: this packet's extended seq
        return data[:1] + bytes(((data[1] & 0x80) | self.opus_pt,)) + data[2:head] + data[primary:]

    def _count(self, data: bytes) -> None:
        t = self.now()
        seq = (data[2] << 8) | data[3]
        ts = int.from_bytes(data[4:8], "big")
        if self._highest is None:
            ext = seq
        else:
            delta = (seq - self._highest) & 0xFFFF
            ext = self._highest + delta if delta < 0x8000 else self._highest - ((-delta) & 0xFFFF)
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if self._transit is not None:  # (arrival, rtp ts) of the previous packet
            moved = ((ts - self._transit[1] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)  # wraps
            if abs(moved) > 10 * 48000:
                self.ts_jumps += 1  # the sender's clock jumped: not jitter
            else:
                d = abs((t - self._transit[0]) - moved / 48000)
                self.jitter += (d - self.jitter) / 16
        self._transit = (t, ts)
        self._last_ext = ext
        self.arrivals.append((t, ext, ts, len(data)))

    async def _listen(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await track.recv()
                if self.first_audio_at is None:
                    raw = frame.to_ndarray()
                    pcm = raw.astype("float64") * (32768.0 if raw.dtype.kind == "f" else 1.0)
                    if math.sqrt(float((pcm ** 2).mean())) > SILENCE_RMS:
                        self.first_audio_at = self.now()
        except MediaStreamError:
            pass

    async def _stats(self) -> None:
        """Like the student page, every 2 s: cumulative figures this client really measured.
        aiortc conceals nothing, so ``concealed_samples`` is the samples of the lost packets that
        RED did not bring back (as a browser's concealedSamples); ``packets_lost`` counts them all."""
        while True:
            await asyncio.sleep(2.0)
            received, lost, _ = self._loss(self.arrivals)
            unrecovered = self._unrecovered(self.arrivals)
            samples = 2880 if self.tiers and self.tiers[-1][1] != "high" else 960
            stats = {"type": "stats", "packets_received": received, "packets_lost": lost,
                     "jitter": round(self.jitter, 4), "concealed_samples": unrecovered * samples,
                     "total_samples": (received + lost) * samples,
                     "bytes_received": sum(a[3] for a in self.arrivals)}
            if self.slide_kbps:
                stats["slide_kbps"] = round(self.slide_kbps, 1)
                self.slide_kbps = 0.0
            await self.send(stats)

    async def _through_relay(self, sdp: str) -> str:
        """Send the media through a UDP relay in this namespace that holds each datagram
        extra_rtt/2 each way: the answer's candidates become the relay's one, and nftables drops
        UDP from the server that does not come back through the relay (no direct ICE pair)."""
        candidates = [line.split() for line in sdp.splitlines() if line.startswith("a=candidate:")]
        target = next((c for c in candidates if c[4] == self.args.host_ip and c[2].lower() == "udp"),
                      None)
        if target is None:
            raise RuntimeError(f"no UDP candidate on {self.args.host_ip} in the answer")
        self.relay = UdpDelayRelay((self.args.ns_ip, 0), (target[4], int(target[5])),
                                   self.args.extra_rtt_ms / 2)
        port = (await self.relay.start())[1]
        assert self.relay.back is not None
        back_port = self.relay.back.get_extra_info("sockname")[1]
        rules = (f"table inet groom_relay {{ chain pre {{ type filter hook prerouting priority -310; "
                 f"policy accept; ip saddr {self.args.host_ip} udp dport != {back_port} drop\n}}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        lines = [line for line in sdp.splitlines() if not line.startswith("a=candidate:")]
        at = next(i for i, line in enumerate(lines) if line.startswith("a=ice-ufrag")) + 1
        lines.insert(at, f"a=candidate:1 1 udp 2130706431 {self.args.ns_ip} {port} typ host")
        return "\r\n".join(lines) + "\r\n"

    # ---- the report ---------------------------------------------------------------------------

    @staticmethod
    def _loss(arrivals: list[tuple[float, int, int, int]]) -> tuple[int, int, int]:
        """(received, lost, expected) by RTP sequence numbers."""
        if not arrivals:
            return 0, 0, 0
        seqs = {a[1] for a in arrivals}
        expected = max(seqs) - min(seqs) + 1
        return len(seqs), expected - len(seqs), expected

    def _unrecovered(self, arrivals: list[tuple[float, int, int, int]]) -> int:
        """Lost packets that no later packet carried a copy of (RED): what must be concealed."""
        if not arrivals:
            return 0
        seqs = {a[1] for a in arrivals}
        return sum(1 for n in range(min(seqs), max(seqs)) if n not in seqs and n + 1 not in self.covered)

    def _failed_step_ups(self) -> int:
        """Step ups that a step down followed within UP_REVERTED_SECONDS."""
        rank = [(t, TIERS.index(tier)) for t, tier in self.tiers if tier in TIERS]
        failed = 0
        for (t, r), (_, before) in zip(rank[1:], rank):
            if r > before and any(t2 > t and t2 - t <= UP_REVERTED_SECONDS and r2 < r
                                  for t2, r2 in rank):
                failed += 1
        return failed

    def _first_slide_parts(self, arrivals: list[tuple[float, int, int, int]]) -> dict[str, Any]:
        """Where the first slide's time went, each from ``hello``: the welcome (naming the slide)
        in, the image asked for, its response headers in, its last byte in; its size, and the
        first audio packet (the voice competing for the link from then on)."""
        def since_hello(t: Optional[float]) -> Optional[float]:
            return None if t is None else round(t - self.hello_at, 2)

        first = self.downloads[0] if self.downloads else None
        return {"welcome_s": since_hello(self.welcome_at),
                "asked_s": since_hello(first[0] if first else None),
                "headers_s": since_hello(first[1] if first else None),
                "done_s": since_hello(first[2] if first else None),
                "bytes": first[3] if first else None,
                "first_rtp_s": since_hello(arrivals[0][0] if arrivals else None)}

    def report(self, tcp_rtt: Optional[float], connection: str) -> dict[str, Any]:
        arrivals = sorted(self.arrivals)
        received, lost, expected = self._loss(arrivals)
        unrecovered = self._unrecovered(arrivals)
        # Gaps: > 1 s between packets while the teacher talked: packets were sent in between (a
        # sequence jump) or the RTP clock moved less than the wall clock (a stalled queue). A
        # pause in speech (DTX: nothing sent, consecutive sequence numbers) is not a gap.
        gaps = 0
        slide_expected = slide_lost = other_expected = other_lost = 0
        # images still loading when the student left count as loading until then
        slide_spans = [(start, end) for start, _, end, _ in self.downloads] + self.unfinished
        for prev, cur in zip(arrivals, arrivals[1:]):
            dt, dseq = cur[0] - prev[0], cur[1] - prev[1]
            dclock = ((cur[2] - prev[2]) & 0xFFFFFFFF) / 48000
            if dt > GAP_SECONDS and (dseq > 1 or dt - dclock > GAP_SECONDS):
                gaps += 1
            if dseq <= 0:
                continue
            missing = sum(1 for n in range(prev[1] + 1, cur[1]) if n + 1 not in self.covered)
            if any(start <= cur[0] <= end for start, end in slide_spans):
                slide_expected += dseq
                slide_lost += missing
            else:
                other_expected += dseq
                other_lost += missing
        window = (arrivals[-1][0] - arrivals[0][0]) if len(arrivals) > 1 else 0.0
        # after the last tier message (the tier, or its protection, settled): the steady state
        settled = self.tiers[-1][0] if len(self.tiers) > 1 else 0.0
        after = [a for a in arrivals if a[0] >= settled]
        _, lost_after, expected_after = self._loss(after)
        changes = [t for (t, tier), (_, before) in zip(self.tiers[1:], self.tiers) if tier != before]
        return {
            "connection": connection,
            "join_to_audio_s": (round(self.first_audio_at - self.hello_at, 2)
                                if self.first_audio_at is not None else None),
            "final_tier": self.tiers[-1][1] if self.tiers else None,
            "tiers": [tier for _, tier in self.tiers],
            # each tier message: seconds from hello, tier, protected (RED), reason
            "tier_timeline": [[round(t - self.hello_at, 1), tier, red, reason]
                              for t, tier, red, reason in self.timeline],
            "seconds_to_fit_tier": round(changes[-1] - self.hello_at, 1) if changes else 0.0,
            "packets_received": received, "packets_lost": lost,
            "loss_before_recovery_pct": round(100 * lost / expected, 2) if expected else None,
            "recovered_by_red": lost - unrecovered,
            "concealment_pct": round(100 * unrecovered / expected, 2) if expected else None,
            "concealment_outside_slides_pct": (round(100 * other_lost / other_expected, 2)
                                               if other_expected else None),
            "concealment_after_last_tier_message_pct": (
                round(100 * self._unrecovered(after) / expected_after, 2) if expected_after else None),
            "loss_after_last_tier_message_pct": (round(100 * lost_after / expected_after, 2)
                                                 if expected_after else None),
            "failed_step_ups": self._failed_step_ups(),
            "concealment_during_slides_pct": (round(100 * slide_lost / slide_expected, 2)
                                              if slide_expected else None),
            # (expected, not recovered) during and outside slide downloads: runs add up
            "slide_packets": [slide_expected, slide_lost], "other_packets": [other_expected, other_lost],
            "audio_gaps": gaps,
            "slide_first_s": (round(self.downloads[0][2] - self.hello_at, 2)
                              if self.downloads else None),
            "slide_first_parts": self._first_slide_parts(arrivals),
            "slides_fetched": len(self.downloads),
            "slide_bytes": sum(d[3] for d in self.downloads),
            "slide_errors": self.slide_errors[:3],
            "kbps": round(sum(a[3] for a in arrivals) * 8 / window / 1000, 2) if window else None,
            "jitter_ms": round(1000 * self.jitter, 1),
            "rtp_ts_jumps": self.ts_jumps,
            "tcp_connect_rtt_ms": tcp_rtt,
            "relay_forwarded": self.relay.forwarded if self.relay else None,
            "error": self.error,
        }


async def student_main(args: argparse.Namespace) -> None:
    student = LinkStudent(args)
    try:
        result = await student.run()
    except Exception as exc:
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        result = {"error": f"{type(exc).__name__}: {exc} (line {where.lineno}: {where.line})"[:300],
                  "stage": student.stage}
    print(json.dumps(result), flush=True)


# ==== the driver (on the host) =================================================================

class SlideTeacher(Teacher):
    """bench_relay's teacher that also shows a deck and keeps the student's RTT from the
    ``participants`` list (the server's figure, from RTCP sender/receiver reports)."""

    rtts: list[float]

    async def _read(self) -> None:
        assert self.ws is not None
        self.rtts = []
        self.last_seen: dict[str, Any] = {}
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("type") in ("welcome", "answer", "error", "ended"):
                    await self.inbox.put(data)
                elif data.get("type") == "participants":
                    for p in data["list"]:
                        if p.get("name") != STUDENT_NAME:
                            continue
                        self.last_seen = {k: p.get(k) for k in (
                            "tier", "quality", "protected", "capacity_kbps", "failed_step_ups")}
                        if p.get("rtt_ms") is not None:
                            self.rtts.append(float(p["rtt_ms"]))

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    def student_rtt_ms(self) -> Optional[float]:
        rtts = getattr(self, "rtts", [])
        return round(statistics.median(rtts), 1) if rtts else None


async def upload_deck(http: aiohttp.ClientSession, url: str, class_id: int,
                      login: dict[str, str]) -> tuple[int, int]:
    async with http.post(url + "/api/login", json=login) as resp:  # again, for the CSRF token
        csrf = (await resp.json())["csrf_token"]
    async with http.post(f"{url}/api/classes/{class_id}/decks",
                         params={"title": "Bench deck", "filename": DECK.name}, data=DECK.read_bytes(),
                         headers={"Content-Type": "application/octet-stream",
                                  "X-CSRF-Token": csrf}) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"deck upload: {resp.status} {body}")
        return int(body["id"]), int(body["pages"])


async def aiortc_student(ns: Namespace, port: int, code: str, link: Link,
                         args: argparse.Namespace) -> bytes:
    """This script again (``--student``) inside ``ns``: its stdout (the report's JSON line)."""
    proc = await ns.spawn(
        [sys.executable, str(Path(__file__).resolve()), "--student",
         "--url", f"http://{ns.host_ip}:{port}", "--code", code,
         "--seconds", str(args.seconds), "--host-ip", ns.host_ip, "--ns-ip", ns.ns_ip,
         "--extra-rtt-ms", str(link.extra_rtt_ms), "--screen-px", str(args.screen_px)],
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    out, _ = await asyncio.wait_for(proc.communicate(), args.seconds + 120)
    return out


async def measure(link: Link, args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-links-{link.name}-"))
    # bench_relay's Server passes --tier-up-seconds 1; the production default (20 s) wins here.
    server = Server(data_dir, ["--host", "0.0.0.0", "--tier-up-seconds", "20",
                               *(args.server_arg or [])]).start()
    demo = server.demo
    teacher_http: Optional[aiohttp.ClientSession] = None
    teacher: Optional[SlideTeacher] = None
    turner: Optional[asyncio.Task[None]] = None
    try:
        teacher_http = await login(server.url, demo["teacher_login"])
        deck_id, pages = await upload_deck(teacher_http, server.url, int(demo["class_id"]),
                                           demo["teacher_login"])
        teacher = SlideTeacher(server.url, teacher_http, speech_packets())
        await teacher.start(int(demo["lesson_id"]))
        await teacher.send({"type": "deck", "deck_id": deck_id})
        log(f"{link.name}: server {server.url}, teacher live with a {pages}-page deck")

        async def turn_slides() -> None:
            assert teacher is not None
            page = 0
            while True:
                await asyncio.sleep(args.slide_every)
                page = (page + 1) % pages
                await teacher.send({"type": "slide", "page": page})

        turner = asyncio.create_task(turn_slides())
        with NetLab(link) as lab:
            ns = lab.students[0]
            if args.chromium:
                student = await page_student(ns, f"http://{ns.host_ip}:{server.port}",
                                             demo["class_code"], STUDENT_NAME, args.seconds)
                out = (json.dumps(student) + "\n").encode()
            else:
                out = await aiortc_student(ns, server.port, demo["class_code"], link, args)
            server_rtt = teacher.student_rtt_ms()
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        student: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": "no report"}
        # The server's RTCP round trip when it has one; else the idle round trip measured in the
        # namespace (TCP connects) plus the hold the relay adds to the media path (configured).
        tcp_rtt = student.get("tcp_connect_rtt_ms")
        # Chromium picks its own candidate pair: the relay that adds round trip is not on its path.
        extra_rtt = 0 if args.chromium else link.extra_rtt_ms
        rtt = server_rtt if server_rtt is not None else (
            round(tcp_rtt + extra_rtt, 1) if tcp_rtt is not None else None)
        rtt_source = "server-rtcp" if server_rtt is not None else "tcp-connect+relay"
        return {
            "profile": link.name,
            "rate_kbps": link.down_kbps,
            "loss_pct": link.loss_down_pct,
            "rtt_ms": rtt,
            "join_to_audio_s": student.get("join_to_audio_s"),
            "seconds_to_fit_tier": student.get("seconds_to_fit_tier"),
            "final_tier": student.get("final_tier"),
            "failed_step_ups": student.get("failed_step_ups"),
            "concealment_pct": student.get("concealment_pct"),
            "concealment_during_slides_pct": student.get("concealment_during_slides_pct"),
            "audio_gaps": student.get("audio_gaps"),
            "slide_first_s": student.get("slide_first_s"),
            "kbps": student.get("kbps"),
            "detail": {k: v for k, v in student.items() if k not in (
                "join_to_audio_s", "seconds_to_fit_tier", "final_tier", "failed_step_ups",
                "concealment_pct",
                "concealment_during_slides_pct", "audio_gaps", "slide_first_s", "kbps")}
            | {"rtt_source": rtt_source, "up_kbps": link.up_kbps, "loss_up_pct": link.loss_up_pct,
               "queue_ms": link.queue_ms,
               "extra_rtt_ms": extra_rtt, "seconds": args.seconds,
               "server_errors": server.errors()[:3],
               "server_view": getattr(teacher, "last_seen", {})},
        }
    finally:
        if turner is not None:
            turner.cancel()
        if teacher is not None:
            await teacher.close()
        if teacher_http is not None:
            await teacher_http.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(PROFILES),
                        help=f"comma-separated, of {', '.join(PROFILES)} (default: all)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long the student stays, from its hello")
    parser.add_argument("--slide-every", type=float, default=8.0, help="seconds between slide turns")
    parser.add_argument("--screen-px", type=int, default=PHONE_PX,
                        help="the student's screen width in device pixels: the page fetches the "
                             f"large slide image only when wider than {SMALL_PX} (default: a phone)")
    parser.add_argument("--chromium", action="store_true",
                        help="the student is the real student page in headless Chromium "
                             "(scripts/page_student.py) instead of an aiortc peer")
    parser.add_argument("--server-arg", action="append",
                        help="extra argument for groom serve (repeat), e.g. --server-arg=--tier-up-seconds=5")
    # The student's side (run by the driver inside the namespace).
    parser.add_argument("--student", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    parser.add_argument("--host-ip", help=argparse.SUPPRESS)
    parser.add_argument("--ns-ip", help=argparse.SUPPRESS)
    parser.add_argument("--extra-rtt-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.student:
        asyncio.run(student_main(args))
        return
    names = [n.strip() for n in args.profiles.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROFILES]
    if unknown:
        parser.error(f"unknown profiles {unknown}: choose from {list(PROFILES)}")
    for name in names:
        print(json.dumps(asyncio.run(measure(PROFILES[name], args))), flush=True)


if __name__ == "__main__":
    main()
