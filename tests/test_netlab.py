"""The network lab (tests/netlab.py): namespaces reach the host, tbf holds the rate, nftables drops
the share it is told to on the receiving side, cleanup is complete, and a real student inside a
namespace on the 3g profile hears the teacher through a real server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from netlab import PROFILES, Link, Namespace, NetLab, lab_resources, missing_tools
from peers import end_lesson, start_teacher
from servers import GroomServer

ROOT = Path(__file__).resolve().parent.parent
BENCH_STUDENTS = ROOT / "scripts" / "bench_students.py"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="the network lab needs root: network namespaces, "
                       "veth pairs, tc and nftables (CI runs the tests as root)"),
]


@pytest.fixture(autouse=True, scope="module")
def tools() -> None:
    missing = missing_tools()
    assert not missing, f"install {', '.join(missing)} (scripts/test installs them)"


# Run inside a namespace with ``python -c``: a TCP or UDP receiver/sender on the lab's addresses.
RECEIVE_TCP = """
import socket, sys, time
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
conn, _ = srv.accept()
conn.settimeout(10)
first = conn.recv(65536)
total, start = 0, time.monotonic()
while time.monotonic() - start < float(sys.argv[3]):
    data = conn.recv(65536)
    if not data:
        break
    total += len(data)
print(total / (time.monotonic() - start), flush=True)
"""

SEND_TCP = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
try:
    while True:
        conn.sendall(b"x" * 1024)
except OSError:
    pass
"""

RECEIVE_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(10)
count = 0
try:
    s.recv(2048)
    count = 1
    s.settimeout(1.5)
    while True:
        s.recv(2048)
        count += 1
except socket.timeout:
    pass
print(count, flush=True)
"""

SEND_UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"p" * 100, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.0005)
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def host_process(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"


def result(proc: subprocess.Popen[str]) -> float:
    out, _ = proc.communicate(timeout=30)
    return float(out.strip().splitlines()[-1])


def test_namespace_reaches_the_host_over_its_veth() -> None:
    with NetLab([PROFILES["good"], PROFILES["2g"]]) as lab:
        a, b = lab.students
        assert a.host_ip != b.host_ip and a.ns_ip != b.ns_ip
        with socket.create_server((a.host_ip, 0)) as server:
            port = server.getsockname()[1]
            probe = a.run([sys.executable, "-c", "import socket, sys\n"
                           "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
                           "print('connected')", a.host_ip, str(port)])
            assert probe.stdout.strip() == "connected", probe.stderr
        assert a.chromium.read_text().startswith("#!/bin/sh")
        assert os.access(a.chromium, os.X_OK)
        assert f"ip netns exec {a.name} " in a.chromium.read_text()


def test_tbf_holds_the_rate_both_ways() -> None:
    with NetLab(Link("rate", down_kbps=48, up_kbps=24, queue_ms=400)) as lab:
        down_kbps, up_kbps = _tcp_rates(lab.students[0], seconds=5.0)
    # TCP payload only: IP and TCP headers take ~4 % of the shaped rate.
    assert 0.75 * 48 < down_kbps < 1.1 * 48, down_kbps
    assert 0.75 * 24 < up_kbps < 1.1 * 24, up_kbps


def _tcp_rates(ns: Namespace, seconds: float) -> tuple[float, float]:
    """TCP payload kbit/s host -> student and student -> host, each sending as fast as it can."""
    # Downlink: the host sends as fast as TCP lets it, the student counts.
    port = free_udp_port()
    receiver = ns.popen([sys.executable, "-c", RECEIVE_TCP, ns.ns_ip, str(port), str(seconds)],
                        stdout=subprocess.PIPE)
    wait_ready(receiver)
    sender = threading.Thread(target=_send_tcp, args=(ns.ns_ip, port), daemon=True)
    sender.start()
    down_kbps = result(receiver) * 8 / 1000
    # Uplink: the student sends, the host counts.
    port = free_udp_port()
    receiver = host_process(RECEIVE_TCP, ns.host_ip, str(port), str(seconds))
    wait_ready(receiver)
    upload = ns.popen([sys.executable, "-c", SEND_TCP, ns.host_ip, str(port)])
    up_kbps = result(receiver) * 8 / 1000
    upload.wait(timeout=30)
    return down_kbps, up_kbps


# Run inside a namespace: the median of 5 TCP connects (SYN out, SYN-ACK back) to a listening
# socket, and of 5 UDP round trips to an echo, in ms.
TCP_CONNECT_MS = """
import socket, statistics, sys, time
times = []
for _ in range(5):
    start = time.monotonic()
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    times.append((time.monotonic() - start) * 1000)
print(statistics.median(times), flush=True)
"""

UDP_ECHO_MS = """
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
times = []
for i in range(5):
    start = time.monotonic()
    s.sendto(b"%d" % i, (sys.argv[1], int(sys.argv[2])))
    while s.recv(2048) != b"%d" % i:
        pass
    times.append((time.monotonic() - start) * 1000)
