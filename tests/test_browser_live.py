"""The live lesson in real headless Chromium: a teacher page and three student pages.

The teacher's fake microphone plays ``media/speech.wav``; the teacher presses Start; three
students (separate browser contexts, as three phones) join with the class code. Each student's
``getStats()`` must show audio arriving (packets growing, energy above zero) and the teacher's
page must list the three students. Everything is real: the server runs as a subprocess
(``groom serve --demo``), media goes over real WebRTC on loopback.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from playwright.async_api import Browser, BrowserContext, Error, Page

from browser import INBOUND, available, chromium_browser, pages_hear_audio
from servers import GroomServer

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium")]

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"



@pytest.fixture
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server of its own with the demo school: its JSON line names the class and lesson."""
    srv = GroomServer(tmp_path_factory.mktemp("groom-browser-live"),
                      args=("--join-attempts-per-minute", "1000"))
    srv.start("--demo", "--json")
    deadline = time.monotonic() + 20
    info = None
    while info is None and time.monotonic() < deadline:
        info = next((line for line in srv.log_lines() if "student_url" in line), None)
        time.sleep(0.1)
    assert info is not None, "the demo server printed no links"
    yield srv, info
    srv.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium_browser(fake_audio=SPEECH) as b:
        yield b


def log_errors_to(errors: list[str], label: str) -> Callable[[Error], None]:
    def log(exc: Error) -> None:
        errors.append(f"{label}: {exc}")
    return log


async def teacher_page(browser: Browser, base: str, info: dict[str, Any]) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-US")
    login = info["teacher_login"]
    response = await context.request.post(base + "/api/login", data={
        "username": login["username"], "password": login["password"]})
    assert response.ok, await response.text()
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    lesson_id = info.get("lesson_id", 1)
    page_response = await page.goto(f"{base}/lessons/{lesson_id}/teach?lang=en")
    assert page_response is not None and page_response.ok and await page.query_selector("#start"), \
        f"{page.url}: {(await page.content())[:2000]}"
    return context, page


async def student_page(browser: Browser, url: str, name: str) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-US", viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await page.goto(url + "?lang=en")
    await page.fill("#name", name)
    await page.click("#go")
    return context, page


async def test_teacher_and_three_students_hear_the_lesson(demo: Any, browser: Browser) -> None:
    srv, info = demo
    base = srv.base_url
    errors: list[str] = []

    t_context, teacher = await teacher_page(browser, base, info)
    teacher.on("pageerror", lambda exc: errors.append(f"teacher: {exc}"))
    await teacher.click("#start")
    await teacher.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)
    await teacher.wait_for_function(
        "() => window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
        timeout=15000)

    students = []
    for n in range(3):
        context, page = await student_page(browser, info["student_url"], f"Student {n + 1}")
        page.on("pageerror", log_errors_to(errors, f"student {n + 1}"))
        students.append((context, page))

    for _, page in students:
        await page.wait_for_function("() => document.body.dataset.state === 'live'", timeout=15000)
        await page.wait_for_function(
            "() => window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
            timeout=15000)

    # Audio arrives at every student, with energy (the speech, not silence).
    heard, first, later = await pages_hear_audio([page for _, page in students])
    assert heard, f"audio did not reach every student: before {first}, after {later}"

    # The teacher's page lists the three students; the students see their data use.
    await teacher.wait_for_function(
        "() => document.querySelectorAll('#people tr[data-id]').length === 3", timeout=10000)
    names = await teacher.eval_on_selector_all("#people tr[data-id] td:first-child",
                                               "cells => cells.map(c => c.textContent)")
    assert sorted(names) == ["Student 1", "Student 2", "Student 3"]
    await students[0][1].wait_for_function(
        "() => document.getElementById('used').textContent !== '0.00 MB'", timeout=10000)
    assert await students[0][1].text_content("#tier") in ("Low (saves data)", "Standard", "High")

    # A raised hand reaches the teacher's queue, with a button to give the floor.
    await students[1][1].click("#hand")
    await teacher.wait_for_selector("#hands li button", timeout=10000)
    assert "Student 2" in (await teacher.text_content("#hands li") or "")

    # The teacher ends the lesson; every student page says so.
    await teacher.click("#end")
    for _, page in students:
        await page.wait_for_function("() => document.body.dataset.state === 'ended'", timeout=10000)
    await teacher.wait_for_function("() => document.body.dataset.state === 'ended'", timeout=10000)

    assert not errors, errors
    for context, _ in students:
        await context.close()
    await t_context.close()


async def wait_state(page: Page, state: str, timeout: float = 15000) -> None:
    await page.wait_for_function(f"() => document.body.dataset.state === '{state}'", timeout=timeout)


async def teacher_inbound(teacher: Page) -> dict[str, Any]:
    stats = await teacher.evaluate(INBOUND)
    return stats or {"packets": 0, "energy": 0}


