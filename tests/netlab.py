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
- extra round-trip time: ``UdpDelayRelay`` (user space) holds each UDP datagram ``extra_rtt_ms / 2``
  each way between a student and one server address. Only what is sent through the relay is
  delayed (the bench's student sends its WebRTC media through it); TCP (WebSocket, slides) is not.

Cleanup: namespaces, veths and the host's nftables table (``groom_<pid>``) are removed on exit,
also when the body raises, and at start any left by a process that no longer runs.

Needs root and the Debian packages ``iproute2`` (``ip``, ``tc``) and ``nftables`` (``nft``).
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
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


@dataclass(frozen=True)
class Link:
    """One student's link. ``None`` rates are not shaped; losses are percentages."""

    name: str
    down_kbps: Optional[float] = None
    up_kbps: Optional[float] = None
    queue_ms: int = 300
    loss_down_pct: float = 0.0
    loss_up_pct: float = 0.0
    extra_rtt_ms: int = 0

    @property
    def shaped(self) -> bool:
        return bool(self.down_kbps or self.up_kbps or self.loss_down_pct or self.loss_up_pct)


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
        sh("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if, "netns", ns.name)
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
