"""The real student page on a 2G link: a Chromium student (Lao, a 360-px phone at 2x) inside a
network namespace behind the ``2g`` profile (48 kbit/s down, 24 up, 600 ms queue, 3 % random loss
each way; tests/netlab.py), in a lesson whose teacher talks and shows the sample deck.

What a pupil in a village expects, each asserted: sound within 5 s of pressing the join button, the
current slide on screen within 5 s, the next slide on screen soon after the teacher turns to it
(the page fetches the next ones while the link is idle), no stall of a second or more once the
sound has started, little of the link's loss heard, the data used shown, no script error. The
figures are printed: they are the real page's counterpart of ``scripts/bench_links.py``'s aiortc
student.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from browser import available, chromium_browser
from netlab import PROFILES, NetLab, missing_tools
from peers import end_lesson, start_teacher
from servers import ApiClient, GroomServer

ROOT = Path(__file__).resolve().parent.parent
DECK = ROOT / "media" / "sample-deck.pdf"
WATCH_S = 20.0  # seconds watched after the join button
TURN_AT_S = 9.0  # the teacher turns to the second slide then

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or bool(missing_tools()),
                       reason="the network lab needs root, iproute2 and nftables (CI runs as root)"),
    pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium"),
]

# The page's own connection: what its audio receiver has taken in and concealed so far.
AUDIO = """async () => {
  const live = window.groom;
  if (!live || !live.pc) return null;
  const report = await live.pc.getStats();
  let a = null;
  report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") a = s; });
  return a && {packets: a.packetsReceived || 0, energy: a.totalAudioEnergy || 0,
               samples: a.totalSamplesReceived || 0, concealed: a.concealedSamples || 0,
               silent: a.silentConcealedSamples || 0};
}"""
# The slide on screen: the image's file name once it has loaded, else null.
SLIDE_SHOWN = """() => {
  const img = document.getElementById("slide");
  if (!img || !img.complete || !img.naturalWidth || document.getElementById("board").hidden)
    return null;
  return img.getAttribute("src").split("/slides/")[1].split("?")[0];
}"""


async def _lesson_with_deck(srv: GroomServer, demo: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """A talking teacher showing the sample deck's first slide; the deck's slides."""
    teacher = await start_teacher(srv, demo)
    admin = ApiClient(srv.base_url)
    try:
        await admin.login(demo["teacher_login"]["username"], demo["teacher_login"]["password"])
        status, deck = await admin.call(
            "POST", f"/api/classes/{demo['class_id']}/decks?filename=deck.pdf",
            data=DECK.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        assert status == 201, deck
    finally:
        await admin.close()
    await teacher.send({"type": "deck", "deck_id": deck["id"]})
    return teacher, deck["slides"]


async def test_a_real_student_page_on_2g(tmp_path: Path) -> None:
    srv = GroomServer(tmp_path / "server", args=("--demo", "--json", "--host", "0.0.0.0",
                                                 "--join-attempts-per-minute", "1000"))
    srv.start()
    try:
        demo = srv.demo_info()
        teacher, slides = await _lesson_with_deck(srv, demo)
        try:
            with NetLab(PROFILES["2g"]) as lab:
                ns = lab.students[0]
                report = await _watch_page(ns, f"http://{ns.host_ip}:{srv.port}", demo, teacher,
                                           slides)
        finally:
            await end_lesson(teacher)
            await teacher.close()
    finally:
        srv.stop()
    print("2g, real student page:", report)

    assert not report["errors"], report
    assert report["lao"], report  # Lao first: the page speaks Lao to a Lao browser
    first = slides[0]["phone"]  # the phone-sized image: the link is thin and not measured yet
    assert report["audio_s"] is not None and report["audio_s"] <= 5.0, report
    assert report["slide_s"].get(first) is not None and report["slide_s"][first] <= 5.0, report
    second = slides[1]["phone"]  # still the low tier's
    turned = report["slide_s"].get(second)
    assert turned is not None and turned - TURN_AT_S <= 5.0, report
    assert report["stalls"] == 0, report  # no second without a packet once the sound started
    assert report["concealed_pct"] <= 8.0, report  # the link loses 3 %
    assert report["used_mb"] > 0, report


async def _watch_page(ns: Any, base: str, demo: dict[str, Any], teacher: Any,
                      slides: list[dict[str, Any]]) -> dict[str, Any]:
    """Join as a pupil from ``ns`` and watch the page for ``WATCH_S`` seconds (polled every
    0.2 s); the teacher turns the slide at ``TURN_AT_S``. Times are seconds from the join button."""
    errors: list[str] = []
    async with chromium_browser(executable=ns.chromium) as browser:
        context = await browser.new_context(locale="lo-LA", viewport={"width": 360, "height": 740},
                                            device_scale_factor=2)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        loading = time.monotonic()
        await page.goto(f"{base}/join/{demo['class_code']}", timeout=60000)
        page_load_s = time.monotonic() - loading
        lao = await page.evaluate("document.documentElement.lang") == "lo"
        await page.fill("#name", "ນ້ອງ ແກ້ວ")
        start = time.monotonic()
        await page.click("#go")
        audio_s: float | None = None
        slide_s: dict[str, float] = {}
        turned = False
        samples: list[tuple[float, dict[str, Any]]] = []
        while (now := time.monotonic() - start) < WATCH_S:
            stats = await page.evaluate(AUDIO)
            if stats is not None:
                samples.append((now, stats))
                if audio_s is None and stats["energy"] > 0:
                    audio_s = now
            shown = await page.evaluate(SLIDE_SHOWN)
            if shown is not None:
                slide_s.setdefault(shown, now)
            if not turned and now >= TURN_AT_S:
                turned = True
                await teacher.send({"type": "slide", "page": 1})
            await asyncio.sleep(0.2)
        used = await page.evaluate("document.getElementById('used').textContent")
        await context.close()
    heard = [(t, s) for t, s in samples if audio_s is not None and t >= audio_s]
    stalls, last_new = 0, None
    for t, s in heard:  # a stall: a second or more without a new packet
        if last_new is None or s["packets"] != last_new[1]["packets"]:
            last_new = (t, s)
        elif t - last_new[0] >= 1.0:
            stalls, last_new = stalls + 1, (t, s)
    concealed = 0.0
    if len(heard) > 1:
        (_, a), (_, b) = heard[0], heard[-1]
        audible = (b["concealed"] - a["concealed"]) - (b["silent"] - a["silent"])
        concealed = 100.0 * audible / max(1, b["samples"] - a["samples"])
    return {"page_load_s": round(page_load_s, 2), "audio_s": audio_s and round(audio_s, 2),
            "slide_s": {name: round(t, 2) for name, t in slide_s.items()},
            "stalls": stalls, "concealed_pct": round(concealed, 2),
            "used_mb": float(used.split()[0]) if used and used.split() else 0.0,
            "lao": lao, "errors": errors}
