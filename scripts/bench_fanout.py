#!/usr/bin/env python
"""Fanning a lesson's tier packets out from its origin node to edge nodes: Redis pub/sub or UDP.

    .venv/bin/python scripts/bench_fanout.py --edges 3 --lessons 10 --tiers 2 --seconds 20

Not a feature yet (a lesson runs on one node; an edge relays signaling only, docs/operations.md),
but the choice of transport for it, measured. An *origin* process sends what a lesson's encoders
make, ``--tiers`` tiers per lesson at one packet per 60 ms (the low and standard tiers' frame;
payloads of 40-70 bytes as the standard tier's speech, each with the fields an edge would need:
lesson, tier, RTP timestamp, duration, the origin's send time), for ``--lessons`` lessons, to
``--edges`` *edge* processes on this machine, each subscribed to every lesson, by

- ``redis``: one ``PUBLISH`` per packet to ``{prefix}:fan:<lesson>:<tier>``, edges ``SUBSCRIBE``d
  (redis-py asyncio; a redis-server started on a free port, or ``--redis-url``);
- ``udp``: one datagram per packet per edge (the edges' addresses would come from the Redis
  registry that already holds each node's private URL).

Each line of JSON is one transport: ``packets_sent`` (per edge), ``delivered_pct``,
``latency_ms_p50`` / ``p95`` / ``max`` (origin send to edge receipt, one clock),
``origin_cpu_us_per_packet`` (the origin's CPU per packet sent, per edge for UDP),
``edge_cpu_us_per_packet`` (an edge's CPU per packet received) and ``redis_cpu_us_per_packet``
(the redis-server's CPU per packet published; null for UDP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import psutil
import redis.asyncio as aioredis

FRAME_S = 0.060
HEADER = struct.Struct("!IBIHd")  # lesson, tier, RTP timestamp, duration, sent (monotonic clock)


def payloads(count: int) -> list[bytes]:
    """Speech-sized Opus payloads (the standard tier: 40-70 bytes per 60 ms)."""
    rng = random.Random(1)
    return [rng.randbytes(rng.randrange(40, 71)) for _ in range(count)]


# ==== edges ===================================================================================

def edge_main(transport: str, url: str, prefix: str, lessons: int, tiers: int, port: int,
              ready: Any, results: Any, seconds: float) -> None:
    asyncio.run(_edge(transport, url, prefix, lessons, tiers, port, ready, results, seconds))


async def _edge(transport: str, url: str, prefix: str, lessons: int, tiers: int, port: int,
                ready: Any, results: Any, seconds: float) -> None:
    delays: list[float] = []

    def got(data: bytes) -> None:
        delays.append(time.monotonic() - HEADER.unpack_from(data)[4])

    me = psutil.Process()
    if transport == "udp":
        loop = asyncio.get_running_loop()

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got(data)

        udp, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", port))
        ready.set()
        start = me.cpu_times()
        await asyncio.sleep(seconds)
        udp.close()
    else:
        client = aioredis.from_url(url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(*(f"{prefix}:fan:{lesson}:{tier}" for lesson in range(lessons)
                                 for tier in range(tiers)))
        ready.set()
        start = me.cpu_times()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=min(left, 1.0))
            if message is not None:
                got(message["data"])
        await pubsub.aclose()
        await client.aclose()
    end = me.cpu_times()
    results.put({"received": len(delays), "cpu_s": (end.user + end.system) - (start.user + start.system),
                 "delays": delays})


# ==== the origin ==============================================================================

async def origin(transport: str, url: str, prefix: str, args: argparse.Namespace,
                 ports: list[int]) -> tuple[int, float]:
    """Send for ``args.seconds``; (packets sent per edge, origin CPU seconds)."""
    data = payloads(997)
    me = psutil.Process()
    client = aioredis.from_url(url) if transport == "redis" else None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    addresses = [("127.0.0.1", port) for port in ports]
    sent = 0
    start_cpu = me.cpu_times()
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < args.seconds:
        tick += 1
        # One pipeline per tick: the packets every encoder made in this 60 ms, one round trip.
        pipe = client.pipeline(transaction=False) if client is not None else None
        for lesson in range(args.lessons):
            for tier in range(args.tiers):
                packet = HEADER.pack(lesson, tier, tick * 2880, 2880, time.monotonic()) \
                    + data[(tick + lesson + tier) % len(data)]
                if pipe is not None:
                    pipe.publish(f"{prefix}:fan:{lesson}:{tier}", packet)
                else:
                    for address in addresses:
                        sock.sendto(packet, address)
                sent += 1
        if pipe is not None:
            await pipe.execute()
        await asyncio.sleep(max(0.0, start + tick * FRAME_S - time.monotonic()))
    end_cpu = me.cpu_times()
    if client is not None:
        await client.aclose()
    sock.close()
    return sent, (end_cpu.user + end_cpu.system) - (start_cpu.user + start_cpu.system)


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(transport: str, url: str, redis_pid: Optional[int], args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{os.getpid()}"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ports = [free_udp_port() for _ in range(args.edges)]
    readies = [ctx.Event() for _ in ports]
    listen = args.seconds + 2.0
    edges = [ctx.Process(target=edge_main, args=(transport, url, prefix, args.lessons, args.tiers,
                                                 port, ready, results, listen))
             for port, ready in zip(ports, readies)]
    for edge in edges:
        edge.start()
    for ready in readies:
        ready.wait(20)
    redis_proc = psutil.Process(redis_pid) if redis_pid and transport == "redis" else None
    redis_start = redis_proc.cpu_times() if redis_proc else None
    sent, origin_cpu = asyncio.run(origin(transport, url, prefix, args, ports))
    redis_end = redis_proc.cpu_times() if redis_proc else None
    reports = [results.get(timeout=listen + 30) for _ in edges]
    for edge in edges:
        edge.join()
    delays = [d for r in reports for d in r["delays"]]
    received = sum(r["received"] for r in reports)
    redis_cpu = ((redis_end.user + redis_end.system) - (redis_start.user + redis_start.system)
                 if redis_start and redis_end else None)
    return {
        "transport": transport, "edges": args.edges, "lessons": args.lessons, "tiers": args.tiers,
        "packets_per_second": round(sent / args.seconds, 1),
        "packets_sent": sent, "delivered_pct": round(100 * received / (sent * args.edges), 3),
        "latency_ms_p50": round(1000 * (percentile(delays, 0.5) or 0), 3),
        "latency_ms_p95": round(1000 * (percentile(delays, 0.95) or 0), 3),
        "latency_ms_max": round(1000 * max(delays, default=0), 3),
        # the origin sends one PUBLISH per packet (redis), or one datagram per packet per edge (udp)
        "origin_cpu_us_per_packet": round(1e6 * origin_cpu / sent, 2),
        "edge_cpu_us_per_packet": round(1e6 * sum(r["cpu_s"] for r in reports) / max(1, received), 2),
        "redis_cpu_us_per_packet": round(1e6 * redis_cpu / sent, 2) if redis_cpu is not None else None,
    }


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        sys.exit("needs redis-server (scripts/test installs it) or --redis-url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tempfile.gettempdir()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--lessons", type=int, default=10)
    parser.add_argument("--tiers", type=int, default=2, help="tiers per lesson being fanned out")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--transports", default="udp,redis")
    parser.add_argument("--redis-url", help="this Redis instead of a redis-server started here")
    args = parser.parse_args()
    proc: Optional[subprocess.Popen[bytes]] = None
    url = args.redis_url
    if url is None:
        proc, url = start_redis()
    try:
        for transport in args.transports.split(","):
            print(json.dumps(measure(transport.strip(), url, proc.pid if proc else None, args)),
                  flush=True)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
