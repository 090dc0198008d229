#!/usr/bin/env python
"""Relay benchmark: one teacher source, N students on one tier, server CPU per student.

    python scripts/bench_relay.py --n 50,100,200 --seconds 20 --tier standard

For each N it starts a server process (a ``TierSet`` fed by a looping speech WAV in real time,
one ``StudentSender`` per student, aiortc peer connections, signaling over a tiny aiohttp
endpoint) and student processes (aiortc peers, ``--per-process`` each). Students count RTP
packets without decoding (SRTP authentication proves them intact; the Opus TOC is checked) and
one student per process decodes everything to check the audio is not silent. One JSON line per N.

Figures are measured in the server process only: CPU (psutil user+system) over a steady window
after every student is connected; latency is from the frame entering the encoders to the packet
for the *last* student in the fan-out leaving ``sendto`` (a probe sink subscribed after all
students), so it is the worst case of the fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import psutil
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import is_rtcp

from groom.packets import SAMPLE_RATE, EncodedPacket
from groom.student_sender import StudentSender, add_student_audio
from groom.tiers import DEFAULT_TIERS, FRAME_SAMPLES, TierSet

ROOT = Path(__file__).resolve().parent.parent
CONFIG = RTCConfiguration(iceServers=[])


def speech_wav() -> Path:
    path = ROOT / "media" / "speech.wav"
    if path.exists():
        return path
    out = Path(tempfile.mkdtemp()) / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "Good morning class. Today we learn about water. "
                    "Rivers carry water from the mountains to the sea."], check=True)
    return out


def load_pcm(path: Path) -> np.ndarray:
    """48 kHz mono s16, resampled with PyAV when the WAV is not already that."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
    return np.concatenate(chunks)


# --- server ----------------------------------------------------------------------------------

