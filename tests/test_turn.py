"""UDP blocked: students reach the lesson through a real coturn, and the HTTP stream is the last
resort.

One G-Room server (``--ice-servers`` naming the TURN server, ``--turn-secret``), one coturn
(Debian's ``turnserver``, ``use-auth-secret``, UDP+TCP on one port and TLS on another, the
production peer rules: private ranges denied but the G-Room server's own address) on the host end
of a network-lab veth, and four students' namespaces (tests/netlab.py), each behind a firewall:

- ``turn-udp``: every UDP datagram is dropped but those to and from the TURN port: the student
  must relay through TURN over UDP;
- ``no-udp``: every UDP datagram is dropped: TURN over TCP (or TLS) is the only way;
- ``tls-only``: no UDP, and the TURN server's plain TCP port dropped too: TURN over TLS;
- ``web-only``: the 2g profile (48 kbit/s, 3 % loss, 600 ms queue), no UDP and no TURN ports:
  WebRTC cannot connect, so the student page falls back to the HTTP stream (``/listen/``).

The TURN server listens on the first namespace's host end; the others get a route to it (one
address for every student, as one public address would be). Everything is checked on what
arrived: decoded audio (RMS) for aiortc, ``getStats()`` packets and audio energy for Chromium,
the played stream's samples for the fallback, and the selected candidate pair (a relay one).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from browser import available, chromium_browser
from groom.web.tls import ensure_self_signed
from netlab import PROFILES, Link, Namespace, NetLab, missing_tools
from peers import Peer, end_lesson, start_teacher
from servers import GroomServer, database_backends, free_port

TESTS = Path(__file__).resolve().parent
SPEECH = TESTS.parent / "media" / "speech.wav"
SECRET = "turn-test-secret"
REALM = "groom.test"

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.browser,
    pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the network lab needs root: network namespaces, "
                       "veth pairs, tc and nftables (CI runs the tests as root)"),
]

# The deny rules an operator keeps in production (docs/turn.md): no relaying into private,
# loopback, link-local or reserved space, so that the TURN server cannot be used to reach the
# machines around it. ``allowed-peer-ip`` then opens the G-Room server's own address only.
DENIED_PEERS = ("0.0.0.0-0.255.255.255", "10.0.0.0-10.255.255.255", "100.64.0.0-100.127.255.255",
                "127.0.0.0-127.255.255.255", "169.254.0.0-169.254.255.255",
                "172.16.0.0-172.31.255.255", "192.0.0.0-192.0.0.255", "192.0.2.0-192.0.2.255",
                "192.88.99.0-192.88.99.255", "192.168.0.0-192.168.255.255",
                "198.18.0.0-198.19.255.255", "198.51.100.0-198.51.100.255",
                "203.0.113.0-203.0.113.255", "240.0.0.0-255.255.255.255", "::1",
                "64:ff9b::-64:ff9b::ffff:ffff", "::ffff:0.0.0.0-::ffff:255.255.255.255",
                "100::-100::ffff:ffff:ffff:ffff", "2001::-2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
                "2002::-2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff")


class Coturn:
    """A coturn process for the test: config in ``workdir``, dies with this process."""

    def __init__(self, workdir: Path, address: str) -> None:
        self.workdir, self.address = workdir, address
        self.port, self.tls_port = free_port(), free_port()
        self.log = workdir / "turnserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cert = workdir / "cert.pem"

    def config(self) -> str:
        cert, key = ensure_self_signed(self.workdir, self.address)
        self.cert = Path(cert)
        lines = [f"listening-ip={self.address}", f"listening-port={self.port}",
                 f"tls-listening-port={self.tls_port}", f"realm={REALM}", "use-auth-secret",
                 f"static-auth-secret={SECRET}", "fingerprint", "no-cli", "no-multicast-peers",
                 "no-software-attribute", "no-dtls", f"cert={cert}", f"pkey={key}",
                 f"pidfile={self.workdir / 'turnserver.pid'}", f"userdb={self.workdir / 'turndb'}",
                 "log-file=stdout", "simple-log", "verbose",
                 *(f"denied-peer-ip={r}" for r in DENIED_PEERS),
                 f"allowed-peer-ip={self.address}"]  # the G-Room server: on this machine
        return "\n".join(lines) + "\n"

    def start(self) -> "Coturn":
        conf = self.workdir / "turnserver.conf"
        conf.write_text(self.config())
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"turnserver exited: {self.log.read_text()[-3000:]}"
            try:
                socket.create_connection((self.address, self.tls_port), timeout=1).close()
                socket.create_connection((self.address, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"turnserver did not listen: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies (a timeout, a kill -9), so no coturn
    outlives the tests (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class Setup:
    def __init__(self, srv: GroomServer, demo: dict[str, Any], lab: NetLab, turn: Coturn) -> None:
        self.srv, self.demo, self.lab, self.turn = srv, demo, lab, turn
        self.udp, self.tcp, self.tls, self.web = lab.students

    def url(self, ns: Namespace) -> str:
        return f"http://{ns.host_ip}:{self.srv.port}"


# What is tested is the network path, not the database: one backend (PostgreSQL when the run
# has one) keeps the file near a minute and a quarter.
@pytest.fixture(scope="module", params=database_backends()[-1:])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    missing = missing_tools() + ([] if shutil.which("turnserver")
                                 else ["turnserver (Debian package coturn)"])
    assert not missing, f"install {', '.join(missing)} (scripts/test installs them)"
    with NetLab([Link("turn-udp"), Link("no-udp"), Link("tls-only"), PROFILES["2g"]]) as lab:
        udp, tcp, tls, web = lab.students
        turn_ip = udp.host_ip
        turn = Coturn(tmp_path_factory.mktemp("coturn"), turn_ip)
        for ns in (tcp, tls, web):  # one TURN address for every student
            subprocess.run(["ip", "-n", ns.name, "route", "add", f"{turn_ip}/32", "dev", ns.ns_if],
                           check=True)
        ports = f"{{ {turn.port}, {turn.tls_port} }}"
        lab.block(udp, f"udp dport != {turn.port}", f"udp sport != {turn.port}")
        lab.block(tcp, "meta l4proto udp", "meta l4proto udp")
        lab.block(tls, "meta l4proto udp", "meta l4proto udp")
        lab.block(tls, f"tcp dport {turn.port}", f"tcp sport {turn.port}")
        lab.block(web, "meta l4proto udp", "meta l4proto udp")
        lab.block(web, f"tcp dport {ports}", f"tcp sport {ports}")
        ice = [{"urls": [f"turn:{turn_ip}:{turn.port}?transport=udp",
                         f"turn:{turn_ip}:{turn.port}?transport=tcp",
                         f"turns:{turn_ip}:{turn.tls_port}?transport=tcp"]}]
        srv = GroomServer(tmp_path_factory.mktemp(f"turn-{request.param}"), request.param,
                          pg_database="groom_turn",
                          args=("--demo", "--json", "--host", "0.0.0.0", "--join-attempts-per-minute",
                                "1000", "--ice-servers", json.dumps(ice), "--turn-secret", SECRET))
        turn.start()
        try:
            srv.start()
            try:
                yield Setup(srv, srv.demo_info(), lab, turn)
            finally:
                srv.stop()
        finally:
            turn.stop()


@pytest.fixture(scope="module")
async def teacher(setup: Setup) -> AsyncIterator[Peer]:
    peer = await start_teacher(setup.srv, setup.demo)
    yield peer
    await end_lesson(peer)
    await peer.close()


# An aiortc student inside a namespace: joins with the class code, keeps the page's TURN URL of
# one transport (aiortc uses only the first TURN URL it is given, a browser tries them all),
# listens, and prints what it heard and which candidate pair carried it.
AIORTC_STUDENT = """
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from peers import Peer

