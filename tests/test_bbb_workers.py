"""The BigBlueButton-compatible API with ``groom serve --workers 2``: right whichever worker answers.

A meeting's live room runs in one worker, but an LMS's call lands on either (``SO_REUSEPORT``
spreads new connections by hash). Each call here is a new connection, repeated until both
workers have answered (``X-Groom-Worker``), and every answer must be right: not running before
the moderator starts, running with the moderator and a real aiortc attendee (counts and names)
while live, and ended for everyone after ``end`` sent to the worker that does *not* run the
room; ``insertDocument`` sent there too reaches the attendee's screen.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections import Counter
from typing import Any, Iterator, Optional
from urllib.parse import urlencode

import aiohttp
import jxmlease
import pytest
from yarl import URL

from peers import Peer
from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer, database_backends
from test_bbb_api import pdf_bytes
from test_workers import WORKER, session_on, wait_for_workers

pytestmark = pytest.mark.timeout(150)

SECRET = "moodle-secret-0123456789"
CLIENTS = [{"name": "moodle", "secret": SECRET, "school": "Moodle meetings"}]
ROUNDS = 24  # calls per check: with two workers, both answer (each misses 24 draws: 1 in 2**24)


@pytest.fixture(scope="module", params=database_backends())
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GroomServer]:
    srv = GroomServer(tmp_path_factory.mktemp(f"bbb-workers-{request.param}"), request.param,
                      pg_database="groom_bbb_workers",
                      args=("--workers", "2", "--bbb-clients", json.dumps(CLIENTS),
                            "--deck-sandbox", "off", "--join-attempts-per-minute", "1000"))
    srv.create_root()
    srv.start()
    wait_for_workers(srv, 2)
    yield srv
    srv.stop()


def signed(srv: GroomServer, call: str, query: str) -> str:
    checksum = hashlib.sha1(f"{call}{query}{SECRET}".encode()).hexdigest()
    return f"{srv.base_url}/bigbluebutton/api/{call}?{query}&checksum={checksum}"


async def bbb(url: str, http: Optional[aiohttp.ClientSession] = None,
              **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """One call; a new connection (so a new draw of the worker) unless ``http`` is given.
    The worker that answered, and the XML's ``response``."""
    method = kwargs.pop("method", "GET")
    own = http is None
    session = http or aiohttp.ClientSession()
    try:
        async with session.request(method, URL(url, encoded=True), allow_redirects=False,
                                   **kwargs) as resp:
            body = await resp.read()
            assert resp.status == 200, body
            return resp.headers.get(WORKER, ""), dict(jxmlease.parse(body)["response"])
    finally:
        if own:
            await session.close()


async def on_both(url: str) -> list[tuple[str, dict[str, Any]]]:
    """``ROUNDS`` answers to the same call over new connections; both workers among them."""
    answers = [await bbb(url) for _ in range(ROUNDS)]
    workers = Counter(worker for worker, _ in answers)
    assert set(workers) == {"w0", "w1"}, workers
    return answers