async def test_waiting_fallback_floor_data_saver_and_reconnects(demo: Any, browser: Browser) -> None:
    srv, info = demo
    errors: list[str] = []

    # A student who comes early waits for the teacher.
    a_context, a = await student_page(browser, info["student_url"], "Early Student")
    a.on("pageerror", lambda exc: errors.append(f"A: {exc}"))
    await wait_state(a, "waiting")
    await a.evaluate("() => { window.seen = []; window.groom.on('state', (s) => window.seen.push(s)); "
                     "window.rooms = []; window.groom.on('room', (r) => window.rooms.push(r)); }")

    t_context, teacher = await teacher_page(browser, srv.base_url, info)
    teacher.on("pageerror", lambda exc: errors.append(f"teacher: {exc}"))
    await teacher.click("#start")
    await wait_state(teacher, "live")
    await wait_state(a, "live")
    await a.wait_for_function("() => window.groom.pc && window.groom.pc.connectionState === 'connected'",
                              timeout=15000)

    # A phone without WebRTC plays the HTTP stream instead.
    b_context = await browser.new_context(locale="en-US")
    await b_context.add_init_script("delete window.RTCPeerConnection;")
    b = await b_context.new_page()
    b.on("pageerror", lambda exc: errors.append(f"B: {exc}"))
    await b.goto(info["student_url"] + "?lang=en")
    await b.fill("#name", "Old Phone")
    await b.click("#go")
    await wait_state(b, "live")
    # The backup stream's first burst is padded so that Chromium starts playing at once
    # (it buffers ~32 KB of Ogg first): sound within seconds, not after ~17 s.
    await b.wait_for_function(
        "() => { const a = document.getElementById('audio'); "
        "return a.src.indexOf('/listen/') > 0 && a.currentTime > 1; }", timeout=12000)
    assert await b.text_content("#status") == "Live (backup stream)"

    # Data saver pins the lowest tier.
    await a.check("#saver")
    await a.wait_for_function("() => document.getElementById('tier').textContent === 'Low (saves data)'",
                              timeout=10000)

    # Hand up, the teacher gives the floor: A publishes its microphone and the teacher hears it.
    await a.click("#hand")
    assert await a.get_attribute("#hand", "aria-pressed") == "true"
    await teacher.click("#hands li button")
    await a.wait_for_selector("#floor", state="visible", timeout=10000)
    await a.wait_for_function(
        "() => window.groom.tr && window.groom.tr.sender.track && "
        "window.groom.tr.currentDirection === 'sendrecv'", timeout=10000)
    assert await a.get_attribute("#hand", "aria-pressed") == "false"
    await teacher.wait_for_selector("#floor", state="visible", timeout=10000)
    before = await teacher_inbound(teacher)
    deadline = time.monotonic() + 15
    while True:
        await asyncio.sleep(1)
        after = await teacher_inbound(teacher)
        heard = after["packets"] > before["packets"] + 10 and after["energy"] > before["energy"]
        if heard or time.monotonic() > deadline:
            break
    assert heard, f"the teacher did not hear the student with the floor: {before} -> {after}"

    # The teacher takes the floor back: A's microphone stops.
    await teacher.click("#takeback")
    await a.wait_for_selector("#floor", state="hidden", timeout=10000)
    await a.wait_for_function("() => window.groom.mic === null && !window.groom.tr.sender.track",
                              timeout=10000)

    # A's socket drops: it comes back by itself as the same participant, media untouched.
    pid = await a.evaluate("() => { window.groom.pc.mark = 1; return window.groom.welcome.participant_id; }")
    await a.evaluate("() => window.groom.ws.close()")
    await a.wait_for_function("() => window.seen.indexOf('reconnecting') >= 0", timeout=5000)
    await wait_state(a, "live")
    assert await a.evaluate("() => window.groom.welcome.participant_id") == pid
    assert await a.evaluate("() => window.groom.pc.mark === 1 && window.groom.pc.connectionState")\
        == "connected"

    # The teacher's socket drops: students see "teacher reconnecting", then live again.
    await teacher.evaluate("() => window.groom.ws.close()")
    try:
        await a.wait_for_function("() => window.seen.indexOf('teacher-away') >= 0", timeout=10000)
    except Exception:
        raise AssertionError(await a.evaluate("() => JSON.stringify([window.seen, window.rooms])"))
    await wait_state(teacher, "live")
    await wait_state(a, "live")

    # The teacher removes A: A's page says so and stays quiet.
    await teacher.click(f"#people tr[data-id='{pid}'] button")
    await wait_state(a, "kicked", timeout=10000)
    assert await a.text_content("#status") == "You were removed from the lesson."
    await teacher.wait_for_function(
        f"() => !document.querySelector(\"#people tr[data-id='{pid}']\")", timeout=10000)

    assert not errors, errors
    for context in (a_context, b_context, t_context):
        await context.close()


async def test_the_teacher_page_fits_a_phone(demo: Any, browser: Browser) -> None:
    """A phone is many teachers' only device: at 360 px nothing may need sideways scrolling,
    in English and in Lao (the longer strings), before and during the lesson."""
    srv, info = demo
    widths = {}
    for lang in ("en", "lo"):
        context = await browser.new_context(viewport={"width": 360, "height": 740}, is_mobile=True,
                                            has_touch=True)
        response = await context.request.post(srv.base_url + "/api/login", data=info["teacher_login"])
        assert response.ok
        page = await context.new_page()
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))  # "End the lesson?"
        await page.goto(f"{srv.base_url}/lessons/{info['lesson_id']}/teach?lang={lang}")
        widths[lang] = await page.evaluate("document.documentElement.scrollWidth")
        if lang == "lo":  # the live page shows more: levels, poll, chat, the students' table
            await page.click("#start")
            await wait_state(page, "live")
            widths["lo live"] = await page.evaluate("document.documentElement.scrollWidth")
            await page.click("#end")
            await wait_state(page, "ended")
        await context.close()
    assert max(widths.values()) <= 360, widths
