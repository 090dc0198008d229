"""An admin, in headless Chromium on a phone-sized screen, sets up a class and schedules a lesson.

Everything goes through the pages as a person would use them: the login form, the add-school,
add-class and schedule forms, then the week view. Screenshots are kept in the test's tmp folder
(and ``GROOM_SCREENSHOTS`` when set) to judge the layout by eye.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import browser
from servers import ROOT_PASSWORD, ROOT_USER, GroomServer

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not browser.available(), reason="no /usr/bin/chromium")]

PHONE = {"width": 390, "height": 844}


async def _shot(page, tmp_path: Path, name: str) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("GROOM_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


async def test_admin_schedules_a_lesson_through_the_pages(server: GroomServer,
                                                          tmp_path: Path) -> None:
    base = server.base_url
    tomorrow = (dt.datetime.now(ZoneInfo("Asia/Vientiane")) + dt.timedelta(days=1)).date()
    school_name = f"ໂຮງຮຽນ ທົດລອງ {os.getpid()}"
    async with browser.chromium(viewport=PHONE, locale="lo-LA") as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))  # a script error, or a CSP block

        # Log in through the login page (Lao by default).
        await page.goto(f"{base}/login")
        assert await page.locator("html").get_attribute("lang") == "lo"
        await page.fill("input[name=username]", ROOT_USER)
        await page.fill("input[name=password]", ROOT_PASSWORD)
        await page.click("form[action='/login'] button[type=submit]")
        await page.wait_for_url(f"{base}/admin")

        # A school, then a class in it.
        await page.fill("form[action='/admin/schools'] input[name=name]", school_name)
        await page.click("form[action='/admin/schools'] button[type=submit]")
        await page.wait_for_url("**/schools/*?done=school_added")
        assert school_name in await page.inner_text("h1")
        await page.click("details:has(form[action$='/classes']) > summary")
        await page.fill("form[action$='/classes'] input[name=name]", "ປ.5 ຂ")
        await page.fill("form[action$='/classes'] input[name=subject]", "ຄະນິດສາດ")
        await page.click("form[action$='/classes'] button[type=submit]")
        await page.wait_for_url("**/classes/*?done=class_added")
        class_url = page.url.split("?")[0]

        # A roster of two, typed in.
        await page.click("details:has(form[action$='/import']) > summary")
        await page.fill("form[action$='/import'] textarea[name=names]", "ສົມສັກ\nນ້ອຍ")
        await page.click("form[action$='/import'] button[type=submit]")
        await page.wait_for_url("**done=imported**")
        assert "ສົມສັກ" in await page.inner_text("table")

        # Schedule a one-off lesson tomorrow at 09:00 (the form is open: no lessons yet).
        form = "form[action$='/lessons']"
        await page.fill(f"{form} input[name=title]", "ບົດທີ 1: ການບວກ")
        await page.fill(f"{form} input[name=start_time]", "09:00")
        await page.fill(f"{form} input[name=duration]", "40")
        await page.check(f"{form} input[name=repeat][value=once]")
        await page.fill(f"{form} input[name=date]", tomorrow.isoformat())
        await _shot(page, tmp_path, "class-page")
        await page.click(f"{form} button[type=submit]")
        await page.wait_for_url("**done=lesson_added**")
        assert await page.locator("p.ok[role=status]").count() == 1
        assert "ບົດທີ 1: ການບວກ" in await page.inner_text("main")

        # A clash (same class, overlapping) is refused on the page, with the input kept.
        await page.click("details#schedule > summary")
        await page.fill(f"{form} input[name=title]", "ຊ້ຳ")
        await page.fill(f"{form} input[name=start_time]", "09:20")
        await page.fill(f"{form} input[name=duration]", "30")
        await page.fill(f"{form} input[name=date]", tomorrow.isoformat())
        await page.click(f"{form} button[type=submit]")
        alert = page.locator("details#schedule p.error[role=alert]")
        assert "ບົດທີ 1: ການບວກ" in await alert.inner_text()
        assert await page.input_value(f"{form} input[name=title]") == "ຊ້ຳ"

        # The week view of the class shows it, on tomorrow's day.
        await page.goto(f"{class_url}/week?week={tomorrow.isoformat()}")
        lesson = page.locator(".week .lesson", has_text="ບົດທີ 1: ການບວກ")
        assert await lesson.count() == 1
        assert "09:00–09:40" in await lesson.inner_text()
        await _shot(page, tmp_path, "class-week")

        # The cards sheet has the class card and one card per student, each with an SVG QR.
        await page.goto(f"{class_url}/cards")
        assert await page.locator(".card svg.qr").count() == 3
        await _shot(page, tmp_path, "cards")
        assert not errors, errors