def attendees(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """``attendees`` as a list (the XML gives one attendee as a dict, none as empty text)."""
    found = answer.get("attendees")
    found = found.get("attendee", []) if isinstance(found, dict) else []
    return [dict(a) for a in (found if isinstance(found, list) else [found])]


def page_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert found is not None, html[:500]
    config: dict[str, Any] = json.loads(found.group(1))
    return config


async def open_page(srv: GroomServer, meeting: str, name: str, password: str) -> dict[str, Any]:
    """Follow the join link of ``name`` and read the page's config."""
    query = urlencode({"meetingID": meeting, "fullName": name, "password": password,
                       "redirect": "false"})
    _, joined = await bbb(signed(srv, "join", query))
    assert joined["returncode"] == "SUCCESS", joined
    async with aiohttp.ClientSession() as http:
        async with http.get(joined["url"]) as resp:
            assert resp.status == 200
            return page_config(await resp.text())


async def owner_of(srv: GroomServer, lesson_id: int) -> str:
    admin = ApiClient(srv.base_url)
    try:
        await admin.login(ROOT_USER, ROOT_PASSWORD)
        status, rooms = await admin.call("GET", "/api/live")
        assert status == 200, rooms
        workers = [r["worker"] for r in rooms if r["lesson"]["id"] == lesson_id]
        assert len(workers) == 1 and workers[0] in ("w0", "w1"), rooms
        return str(workers[0])
    finally:
        await admin.close()


async def test_live_calls_are_right_on_every_worker(cluster: GroomServer) -> None:
    srv = cluster
    for meeting in ("wk-live", "wk-idle"):
        _, created = await bbb(signed(srv, "create", urlencode({
            "meetingID": meeting, "name": meeting, "attendeePW": "ap", "moderatorPW": "mp"})))
        assert created["returncode"] == "SUCCESS", created
    running = signed(srv, "isMeetingRunning", "meetingID=wk-live")
    info = signed(srv, "getMeetingInfo", "meetingID=wk-live")

    # Before the moderator starts: not running, on either worker.
    for _, answer in await on_both(running):
        assert answer["running"] == "false", answer

    # The moderator (lesson pass) and a real aiortc attendee join; their sockets land anywhere.
    teach = await open_page(srv, "wk-live", "Ms Keo", "mp")
    teacher, student = Peer(srv.base_url), Peer(srv.base_url)
    try:
        welcome = await teacher.connect({"type": "hello", "role": "teacher",
                                         "lesson_id": teach["lesson_id"], "pass": teach["pass"]})
        assert welcome["type"] == "welcome", welcome
        join = (await open_page(srv, "wk-live", "Noy", "ap"))["join"]
        welcome = await student.connect({"type": "hello", "role": "student", "code": join["code"],
                                         "name": join["name"]})
        assert welcome["type"] == "welcome", welcome
        await student.negotiate(send_audio=False, receive_audio=True)
        owner = await owner_of(srv, teach["lesson_id"])
        other = "w1" if owner == "w0" else "w0"

        # Live: both workers see the room, the moderator and the attendee (joined to the voice
        # once its WebRTC connection is up).
        for _ in range(50):
            _, answer = await bbb(info)
            viewers = [a for a in attendees(answer) if a["role"] == "VIEWER"]
            if viewers and viewers[0]["hasJoinedVoice"] == "true":
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"the attendee never joined the voice: {answer}")
        for _, answer in await on_both(running):
            assert answer["running"] == "true", answer
        for worker, answer in await on_both(info):
            assert answer["running"] == "true", (worker, answer)
            assert (answer["participantCount"], answer["moderatorCount"],
                    answer["listenerCount"]) == ("2", "1", "1"), (worker, answer)
            people = {a["fullName"]: a["role"] for a in attendees(answer)}
            assert people == {"Ms Keo": "MODERATOR", "Noy": "VIEWER"}, (worker, answer)
        for worker, answer in await on_both(signed(srv, "getMeetings", "")):
            listed = {m["meetingID"]: m for m in answer["meetings"]["meeting"]}
            assert listed["wk-live"]["running"] == "true", (worker, listed)
            assert listed["wk-live"]["participantCount"] == "2", (worker, listed)
            assert listed["wk-idle"]["running"] == "false", (worker, listed)

        # Slides and end sent to the worker that does not run the room reach it.
        async with await session_on(srv, other) as (http, seen):
            document = base64.b64encode(pdf_bytes(3)).decode()
            modules = (f'<modules><module name="presentation"><document name="inserted.pdf">'
                       f'{document}</document></module></modules>').encode()
            worker, inserted = await bbb(signed(srv, "insertDocument", "meetingID=wk-live"), http,
                                         method="POST", data=modules,
                                         headers={"Content-Type": "text/xml"})
            assert (worker, inserted["returncode"]) == (other, "SUCCESS"), (worker, inserted)
            deck = await student.expect("deck", timeout=60)
            assert deck["type"] == "deck" and len(deck["deck"]["slides"]) == 3, deck

            worker, ended = await bbb(signed(srv, "end", "meetingID=wk-live&password=mp"), http)
            assert (worker, ended["returncode"]) == (other, "SUCCESS"), (worker, ended)
            assert seen["worker"] == other
        assert (await teacher.expect("ended"))["type"] == "ended"
        assert (await student.expect("ended"))["type"] == "ended"
    finally:
        await student.close()
        await teacher.close()

    # Ended, on either worker: not running, and no longer a meeting (BBB forgets ended ones).
    for _, answer in await on_both(running):
        assert answer["running"] == "false", answer
    for _, answer in await on_both(info):
        assert answer["messageKey"] == "notFound", answer
    for _, answer in await on_both(signed(srv, "getMeetings", "")):
        listed = answer["meetings"]["meeting"]
        assert listed["meetingID"] == "wk-idle" and listed["running"] == "false", listed
    # An unstarted meeting ended from either worker is ended for both.
    _, ended = await bbb(signed(srv, "end", "meetingID=wk-idle"))
    assert ended["returncode"] == "SUCCESS", ended
    for _, answer in await on_both(signed(srv, "getMeetings", "")):
        assert answer["messageKey"] == "noMeetings", answer