async def main(url, code, scheme, transport, seconds):
    p = Peer(url)
    try:
        welcome = await p.connect({"type": "hello", "role": "student", "code": code,
                                   "name": "Aiortc " + transport})
        assert welcome["type"] == "welcome", welcome
        p.welcome["ice_servers"] = [
            dict(s, urls=[u for u in s["urls"] if u.startswith(scheme) and u.endswith(transport)])
            for s in welcome["ice_servers"]]
        start = time.monotonic()
        await p.negotiate(send_audio=False, receive_audio=True)
        connected = time.monotonic() - start
        mark = len(p.frames)
        await asyncio.sleep(seconds)
        pair = p.pc.getTransceivers()[0].receiver.transport.transport._connection._nominated[1]
        relayed = pair.local_candidate.type == "relay"
        inner = pair.protocol.transport._TurnTransport__inner_protocol if relayed else None
        packets = [s.packetsReceived for s in (await p.pc.getStats()).values() if s.type == "inbound-rtp"]
        print(json.dumps({"connected_s": connected, "rms": p.rms_since(mark),
                          "seconds": p.seconds_received(), "packets": sum(packets),
                          "local": pair.local_candidate.type, "remote": pair.remote_candidate.type,
                          "turn": type(inner).__name__ if inner else None}), flush=True)
    finally:
        await p.close()

