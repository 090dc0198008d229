"""A Moodle-style flow through the BigBlueButton-compatible API, in real headless Chromium.

What an LMS does: ``create`` (recorded), ``join`` the teacher as moderator (the browser follows
the join link to G-Room's teacher page, no account), ``join`` two pupils as attendees (the
student page, one tap), ``end``, then ``getRecordings`` until the recording is published, and
open its playback link. The pupils must hear the teacher's fake microphone (``media/speech.wav``)
and the playback page must play the recorded audio.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from bigbluebutton_api_python import BigBlueButton
from playwright.async_api import Error, Page

from browser import available, chromium_browser, pages_hear_audio
from servers import GroomServer

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not available(), reason="needs /usr/bin/chromium")]

SPEECH = Path(__file__).resolve().parent.parent / "media" / "speech.wav"
SECRET = "lms-secret-0123456789abcdef"


@pytest.fixture
def lms_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroomServer]:
    clients = [{"name": "moodle", "secret": SECRET, "school": "Moodle"}]
    srv = GroomServer(tmp_path_factory.mktemp("bbb-browser"),
                      args=("--bbb-clients", json.dumps(clients), "--deck-sandbox", "off"))
    srv.start()
    yield srv
    srv.stop()


def log_errors_to(errors: list[str], label: str) -> Callable[[Error], None]:
    def log(exc: Error) -> None:
        errors.append(f"{label}: {exc}")
    return log


async def wait_state(page: Page, state: str, timeout: float = 15000) -> None:
    await page.wait_for_function(f"() => document.body.dataset.state === '{state}'", timeout=timeout)


async def connected(page: Page) -> None:
    await page.wait_for_function(
        "() => window.groom && window.groom.pc && window.groom.pc.connectionState === 'connected'",
        timeout=15000)


async def test_moodle_flow_create_join_hear_end_recording(lms_server: GroomServer) -> None:
    lib = BigBlueButton(lms_server.base_url + "/bigbluebutton/api/", SECRET)
    created = await asyncio.to_thread(lib.create_meeting, "course-7-activity-3", params={
        "name": "Science 5B", "attendeePW": "ap", "moderatorPW": "mp", "record": "true"},
        meta={"bbb-origin": "Moodle"})
    assert created.get_field("returncode") == "SUCCESS"
    record_id = created.get_field("internalMeetingID")
    teacher_url = await asyncio.to_thread(lib.get_join_meeting_url, "Ms Vanh",
                                          "course-7-activity-3", "mp", {})
    errors: list[str] = []

    async with chromium_browser(fake_audio=SPEECH) as browser:
        t_context = await browser.new_context(locale="en-US")
        teacher = await t_context.new_page()
        teacher.on("pageerror", lambda exc: errors.append(f"teacher: {exc}"))
        teacher.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await teacher.goto(teacher_url)  # join -> 302 -> the teacher page, no login
        assert "/bigbluebutton/enter/" in teacher.url
        assert await teacher.text_content("h1") == "Science 5B"
        assert await teacher.is_hidden("#upload")  # the deck library needs a login
        await teacher.click("#start")
        await wait_state(teacher, "live")
        await connected(teacher)
        assert (await asyncio.to_thread(lib.is_meeting_running, "course-7-activity-3")
                ).is_meeting_running()

        pupils = []
        for name in ("Noy", "Keo"):
            url = await asyncio.to_thread(lib.get_join_meeting_url, name, "course-7-activity-3",
                                          "ap", {})
            context = await browser.new_context(locale="en-US", viewport={"width": 360, "height": 740})
            page = await context.new_page()
            page.on("pageerror", log_errors_to(errors, name))
            await page.goto(url)
            assert await page.is_hidden("#name") or await page.query_selector("#name") is None
            await page.click("#go")  # one tap: their name came from the LMS
            pupils.append((context, page))
        for _, page in pupils:
            await wait_state(page, "live")
            await connected(page)

        heard, first, later = await pages_hear_audio([page for _, page in pupils])
        assert heard, f"the pupils did not hear the teacher: {first} -> {later}"

        info = await asyncio.to_thread(lib.get_meeting_info, "course-7-activity-3")
        attendees = info.get_field("attendees")["attendee"]
        assert sorted((a["fullName"], a["role"]) for a in attendees) == [
            ("Keo", "VIEWER"), ("Ms Vanh", "MODERATOR"), ("Noy", "VIEWER")]

        ended = await asyncio.to_thread(lib.end_meeting, "course-7-activity-3", "mp")
        assert ended.get_field("returncode") == "SUCCESS"
        for _, page in pupils:
            await wait_state(page, "ended")
        await wait_state(teacher, "ended")

        # The recording: processing, then published with a playback link that plays.
        deadline = time.monotonic() + 90
        recording: dict[str, Any] = {}
        while time.monotonic() < deadline:
            listing = await asyncio.to_thread(lib.get_recordings, "course-7-activity-3")
            found = listing.get_field("recordings")
            recording = dict(found["recording"]) if found else {}
            if recording.get("state") == "published":
                break
            await asyncio.sleep(1)
        assert recording.get("state") == "published", recording
        assert recording["recordID"] == record_id and recording["participants"] == "2"
        formats = recording["playback"]["format"]
        by_type = {f["type"]: f["url"] for f in formats}
        assert set(by_type) == {"presentation", "offline"}
        lesson_id = str(by_type["presentation"]).rsplit("/", 1)[-1]

        viewer = await browser.new_context(locale="en-US")
        page = await viewer.new_page()
        page.on("pageerror", lambda exc: errors.append(f"playback: {exc}"))
        response = await page.goto(str(by_type["presentation"]))
        assert response is not None and response.status == 200
        await page.wait_for_selector("audio.pb-audio")
        await page.evaluate("() => document.querySelector('audio.pb-audio').play()")
        await page.wait_for_function(
            "() => document.querySelector('audio.pb-audio').currentTime > 0.8", timeout=15000)
        pack = await page.request.get(str(by_type["offline"]))
        assert pack.status == 200 and (await pack.body())[:2] == b"PK"

        # Unpublished, the link stops working; published again, it is back.
        await asyncio.to_thread(lib.publish_recordings, record_id, False)
        assert (await page.request.get(str(by_type["presentation"]))).status == 404
        class_list = str(by_type["presentation"]).rsplit("/", 1)[0]  # /r/<class code>
        assert f'/{lesson_id}"' not in await (await page.request.get(class_list)).text()
        await asyncio.to_thread(lib.publish_recordings, record_id, True)
        assert (await page.request.get(str(by_type["presentation"]))).status == 200
        assert f'/{lesson_id}"' in await (await page.request.get(class_list)).text()

        for context, _ in pupils:
            await context.close()
        await viewer.close()
        await t_context.close()
    assert not errors, errors
