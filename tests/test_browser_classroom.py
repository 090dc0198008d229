"""Slides, ink, pointer, polls and chat in real headless Chromium: a teacher page and three phones.

The teacher uploads ``media/sample-deck.pdf`` through the page's own upload control, shows it,
moves to the next slide and draws a stroke with the mouse. A student on data saver must show the
small image (at most 854 px wide, loaded), the stroke (pixels on its ink canvas) and prefetch the
next slides; a student who joins late must get the current slide and its ink at once from
``welcome``. Two students answer a true/false poll and the teacher's page counts [1, 1]; chat text
with markup is shown literally on the other pages. Everything runs against a real server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from browser import available, chromium_browser
from peers import new_lesson
from servers import ApiClient, GroomServer

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium")]

DECK = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"
SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"
HOSTILE = "<b>bold</b><script>window.pwned = 1</script>"

# The slide image as the page shows it, and how much ink its canvas holds.
BOARD = """() => {
  const box = document.getElementById('board'), img = box.querySelector('img');
  const c = box.querySelector('canvas');
  let inked = 0;
  if (c.width && c.height) {
    const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
  }
  const src = img.getAttribute('src') || '';  // a student's slide URL names them: ?t=<token>
  return {hidden: box.hidden, src: src.split('?')[0], query: src.split('?')[1] || '',
          complete: img.complete,
          width: img.naturalWidth, strokes: Number(box.dataset.strokes || 0), inked: inked};
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium_browser(fake_audio=SPEECH) as b:
        yield b


async def teacher_page(browser: Browser, base: str, demo: dict[str, Any], lesson_id: int,
                       errors: list[str]) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    response = await context.request.post(base + "/api/login", data=demo["teacher_login"])
    assert response.ok, await response.text()
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"teacher: {exc}"))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    page_response = await page.goto(f"{base}/lessons/{lesson_id}/teach?lang=en")
    assert page_response is not None and page_response.ok
    return context, page


async def student_page(browser: Browser, demo: dict[str, Any], name: str, errors: list[str],
                       saver: bool = False) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-US", viewport={"width": 360, "height": 740})
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
    if saver:
        await page.add_init_script("localStorage.setItem('groom.saver', '1')")
    await page.goto(demo["student_url"] + "?lang=en")
    await page.fill("#name", name)
    await page.click("#go")
    await page.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)
    return context, page


