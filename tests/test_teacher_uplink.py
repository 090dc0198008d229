"""A teacher on a thin, lossy, far uplink (a provincial town's 3G): the class hears no gaps.

The teacher is a real Chromium teacher page, inside a network namespace whose uplink loses 5 %
of packets at random (nftables, on the receiving side) behind a 128 kbit/s rate limit, 300 ms
from the server (the lab's delay line: every packet, the page's HTTP and WebSocket too). Our
answer asks the browser for in-band FEC; the server decodes the copy of each lost packet that
the next packet carries (``groom.live.ingress``). Without that, every lost packet is a 20 ms
hole for the whole class. Assertions: the loss happened, most of it was rebuilt from FEC, and an
aiortc student heard the speech throughout; and the page's own round trip to the server (RTCP)
shows the 300 ms, so the media did cross the delay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from browser import chromium_browser
from netlab import Link, NetLab, missing_tools
from peers import SPEECH, join_student
from servers import ApiClient, GroomServer, database_backends
from test_browser_live import teacher_page

pytestmark = pytest.mark.timeout(180)

RTT_MS = 300
UPLINK = Link("teacher-3g", down_kbps=384, up_kbps=128, queue_ms=300, loss_up_pct=5,
              delay_line_rtt_ms=RTT_MS)


LabServer = tuple[GroomServer, dict[str, Any], NetLab]


# The network path is under test, not the database: one backend (PostgreSQL when the run has one).
@pytest.fixture(scope="module", params=database_backends()[-1:])
def lab_server(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    missing = missing_tools()
    assert not missing, f"install {', '.join(missing)} (scripts/test installs them)"
    with NetLab([UPLINK]) as lab:
        srv = GroomServer(tmp_path_factory.mktemp(f"uplink-{request.param}"), request.param,
                          pg_database="groom_uplink",
                          args=("--demo", "--json", "--host", "0.0.0.0",
                                "--join-attempts-per-minute", "1000"))
        srv.start()
        try:
            yield srv, srv.demo_info(), lab
        finally:
            srv.stop()


async def _uplink(admin: ApiClient, lesson_id: int) -> dict[str, Any]:
    status, rooms = await admin.call("GET", "/api/live")
    assert status == 200, rooms
    room = next(r for r in rooms if r["lesson"]["id"] == lesson_id)
    uplink: dict[str, Any] = room["teacher_uplink"]
    return uplink


async def _page_rtt_ms(page: Any) -> float | None:
    """The teacher page's round trip to the server, from the server's receiver reports on its
    audio (``remote-inbound-rtp``), in ms; None before the first one."""
    rtt: float | None = await page.evaluate("""async () => {
        for (const s of (await window.groom.pc.getStats()).values())
            if (s.type === 'remote-inbound-rtp' && s.kind === 'audio' && s.roundTripTime)
                return s.roundTripTime * 1000;
        return null;
    }""")
    return rtt


async def test_a_teacher_on_a_lossy_uplink_is_heard_without_gaps(lab_server: LabServer) -> None:
    srv, demo, lab = lab_server
    ns = lab.students[0]
    base = f"http://{ns.host_ip}:{srv.port}"
    admin = ApiClient(srv.base_url)
    await admin.login(**demo["admin_login"])
    listener = None
    # The microphone needs a secure context; on the lab's plain-HTTP address Chromium is told to
    # treat the server as one (a real deployment serves HTTPS).
    async with chromium_browser(fake_audio=SPEECH, executable=ns.chromium,
                                extra_args=(f"--unsafely-treat-insecure-origin-as-secure={base}",)
                                ) as browser:
        context, page = await teacher_page(browser, base, demo)
        try:
            await page.click("#start")
            await page.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)
            await page.wait_for_function(
                "() => window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
                timeout=20000)
            listener = await join_student(srv, demo, "Listener")
            await asyncio.sleep(3)  # the browser learns the loss rate from our receiver reports
            before = await _uplink(admin, demo["lesson_id"])
            mark = len(listener.frames)
            started = time.monotonic()
            quiet = 0
            while time.monotonic() - started < 20:
                await asyncio.sleep(1)
                if listener.rms_since(len(listener.frames) - 50) < 30:
                    quiet += 1  # a whole second without speech reaching the student
            after = await _uplink(admin, demo["lesson_id"])
            page_rtt_ms = await _page_rtt_ms(page)
        finally:
            await context.close()
    try:
        got = {k: after[k] - before[k] for k in after}
        lost = got["recovered"] + got["concealed"]
        assert got["packets"] > 400, got  # the teacher's speech kept arriving
        assert lost >= 0.02 * got["packets"], f"the link lost too little to test anything: {got}"
        assert got["recovered"] >= 0.6 * lost, f"lost packets were concealed, not rebuilt: {got}"
        assert listener.rms_since(mark) > 100, "the student heard the teacher"
        assert quiet <= 2, f"{quiet} silent seconds out of 20"
        assert page_rtt_ms is not None and page_rtt_ms >= RTT_MS, page_rtt_ms
    finally:
        await listener.close()
        await admin.close()