asyncio.run(main(*sys.argv[2:6], float(sys.argv[6])))
"""


async def aiortc_student(setup: Setup, ns: Namespace, url: str, seconds: float) -> dict[str, Any]:
    """An aiortc student in ``ns`` that uses only the page's TURN URL of the ``turn:`` or
    ``turns:`` scheme and ``?transport=`` of ``url`` (``turn:?transport=udp``). It trusts the
    TURN server's self-signed certificate (Python's SSL_CERT_FILE), as a browser would trust a
    real one."""
    scheme, transport = url.split("?")
    proc = await ns.spawn([sys.executable, "-c", AIORTC_STUDENT, str(TESTS), setup.url(ns),
                           setup.demo["class_code"], scheme, transport, str(seconds)],
                          stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                          env={**os.environ, "SSL_CERT_FILE": str(setup.turn.cert)})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, f"the student printed nothing: {err.decode()[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report


# The student page's own connection (window.groom.pc): audio arriving, and the selected pair.
PAGE_STATS = """async () => {
  const live = window.groom;
  if (!live || !live.pc) return null;
  const report = await live.pc.getStats();
  const byId = {};
  let inbound = null, pair = null;
  report.forEach((s) => {
    byId[s.id] = s;
    if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
  });
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId[s.selectedCandidatePairId];
  });
  const local = pair && byId[pair.localCandidateId];
  return {state: live.pc.connectionState, packets: inbound ? inbound.packetsReceived || 0 : 0,
          energy: inbound ? inbound.totalAudioEnergy || 0 : 0,
          duration: inbound ? inbound.totalSamplesDuration || 0 : 0,
          local: local ? local.candidateType : null, relay: local ? local.relayProtocol || null : null,
          url: local ? local.url || null : null};
}"""


async def page_hears(setup: Setup, ns: Namespace, name: str, seconds: float,
                     args: tuple[str, ...] = ()) -> dict[str, Any]:
    """A real student page in Chromium inside ``ns``: joins, waits for its connection, and
    measures ``seconds`` of what arrives (packets, RMS from the audio energy, the pair)."""
    errors: list[str] = []
    async with chromium_browser(executable=ns.chromium, extra_args=args) as browser:
        context = await browser.new_context(locale="en-US", viewport={"width": 360, "height": 740})
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        start = time.monotonic()
        await page.goto(f"{setup.url(ns)}/join/{setup.demo['class_code']}?lang=en")
        await page.fill("#name", name)
        await page.click("#go")
        await page.wait_for_function("() => window.groom && window.groom.pc && "
                                     "window.groom.pc.connectionState === 'connected'", timeout=25000)
        connected = time.monotonic() - start
        first = await page.evaluate(PAGE_STATS)
        await asyncio.sleep(seconds)
        later = await page.evaluate(PAGE_STATS)
        await context.close()
    assert not errors, errors
    energy, duration = later["energy"] - first["energy"], later["duration"] - first["duration"]
    return {**later, "connected_s": connected, "new_packets": later["packets"] - first["packets"],
            "rms": (energy / duration) ** 0.5 if duration > 0 else 0.0}


async def test_udp_only_to_the_turn_port_relays_over_turn_udp(setup: Setup, teacher: Peer) -> None:
    aiortc, page = await asyncio.gather(aiortc_student(setup, setup.udp, "turn:?transport=udp", 5.0),
                                        page_hears(setup, setup.udp, "Chromium udp", 5.0))
    print("aiortc", aiortc, "\nchromium", page)
    # aiortc: the pair is relayed by the TURN server over UDP, and the speech arrived decoded.
    assert aiortc["local"] == "relay" and aiortc["turn"] == "TurnClientUdpProtocol", aiortc
    assert aiortc["packets"] > 40 and aiortc["rms"] > 300, aiortc  # 60 ms packets, speech
    # Chromium: its selected pair is a relay candidate allocated over UDP; speech, not silence.
    assert page["local"] == "relay" and page["relay"] == "udp", page
    assert page["new_packets"] > 40 and page["rms"] > 0.01, page


async def test_no_udp_at_all_relays_over_turn_tcp(setup: Setup, teacher: Peer) -> None:
    aiortc, page = await asyncio.gather(aiortc_student(setup, setup.tcp, "turn:?transport=tcp", 5.0),
                                        page_hears(setup, setup.tcp, "Chromium tcp", 5.0))
    print("aiortc", aiortc, "\nchromium", page)
    assert aiortc["local"] == "relay" and aiortc["turn"] == "TurnClientTcpProtocol", aiortc
    assert aiortc["packets"] > 40 and aiortc["rms"] > 300, aiortc
    assert page["local"] == "relay" and page["relay"] in ("tcp", "tls"), page
    assert page["new_packets"] > 40 and page["rms"] > 0.01, page
    # coturn checked the time-limited REST credentials the page got with its welcome.
    log = setup.turn.log_text()
    assert re.search(r"user <\d+:s-[\w-]+>: incoming packet ALLOCATE processed, success", log), log[-3000:]
    # and the server allocated nothing of its own (its connections use STUN only: ice.for_server)
    assert aiortc["remote"] == "host" and not re.search(r"user <\d+:room\d+>", log), aiortc


# What the fallback's <audio> plays, for ``seconds``: RMS of its samples and the seconds played.
PLAYED = """(seconds) => new Promise((resolve) => {
  const audio = document.getElementById("audio");
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(audio.captureStream()).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let sum = 0, n = 0;
  const from = audio.currentTime;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    for (const v of buf) { sum += v * v; n += 1; }
  }, 50);
  setTimeout(() => {
    clearInterval(timer);
    resolve({rms: Math.sqrt(sum / Math.max(n, 1)), played: audio.currentTime - from,
             src: audio.src, status: document.getElementById("status").textContent});
    ctx.close();
  }, seconds * 1000);
})"""


async def test_no_udp_and_no_turn_falls_back_to_the_http_stream_on_2g(setup: Setup, teacher: Peer) -> None:
    """The last resort: nothing but HTTP gets through a 48 kbit/s, 3 %-loss link. The page gives
    WebRTC its 10 s, then plays the tier as an Ogg stream over the same link, and once playing
    it keeps up with the lesson.

    Measured here (docs/turn.md): the stream is chosen ~15-16 s after the tap, the first sound
    comes ~6 s later (the 34 KB padded head that makes Chromium start, at 48 kbit/s), then
    playback stalls once, for 9-25 s (3 s played at 33-48 s), and runs steadily from then on."""
    errors: list[str] = []
    async with chromium_browser(executable=setup.web.chromium) as browser:
        context = await browser.new_context(locale="en-US", viewport={"width": 360, "height": 740})
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        start = time.monotonic()
        await page.goto(f"{setup.url(setup.web)}/join/{setup.demo['class_code']}?lang=en")
        await page.fill("#name", "Fallback 2g")
        await page.click("#go")
        await page.wait_for_function("() => document.getElementById('audio').src.indexOf('/listen/') > 0",
                                     timeout=25000)
        chosen = time.monotonic() - start
        first_sound = None
        while True:  # until 3 s of the stream have played
            played = await page.evaluate("() => document.getElementById('audio').currentTime")
            if first_sound is None and played > 0:
                first_sound = time.monotonic() - start
            if played >= 3.0:
                break
            assert time.monotonic() - start < 60, f"played {played} s in 60 s"
            await asyncio.sleep(0.25)
        steady = time.monotonic() - start
        window = await page.evaluate(PLAYED, 8)
        await context.close()
    print(f"fallback chosen {chosen:.1f} s, first sound {first_sound:.1f} s, 3 s played at "
          f"{steady:.1f} s; then {window}")
    assert not errors, errors
    assert window["status"] == "Live (backup stream)", window
    assert chosen < 20, chosen  # the 10 s WebRTC deadline, the 2 s tick, ICE gathering
    assert window["rms"] > 0.01, window  # the teacher's speech, not silence
    assert window["played"] > 7.0, window  # 8 s of wall time: the link carries the stream


async def test_tls_only_relays_over_turns(setup: Setup, teacher: Peer) -> None:
    """Only the TURN server's TLS port gets through (a network that passes web traffic only):
    ``turns:`` carries the lesson."""
    aiortc, page = await asyncio.gather(
        aiortc_student(setup, setup.tls, "turns:?transport=tcp", 5.0),
        page_hears(setup, setup.tls, "Chromium tls", 5.0, ("--ignore-certificate-errors",)))
    print("aiortc", aiortc, "\nchromium", page)
    assert aiortc["local"] == "relay" and aiortc["turn"] == "TurnClientTcpProtocol", aiortc
    assert aiortc["packets"] > 40 and aiortc["rms"] > 300, aiortc
    assert page["local"] == "relay" and page["relay"] == "tls", page
    assert page["new_packets"] > 40 and page["rms"] > 0.01, page
