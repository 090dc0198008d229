"""A network lab: students behind emulated 2G/3G links, in network namespaces of this machine.

    with NetLab([PROFILES["2g"]]) as lab:
        ns = lab.students[0]
        ns.run(["ping", "-c1", ns.host_ip])          # any command, inside the namespace
        server listens on 0.0.0.0 (or ns.host_ip); the student reaches it at ns.host_ip

Each student gets a namespace ``groom-<pid>-<i>`` and a veth pair (host end ``groom-<pid><i>h``,
namespace end ``groom-<pid><i>n``; pid in 6 hex digits) with a /30 of 10.77.0.0/16: the host end
is ``.1``, the namespace end ``.2``. Only these namespaces and loopback carry test traffic.

What a ``Link`` does, and how (the kernel here has ``tbf`` and ``htb`` but no ``netem``, so delay
and loss are not built in):
- rate and queue: ``tbf`` on the host end (downlink, toward the student) and on the namespace end
  (uplink); ``latency`` is the queue bound (a crowded 2G cell holds 250-600 ms);
- loss: nftables ``numgen random mod 1000 < N drop`` on the RECEIVING side, after the rate: the
  namespace's prerouting for the downlink, the host's prerouting (``iifname`` the host end) for the
  uplink. Dropping in the sender's output hook would make ``sendto()`` fail with EPERM, which real
  loss never does;
- firewalls: ``NetLab.block`` drops what an nftables match names, on the receiving side too;
- extra round-trip time for everything: with ``delay_line_rtt_ms`` the pair is two TUN devices
  with the same names and addresses instead of a veth pair, and a process (``forward``, started
  inside the namespace) copies each packet from one to the other ``delay_line_rtt_ms / 2`` later.
  tbf and nftables work on the TUN devices as on the veth ends, so the order is the same as a
  real link's: queue and rate at the sender, then the propagation delay, then the loss;
- extra round-trip time for the media only: ``UdpDelayRelay`` (user space) holds each UDP
  datagram ``extra_rtt_ms / 2`` each way between a student and one server address. Only what is
  sent through the relay is delayed (the bench's aiortc student sends its WebRTC media through
  it); TCP (WebSocket, slides) is not.

Cleanup: namespaces, veths and the host's nftables table (``groom_<pid>``) are removed on exit,
also when the body raises, and at start any left by a process that no longer runs. The delay
line's TUN devices go with its process: the lab kills it on exit, and it exits by itself when
the lab's process dies (its stdin ends).

Needs root and the Debian packages ``iproute2`` (``ip``, ``tc``) and ``nftables`` (``nft``).
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import ipaddress
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Optional, Sequence

PREFIX = "groom-"  # namespaces and veths
TABLE_PREFIX = "groom_"  # nftables tables (names take no "-")
SUBNETS = ipaddress.IPv4Network("10.77.0.0/16")  # one /30 per student, on this machine only
MAX_STUDENTS = 16  # one hex digit in the veth names (15 characters at most)
LOCK = Path(tempfile.gettempdir()) / "groom-netlab.lock"
CHROMIUM = "/usr/bin/chromium"
TOOLS = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables"}
TUNSETIFF = 0x400454CA  # <linux/if_tun.h>
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000  # IP packets, no 4-byte packet-information header


@dataclass(frozen=True)
class Link:
    """One student's link. ``None`` rates are not shaped; losses are percentages.

    ``extra_rtt_ms`` is what ``UdpDelayRelay`` adds to the media a student sends through it;
    ``delay_line_rtt_ms`` is added to EVERY packet of the namespace (TCP, UDP, any process, Chromium
    included): the link is then a pair of TUN devices with a delay line between them instead of a
    veth pair."""

    name: str
    down_kbps: Optional[float] = None
    up_kbps: Optional[float] = None
    queue_ms: int = 300
    loss_down_pct: float = 0.0
    loss_up_pct: float = 0.0
    extra_rtt_ms: int = 0
    delay_line_rtt_ms: int = 0

    @property
    def shaped(self) -> bool:
        return bool(self.down_kbps or self.up_kbps or self.loss_down_pct or self.loss_up_pct
                    or self.delay_line_rtt_ms)


PROFILES: dict[str, Link] = {link.name: link for link in (
    Link("good"),
    Link("3g", down_kbps=384, up_kbps=128, queue_ms=300, loss_down_pct=2, loss_up_pct=2),
    Link("2g", down_kbps=48, up_kbps=24, queue_ms=600, loss_down_pct=3, loss_up_pct=3),
    Link("tight", down_kbps=24, up_kbps=16, queue_ms=600),
    Link("lossy", down_kbps=384, up_kbps=128, queue_ms=300, loss_down_pct=15, loss_up_pct=15),
    Link("high-rtt", down_kbps=384, up_kbps=128, queue_ms=800, extra_rtt_ms=800),
)}


class LabError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """Messages for each tool missing from PATH, naming the Debian package that has it."""
    return [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def check_tools() -> None:
    missing = missing_tools()
    if missing:
        raise LabError("the network lab needs " + ", ".join(missing)
                       + ": apt-get install iproute2 nftables")
    if os.geteuid() != 0:
        raise LabError("the network lab needs root (network namespaces, tc, nftables)")


def sh(*cmd: str, check: bool = True, input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=30)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> Optional[int]:
    """The pid a lab resource name carries (None: not one of ours)."""
    m = re.fullmatch(r"groom-(\d+)-\d+", name)  # a namespace
    if m:
        return int(m.group(1))
    m = (re.fullmatch(r"groom-([0-9a-f]{6})[0-9a-f][hn]", name)  # a veth end
         or re.fullmatch(r"groom_([0-9a-f]{6})", name))  # the host's nftables table
    return int(m.group(1), 16) if m else None


def namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def links() -> list[str]:
    out = sh("ip", "-o", "link", "show", check=False).stdout
    names = [m.group(1) for m in re.finditer(r"^\d+: ([^:@\s]+)", out, re.M)]
    return [n for n in names if n.startswith(PREFIX)]


def nft_tables() -> list[str]:
    out = sh("nft", "list", "tables", check=False).stdout
    return [line.split()[-1] for line in out.splitlines()
            if line.startswith("table") and line.split()[-1].startswith(TABLE_PREFIX)]


def lab_resources(pid: Optional[int] = None) -> list[str]:
    """Every lab namespace, veth and nftables table on this machine (or only ``pid``'s)."""
    found = [*namespaces(), *links(), *nft_tables()]
    return [name for name in found if pid is None or _owner(name) == pid]


def clean_leftovers() -> list[str]:
    """Remove what labs of processes that no longer run left behind (a crash, a kill -9)."""
    removed = []
    for name in lab_resources():
        owner = _owner(name)
        if owner is None or _alive(owner):
            continue
        _remove(name)
        removed.append(name)
    return removed


def _remove(name: str) -> None:
    if name.startswith(TABLE_PREFIX):
        sh("nft", "delete", "table", "inet", name, check=False)
    elif name in namespaces():
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "delete", name, check=False)
    else:
        sh("ip", "link", "delete", name, check=False)


