"""The real student page as ``bench_links.py``'s student (``--chromium``): headless Chromium inside
the link's network namespace, a 360-px phone at 2 device pixels per CSS pixel, joining with the
class code and pressing the join button as a pupil would.

What it measures comes from the page itself, polled every ``POLL_S``: its connection's
``getStats()`` (audio packets, bytes, concealed samples), the Resource Timing entries of the slide
images it fetched, and the ``welcome`` / ``tier`` messages on its WebSocket (seen by a wrapper
around ``WebSocket`` installed before the page's scripts run, so nothing in the page changes).
Times are seconds from the page's ``hello``, as for the aiortc student. Concealment is what
Chromium played that was not received (audible concealment: ``concealedSamples`` minus
``silentConcealedSamples``, over ``totalSamplesReceived``); an audio gap is a second or more
without a packet once the sound started (in DTX pauses the server still sends a packet every
~400 ms).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from browser import chromium_browser  # tests/browser.py: bench_links puts tests/ on the path
from netlab import Namespace

POLL_S = 0.25
GAP_S = 1.0
SETTLED_S = 10.0  # the settled_* figures count from this long after the first sound
UP_REVERTED_SECONDS = 15.0  # as bench_links: a step up followed by a step down this soon failed
TIERS = ("low", "standard", "high")

# Installed before the page's own scripts: record when hello went out and each tier the server
# named (welcome, tier messages), on the page's clock (seconds).
WATCH_SOCKET = """(() => {
  const Native = window.WebSocket;
  window.__bench = {hello: null, tiers: []};
  function Watched(url, protocols) {
    const ws = protocols === undefined ? new Native(url) : new Native(url, protocols);
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      try { if (window.__bench.hello === null && JSON.parse(data).type === "hello")
              window.__bench.hello = performance.now() / 1000; } catch (e) {}
      return send(data);
    };
    ws.addEventListener("message", (ev) => {
      try { const m = JSON.parse(ev.data);
            if ((m.type === "welcome" || m.type === "tier") && m.tier)
              window.__bench.tiers.push([performance.now() / 1000, m.tier, !!m.protected]); } catch (e) {}
    });
    return ws;
  }
  Watched.prototype = Native.prototype;
  for (const k of ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]) Watched[k] = Native[k];
  window.WebSocket = Watched;
})();"""

STATS = """async () => {
  const live = window.groom;
  const now = performance.now() / 1000;
  if (!live || !live.pc) return {at: now};
  const report = await live.pc.getStats();
  let a = null;
  report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") a = s; });
  if (!a) return {at: now};
  return {at: now, packets: a.packetsReceived || 0, lost: a.packetsLost || 0,
          bytes: (a.bytesReceived || 0) + (a.headerBytesReceived || 0),
          energy: a.totalAudioEnergy || 0, samples: a.totalSamplesReceived || 0,
          concealed: a.concealedSamples || 0, silent: a.silentConcealedSamples || 0,
          delay: a.jitterBufferDelay || 0, emitted: a.jitterBufferEmittedCount || 0};
}"""

SLIDES = """() => performance.getEntriesByType("resource").filter((e) => e.name.includes("/slides/"))
  .map((e) => [e.startTime / 1000, e.responseEnd / 1000, e.transferSize || e.encodedBodySize || 0])"""


async def page_student(ns: Namespace, base_url: str, code: str, name: str,
                       seconds: float) -> dict[str, Any]:
    """Join ``base_url`` as the pupil ``name`` from inside ``ns``; report ``seconds`` after hello."""
    errors: list[str] = []
    async with chromium_browser(executable=ns.chromium) as browser:
        context = await browser.new_context(locale="lo-LA", viewport={"width": 360, "height": 740},
                                            device_scale_factor=2)
        await context.add_init_script(WATCH_SOCKET)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"{req.url} failed: {req.failure}"))
        page.on("response", lambda resp: errors.append(f"{resp.url}: HTTP {resp.status}")
                if resp.status >= 400 else None)
        await page.goto(f"{base_url}/join/{code}", timeout=90_000)
        await page.fill("#name", name)
        await page.click("#go")
        samples: list[dict[str, Any]] = []
        hello: Optional[float] = None
        while True:
            stats = await page.evaluate(STATS)
            samples.append(stats)
            hello = hello or await page.evaluate("window.__bench.hello")
            if hello is not None and stats["at"] - hello >= seconds:
                break
            if hello is None and len(samples) * POLL_S > seconds + 30:
                break  # never said hello: reported as an error below
            await asyncio.sleep(POLL_S)
        slides = await page.evaluate(SLIDES)
        tiers = await page.evaluate("window.__bench.tiers")
        state = await page.evaluate("document.body.innerText.slice(0, 300)")
        await context.close()
    if hello is None:
        return {"error": "the page never said hello", "page_errors": errors[:3], "page_text": state}
    return _report(hello, samples, slides, tiers, errors)


def _report(hello: float, samples: list[dict[str, Any]], slides: list[list[float]],
            tiers: list[list[Any]], errors: list[str]) -> dict[str, Any]:
    audio = [s for s in samples if s.get("packets") is not None]
    first_audio = next((s["at"] for s in audio if s["energy"] > 0), None)
    heard = [s for s in audio if first_audio is not None and s["at"] >= first_audio]
    spans = [(start, end) for start, end, _ in slides]
    gaps, last_new = 0, None
    concealed = {True: 0.0, False: 0.0}  # audible concealed samples: during slides / outside
    received = {True: 0.0, False: 0.0}
    # the same from SETTLED_S after the first sound on: the slides' own cost, not the start's
    # (the first image and its prefetches load while the jitter buffer and the tier settle)
    settled_concealed = {True: 0.0, False: 0.0}
    settled_received = {True: 0.0, False: 0.0}
    for prev, cur in zip(heard, heard[1:]):
        if last_new is None or cur["packets"] != last_new["packets"]:
            last_new = cur
        elif cur["at"] - last_new["at"] >= GAP_S:
            gaps, last_new = gaps + 1, cur
        loading = any(start <= cur["at"] and prev["at"] <= end for start, end in spans)
        audible = (cur["concealed"] - prev["concealed"]) - (cur["silent"] - prev["silent"])
        concealed[loading] += audible
        received[loading] += cur["samples"] - prev["samples"]
        if first_audio is not None and prev["at"] >= first_audio + SETTLED_S:
            settled_concealed[loading] += audible
            settled_received[loading] += cur["samples"] - prev["samples"]
    timeline = [(t - hello, tier, red) for t, tier, red in tiers]
    changes = [t for (t, tier, _), (_, before, _) in zip(timeline[1:], timeline) if tier != before]
    window = heard[-1]["at"] - heard[0]["at"] if len(heard) > 1 else 0.0

    def pct(part: float, whole: float) -> Optional[float]:
        return round(100 * part / whole, 2) if whole else None

    return {
        "student": "chromium",
        "join_to_audio_s": round(first_audio - hello, 2) if first_audio is not None else None,
        "final_tier": timeline[-1][1] if timeline else None,
        "tiers": [tier for _, tier, _ in timeline],
        "tier_timeline": [[round(t, 1), tier, red] for t, tier, red in timeline],
        "seconds_to_fit_tier": round(changes[-1], 1) if changes else 0.0,
        "failed_step_ups": _failed_step_ups(timeline),
        "concealment_pct": pct(concealed[True] + concealed[False], received[True] + received[False]),
        "concealment_during_slides_pct": pct(concealed[True], received[True]),
        "concealment_outside_slides_pct": pct(concealed[False], received[False]),
        "settled_concealment_during_slides_pct": pct(settled_concealed[True], settled_received[True]),
        "settled_concealment_outside_slides_pct": pct(settled_concealed[False],
                                                      settled_received[False]),
        "audio_gaps": gaps,
        "slide_first_s": round(slides[0][1] - hello, 2) if slides else None,
        "slides_fetched": len(slides),
        "slide_bytes": sum(int(size) for _, _, size in slides),
        # RTP bytes (payload + header) plus the 10-byte SRTP tag of each packet
        "kbps": (round((heard[-1]["bytes"] - heard[0]["bytes"] + 10 * (heard[-1]["packets"]
                        - heard[0]["packets"])) * 8 / window / 1000, 2) if window else None),
        "packets_received": heard[-1]["packets"] if heard else 0,
        "packets_lost": heard[-1]["lost"] if heard else 0,
        "jitter_buffer_ms": (round(1000 * heard[-1]["delay"] / heard[-1]["emitted"])
                             if heard and heard[-1]["emitted"] else None),
        "page_errors": errors[:3],
        "error": None,
    }


def _failed_step_ups(timeline: list[tuple[float, str, bool]]) -> int:
    """Step ups that a step down followed within ``UP_REVERTED_SECONDS``."""
    rank = [(t, TIERS.index(tier)) for t, tier, _ in timeline if tier in TIERS]
    failed = 0
    for (t, r), (_, before) in zip(rank[1:], rank):
        if r > before and any(t < t2 <= t + UP_REVERTED_SECONDS and r2 < r for t2, r2 in rank):
            failed += 1
    return failed
