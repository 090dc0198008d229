"""The online playback page in headless Chromium: a lesson recorded with two slides (a real deck
uploaded, shown and changed by an aiortc teacher), then played as a student by class code."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import browser
from peers import start_teacher
from servers import ApiClient, GroomServer
from test_recordings import logged_in, wait_recording

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150),
              pytest.mark.skipif(not browser.available(), reason="no /usr/bin/chromium")]

DECK = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"
INKED_PIXELS = """() => {
  const c = document.querySelector('canvas.pb-ink');
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
  return n;
}"""


async def upload_deck(client: ApiClient, class_id: int) -> dict[str, Any]:
    status, deck = await client.call(
        "POST", f"/api/classes/{class_id}/decks?title=Playback&filename=sample-deck.pdf",
        data=DECK.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    assert status == 201, deck
    assert len(deck["slides"]) >= 2
    return deck  # type: ignore[no-any-return]


async def test_playback_page_plays_and_follows_slides(live: tuple[GroomServer, dict[str, Any]]
                                                      ) -> None:
    srv, demo = live
    teach = await logged_in(srv, demo["teacher_login"])
    try:
        deck = await upload_deck(teach, demo["class_id"])
    finally:
        await teach.close()
    teacher = await start_teacher(srv, demo)
    lesson_id, code = demo["lesson_id"], demo["class_code"]
    try:
        await teacher.send({"type": "deck", "deck_id": deck["id"]})  # shows slide 1 at once
        await asyncio.sleep(3)
        await teacher.send({"type": "slide", "page": 1})
        await asyncio.sleep(1)
        await teacher.send({"type": "ink", "points": [100, 100, 900, 900, 100, 900], "color": 0,
                            "width": 3})
        await asyncio.sleep(2)
    finally:
        await teacher.send({"type": "end"})
        await teacher.expect("ended")
        await teacher.close()

    admin = await logged_in(srv, demo["admin_login"])
    try:
        rec = await wait_recording(admin, lesson_id)
        assert rec["state"] == "ready" and rec["slide_count"] == 2, rec
    finally:
        await admin.close()
    first, second = deck["slides"][0], deck["slides"][1]

    async with browser.chromium(viewport={"width": 390, "height": 844}) as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = await page.goto(f"{srv.base_url}/r/{code}/{lesson_id}")
        assert response is not None and response.status == 200
        await page.wait_for_selector("audio.pb-audio")
        manifest = await (await page.request.get(
            f"{srv.base_url}/r/{code}/{lesson_id}/manifest.json")).json()
        assert [s["small"] for s in manifest["slides"]] == [f"/slides/{first['small']}",
                                                            f"/slides/{second['small']}"]
        assert manifest["slides"][1]["large"] == f"/slides/{second['large']}"
        change_s = manifest["slides"][1]["at_ms"] / 1000
        assert 2 < change_s < manifest["duration_s"] - 1, manifest
        [stroke] = manifest["ink"]
        assert stroke["page"] == 1 and stroke["points"] == [100, 100, 900, 900, 100, 900], stroke
        ink_s = stroke["at_ms"] / 1000
        assert change_s < ink_s < manifest["duration_s"] - 0.5, manifest
        assert manifest["polls"] == []

        # It plays: currentTime advances, and the first slide is on screen.
        await page.evaluate("() => document.querySelector('audio.pb-audio').play()")
        await page.wait_for_function(
            "() => document.querySelector('audio.pb-audio').currentTime > 0.8", timeout=15000)
        src = await page.get_attribute("img.pb-slide", "src")
        assert src is not None and src.endswith(first["small"]), src
        assert await page.evaluate(
            "() => document.querySelector('img.pb-slide').complete && "
            "document.querySelector('img.pb-slide').naturalWidth > 0")

        # Seeking past the change shows the second slide; seeking back, the first again.
        await page.evaluate(
            f"() => {{ document.querySelector('audio.pb-audio').currentTime = {change_s + 0.5}; }}")
        await page.wait_for_function(
            f"() => document.querySelector('img.pb-slide').src.endsWith('{second['small']}')",
            timeout=10000)
        await page.evaluate("() => { document.querySelector('audio.pb-audio').currentTime = 0.5; }")
        await page.wait_for_function(
            f"() => document.querySelector('img.pb-slide').src.endsWith('{first['small']}')",
            timeout=10000)
        # No ink before the stroke was drawn; seeking past it draws it over the second slide.
        assert await page.get_attribute("canvas.pb-ink", "data-strokes") == "0"
        await page.evaluate(
            f"() => {{ document.querySelector('audio.pb-audio').currentTime = {ink_s + 0.5}; }}")
        await page.wait_for_function(
            "() => document.querySelector('canvas.pb-ink').dataset.strokes === '1'"
            " && document.querySelector('img.pb-slide').complete", timeout=10000)
        assert await page.evaluate(INKED_PIXELS) > 100
        await page.evaluate(
            f"() => {{ document.querySelector('audio.pb-audio').currentTime = {change_s + 0.1}; }}")
        await page.wait_for_function(
            "() => document.querySelector('canvas.pb-ink').dataset.strokes === '0'", timeout=10000)
        assert await page.evaluate(INKED_PIXELS) == 0
        # The slide buttons seek too.
        await page.click(".pb-list button:nth-child(2)")
        await page.wait_for_function(
            f"() => Math.abs(document.querySelector('audio.pb-audio').currentTime - {change_s}) < 0.3"
            f" && document.querySelector('img.pb-slide').src.endsWith('{second['small']}')",
            timeout=10000)
        assert not errors, errors