def _burst_bytes(kbps: float) -> int:
    """tbf's bucket: at least one full frame, or ~50 ms of the rate."""
    return max(1600, int(kbps * 1000 / 8 * 0.05))


def _per_mille(pct: float) -> int:
    return max(0, min(1000, round(pct * 10)))


@dataclass
class Namespace:
    """One student's namespace and veth pair."""

    index: int
    link: Link
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    workdir: Path
    _wrapper: Optional[Path] = field(default=None, repr=False)

    def prefix(self) -> list[str]:
        """Prepend to a command line to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(self, cmd: Sequence[str], *, check: bool = False, timeout: float = 60,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace and wait for it (output captured as text)."""
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True, check=check,
                              timeout=timeout, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``cmd`` inside the namespace (text mode); the caller waits for it."""
        return subprocess.Popen([*self.prefix(), *cmd], text=True, **kwargs)

    async def spawn(self, cmd: Sequence[str], **kwargs: Any) -> asyncio.subprocess.Process:
        """``asyncio.create_subprocess_exec`` inside the namespace."""
        return await asyncio.create_subprocess_exec(*self.prefix(), *cmd, **kwargs)

    @property
    def chromium(self) -> Path:
        """An executable that runs Chromium inside the namespace: Playwright's
        ``executable_path`` (Playwright talks to it over a pipe, so no port crosses the link)."""
        if self._wrapper is None:
            path = self.workdir / f"chromium-{self.name}"
            path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {CHROMIUM} "$@"\n')
            path.chmod(0o755)
            self._wrapper = path
        return self._wrapper


class NetLab:
    """Namespaces for ``links`` (one student each), shaped; a context manager that cleans up."""

    def __init__(self, links: Sequence[Link] | Link) -> None:
        self.links = [links] if isinstance(links, Link) else list(links)
        if not 1 <= len(self.links) <= MAX_STUDENTS:
            raise ValueError(f"1 to {MAX_STUDENTS} students per lab")
        self.pid = os.getpid()
        self.table = f"{TABLE_PREFIX}{self.pid:06x}"
        self.students: list[Namespace] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="groom-netlab-"))
        self._made: list[str] = []
        self._delay_lines: list[subprocess.Popen[str]] = []
        self._open = False

    # ---- the context manager ------------------------------------------------------------------

    def __enter__(self) -> "NetLab":
        check_tools()
        atexit.register(self.close)
        try:
            with LOCK.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another lab may be picking subnets now
                clean_leftovers()
                subnets = self._free_subnets(len(self.links))
                for i, (link, net) in enumerate(zip(self.links, subnets)):
                    self.students.append(self._make(i, link, net))
            self._open = True
            if any(link.loss_up_pct for link in self.links):
                self._host_loss()
            return self
        except BaseException:
            self.close()
            raise

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    def run(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``run`` in the first student's namespace."""
        return self.students[0].run(cmd, **kwargs)

    def close(self) -> None:
        """Remove everything this lab made (idempotent; also at interpreter exit)."""
        self._stop_delay_lines()
        for name in reversed(self._made):
            _remove(name)
        self._made.clear()
        # Anything else carrying our pid (an interrupted setup) goes too.
        for name in lab_resources(self.pid) if self.students or self._open else []:
            _remove(name)
        self._open = False
        shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.close)

    # ---- setup --------------------------------------------------------------------------------

    @staticmethod
    def _free_subnets(count: int) -> list[ipaddress.IPv4Network]:
        used = set()
        for line in sh("ip", "-o", "-4", "addr", "show").stdout.splitlines():
            m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
            if m and ipaddress.IPv4Address(m.group(1)) in SUBNETS:
                used.add(ipaddress.IPv4Network(m.group(1) + "/30", strict=False))
        free = []
        for net in SUBNETS.subnets(new_prefix=30):
            if net not in used:
                free.append(net)
                if len(free) == count:
                    return free
        raise LabError("no free /30 left in " + str(SUBNETS))

    def _make(self, i: int, link: Link, net: ipaddress.IPv4Network) -> Namespace:
        host_ip, ns_ip = (str(a) for a in list(net.hosts())[:2])
        ns = Namespace(index=i, link=link, name=f"{PREFIX}{self.pid}-{i}",
                       host_if=f"{PREFIX}{self.pid:06x}{i:x}h", ns_if=f"{PREFIX}{self.pid:06x}{i:x}n",
                       host_ip=host_ip, ns_ip=ns_ip, workdir=self.workdir)
        sh("ip", "netns", "add", ns.name)
        self._made.append(ns.name)
        if link.delay_line_rtt_ms:
            self._delay_line(ns)
        else:
            sh("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if,
               "netns", ns.name)
        self._made.append(ns.host_if)
        # IPv4 only: an IPv6 link-local address finishes its duplicate check a second or two
        # after the link is up, and Chromium, seeing the network change, fails what it was
        # loading then (ERR_NETWORK_CHANGED: a student page without its scripts).
        host_v6 = Path(f"/proc/sys/net/ipv6/conf/{ns.host_if}/disable_ipv6")
        if host_v6.exists():  # (a kernel without IPv6 has none to disable)
            host_v6.write_text("1")
            sh(*ns.prefix(), "sh", "-c", "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; "
               "do echo 1 > $f; done")
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", ns.host_if)
        sh("ip", "link", "set", ns.host_if, "up")
        inside = ["ip", "-n", ns.name]
        sh(*inside, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_if)
        sh(*inside, "link", "set", ns.ns_if, "up")
        sh(*inside, "link", "set", "lo", "up")
        if link.down_kbps:
            self._tbf([], ns.host_if, link.down_kbps, link.queue_ms)
        if link.up_kbps:
            self._tbf(ns.prefix(), ns.ns_if, link.up_kbps, link.queue_ms)
        if link.loss_down_pct:
            rules = (f"table inet {TABLE_PREFIX}lab {{ chain pre {{ type filter hook prerouting "
                     f"priority -300; policy accept; iifname \"{ns.ns_if}\" numgen random mod 1000 < "
                     f"{_per_mille(link.loss_down_pct)} counter drop\n}}\n}}\n")
            sh(*ns.prefix(), "nft", "-f", "-", input=rules)
        return ns

    def _delay_line(self, ns: Namespace) -> None:
        """The link as two TUN devices (``host_if`` here, ``ns_if`` the namespace's only
        interface) and a process between them that holds every packet half the round trip.
        This process opens the host's device and hands it over; the child, started inside the
        namespace, opens the other there (a TUN device belongs to the namespace it was opened
        in). Neither is persistent: both go when the child exits: ``close`` kills it, and it
        exits by itself when its stdin ends (this process died without closing the lab)."""
        fd = _open_tun(ns.host_if)
        try:
            proc = subprocess.Popen(
                [*ns.prefix(), sys.executable, __file__, "delay-line", str(fd), ns.ns_if,
                 str(ns.link.delay_line_rtt_ms / 2000)],
                pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        finally:
            os.close(fd)
        self._delay_lines.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise LabError(f"the delay line of {ns.name} did not start (exit {proc.wait()})")

    def _stop_delay_lines(self) -> None:
        for proc in self._delay_lines:
            proc.kill()
            proc.communicate()
        self._delay_lines.clear()

    @staticmethod
    def _tbf(prefix: list[str], dev: str, kbps: float, queue_ms: int) -> None:
        sh(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{kbps:g}kbit",
           "burst", str(_burst_bytes(kbps)), "latency", f"{queue_ms}ms")

    def block(self, ns: Namespace, uplink: str, downlink: str) -> None:
        """Drop what a firewall between ``ns`` and the server would: ``uplink`` is an nftables
        match (``udp dport != 3478``, ``meta l4proto udp``) for what the student sends, checked
        on the host as it arrives; ``downlink`` one for what the host sends, checked inside the
        namespace as it arrives. On the receiving side, as loss is: a firewall drops in the
        network, the sender's ``sendto()`` never fails. Removed with the lab."""
        sh(*ns.prefix(), "nft", "-f", "-", input=(
            f"table inet {TABLE_PREFIX}block {{ chain pre {{ type filter hook prerouting "
            f"priority -300; policy accept; iifname \"{ns.ns_if}\" {downlink} counter drop\n}}\n}}\n"))
        sh("nft", "-f", "-", input=(
            f"table inet {self.table} {{ chain block {{ type filter hook prerouting priority -300; "
            f"policy accept; }}\n}}\n"
            f"add rule inet {self.table} block iifname \"{ns.host_if}\" {uplink} counter drop\n"))
        if self.table not in self._made:
            self._made.append(self.table)

    def _host_loss(self) -> None:
        rules = [f"iifname \"{ns.host_if}\" numgen random mod 1000 < {_per_mille(ns.link.loss_up_pct)} "
                 "counter drop\n" for ns in self.students if ns.link.loss_up_pct]
        sh("nft", "-f", "-", input=(
            f"table inet {self.table} {{ chain pre {{ type filter hook prerouting priority -300; "
            f"policy accept;\n{''.join(rules)}}}\n}}\n"))
        self._made.append(self.table)


# ---- extra round-trip time --------------------------------------------------------------------

class UdpDelayRelay(asyncio.DatagramProtocol):
    """A UDP relay on ``listen`` that forwards to ``target`` and back, holding every datagram
    ``delay_ms`` (half the added round trip) each way. One client at a time (the first sender)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_ms: float) -> None:
        self.listen, self.target = listen, target
        self.delay = delay_ms / 1000
        self.client: Optional[tuple[str, int]] = None
        self.front: Optional[asyncio.DatagramTransport] = None
        self.back: Optional[asyncio.DatagramTransport] = None
        self.forwarded = 0

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if relay.client is not None and relay.front is not None:
                    front, client = relay.front, relay.client
                    loop.call_later(relay.delay, relay._send, front, data, client)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=self.listen)
        self.back, _ = await loop.create_datagram_endpoint(Back, local_addr=(self.listen[0], 0))
        address: tuple[str, int] = self.front.get_extra_info("sockname")[:2]
        return address

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.client is None:
            self.client = addr
        if addr == self.client and self.back is not None:
            asyncio.get_running_loop().call_later(self.delay, self._send, self.back, data, self.target)

    def _send(self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str, int]) -> None:
        if not transport.is_closing():
            transport.sendto(data, addr)
            self.forwarded += 1

    def close(self) -> None:
        for transport in (self.front, self.back):
            if transport is not None:
                transport.close()


# ---- the delay line (all traffic) -------------------------------------------------------------

def _open_tun(name: str) -> int:
    """A new TUN device ``name`` in this process's network namespace, as a non-blocking fd.
    It is not persistent: it disappears when the last fd on it closes."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    os.set_blocking(fd, False)
    return fd


def forward(host_fd: int, ns_fd: int, hold_s: float, stop_fd: int) -> None:
    """Copy every packet read from one TUN device to the other ``hold_s`` later, in order (one
    FIFO per direction: the hold is the same for all, so the oldest is always due first), until
    ``stop_fd`` reaches its end. What the kernel writes to a TUN device is what its interface
    sent; what we write to one is what its interface receives."""
    other = {host_fd: ns_fd, ns_fd: host_fd}
    held: dict[int, deque[tuple[float, bytes]]] = {host_fd: deque(), ns_fd: deque()}
    while True:
        due = _release(held, other)
        timeout = None if due is None else max(0.0, due - time.monotonic())
        ready, _, _ = select.select([host_fd, ns_fd, stop_fd], [], [], timeout)
        if stop_fd in ready and not os.read(stop_fd, 4096):
            return
        now = time.monotonic()
        for fd in ready:
            if fd != stop_fd:
                held[fd].extend((now + hold_s, packet) for packet in _drain(fd))


def _drain(fd: int) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(os.read(fd, 65536))
        except BlockingIOError:
            return packets


def _release(held: dict[int, deque[tuple[float, bytes]]], other: dict[int, int]) -> Optional[float]:
    """Write the packets that are due; return when the next one is (None: none held)."""
    now = time.monotonic()
    for fd, queue in held.items():
        while queue and queue[0][0] <= now:
            try:
                os.write(other[fd], queue.popleft()[1])
            except OSError:
                pass  # the other interface is down (being set up or removed): the packet is lost
    return min((queue[0][0] for queue in held.values() if queue), default=None)


def _delay_line_main(argv: list[str]) -> None:
    """``netlab.py delay-line <host TUN fd> <namespace TUN name> <hold s>``, run inside the
    namespace by ``NetLab`` with the host's device inherited as an fd."""
    host_fd, ns_if, hold_s = int(argv[0]), argv[1], float(argv[2])
    os.set_blocking(host_fd, False)
    ns_fd = _open_tun(ns_if)
    print("ready", flush=True)
    forward(host_fd, ns_fd, hold_s, sys.stdin.fileno())


if __name__ == "__main__" and sys.argv[1:2] == ["delay-line"]:
    _delay_line_main(sys.argv[2:])
