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
from typing import Any, AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page

from browser import available, chromium_browser
from servers import GroomServer

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium")]

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"

INBOUND = """async () => {
  const live = window.groom;
  if (!live || !live.pc) return null;
  const report = await live.pc.getStats();
  let found = null;
  report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") found = s; });
  return found && {packets: found.packetsReceived || 0, energy: found.totalAudioEnergy || 0,
                   lost: found.packetsLost || 0, state: live.pc.connectionState};
}"""


@pytest.fixture(scope="module")
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


async def teacher_page(browser: Browser, base: str, info: dict[str, Any]) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(locale="en-US")
    login = info["teacher_login"]
    response = await context.request.post(base + "/api/login", data={
        "username": login["username"], "password": login["password"]})
    assert response.ok, await response.text()
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    lesson_id = info.get("lesson_id", 1)
    await page.goto(f"{base}/lessons/{lesson_id}/teach?lang=en")
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
    await teacher.wait_for_function("document.body.dataset.state === 'live'", timeout=15000)
    await teacher.wait_for_function(
        "window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
        timeout=15000)

    students = []
    for n in range(3):
        context, page = await student_page(browser, info["student_url"], f"Student {n + 1}")
        page.on("pageerror", lambda exc, n=n: errors.append(f"student {n + 1}: {exc}"))
        students.append((context, page))

    for _, page in students:
        await page.wait_for_function("document.body.dataset.state === 'live'", timeout=15000)
        await page.wait_for_function(
            "window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
            timeout=15000)

    # Audio arrives at every student, with energy (the speech, not silence).
    first = [await page.evaluate(INBOUND) for _, page in students]
    deadline = time.monotonic() + 20
    while True:
        await asyncio.sleep(1)
        later = [await page.evaluate(INBOUND) for _, page in students]
        ok = [a is not None and b is not None and b["packets"] > a["packets"] + 10 and b["energy"] > 0
              for a, b in zip(first, later)]
        if all(ok) or time.monotonic() > deadline:
            break
    assert all(ok), f"audio did not reach every student: before {first}, after {later}"

    # The teacher's page lists the three students; the students see their data use.
    await teacher.wait_for_function(
        "document.querySelectorAll('#people tr[data-id]').length === 3", timeout=10000)
    names = await teacher.eval_on_selector_all("#people tr[data-id] td:first-child",
                                               "cells => cells.map(c => c.textContent)")
    assert sorted(names) == ["Student 1", "Student 2", "Student 3"]
    await students[0][1].wait_for_function(
        "document.getElementById('used').textContent !== '0.00 MB'", timeout=10000)
    assert await students[0][1].text_content("#tier") in ("Low (saves data)", "Standard", "High")

    # A raised hand reaches the teacher's queue, with a button to give the floor.
    await students[1][1].click("#hand")
    await teacher.wait_for_selector("#hands li button", timeout=10000)
    assert "Student 2" in (await teacher.text_content("#hands li") or "")

    # The teacher ends the lesson; every student page says so.
    await teacher.click("#end")
    for _, page in students:
        await page.wait_for_function("document.body.dataset.state === 'ended'", timeout=10000)
    await teacher.wait_for_function("document.body.dataset.state === 'ended'", timeout=10000)

    assert not errors, errors
    for context, _ in students:
        await context.close()
    await t_context.close()