print(statistics.median(times), flush=True)
"""


def test_the_delay_line_adds_the_round_trip_to_tcp_and_udp_and_keeps_the_rate() -> None:
    rtt_ms = 300
    with NetLab(Link("far", down_kbps=48, up_kbps=24, queue_ms=400, delay_line_rtt_ms=rtt_ms)) as lab:
        ns = lab.students[0]
        with socket.create_server((ns.host_ip, 0)) as listener, _udp_echo(ns.host_ip) as echo_port:
            tcp = ns.run([sys.executable, "-c", TCP_CONNECT_MS, ns.host_ip,
                          str(listener.getsockname()[1])])
            udp = ns.run([sys.executable, "-c", UDP_ECHO_MS, ns.host_ip, str(echo_port)])
        assert tcp.returncode == 0 and udp.returncode == 0, (tcp.stderr, udp.stderr)
        tcp_ms, udp_ms = float(tcp.stdout), float(udp.stdout)
        down_kbps, up_kbps = _tcp_rates(ns, seconds=5.0)
    # An idle link: tbf's bucket lets a small packet through at once, so the round trip is the
    # delay line's hold both ways plus a Python process's scheduling (a few ms).
    print(f"tcp connect {tcp_ms:.1f} ms, udp echo {udp_ms:.1f} ms, {down_kbps:.1f} / {up_kbps:.1f} kbit/s")
    assert rtt_ms <= tcp_ms < rtt_ms + 40, tcp_ms
    assert rtt_ms <= udp_ms < rtt_ms + 40, udp_ms
    assert 0.75 * 48 < down_kbps < 1.1 * 48, down_kbps
    assert 0.75 * 24 < up_kbps < 1.1 * 24, up_kbps
    # The host's TUN device is gone, so is the process that held it (the only fd on it).
    assert lab_resources(os.getpid()) == []


@contextmanager
def _udp_echo(host: str) -> Iterator[int]:
    """A UDP echo on ``host`` in a thread, for as long as the block runs; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def echo() -> None:
        while not done.is_set():
            try:
                data, addr = sock.recvfrom(2048)
            except socket.timeout:
                continue
            sock.sendto(data, addr)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        done.set()
        thread.join()
        sock.close()


def _send_tcp(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=20) as conn:
            while True:
                conn.sendall(b"x" * 1024)
    except OSError:
        pass


def test_nftables_drops_the_set_share_on_the_receiving_side() -> None:
    count = 1000
    with NetLab(Link("loss", loss_down_pct=20, loss_up_pct=10)) as lab:
        ns = lab.students[0]
        port = free_udp_port()
        receiver = ns.popen([sys.executable, "-c", RECEIVE_UDP, ns.ns_ip, str(port)],
                            stdout=subprocess.PIPE)
        wait_ready(receiver)
        # The sender never sees the loss (no EPERM): it is dropped on arrival, like real loss.
        sender = host_process(SEND_UDP, ns.ns_ip, str(port), str(count))
        assert sender.wait(timeout=30) == 0
        down_lost = 1 - result(receiver) / count

        receiver = host_process(RECEIVE_UDP, ns.host_ip, str(port))
        wait_ready(receiver)
        upload = ns.run([sys.executable, "-c", SEND_UDP, ns.host_ip, str(port), str(count)])
        assert upload.returncode == 0, upload.stderr
        up_lost = 1 - result(receiver) / count
    # Binomial: sd 1.3 % at 20 %, 0.95 % at 10 %; 4 sd either side.
    assert 0.15 < down_lost < 0.25, down_lost
    assert 0.06 < up_lost < 0.14, up_lost


def test_cleanup_leaves_nothing_even_when_the_body_raises() -> None:
    # A leftover of a crashed earlier run (a pid that does not run) is removed at start.
    dead = next(pid for pid in range(4_194_303, 4_000_000, -1) if not _alive(pid))
    leftover = f"groom-{dead}-0"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with NetLab([PROFILES["3g"], PROFILES["lossy"]]) as lab:
                made = lab_resources(os.getpid())
                assert len(made) == 2 + 2 + 1, made  # namespaces, host veth ends, host nft table
                assert leftover not in lab_resources()
                raise RuntimeError("boom")
        assert lab_resources(os.getpid()) == []
        assert not lab.workdir.exists()
    finally:
        subprocess.run(["ip", "netns", "delete", leftover], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_student_in_a_3g_namespace_hears_the_teacher(tmp_path: Path) -> None:
    srv = GroomServer(tmp_path / "server", args=("--demo", "--json", "--host", "0.0.0.0",
                                                  "--join-attempts-per-minute", "1000"))
    srv.start()
    try:
        demo = srv.demo_info()
        teacher = await start_teacher(srv, demo)
        try:
            with NetLab(PROFILES["3g"]) as lab:
                ns = lab.students[0]
                report = await _student_in(ns.prefix(), f"http://{ns.host_ip}:{srv.port}",
                                           demo["class_code"], seconds=6.0)
        finally:
            await end_lesson(teacher)
            await teacher.close()
    finally:
        srv.stop()
    # 60 ms packets while the teacher talks (DTX sends nothing in pauses): > 40 in 6 s.
    assert report["received"] > 40, report
    assert report["decoded_rms"] and report["decoded_rms"][0] > 100, report
    # 2 % random loss on the downlink: some packets may be lost, most are not.
    assert report["lost"] < 0.15 * (report["received"] + report["lost"]), report


async def _student_in(prefix: list[str], url: str, code: str, seconds: float) -> dict[str, Any]:
    """One aiortc student of scripts/bench_students.py, run inside the namespace."""
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, str(BENCH_STUDENTS), "--url", url, "--code", code, "--count", "1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None

    async def line() -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, "the student process exited"
            if raw.startswith(b"{"):
                data: dict[str, Any] = json.loads(raw)
                return data

    try:
        ready = await line()
        assert ready["ready"] == 1, ready
        proc.stdin.write(b"mark\n")
        await line()
        await asyncio.sleep(seconds)
        proc.stdin.write(b"report\n")
        return await line()
    finally:
        if proc.returncode is None:
            proc.stdin.write(b"quit\n")
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
