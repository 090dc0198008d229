#!/usr/bin/env python
"""Relay benchmark of the REAL server: one teacher, N students on one tier, server CPU per student.

    python scripts/bench_relay.py --n 50,100,200 --seconds 20 --tier standard

For each N, a fresh ``python -m groom serve --demo --json`` (SQLite in a new temporary folder,
``--tier-up-seconds 1``, join limits lifted) is started, and then:

1. an aiortc teacher (in this process) logs in with the demo teacher's login, says ``hello`` for
   the demo lesson (it starts now) and publishes ``media/speech.wav`` looped, as 20 ms Opus
   packets encoded once (``PacketTrack``). With ``--rooms R``, R-1 more classes, teachers and
   lessons are made through the admin API, each with its own teacher and ``--n`` students;
2. a short baseline window with the teacher talking and no student: the room's fixed cost (mixer,
   one encoder per tier, the recorder);
3. N students join as aiortc peers in processes of their own (``scripts/bench_students.py``,
   ``--per-process`` each): ``/ws``, ``hello`` with the class code, recvonly offer, answer. The tier
   is reached as a phone would: ``data_saver`` for low, good ``stats`` for high;
4. once every student is on the tier and connected, a settle time, then a steady window of
   ``--seconds``.

Measured, all over the window:
- server CPU: user+system of the server's process (psutil, its own pid, all its threads) per
  wall second, in % of one core; ``cpu_per_student_pct`` = that / N (fixed costs included),
  ``cpu_marginal_per_student_pct`` = (that - baseline) / N;
- ``packets_expected``: what the server encoded for the tier in the window (``packets_encoded``
  delta from ``GET /api/live``) x students on the tier. DTX: tiers send nothing while the teacher
  is silent, so this is the right yardstick, not N x window x packet rate;
- ``packets_sent``: the room's ``packets_sent`` delta; ``packets_received``: packets the students
  received intact (SRTP-authenticated, right Opus frame size), ``packets_lost``: sequence gaps;
  student windows are opened and closed by the driver a few ms apart from the server's
  figures, so expected/sent/received can differ by about one packet per student;
- latency: the room's server-added delay (teacher audio in -> student packet out of the socket,
  1 packet in 8, the last 4096 samples), read after the window. The settle time is stretched so
  those samples postdate the joins (``latency_covers_s`` says how many seconds they span);
- ``wire_bytes_per_student_hour``: the room's ``wire_bytes`` delta (RTP + SRTP + UDP + IP) / N,
  scaled to an hour;
- with ``--scrape S``: ``GET /metrics`` (with a bearer token the server is started with) every S
  seconds from this process during the window: ``scrape_ms_p50`` / ``scrape_ms_max`` (request
  round trip), ``scrapes``, ``scrape_bytes``; compare ``server_cpu_pct`` with a run without it;
- ``machine_cpu_pct``: the whole machine's busy share (100 = every core busy) and
  ``others_cpu_pct``: CPU (in % of one core) of processes that are not this benchmark, to show
  contention. ``saturated`` is true when the machine was >= 90 % busy: then figures are
  pessimistic (the server waited for a core).
- with ``--quality``: speech quality of what the students received. One student per student
  process keeps the window's Opus payloads and decodes them with libopus as received and with
  5 % / 15 % of the RTP packets dropped at random (seeded), concealing what is missing (FEC or
  RED where the tier has it), then scores each against media/speech.wav with PESQ wideband
  (``scripts/speech_quality.py``): ``pesq_wb_clean``, ``pesq_wb_loss5``, ``pesq_wb_loss15``
  (median over those students), ``quality_tiers`` (what they were on during the window) and
  ``quality`` (per process). Needs ``pesq``: ``scripts/install --extras bench``. ``--tier``
  ``low-red`` / ``standard-red`` puts students on a protected (RED) variant.

With ``--nodes K`` (K > 1): a redis-server is started on a free port (or ``--redis-url`` is
used) and K server processes run as one cluster (``--redis-url``, ``--node-id n1..nK``, one data
folder and SQLite database, or ``--server-arg=--database-url=...``); lessons are placed by load,
student processes join through the nodes in turn, CPU is summed over every node.
``rooms_per_node`` says where the lessons ran, ``student_processes_via_edge`` how many student
processes came through a node that is not their lesson's origin, ``edge_latency_ms_p95`` the
server-added latency (p95) of the rooms those students were in (an edge relays signaling only:
the audio leaves the origin's sockets straight to the student).

One JSON object per line per N on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import aiohttp
import av
import psutil
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "media" / "speech.wav"
STUDENTS_SCRIPT = Path(__file__).resolve().parent / "bench_students.py"
FRAME_MS = {"low": 60, "standard": 60, "high": 20,  # groom.live.tiers.ROOM_TIERS
            "low-red": 60, "standard-red": 60}
LATENCY_EVERY, LATENCY_KEEP = 8, 4096  # groom.live.latency.EVERY / KEEP


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the server -----------------------------------------------------------------------------

class Server:
    """``python -m groom serve --demo --json`` in a fresh data folder; output to a log file."""

    def __init__(self, data_dir: Path, extra: list[str], profile: Optional[Path] = None,
                 name: str = "server", demo: bool = True) -> None:
        """``demo``: seed the demo school and wait for its links (the first node); a further
        node of ``--nodes K`` shares its data folder and database and only has to be healthy."""
        self.data_dir = data_dir
        self.profile = profile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"{name}.log"
        self.extra = extra
        self.seeds = demo
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.demo: dict[str, Any] = {}

    def start(self) -> "Server":
        out = self.log_path.open("ab")
        wrap = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *wrap, "-m", "groom", "serve", *(["--demo", "--json"] if self.seeds else []),
             "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--join-attempts-per-minute", "100000",
             # Every simulated student comes from 127.0.0.1: lift the per-address budgets and
             # the room size that protect a real server from one address's flood.
             "--students-per-address", "100000", "--sockets-per-address", "100000",
             "--students-per-lesson", "100000",
             "--tier-up-seconds", "1", *self.extra],
            stdout=out, stderr=out, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log_path.read_text()[-3000:])
            if self.seeds and not self.demo:
                for line in self.log_path.read_text(errors="replace").splitlines():
                    if line.startswith("{") and '"class_code"' in line:
                        self.demo = json.loads(line)
            # with --workers the links come before the workers are up: wait for both
            if (self.demo or not self.seeds) and self._healthy():
                return self
            time.sleep(0.1)
        raise RuntimeError("the server did not come up: " + self.log_path.read_text()[-3000:])

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return sock.recv(64).split(b"\r\n")[0].split(b" ")[1:2] == [b"200"]
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        """The server's processes: with ``--workers N``, the supervisor and its workers."""
        try:
            return [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            return [self.pid]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def errors(self) -> list[str]:
        """Log lines at ERROR or above (a crash in the server is worth seeing in the result)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"ERROR"' in line or '"CRITICAL"' in line or "Traceback" in line:
                found.append(line[:300])
        return found


async def login(url: str, creds: dict[str, str]) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(url + "/api/login", json=creds) as resp:
        if resp.status != 200:
            raise RuntimeError(f"login {creds['username']}: {resp.status} {await resp.text()}")
    return http


async def live_room(admin: aiohttp.ClientSession, url: str, lesson_id: int) -> dict[str, Any]:
    async with admin.get(url + "/api/live") as resp:
        rooms = await resp.json()
    for room in rooms:
        if room["lesson"]["id"] == lesson_id:
            return room
    raise RuntimeError(f"lesson {lesson_id} is not live: {rooms}")


# --- the teacher ----------------------------------------------------------------------------

def speech_packets() -> list[bytes]:
    """``media/speech.wav`` as 20 ms Opus packets (32 kbps mono, no DTX), as a browser sends.

    Encoded once per run: twenty teachers encoding live would cost the driver a core and
    starve the server it measures.
    """
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"  # type: ignore[attr-defined]
    encoder.bit_rate = 32000
    encoder.options = {"frame_duration": "20", "application": "voip"}
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
    packets: list[bytes] = []
    with av.open(str(SPEECH)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                packets += [bytes(p) for p in encoder.encode(out)]  # type: ignore[attr-defined]
    packets += [bytes(p) for p in encoder.encode(None)]  # type: ignore[attr-defined]
    return packets


class PacketTrack(MediaStreamTrack):
    """A looped list of Opus packets, one every 20 ms: aiortc sends them without re-encoding."""

    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self._packets = packets
        self._index = 0
        self._start: Optional[float] = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._index * 0.020
        await asyncio.sleep(max(due - time.monotonic(), 0.0))
        packet = av.Packet(self._packets[self._index % len(self._packets)])
        packet.pts = self._index * 960
        packet.time_base = Fraction(1, 48000)
        self._index += 1
        return packet


class Teacher:
    """An aiortc teacher speaking the protocol: hello, offer (sendrecv, speech.wav looped)."""

    def __init__(self, url: str, http: aiohttp.ClientSession, packets: list[bytes]) -> None:
        self.url = url
        self.http = http
        self.packets = packets
        self.ws: Optional[aiohttp.ClientWebSocketResponse] = None
        self.pc: Optional[RTCPeerConnection] = None
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self, lesson_id: int, silent: bool = False) -> None:
        self.ws = await self.http.ws_connect(self.url.replace("http", "ws", 1) + "/ws",
                                             max_msg_size=1 << 24)
        self.tasks.append(asyncio.create_task(self._read()))
        await self.ws.send_str(json.dumps({"type": "hello", "role": "teacher", "lesson_id": lesson_id}))
        welcome = await self._expect("welcome")
        if welcome["type"] != "welcome":
            raise RuntimeError(f"teacher hello: {welcome}")
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if silent:  # digital silence: the tiers go DTX, students get (almost) no packets
            pc.addTransceiver(AudioStreamTrack(), direction="sendrecv")
        else:
            pc.addTransceiver(PacketTrack(self.packets), direction="sendrecv")

        @pc.on("track")
        def on_track(track: Any) -> None:  # what the teacher hears (the floor): drain it
            self.tasks.append(asyncio.create_task(self._drain(track)))

        await pc.setLocalDescription(await pc.createOffer())
        await self.ws.send_str(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
        answer = await self._expect("answer")
        if answer["type"] != "answer":
            raise RuntimeError(f"teacher offer: {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        for _ in range(400):
            if pc.connectionState == "connected":
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"teacher connection {pc.connectionState}")

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data.get("type") in ("welcome", "answer", "error", "ended"):
                    await self.inbox.put(data)

    async def _expect(self, kind: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.inbox.get(), 30)
            if message["type"] in (kind, "error", "ended"):
                return message

    @staticmethod
    async def _drain(track: Any) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()


# --- student processes ----------------------------------------------------------------------

class Workers:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []  # the node each process joined through

    def spawn(self, urls: list[str], code: str, n: int, per_process: int, tier: str,
              concurrency: int, stats_interval: float, extra: tuple[str, ...] = ()) -> None:
        """Student processes for one room; with several nodes, the room's processes join through
        the nodes in turn (as a load balancer in front of them spreads a class's phones)."""
        first = 0
        while first < n:
            count = min(per_process, n - first)
            url = urls[(first // per_process) % len(urls)]
            self.urls.append(url)
            self.procs.append(subprocess.Popen(
                [sys.executable, str(STUDENTS_SCRIPT), "--url", url, "--code", code,
                 "--count", str(count), "--first", str(first), "--tier", tier,
                 "--concurrency", str(concurrency), "--stats-interval", str(stats_interval),
                 *extra],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=ROOT))
            first += count

    def tell(self, word: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()

    async def read_all(self, timeout: float = 300) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(None, self._read_json, p) for p in self.procs)),
            timeout)

    @staticmethod
    def _read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"student process {proc.pid} exited ({proc.poll()})")
            if line.startswith("{"):
                return json.loads(line)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- CPU ------------------------------------------------------------------------------------

def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def machine_busy() -> float:
    """Busy CPU-seconds of the whole machine, summed over cores."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Window:
    """CPU of the server, the students, this process and the machine between two snapshots."""

    def __init__(self, server_pids: list[int], student_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.student_pids = student_pids
        self.start = self._snap()

    def _snap(self) -> dict[str, float]:
        return {"wall": time.monotonic(), "server": cpu_seconds(self.server_pids),
                "students": cpu_seconds(self.student_pids), "me": cpu_seconds([os.getpid()]),
                "machine": machine_busy()}

    def stop(self) -> dict[str, float]:
        end = self._snap()
        wall = end["wall"] - self.start["wall"]
        d = {k: end[k] - self.start[k] for k in end}
        ours = d["server"] + d["students"] + d["me"]
        cores = psutil.cpu_count() or 1
        return {"wall": wall, "server_pct": 100 * d["server"] / wall,
                "students_pct": 100 * d["students"] / wall, "driver_pct": 100 * d["me"] / wall,
                "machine_pct": 100 * d["machine"] / wall / cores,
                "others_pct": 100 * max(d["machine"] - ours, 0.0) / wall}


# --- /metrics scraping ---------------------------------------------------------------------

class Scraper:
    """``GET /metrics`` every ``interval`` seconds, as Prometheus would; round trips in ms."""

    def __init__(self, url: str, token: str, interval: float) -> None:
        self.url, self.token, self.interval = url + "/metrics", token, interval
        self.ms: list[float] = []
        self.bytes = 0
        self.errors: list[str] = []
        self._task: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession() as http:
            while True:
                t0 = time.monotonic()
                try:
                    async with http.get(self.url, headers=headers) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            self.errors.append(f"{resp.status} {body[:200]!r}")
                except aiohttp.ClientError as exc:
                    self.errors.append(repr(exc))
                    body = b""
                elapsed = time.monotonic() - t0
                self.ms.append(elapsed * 1000)
                self.bytes = len(body)
                await asyncio.sleep(max(self.interval - elapsed, 0.0))

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return {"scrape_interval_s": self.interval, "scrapes": len(self.ms),
                "scrape_ms_p50": round(statistics.median(self.ms), 2) if self.ms else None,
                "scrape_ms_max": round(max(self.ms), 2) if self.ms else None,
                "scrape_bytes": self.bytes, "scrape_errors": self.errors[:3]}


# --- more rooms -----------------------------------------------------------------------------

class Room:
    """One lesson of the run: its id, class code and the teacher speaking in it."""

    def __init__(self, lesson_id: int, code: str, http: aiohttp.ClientSession) -> None:
        self.lesson_id = lesson_id
        self.code = code
        self.http = http
        self.teacher: Optional[Teacher] = None


async def _api(http: aiohttp.ClientSession, method: str, url: str, csrf: str,
               body: dict[str, Any]) -> dict[str, Any]:
    async with http.request(method, url, json=body, headers={"X-CSRF-Token": csrf}) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url}: {resp.status} {await resp.text()}")
        data: dict[str, Any] = await resp.json()
        return data


async def extra_rooms(url: str, admin: aiohttp.ClientSession, count: int) -> list[Room]:
    """``count`` more lessons, live now, each in a class of its own with a teacher of its own.

    Made through the admin API as a school would (a teacher cannot teach two lessons at once).
    """
    async with admin.get(url + "/api/me") as resp:
        csrf = (await resp.json())["csrf_token"]
    async with admin.get(url + "/api/schools") as resp:
        school_id = (await resp.json())[0]["id"]
    rooms = []
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(count):
        creds = {"username": f"bench-teacher-{i}", "password": secrets.token_urlsafe(12)}
        teacher = await _api(admin, "POST", f"{url}/api/schools/{school_id}/teachers", csrf,
                             {**creds, "display_name": f"Bench teacher {i}"})
        klass = await _api(admin, "POST", f"{url}/api/schools/{school_id}/classes", csrf,
                           {"name": f"Bench class {i}", "teacher_id": teacher["id"]})
        lesson = await _api(admin, "POST", f"{url}/api/classes/{klass['id']}/lessons", csrf,
                            {"starts_at": now, "duration_minutes": 120})
        rooms.append(Room(lesson["id"], klass["join_code"], await login(url, creds)))
    return rooms


def _sum_rooms(rooms: list[dict[str, Any]], tier: str) -> dict[str, Any]:
    """The figures of several ``/api/live`` rooms added up (latency: the worst room's)."""
    out: dict[str, Any] = {"packets_sent": 0, "packets_dropped": 0, "wire_bytes": 0,
                           "students_connected": 0, "frames_skipped": 0,
                           "tier_students": 0, "tier_encoded": 0}
    for room in rooms:
        for key in ("packets_sent", "packets_dropped", "wire_bytes", "students_connected"):
            out[key] += room[key]
        out["frames_skipped"] += room["mixer"]["frames_skipped"]
        out["tier_students"] += room["tiers"][tier]["students"]
        out["tier_encoded"] += room["tiers"][tier]["packets_encoded"]
    latencies = [r["latency"] for r in rooms if r["latency"]["samples"]]
    out["latency"] = {
        "p50_ms": max((lat["p50_ms"] for lat in latencies), default=None),
        "p95_ms": max((lat["p95_ms"] for lat in latencies), default=None),
        "samples": min((lat["samples"] for lat in latencies), default=0),
    }
    return out


# --- one N ----------------------------------------------------------------------------------

async def wait_on_tier(admin: aiohttp.ClientSession, url: str, lesson_id: int, tier: str, n: int,
                       timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        room = await live_room(admin, url, lesson_id)
        if room["tiers"][tier]["students"] >= n and room["students_connected"] >= n:
            return room
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {room['tiers'][tier]['students']} of {n} on {tier}, "
                               f"{room['students_connected']} connected: {room['tiers']}")
        await asyncio.sleep(0.5)


async def live_rooms(admin: aiohttp.ClientSession, url: str, rooms: list[Room]) -> list[dict[str, Any]]:
    return [await live_room(admin, url, room.lesson_id) for room in rooms]


async def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    tier, r = args.tier, args.rooms
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-relay-{n}-"))
    profile = data_dir / "server.prof" if args.profile else None
    token = secrets.token_urlsafe(16)
    server_args = [*(args.server_arg or []), *(["--metrics-token", token] if args.scrape else []),
                   "--workers", str(args.workers)]
    redis: Optional[RedisServer] = None
    if args.nodes > 1:
        redis = RedisServer() if not args.redis_url else None
        server_args += ["--redis-url", args.redis_url or (redis.url if redis else ""),
                        "--redis-prefix", "bench" + secrets.token_hex(4)]
    server = Server(data_dir, server_args + (["--node-id", "n1"] if args.nodes > 1 else []),
                    profile).start()
    nodes = [server] + [Server(data_dir, server_args + ["--node-id", f"n{i + 1}"], name=f"node{i + 1}",
                               demo=False).start() for i in range(1, args.nodes)]
    if args.nodes > 1:
        time.sleep(5)  # the cluster's registry places nothing in its first seconds (SETTLE_S)
    demo = server.demo
    url = server.url
    admin: Optional[aiohttp.ClientSession] = None
    rooms: list[Room] = []
    workers = Workers()
    try:
        admin = await login(url, demo["admin_login"])
        packets = speech_packets()
        rooms = [Room(int(demo["lesson_id"]), demo["class_code"], await login(url, demo["teacher_login"]))]
        rooms += await extra_rooms(url, admin, r - 1)
        for room in rooms:
            room.teacher = Teacher(url, room.http, packets)
            await room.teacher.start(room.lesson_id, silent=args.silent)
        log(f"n={n} rooms={r}: server pid {server.pid} on {url}, {r} teacher(s) connected")
        await asyncio.sleep(1.0)
        baseline: Optional[dict[str, float]] = None
        if args.baseline_seconds > 0:
            w = Window(all_pids(nodes), [])
            await asyncio.sleep(args.baseline_seconds)
            baseline = w.stop()
            log(f"n={n}: baseline ({r} teacher(s), no students) {baseline['server_pct']:.2f} % of a core")

        joined_at = time.monotonic()
        for room in rooms:
            workers.spawn([node.url for node in nodes], room.code, n, args.per_process, tier,
                          args.concurrency,
                          args.stats_interval,
                          ("--quality", str(len(packets) * 960)) if args.quality else ())
        ready = await workers.read_all()
        failed = sum(x["failed"] for x in ready)
        log(f"n={n}: {n * r - failed} students joined in {time.monotonic() - joined_at:.1f} s "
            f"({len(workers.procs)} processes)" + (f", {failed} failed: {ready}" if failed else ""))
        if failed:
            raise RuntimeError(f"{failed} students failed to join: {[x['errors'] for x in ready]}")
        for room in rooms:
            await wait_on_tier(admin, url, room.lesson_id, tier, n, 60)
        join_seconds = time.monotonic() - joined_at

        # Settle, then stretch it so the latency samples read after the window postdate the joins.
        await asyncio.sleep(args.settle)
        before = await live_room(admin, url, rooms[0].lesson_id)
        t0 = time.monotonic()
        await asyncio.sleep(2.0)
        after = await live_room(admin, url, rooms[0].lesson_id)
        rate = (after["packets_sent"] - before["packets_sent"]) / (time.monotonic() - t0)
        covers = LATENCY_KEEP * LATENCY_EVERY / max(rate, 1.0)
        extra = min(max(covers - args.seconds, 0.0), args.max_extra_settle)
        if extra > 0:
            log(f"n={n}: {rate:.0f} packets/s a room: settling {extra:.0f} s more so latency "
                "samples postdate the joins")
            await asyncio.sleep(extra)

        # The window.
        live0 = await live_rooms(admin, url, rooms)
        w = Window(all_pids(nodes), workers.pids())
        scraper = Scraper(url, token, args.scrape) if args.scrape else None
        if scraper is not None:
            scraper.start()
        workers.tell("mark")
        await workers.read_all(30)
        await asyncio.sleep(args.seconds)
        live1 = await live_rooms(admin, url, rooms)
        cpu = w.stop()
        scraped = await scraper.stop() if scraper is not None else {}
        workers.tell("report")
        reports = await workers.read_all(30)
        workers.tell("tiers")
        tiers_seen = await workers.read_all(30)

        expected = sum((b["tiers"][tier]["packets_encoded"] - a["tiers"][tier]["packets_encoded"])
                       * b["tiers"][tier]["students"] for a, b in zip(live0, live1))
        sum0, sum1 = _sum_rooms(live0, tier), _sum_rooms(live1, tier)
        on_tier = sum1["tier_students"]
        encoded = (sum1["tier_encoded"] - sum0["tier_encoded"]) / r  # per room
        sent = sum1["packets_sent"] - sum0["packets_sent"]
        wire = sum1["wire_bytes"] - sum0["wire_bytes"]
        received = sum(x["received"] for x in reports)
        wall = cpu["wall"]
        students = n * r
        per_student = cpu["server_pct"] / students
        latency = sum1["latency"]
        send_rate = sent / wall
        result: dict[str, Any] = {
            "n": n, "rooms": r, "workers": args.workers, "nodes": args.nodes,
            "tier": tier, "frame_ms": FRAME_MS[tier], "seconds": round(wall, 1),
            **({"teacher": "silent"} if args.silent else {}),
            **({"stats_interval": args.stats_interval} if args.stats_interval != 2.0 else {}),
            **({"profiled": True} if args.profile else {}),
            "cpu_per_room_pct": round(cpu["server_pct"] / r, 3),
            "cpu_per_student_pct": round(per_student, 4),
            "students_per_core": int(100 / per_student) if per_student > 0 else None,
            "server_cpu_pct": round(cpu["server_pct"], 2),
            "server_cpu_baseline_pct": round(baseline["server_pct"], 2) if baseline else None,
            "cpu_room_baseline_pct": round(baseline["server_pct"] / r, 3) if baseline else None,
            "cpu_marginal_per_student_pct": (round((cpu["server_pct"] - baseline["server_pct"]) / students, 4)
                                             if baseline else None),
            "packets_expected": expected,
            "packets_sent": sent,
            "packets_received": received,
            "packets_lost": sum(x["lost"] for x in reports),
            "packets_bad": sum(x["bad"] for x in reports),
            "packets_dropped_server": sum1["packets_dropped"] - sum0["packets_dropped"],
            "delivered_pct": round(100 * received / max(expected, 1), 2),
            "students_on_tier": on_tier,
            "students_without_packets": sum(x["students_without_packets"] for x in reports),
            "tier_packets_per_s": round(encoded / wall, 2),
            "talk_share": round(encoded / wall / (1000 / FRAME_MS[tier]), 3),
            "server_us_per_packet_sent": round(1e4 * cpu["server_pct"] / max(send_rate, 1), 1),
            "latency_ms_p50": latency["p50_ms"], "latency_ms_p95": latency["p95_ms"],
            "latency_samples": int(latency["samples"] or 0),
            "latency_covers_s": round((latency["samples"] or 0) * LATENCY_EVERY * r / max(send_rate, 1), 1),
            "wire_bytes_per_student_hour": int(wire / max(on_tier, 1) / wall * 3600),
            "wire_kbps_per_student": round(wire * 8 / max(on_tier, 1) / wall / 1000, 2),
            "machine_cpu_pct": round(cpu["machine_pct"], 1),
            "machine_cores": psutil.cpu_count(),
            "others_cpu_pct": round(cpu["others_pct"], 1),
            "students_cpu_pct": round(cpu["students_pct"], 1),
            "students_per_process": args.per_process,
            "driver_cpu_pct": round(cpu["driver_pct"], 1),
            "saturated": cpu["machine_pct"] >= 90.0,
            "join_seconds": round(join_seconds, 1),
            "mixer_frames_skipped": sum1["frames_skipped"] - sum0["frames_skipped"],
            "decoded_rms": [x for rep in reports for x in rep["decoded_rms"]],
            "client_tiers": _merge(t["tiers"] for t in tiers_seen),
            **(_quality(reports) if args.quality else {}),
            "server_errors": [e for node in nodes for e in node.errors()][:3],
            **(_placement(live1, nodes, workers, r) if args.nodes > 1 else {}),
            **scraped,
        }
        if result["saturated"]:
            result["note"] = ("machine saturated: other processes used "
                              f"{result['others_cpu_pct']} % of a core; the server waited for a "
                              "core, so latency (and CPU, through cache pressure) are pessimistic")
        return result
    finally:
        workers.stop()
        for room in rooms:
            if room.teacher is not None:
                await room.teacher.close()
            await room.http.close()
        if admin is not None:
            await admin.close()
        for node in nodes:
            node.stop()
        if redis is not None:
            redis.stop()
        if profile is not None and profile.exists():
            import pstats
            print(f"--- cProfile of the server (main thread, whole run), n={n} ---", file=sys.stderr)
            pstats.Stats(str(profile), stream=sys.stderr).sort_stats("tottime").print_stats(30)


def all_pids(nodes: list[Server]) -> list[int]:
    return [pid for node in nodes for pid in node.pids()]


def _placement(rooms: list[dict[str, Any]], nodes: list[Server], workers: "Workers",
               r: int) -> dict[str, Any]:
    """Where the lessons ran and how the students came: ``rooms_per_node`` (the lesson's origin,
    from ``/api/live``), ``students_via_edge`` (student processes that joined through a node
    other than their lesson's origin: their signaling was relayed). An edge relays signaling
    only; the audio goes from the origin's sockets to the student, so an edge adds no delay to
    it: ``edge_latency_ms_p95`` is the server-added latency (p95, worst room) of the rooms
    that had students coming through an edge, i.e. what those students got."""
    origin = {room["lesson"]["id"]: room["worker"] for room in rooms}
    per_node: dict[str, int] = {}
    for node_id in origin.values():
        per_node[node_id] = per_node.get(node_id, 0) + 1
    url_node = {node.url: f"n{i + 1}" for i, node in enumerate(nodes)}
    per_room = len(workers.urls) // max(r, 1)
    via_edge, edge_rooms = 0, set()
    for i, url in enumerate(workers.urls):
        lesson_id = rooms[min(i // max(per_room, 1), len(rooms) - 1)]["lesson"]["id"]
        if url_node[url] != origin[lesson_id]:
            via_edge += 1
            edge_rooms.add(lesson_id)
    edge = [room["latency"]["p95_ms"] for room in rooms
            if room["lesson"]["id"] in edge_rooms and room["latency"]["samples"]]
    return {"rooms_per_node": per_node, "student_processes_via_edge": via_edge,
            "student_processes": len(workers.urls),
            "edge_latency_ms_p95": max(edge) if edge else None}


class RedisServer:
    """A throwaway redis-server for ``--nodes K`` (no persistence), on a free port."""

    def __init__(self) -> None:
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _quality(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """PESQ figures of the decoding students: the median of each, the tiers they were on."""
    scored = [q for rep in reports for q in rep.get("quality", [])]
    out: dict[str, Any] = {}
    for key in ("pesq_wb_clean", "pesq_wb_loss5", "pesq_wb_loss15"):
        values = [q[key] for q in scored if q.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["quality_tiers"] = sorted({t for q in scored for t in q["tiers"]})
    out["quality"] = scored
    return out


def _merge(dicts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="50,100,200", help="comma-separated student counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady measuring window")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (groom serve --workers); CPU is summed over all")
    parser.add_argument("--nodes", type=int, default=1,
                        help="server nodes on Redis (groom serve --redis-url, one data folder and "
                             "database); students join through the nodes in turn")
    parser.add_argument("--redis-url", default="",
                        help="with --nodes: this Redis instead of a redis-server started here")
    parser.add_argument("--rooms", type=int, default=1,
                        help="lessons at once, each with its own teacher and --n students")
    parser.add_argument("--tier", default="standard",
                        choices=["low", "standard", "high", "low-red", "standard-red"])
    parser.add_argument("--per-process", type=int, default=50, help="student peers per process")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="students joining at once in each student process")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between the last join and the window (stretched for latency)")
    parser.add_argument("--max-extra-settle", type=float, default=25.0,
                        help="at most this much extra settling so latency samples postdate joins")
    parser.add_argument("--baseline-seconds", type=float, default=5.0,
                        help="window with the teacher talking and no students (0: skip)")
    parser.add_argument("--server-arg", action="append",
                        help="extra argument for groom serve (repeat), e.g. --server-arg=--log-level=WARNING")
    parser.add_argument("--stats-interval", type=float, default=2.0,
                        help="students' stats messages every this many seconds, as the student "
                             "page does (0: none, to see what signaling costs)")
    parser.add_argument("--silent", action="store_true",
                        help="the teacher sends digital silence: per-student cost without packets")
    parser.add_argument("--scrape", type=float, default=0.0, metavar="SECONDS",
                        help="during the window, GET /metrics (with a token) every SECONDS and "
                             "report scrape_ms_p50/max: the cost of monitoring (0: no scraping)")
    parser.add_argument("--profile", action="store_true",
                        help="run the server under cProfile (slows it: CPU figures are then not "
                             "comparable) and print its top functions to stderr")
    parser.add_argument("--quality", action="store_true",
                        help="score what the students decode with PESQ (needs the bench extra)")
    args = parser.parse_args()
    if args.quality:
        try:
            import pesq  # noqa: F401
        except ImportError:
            sys.exit("--quality needs the pesq package: run scripts/install --extras bench")
    if not SPEECH.exists():
        sys.exit(f"missing {SPEECH}")
    for n in (int(x) for x in args.n.split(",")):
        print(json.dumps(asyncio.run(measure(n, args))), flush=True)


if __name__ == "__main__":
    main()