class LatencyProbe:
    """Subscribed after every student: its push time is when the whole fan-out is done."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def push(self, packet: EncodedPacket) -> None:
        self.samples.append(time.monotonic() - packet.created)


class BenchServer:
    def __init__(self, tier: str, pcm: np.ndarray, profile: bool) -> None:
        self.tier = tier
        self.profiler = cProfile.Profile() if profile else None
        self.tiers = TierSet()
        self.pcm = pcm
        self.students: dict[RTCPeerConnection, StudentSender] = {}
        self.attached: list[StudentSender] = []
        self.feeding = True
        self.feed_seconds = 0.0  # CPU time of the event-loop thread inside TierSet.feed
        self.late_ticks = 0
        self.probe: LatencyProbe | None = None
        self.window: dict[str, Any] = {}
        self._source: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._source = asyncio.create_task(self._run_source())

    async def stop(self) -> None:
        if self._source is not None:
            self._source.cancel()
            await asyncio.gather(self._source, return_exceptions=True)
        await asyncio.gather(*(pc.close() for pc in self.students), return_exceptions=True)
        self.tiers.close()

    async def _run_source(self) -> None:
        """The mixer's stand-in: one 20 ms frame every 20 ms on a drift-free schedule."""
        loop = asyncio.get_running_loop()
        frames_in_wav = len(self.pcm) // FRAME_SAMPLES
        start = loop.time()
        tick = 0
        while True:
            if self.feeding:
                i = tick % frames_in_wav
                chunk = self.pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = tick * FRAME_SAMPLES
                t0 = time.thread_time()
                self.tiers.feed(frame, time.monotonic())
                self.feed_seconds += time.thread_time() - t0
            tick += 1
            delay = start + tick * 0.02 - loop.time()
            if delay < 0:
                self.late_ticks += 1
            await asyncio.sleep(max(delay, 0))

    async def offer(self, request: web.Request) -> web.Response:
        params = await request.json()
        pc = RTCPeerConnection(CONFIG)
        await pc.setRemoteDescription(RTCSessionDescription(params["sdp"], params["type"]))
        sender = add_student_audio(pc)
        self.students[pc] = sender

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and not sender.ready:
                sender.start()
                self.tiers.subscribe(sender, self.tier)
                self.attached.append(sender)
            elif pc.connectionState in ("failed", "closed"):
                self.tiers.unsubscribe(sender)

        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"attached": len(self.attached)})

    async def window_start(self, request: web.Request) -> web.Response:
        self.probe = LatencyProbe()
        self.tiers.subscribe(self.probe, self.tier)
        if self.profiler is not None:
            self.profiler.enable()
        times = psutil.Process().cpu_times()
        machine = psutil.cpu_times()
        self.window = {
            "machine_busy": machine.user + machine.system + machine.nice,
            "cpu": times.user + times.system, "wall": time.monotonic(), "feed": self.feed_seconds,
            "sent": sum(s.packets_sent for s in self.attached),
            "data": sum(s.data_used() for s in self.attached), "late": self.late_ticks,
        }
        return web.json_response({})

    async def window_stop(self, request: web.Request) -> web.Response:
        times = psutil.Process().cpu_times()
        machine = psutil.cpu_times()
        wall = time.monotonic() - self.window["wall"]
        if self.profiler is not None:
            self.profiler.disable()
            stats = pstats.Stats(self.profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        cpu = times.user + times.system - self.window["cpu"]
        assert self.probe is not None
        self.tiers.unsubscribe(self.probe)
        n = len(self.attached)
        sent = sum(s.packets_sent for s in self.attached) - self.window["sent"]
        data = sum(s.data_used() for s in self.attached) - self.window["data"]
        latency = np.array(self.probe.samples) * 1000
        return web.json_response({
            "n": n, "wall": wall, "cpu_seconds": cpu,
            "cpu_pct": 100 * cpu / wall,
            "packets_sent_window": sent,
            "machine_cpu_pct": 100 * (machine.user + machine.system + machine.nice
                                      - self.window["machine_busy"]) / wall / psutil.cpu_count(),
            "feed_cpu_us_per_packet_sent": 1e6 * (self.feed_seconds - self.window["feed"]) / max(sent, 1),
            "latency_ms_p50": float(np.percentile(latency, 50)),
            "latency_ms_p95": float(np.percentile(latency, 95)),
            "latency_ms_max": float(latency.max()),
            "wire_bytes_per_student_hour": data / n / wall * 3600,
            "late_ticks": self.late_ticks - self.window["late"],
        })

    async def pause(self, request: web.Request) -> web.Response:
        """Stop the source, let the last packets land, return per-student totals."""
        self.feeding = False
        await asyncio.sleep(0.5)
        return web.json_response({
            "pushed": sum(s.packets_sent + s.dropped for s in self.attached),
            "sent": sum(s.packets_sent for s in self.attached),
            "dropped": sum(s.dropped for s in self.attached),
        })


async def run_server(tier: str, wav: Path, profile: bool) -> None:
    server = BenchServer(tier, load_pcm(wav), profile)
    app = web.Application()
    app.router.add_post("/offer", server.offer)
    app.router.add_get("/status", server.status)
    app.router.add_post("/window/start", server.window_start)
    app.router.add_post("/window/stop", server.window_stop)
    app.router.add_post("/pause", server.pause)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told
    finally:
        await server.stop()
        await runner.cleanup()


# --- students --------------------------------------------------------------------------------

class BenchStudent:
    """A student peer that counts RTP packets; ``decode`` ones also decode and measure RMS."""

    def __init__(self, frame_samples: int, decode: bool) -> None:
        self.pc = RTCPeerConnection(CONFIG)
        self.frame_samples = frame_samples
        self.decode = decode
        self.received = 0
        self.bad = 0
        self.square_sum = 0.0
        self.samples = 0
        self._drain: asyncio.Task[None] | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track: Any) -> None:
            if self.decode:
                self._drain = asyncio.ensure_future(self._measure(track))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with session.post(url + "/offer", json={"sdp": self.pc.localDescription.sdp,
                                                      "type": self.pc.localDescription.type}) as r:
            answer = await r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        if self.decode:
            self._tap_receiver()
        else:
            connected = asyncio.Event()
            self.pc.on("connectionstatechange",
                       lambda: connected.set() if self.pc.connectionState == "connected" else None)
            await asyncio.wait_for(connected.wait(), 30)
            self._tap_socket()

    def _tap_receiver(self) -> None:
        """Count RTP as it reaches aiortc's receiver, then let it decode as usual."""
        receiver = self.pc.getTransceivers()[0].receiver
        original = receiver._handle_rtp_packet

        async def count(packet: Any, arrival_time_ms: int) -> None:
            self.received += 1
            if _toc_samples(packet.payload) != self.frame_samples:
                self.bad += 1
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = count

    def _tap_socket(self) -> None:
        """Count RTP right off the socket (SRTP-unprotected, so authenticated) and skip aiortc's
        receive path for it; RTCP and STUN still take the normal path. Keeps the load clients
        cheap enough that the server, not the students, is what is measured on 2 cores."""
        dtls = self.pc.getTransceivers()[0].receiver.transport
        unprotect = dtls._rx_srtp.unprotect
        for protocol in dtls.transport._connection._protocols:
            original = protocol.datagram_received

            def received(data: bytes, addr: Any, original: Any = original) -> None:
                if 127 < data[0] < 192 and not is_rtcp(data):
                    try:
                        payload = unprotect(data)[12:]
                    except Exception:
                        self.bad += 1
                        return
                    self.received += 1
                    if _toc_samples(payload) != self.frame_samples:
                        self.bad += 1
                else:
                    original(data, addr)

            protocol.datagram_received = received

    async def _measure(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float64)
                self.square_sum += float((pcm ** 2).sum())
                self.samples += pcm.size
        except MediaStreamError:
            pass

    async def close(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)
        await self.pc.close()