async def board(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(BOARD)
    return state


async def wait_board(page: Page, src: str | tuple[str, ...], strokes: int,
                     timeout: float = 10.0) -> dict[str, Any]:
    """Until the page shows ``src`` (or one of them) loaded with ``strokes`` strokes drawn."""
    deadline = asyncio.get_running_loop().time() + timeout
    wanted = (src,) if isinstance(src, str) else src
    while True:
        b = await board(page)
        if (not b["hidden"] and b["src"] in wanted and b["complete"] and b["width"] > 0
                and b["strokes"] == strokes and (strokes == 0 or b["inked"] > 0)):
            return b
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {src} with {strokes} strokes, page shows {b}")
        await asyncio.sleep(0.1)


async def test_slides_ink_poll_and_chat(live: tuple[GroomServer, dict[str, Any]],
                                        browser: Browser) -> None:
    srv, demo = live
    base = srv.base_url
    lesson_id = await new_lesson(srv, demo)
    errors: list[str] = []

    t_context, teacher = await teacher_page(browser, base, demo, lesson_id, errors)
    await teacher.click("#start")
    await teacher.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)

    # A student on data saver is there before the deck.
    a_context, a = await student_page(browser, demo, "Saver", errors, saver=True)
    await a.wait_for_function("() => document.getElementById('tier').textContent === 'Low (saves data)'",
                              timeout=10000)

    # The teacher uploads the sample deck through the page and shows it.
    await teacher.set_input_files("#deck-file", str(DECK))
    await teacher.click("#upload-go")
    await teacher.wait_for_function(
        "() => !document.getElementById('upload-go').disabled", timeout=60000)
    assert (await teacher.text_content("#upload-status") or "").startswith("Ready"), \
        await teacher.text_content("#upload-status")
    deck_id = int(await teacher.eval_on_selector("#decks", "s => s.value"))
    client = ApiClient(base)
    try:
        await client.login(demo["teacher_login"]["username"], demo["teacher_login"]["password"])
        status, deck = await client.call("GET", f"/api/decks/{deck_id}")
    finally:
        await client.close()
    assert status == 200 and deck["pages"] == 6, deck
    slides = deck["slides"]
    await teacher.click("#show-deck")
    await teacher.wait_for_function(
        "() => document.querySelectorAll('#thumbs button').length === 6", timeout=10000)
    await wait_board(teacher, "/slides/" + slides[0]["large"], 0)
    await wait_board(a, "/slides/" + slides[0]["phone"], 0)  # data saver: the phone image

    # Next slide (arrow key), then a stroke drawn with the mouse.
    await teacher.keyboard.press("ArrowRight")
    await teacher.wait_for_function(
        "() => document.getElementById('page').textContent === '2 / 6'", timeout=5000)
    await wait_board(teacher, "/slides/" + slides[1]["large"], 0)
    box = await teacher.eval_on_selector("#ink", "c => { const r = c.getBoundingClientRect(); "
                                         "return {x: r.left, y: r.top, w: r.width, h: r.height}; }")
    await teacher.mouse.move(box["x"] + box["w"] * 0.2, box["y"] + box["h"] * 0.3)
    await teacher.mouse.down()
    for i in range(1, 31):
        await teacher.mouse.move(box["x"] + box["w"] * (0.2 + 0.02 * i),
                                 box["y"] + box["h"] * (0.3 + 0.01 * (i % 10)))
    await teacher.mouse.up()
    await wait_board(teacher, "/slides/" + slides[1]["large"], 1)

    # The saver student shows slide 2 as the phone image (loaded, 600 wide) with the stroke, and
    # fetches slides 3 and 4 ahead while idle, at that size only.
    shown = await wait_board(a, "/slides/" + slides[1]["phone"], 1)
    assert shown["width"] == 600, shown
    await a.wait_for_function(
        f"""() => {{ const names = performance.getEntriesByType('resource').map(e => e.name);
             return [{json.dumps(slides[2]['phone'])}, {json.dumps(slides[3]['phone'])}]
                    .every(n => names.some(u => u.split('?')[0].endsWith('/slides/' + n))); }}""",
        timeout=10000)
    fetched = await a.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert not any(u.split("?")[0].endswith(slides[5]["phone"]) for u in fetched), "fetched the whole deck"
    assert not any(u.split("?")[0].endswith(s["small"]) for s in slides for u in fetched), \
        "a second copy at the small size"

    # The pointer reaches the student as a dot.
    await teacher.check("input[name=mode][value=point]")
    await teacher.mouse.move(box["x"] + box["w"] * 0.5, box["y"] + box["h"] * 0.5)
    await teacher.mouse.move(box["x"] + box["w"] * 0.55, box["y"] + box["h"] * 0.5)
    await a.wait_for_selector("#board .dot", state="visible", timeout=5000)
    await teacher.check("input[name=mode][value=draw]")
    await a.wait_for_selector("#board .dot", state="hidden", timeout=5000)

    # A late joiner sees the current slide and its ink at once: first the phone image (its link
    # is not measured yet), asked for with its listen token so the server can pace it; the small
    # one only once a tier above low shows the link has room.
    b_context, b = await student_page(browser, demo, "Late", errors)
    await b.wait_for_function(
        "() => performance.getEntriesByType('resource').some(e => e.name.includes('/slides/'))",
        timeout=5000)
    first = await b.evaluate(
        "() => performance.getEntriesByType('resource').map(e => e.name).find(u => u.includes('/slides/'))")
    token = await b.evaluate("() => window.groom.welcome.listen_token")
    assert first.endswith("/slides/" + slides[1]["phone"] + "?t=" + token), first
    shown = await wait_board(b, ("/slides/" + slides[1]["phone"], "/slides/" + slides[1]["small"]), 1,
                             timeout=5.0)
    assert shown["width"] <= 854 and shown["query"] == "t=" + token, shown

    # A true/false poll answered from two phones: the teacher counts [1, 1].
    await teacher.fill("#poll-q", "Water boils at 100 °C?")
    await teacher.click("#poll-tf")
    await teacher.click("#poll-form button[type=submit]")
    await a.wait_for_selector("#poll-choices button[data-choice='0']", timeout=5000)
    await b.wait_for_selector("#poll-choices button[data-choice='1']", timeout=5000)
    await a.click("#poll-choices button[data-choice='0']")
    await b.click("#poll-choices button[data-choice='1']")
    await teacher.wait_for_function(
        "() => document.getElementById('poll-counts').dataset.counts === '[1,1]'", timeout=5000)
    await a.wait_for_selector("#poll-note", state="visible")
    assert (await a.text_content("#poll-note")) == "Answered: True"
    assert await a.eval_on_selector("#poll-choices button[data-choice='1']", "b => b.disabled")
    await teacher.click("#close-show")
    await b.wait_for_function(
        "() => document.querySelectorAll('#poll-choices meter').length === 2", timeout=5000)
    assert (await b.text_content("#poll-choices")) == "True: 1False: 1"

    # Chat: markup is shown as text on the other pages, never run.
    await a.fill("#chat-text", HOSTILE)
    await a.click("#chat-form button")
    for page in (teacher, b):
        await page.wait_for_function(
            "(t) => { const s = document.querySelector('#chat-list li:last-child span'); "
            "return s && s.textContent === t; }", arg=HOSTILE, timeout=5000)
        assert await page.evaluate("() => document.querySelectorAll('#chat-list span *, #chat-list script')"
                                   ".length === 0 && window.pwned === undefined")
    # The teacher turns chat off: the students' box is disabled.
    await teacher.uncheck("#chat-on")
    await b.wait_for_function("() => document.getElementById('chat-text').disabled", timeout=5000)
    assert await b.is_visible("#chat-off")

    # Clearing ink empties the students' canvas.
    await teacher.click("#clear-ink")
    await wait_board(a, "/slides/" + slides[1]["phone"], 0)
    # A tap on the slide shows the saver student the sharper image (a worksheet to read closely).
    await a.click("#slide")
    await wait_board(a, "/slides/" + slides[1]["large"], 0)

    assert not errors, errors
    for context in (b_context, a_context, t_context):
        await context.close()