def _toc_samples(payload: bytes) -> int:
    per_frame = ([480, 960, 1920, 2880] * 3 + [480, 960] * 4 + [120, 240, 480, 960] * 4)[payload[0] >> 3]
    code = payload[0] & 3
    return per_frame * (1 if code == 0 else 2 if code in (1, 2) else payload[1] & 0x3F)


async def run_students(url: str, count: int, tier: str) -> None:
    spec = next(s for s in DEFAULT_TIERS if s.name == tier)
    students = [BenchStudent(spec.frame_samples, decode=(i == 0)) for i in range(count)]
    async with aiohttp.ClientSession() as session:
        for student in students:
            await student.connect(session, url)
    print(json.dumps({"ready": count}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)  # "report"
    rms = [np.sqrt(s.square_sum / s.samples) for s in students if s.samples]
    print(json.dumps({"received": sum(s.received for s in students),
                      "bad": sum(s.bad for s in students),
                      "rms": [float(r) for r in rms]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # "quit"
    await asyncio.gather(*(s.close() for s in students), return_exceptions=True)


# --- driver ----------------------------------------------------------------------------------

def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)


def _read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process {proc.pid} exited")
        if line.startswith("{"):
            return json.loads(line)


def _tell(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(word + "\n")
    proc.stdin.flush()


async def measure(n: int, tier: str, seconds: float, per_process: int, wav: Path,
                  profile: bool) -> dict[str, Any]:
    server = _spawn("--role", "server", "--tier", tier, "--wav", str(wav), *(["--profile"] if profile else []))
    url = f"http://127.0.0.1:{_read_json(server)['port']}"
    clients: list[subprocess.Popen[str]] = []
    try:
        sizes = [per_process] * (n // per_process) + ([n % per_process] if n % per_process else [])
        for size in sizes:
            clients.append(_spawn("--role", "students", "--url", url, "--count", str(size), "--tier", tier))
        loop = asyncio.get_running_loop()
        for client in clients:
            await loop.run_in_executor(None, _read_json, client)
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(url + "/status") as r:
                    if (await r.json())["attached"] >= n:
                        break
                await asyncio.sleep(0.2)
            await asyncio.sleep(3)  # settle: handshakes done, RTCP loops running
            await session.post(url + "/window/start")
            await asyncio.sleep(seconds)
            async with session.post(url + "/window/stop") as r:
                window = await r.json()
            async with session.post(url + "/pause") as r:
                totals = await r.json()
        reports = []
        for client in clients:
            _tell(client, "report")
            reports.append(await loop.run_in_executor(None, _read_json, client))
        spec = next(s for s in DEFAULT_TIERS if s.name == tier)
        received = sum(r["received"] - r["bad"] for r in reports)
        cpu_per_student = window["cpu_pct"] / n
        return {
            "n": n, "tier": tier, "seconds": round(window["wall"], 1),
            "cpu_per_student_pct": round(cpu_per_student, 4),
            "server_cpu_pct": round(window["cpu_pct"], 2),
            "students_per_core": int(100 / cpu_per_student),
            "packets_expected": totals["pushed"], "packets_received": received,
            "packets_dropped_server": totals["dropped"],
            "latency_ms_p50": round(window["latency_ms_p50"], 3),
            "latency_ms_p95": round(window["latency_ms_p95"], 3),
            "latency_ms_max": round(window["latency_ms_max"], 3),
            "feed_cpu_us_per_packet_sent": round(window["feed_cpu_us_per_packet_sent"], 2),
            "machine_cpu_pct": round(window["machine_cpu_pct"], 1),
            "wire_bytes_per_student_hour": int(window["wire_bytes_per_student_hour"]),
            "wire_kbps_per_student": round(window["wire_bytes_per_student_hour"] * 8 / 3600 / 1000, 2),
            "late_ticks": window["late_ticks"],
            "decoded_rms": [round(x) for r in reports for x in r["rms"]],
            "frame_ms": spec.frame_ms,
        }
    finally:
        for proc in [*clients, server]:
            if proc.poll() is None:
                try:
                    _tell(proc, "quit")
                except (BrokenPipeError, OSError):
                    pass
        for proc in [*clients, server]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="50,100,200", help="comma-separated student counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="steady measuring window")
    parser.add_argument("--tier", default="standard", choices=[s.name for s in DEFAULT_TIERS])
    parser.add_argument("--per-process", type=int, default=50, help="student peers per process")
    parser.add_argument("--wav", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile the server's window (stderr)")
    parser.add_argument("--role", choices=["driver", "server", "students"], default="driver")
    parser.add_argument("--url", default="")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(run_server(args.tier, args.wav, args.profile))
    elif args.role == "students":
        asyncio.run(run_students(args.url, args.count, args.tier))
    else:
        wav = args.wav or speech_wav()
        for n in (int(x) for x in args.n.split(",")):
            print(json.dumps(asyncio.run(measure(n, args.tier, args.seconds, args.per_process, wav,
                                                args.profile))),
                  flush=True)


if __name__ == "__main__":
    main()
