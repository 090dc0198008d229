"""The BigBlueButton-compatible API against a real server: driven by a published BBB client
library (``bigbluebutton-api-python``) and by raw requests for what a library never sends
(bad checksums, other algorithms, hostile slide URLs, a flood of wrong checksums).

Webhooks arrive at a small aiohttp receiver the test starts on 127.0.0.2, the one private
address the server is told it may reach (``--bbb-private-hosts``); the hostile URLs point at
127.0.0.1, the metadata address, a name resolving to 10.0.0.1 and other forms, and must be
refused with BBB's FAILED answer and nothing created or fetched.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import time
from typing import Any, AsyncIterator, Iterator
from urllib.parse import quote, urlencode

import aiohttp
import jxmlease
import pytest
from aiohttp import web
from bigbluebutton_api_python import BigBlueButton
from bigbluebutton_api_python.exception import BBBException
from PIL import Image
from yarl import URL

from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer, database_backends, free_port

SECRET = "moodle-secret-0123456789"
OLD_SECRET = "moodle-old-secret-0123456789"
SHA256_SECRET = "portal-secret-0123456789"
CLIENTS = [
    {"name": "moodle", "secret": [SECRET, OLD_SECRET], "school": "Moodle meetings"},
    {"name": "portal", "secret": SHA256_SECRET, "school": "Portal meetings", "checksums": ["sha256"]},
]
RECEIVER_HOST = "127.0.0.2"


@pytest.fixture(scope="module", params=database_backends())
def bbb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroomServer]:
    srv = GroomServer(tmp_path_factory.mktemp(f"bbb-{request.param}"), request.param,
                      pg_database="groom_bbb_api",
                      args=("--bbb-clients", json.dumps(CLIENTS), "--bbb-private-hosts", RECEIVER_HOST,
                            "--bbb-hook-retry-seconds", "0.3", "--bbb-hook-attempts", "3",
                            "--deck-sandbox", "off", "--join-attempts-per-minute", "1000"))
    srv.create_root()
    srv.start()
    yield srv
    srv.stop()


def library(srv: GroomServer, secret: str = SECRET) -> BigBlueButton:
    return BigBlueButton(srv.base_url + "/bigbluebutton/api/", secret)


async def call(lib: BigBlueButton, method: str, *args: Any, **kwargs: Any) -> Any:
    """The library is blocking (urllib): run it in a thread, as an LMS's PHP would block."""
    return await asyncio.to_thread(getattr(lib, method), *args, **kwargs)


def signed(srv: GroomServer, call_name: str, query: str, secret: str = SECRET,
           algorithm: str = "sha1") -> str:
    checksum = hashlib.new(algorithm, f"{call_name}{query}{secret}".encode()).hexdigest()
    return f"{srv.base_url}/bigbluebutton/api/{call_name}?{query}&checksum={checksum}"


async def raw(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    method = kwargs.pop("method", "GET")
    async with aiohttp.ClientSession() as http:
        # encoded=True: sent byte for byte as signed (yarl would otherwise re-quote the query)
        async with http.request(method, URL(url, encoded=True), allow_redirects=False,
                                **kwargs) as resp:
            body = await resp.read()
            return resp.status, dict(jxmlease.parse(body)["response"]) if body.startswith(b"<") else {}


def pdf_bytes(pages: int = 2) -> bytes:
    images = [Image.new("RGB", (640, 360), (255, 255 - 60 * i, 255)) for i in range(pages)]
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=96)
    return out.getvalue()


class Receiver:
    """A small HTTP server: the webhook receiver and a slide host, on one address."""

    def __init__(self, host: str) -> None:
        self.host, self.port = host, free_port()
        self.hits: list[tuple[str, dict[str, str], dict[str, str]]] = []  # path, query, form
        self.flaky_seen = 0
        self.app = web.Application()
        self.app.router.add_get("/slides.pdf", self.slides)
        self.app.router.add_get("/to-loopback", self.to_loopback)
        self.app.router.add_post("/hook", self.hook)
        self.app.router.add_post("/flaky", self.flaky)
        self.runner = web.AppRunner(self.app)
        self.loopback_port = 0

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()

    async def slides(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, dict(request.query), {}))
        return web.Response(body=pdf_bytes(), content_type="application/pdf")

    async def to_loopback(self, request: web.Request) -> web.Response:
        self.hits.append((request.path, dict(request.query), {}))
        raise web.HTTPFound(f"http://127.0.0.1:{self.loopback_port}/secret.pdf")

    async def hook(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.hits.append((request.path, dict(request.query), form))
        return web.Response(text="ok")

    async def flaky(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.hits.append((request.path, dict(request.query), form))
        self.flaky_seen += 1
        return web.Response(status=503 if self.flaky_seen == 1 else 200)

    def events(self, path: str) -> list[dict[str, Any]]:
        found = []
        for hit_path, _, form in self.hits:
            if hit_path == path and "event" in form:
                found.extend(json.loads(form["event"]))
        return found

    async def wait_event(self, path: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.events(path):
                if item["data"]["id"] == kind:
                    return item
            await asyncio.sleep(0.1)
        raise AssertionError(f"no {kind} at {path}: {self.events(path)}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(RECEIVER_HOST)
    await rec.start()
    yield rec
    await rec.runner.cleanup()


@pytest.fixture
async def loopback_trap() -> AsyncIterator[Receiver]:
    """A server on 127.0.0.1 that must never be reached by the API's fetches."""
    trap = Receiver("127.0.0.1")
    trap.app.router.add_get("/secret.pdf", trap.slides)
    await trap.start()
    yield trap
    await trap.runner.cleanup()


# --- the library's view ------------------------------------------------------------------------

async def test_library_drives_meetings(bbb: GroomServer) -> None:
    lib = library(bbb)
    version = await call(lib, "get_api_version")
    assert version.get_field("returncode") == "SUCCESS" and version.get_field("version") == "2.0"

    created = await call(lib, "create_meeting", "lib-1", params={
        "name": "Maths 7A", "attendeePW": "ap", "moderatorPW": "mp", "record": "true",
        "welcome": "Hello"}, meta={"bbb-origin": "Moodle", "Course": "Maths"})
    assert created.get_field("returncode") == "SUCCESS"
    internal = created.get_field("internalMeetingID")
    assert re.fullmatch(r"[0-9a-f]{40}-\d{13}", internal)
    assert created.get_field("attendeePW") == "ap" and created.get_field("moderatorPW") == "mp"

    again = await call(lib, "create_meeting", "lib-1", params={"name": "Maths 7A",
                                                              "attendeePW": "ap", "moderatorPW": "mp"})
    assert again.get_field("messageKey") == "duplicateWarning"
    assert again.get_field("internalMeetingID") == internal
    with pytest.raises(BBBException) as other_pw:
        await call(lib, "create_meeting", "lib-1", params={"name": "x", "attendeePW": "other",
                                                           "moderatorPW": "mp"})
    assert other_pw.value.key == "idNotUnique"

    assert not (await call(lib, "is_meeting_running", "lib-1")).is_meeting_running()
    info = await call(lib, "get_meeting_info", "lib-1")
    assert info.get_field("meetingName") == "Maths 7A"
    assert info.get_field("internalMeetingID") == internal
    assert dict(info.get_field("metadata")) == {"bbb-origin": "Moodle", "course": "Maths"}
    meetings = await call(lib, "get_meetings")
    listed = meetings.get_field("meetings")["meeting"]
    listed = listed if isinstance(listed, list) else [listed]
    assert "lib-1" in [m["meetingID"] for m in listed]

    # The meeting is a lesson in the client's school, visible to the school's admins.
    admin = ApiClient(bbb.base_url)
    await admin.login(ROOT_USER, ROOT_PASSWORD)
    status, schools = await admin.call("GET", "/api/schools")
    school = next(s for s in schools if s["name"] == "Moodle meetings")
    status, classes = await admin.call("GET", f"/api/classes?school_id={school['id']}")
    assert status == 200 and "Maths 7A" in [c["name"] for c in classes], classes
    await admin.close()

    ended = await call(lib, "end_meeting", "lib-1", "mp")
    assert ended.get_field("messageKey") == "sentEndMeetingRequest"
    with pytest.raises(BBBException) as gone:
        await call(lib, "get_meeting_info", "lib-1")
    assert gone.value.key == "notFound"
    # A new session of the same meetingID is a new lesson of the same class.
    third = await call(lib, "create_meeting", "lib-1", params={"name": "Maths 7A"})
    assert third.get_field("internalMeetingID") != internal
    await call(lib, "end_meeting", "lib-1", third.get_field("moderatorPW"))


async def test_unknown_meetings_and_wrong_passwords(bbb: GroomServer) -> None:
    lib = library(bbb)
    with pytest.raises(BBBException) as info:
        await call(lib, "get_meeting_info", "no-such-meeting")
    assert info.value.key == "notFound"
    with pytest.raises(BBBException) as end:
        await call(lib, "end_meeting", "no-such-meeting", "mp")
    assert end.value.key == "notFound"
    assert not (await call(lib, "is_meeting_running", "no-such-meeting")).is_meeting_running()

    status, body = await raw(signed(bbb, "join", "fullName=A&meetingID=no-such-meeting&password=x"
                                                 "&redirect=false"))
    assert (status, body["returncode"], body["messageKey"]) == (200, "FAILED", "invalidMeetingIdentifier")

    await call(lib, "create_meeting", "pw-1", params={"name": "PW", "attendeePW": "ap",
                                                      "moderatorPW": "mp"})
    status, body = await raw(signed(bbb, "join", "fullName=A&meetingID=pw-1&password=wrong&redirect=false"))
    assert body["messageKey"] == "invalidPassword"
    status, body = await raw(signed(bbb, "join", "meetingID=pw-1&password=ap"))
    assert body["messageKey"] == "missingParamFullName"
    status, body = await raw(signed(bbb, "create", "name=x"))
    assert body["messageKey"] == "missingParamMeetingID"
    # A metadata name is an XML element name in answers: only plain ones.
    status, body = await raw(signed(bbb, "create", "meetingID=meta-bad&meta_x%3E%3Cy=1"))
    assert body["messageKey"] == "invalidMeta"
    assert (await raw(signed(bbb, "getMeetingInfo", "meetingID=meta-bad")))[1]["messageKey"] == "notFound"
    # Another client's meeting does not exist for this one.
    portal = signed(bbb, "getMeetingInfo", "meetingID=pw-1", SHA256_SECRET, "sha256")
    assert (await raw(portal))[1]["messageKey"] == "notFound"
    await call(lib, "end_meeting", "pw-1", "mp")


async def test_checksums(bbb: GroomServer) -> None:
    query = "meetingID=nothing-here"
    ok = signed(bbb, "isMeetingRunning", query)
    assert (await raw(ok))[1]["returncode"] == "SUCCESS"
    for algorithm in ("sha256", "sha384", "sha512"):
        status, body = await raw(signed(bbb, "isMeetingRunning", query, algorithm=algorithm))
        assert body["returncode"] == "SUCCESS", algorithm
    # The old secret still works during a rotation; the portal only signs with SHA-256.
    assert (await raw(signed(bbb, "isMeetingRunning", query, OLD_SECRET)))[1]["returncode"] == "SUCCESS"
    assert (await raw(signed(bbb, "isMeetingRunning", query, SHA256_SECRET, "sha256")))[1]["returncode"] \
        == "SUCCESS"
    assert (await raw(signed(bbb, "isMeetingRunning", query, SHA256_SECRET, "sha1")))[1]["messageKey"] \
        == "checksumError"

    base = f"{bbb.base_url}/bigbluebutton/api/isMeetingRunning"
    good = hashlib.sha1(f"isMeetingRunning{query}{SECRET}".encode()).hexdigest()
    bad_cases = [
        f"{base}?{query}",  # no checksum
        f"{base}?{query}&checksum=",
        f"{base}?{query}&checksum={good[:-1]}{'1' if good[-1] == '0' else '0'}",
        f"{base}?{query}&checksum={good[:39]}",  # a length no algorithm has
        f"{base}?{query}&extra=1&checksum={good}",  # a parameter added after signing
        f"{base}?meetingID=other&checksum={good}",  # another meeting, the same checksum
        signed(bbb, "getMeetingInfo", query).replace("getMeetingInfo", "isMeetingRunning"),
        signed(bbb, "isMeetingRunning", query, "not-the-secret-at-all"),
    ]
    for url in bad_cases:
        status, body = await raw(url)
        assert (status, body.get("returncode"), body.get("messageKey"), body.get("message")) == \
            (200, "FAILED", "checksumError", "Checksums do not match"), url
    # Upper-case hex is the same checksum; the version root needs none.
    assert (await raw(f"{base}?{query}&checksum={good.upper()}"))[1]["returncode"] == "SUCCESS"
    assert (await raw(f"{bbb.base_url}/bigbluebutton/api"))[1]["version"] == "2.0"
    assert (await raw(signed(bbb, "getDefaultConfigXML", "")))[1]["messageKey"] == "unsupportedRequest"

    # POST: the parameters in a form body, signed over the body.
    form = "meetingID=nothing-here"
    checksum = hashlib.sha256(f"isMeetingRunning{form}{SECRET}".encode()).hexdigest()
    status, body = await raw(base, method="POST", data=f"{form}&checksum={checksum}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert body["returncode"] == "SUCCESS" and body["running"] == "false"
    # A form body past 64 KiB is refused before it is read whole.
    status, body = await raw(base, method="POST", data="meetingID=" + "x" * 70_000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["returncode"], body["messageKey"]) == (413, "FAILED", "too_large")


async def test_hostile_slide_urls_are_refused(bbb: GroomServer, receiver: Receiver,
                                              loopback_trap: Receiver) -> None:
    trap = f"127.0.0.1:{loopback_trap.port}"
    hostile = [f"http://{trap}/secret.pdf", f"http://localhost:{loopback_trap.port}/secret.pdf",
               "http://169.254.169.254/latest/meta-data/", "http://0x0a000001/slides.pdf",
               "http://167772161/slides.pdf", "http://[::1]/slides.pdf", "http://10.1.2.3/x.pdf",
               "http://224.0.0.1/x.pdf", "file:///etc/passwd", "gopher://example.org/",
               f"http://user:pw@{RECEIVER_HOST}:{receiver.port}/slides.pdf"]
    for n, url in enumerate(hostile):
        modules = (f'<modules><module name="presentation"><document url="{url}" '
                   f'filename="s.pdf"/></module></modules>')
        status, body = await raw(signed(bbb, "create", f"meetingID=hostile-{n}&name=H"),
                                 method="POST", data=modules, headers={"Content-Type": "text/xml"})
        assert (body["returncode"], body["messageKey"]) == ("FAILED", "badURL"), (url, body)
        # Nothing was created.
        running = await raw(signed(bbb, "getMeetingInfo", f"meetingID=hostile-{n}"))
        assert running[1]["messageKey"] == "notFound"
        status, body = await raw(signed(bbb, "create", f"meetingID=hostile-{n}&name=H&"
                                                       f"preUploadedPresentation={quote(url, safe='')}"))
        assert body["messageKey"] == "badURL", (url, body)
    # DTDs are refused (no entity expansion).
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><modules>&a;</modules>'
    status, body = await raw(signed(bbb, "create", "meetingID=dtd&name=D"), method="POST", data=evil,
                             headers={"Content-Type": "text/xml"})
    assert body["messageKey"] == "invalidDocument"

    # A public-looking (allowed) host that redirects to loopback: the hop is refused too.
    receiver.loopback_port = loopback_trap.port
    modules = (f'<modules><module name="presentation"><document url="{receiver.base}/to-loopback" '
               f'filename="s.pdf"/></module></modules>')
    status, body = await raw(signed(bbb, "create", "meetingID=redirect&name=R"), method="POST",
                             data=modules, headers={"Content-Type": "text/xml"})
    assert body["returncode"] == "SUCCESS"
    deadline = time.monotonic() + 10
    while not receiver.hits and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert [h[0] for h in receiver.hits] == ["/to-loopback"]
    await asyncio.sleep(1.0)
    assert loopback_trap.hits == [], "a redirect reached loopback"
    assert (await raw(signed(bbb, "end", "meetingID=redirect")))[1]["returncode"] == "SUCCESS"


async def test_slides_by_url_become_the_meetings_deck(bbb: GroomServer, receiver: Receiver) -> None:
    modules = (f'<modules><module name="presentation"><document url="{receiver.base}/slides.pdf" '
               f'filename="Lesson.pdf"/></module></modules>')
    status, body = await raw(signed(bbb, "create", "meetingID=slides-1&name=Slides"), method="POST",
                             data=modules, headers={"Content-Type": "text/xml"})
    assert body["returncode"] == "SUCCESS"
    admin = ApiClient(bbb.base_url)
    await admin.login(ROOT_USER, ROOT_PASSWORD)
    status, classes = await admin.call("GET", "/api/classes")
    class_id = next(c["id"] for c in classes if c["name"] == "Slides")
    deadline = time.monotonic() + 60
    decks: list[dict[str, Any]] = []
    while not decks and time.monotonic() < deadline:
        status, decks = await admin.call("GET", f"/api/classes/{class_id}/decks")
        await asyncio.sleep(0.3)
    assert decks and decks[0]["pages"] == 2 and decks[0]["filename"] == "Lesson.pdf", decks
    # insertDocument adds another, inline (base64).
    import base64
    inline = base64.b64encode(pdf_bytes(3)).decode()
    modules = (f'<modules><module name="presentation"><document name="More.pdf">{inline}'
               f'</document></module></modules>')
    status, body = await raw(signed(bbb, "insertDocument", "meetingID=slides-1"), method="POST",
                             data=modules, headers={"Content-Type": "text/xml"})
    assert body["returncode"] == "SUCCESS", body
    deadline = time.monotonic() + 60
    while len(decks) < 2 and time.monotonic() < deadline:
        status, decks = await admin.call("GET", f"/api/classes/{class_id}/decks")
        await asyncio.sleep(0.3)
    assert sorted(d["pages"] for d in decks) == [2, 3]
    await admin.close()
    status, body = await raw(signed(bbb, "insertDocument", "meetingID=nope"), method="POST",
                             data=modules, headers={"Content-Type": "text/xml"})
    assert body["messageKey"] == "notFound"
    await raw(signed(bbb, "end", "meetingID=slides-1"))


def enter_pass(html: str) -> tuple[int, str]:
    config = json.loads(re.search(r'<script type="application/json" id="config">(.*?)</script>',
                                  html, re.S).group(1))  # type: ignore[union-attr]
    return config["lesson_id"], config["pass"]


async def test_join_links_and_webhooks(bbb: GroomServer, receiver: Receiver) -> None:
    lib = library(bbb)
    hook = await raw(signed(bbb, "hooks/create", urlencode({"callbackURL": f"{receiver.base}/hook",
                                                            "meetingID": "hooked"})))
    assert hook[1]["returncode"] == "SUCCESS"
    hook_id = hook[1]["hookID"]
    flaky = await raw(signed(bbb, "hooks/create", urlencode({"callbackURL": f"{receiver.base}/flaky"})))
    again = await raw(signed(bbb, "hooks/create", urlencode({"callbackURL": f"{receiver.base}/flaky"})))
    assert again[1]["hookID"] == flaky[1]["hookID"] and again[1]["messageKey"] == "duplicateWarning"
    refused = await raw(signed(bbb, "hooks/create", urlencode({"callbackURL": "http://169.254.169.254/"})))
    assert refused[1]["messageKey"] == "badURL"
    listed = (await raw(signed(bbb, "hooks/list", "")))[1]["hooks"]["hook"]
    assert {h["hookID"] for h in listed} == {hook_id, flaky[1]["hookID"]}
    # The portal sees none of moodle's hooks.
    portal = (await raw(signed(bbb, "hooks/list", "", SHA256_SECRET, "sha256")))[1]
    assert not portal.get("hooks")

    await call(lib, "create_meeting", "hooked", params={"name": "Hooked", "attendeePW": "ap",
                                                        "moderatorPW": "mp"})
    created = await receiver.wait_event("/hook", "meeting-created")
    assert created["data"]["attributes"]["meeting"]["external-meeting-id"] == "hooked"
    # Signed as bbb-webhooks signs: sha1(callbackURL + '{"event":...,"timestamp":...}' + secret).
    path, query, form = next(h for h in receiver.hits if h[0] == "/hook")
    signed_part = json.dumps({"event": form["event"], "timestamp": int(form["timestamp"])},
                             separators=(",", ":"), ensure_ascii=False)
    assert query["checksum"] == hashlib.sha1(
        f"{receiver.base}/hook{signed_part}{SECRET}".encode()).hexdigest()
    # The flaky receiver failed once and got it again (bounded retries from the job queue).
    deadline = time.monotonic() + 15
    while receiver.flaky_seen < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert receiver.flaky_seen == 2
    assert [e["data"]["id"] for e in receiver.events("/flaky")] == ["meeting-created"] * 2

    # join, redirect=false: the XML names the link; the link opens the teacher page.
    url = await asyncio.to_thread(lib.get_join_meeting_url, "Ms Teacher", "hooked", "mp",
                                  {"redirect": "false", "userID": "u-7"})
    status, body = await raw(url)
    assert body["messageKey"] == "successfullyJoined" and "/bigbluebutton/enter/" in body["url"]
    async with aiohttp.ClientSession() as http:
        async with http.get(body["url"]) as resp:
            assert resp.status == 200 and 'id="start"' in (page := await resp.text())
        lesson_id, lesson_pass = enter_pass(page)
        # A forged or altered link is refused.
        async with http.get(body["url"][:-3] + "abc") as resp:
            assert resp.status == 410
        # The pass teaches this lesson over /ws, and only this one.
        ws_url = bbb.base_url.replace("http", "ws") + "/ws"
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "hello", "role": "teacher", "lesson_id": lesson_id + 1000,
                                "pass": lesson_pass})
            answer = await ws.receive_json(timeout=10)
            assert answer["type"] == "error" and answer["code"] == "forbidden"
        async with http.ws_connect(ws_url) as ws:
            await ws.send_json({"type": "hello", "role": "teacher", "lesson_id": lesson_id,
                                "pass": lesson_pass[:-2] + "xx"})
            assert (await ws.receive_json(timeout=10))["code"] == "unauthorized"
        teacher = await http.ws_connect(ws_url)
        await teacher.send_json({"type": "hello", "role": "teacher", "lesson_id": lesson_id,
                                 "pass": lesson_pass})
        welcome = await teacher.receive_json(timeout=10)
        while welcome["type"] != "welcome":  # the room's state may come first
            welcome = await teacher.receive_json(timeout=10)
        assert welcome["role"] == "teacher" and welcome["lesson"]["id"] == lesson_id, welcome
        joined = await receiver.wait_event("/hook", "user-joined")
        assert joined["data"]["attributes"]["user"]["role"] == "MODERATOR"
        assert (await call(lib, "is_meeting_running", "hooked")).is_meeting_running()
        info = await call(lib, "get_meeting_info", "hooked")
        assert info.get_field("moderatorCount") == "1"
        assert info.get_field("attendees")["attendee"]["fullName"] == "Ms Teacher"
        # The pass is no login: the office pages stay closed to it.
        async with http.get(bbb.base_url + "/api/classes") as resp:
            assert resp.status == 401
        # An attendee's link opens the student page of the meeting, their name filled in.
        url = await asyncio.to_thread(lib.get_join_meeting_url, "Noy", "hooked", "ap", {})
        async with http.get(url, allow_redirects=True) as resp:
            text = await resp.text()
            assert resp.status == 200 and '"name": "Noy"' in text and 'id="go"' in text

        assert (await call(lib, "end_meeting", "hooked", "mp")).get_field("returncode") == "SUCCESS"
        ended = await receiver.wait_event("/hook", "meeting-ended")
        assert ended["data"]["attributes"]["meeting"]["internal-meeting-id"]
        await teacher.close()

    destroyed = await raw(signed(bbb, "hooks/destroy", f"hookID={hook_id}"))
    assert destroyed[1]["removed"] == "true"
    again_destroyed = await raw(signed(bbb, "hooks/destroy", f"hookID={hook_id}"))
    assert again_destroyed[1]["messageKey"] == "destroyMissingHook"
    await raw(signed(bbb, "hooks/destroy", f"hookID={flaky[1]['hookID']}"))


async def test_recording_calls_on_unknown_ids(bbb: GroomServer) -> None:
    lib = library(bbb)
    listing = await raw(signed(bbb, "getRecordings", "meetingID=never-recorded"))
    assert listing[1]["messageKey"] == "noRecordings"
    for name, query in (("publishRecordings", "recordID=nope&publish=true"),
                        ("deleteRecordings", "recordID=nope"),
                        ("updateRecordings", "recordID=nope&meta_a=b")):
        status, body = await raw(signed(bbb, name, query))
        assert body["messageKey"] == "notFound", (name, body)
    assert (await raw(signed(bbb, "publishRecordings", "recordID=nope")))[1]["messageKey"] == \
        "missingParamPublish"
    assert (await call(lib, "get_recordings", "never-recorded")).get_field("returncode") == "SUCCESS"


async def test_wrong_checksums_are_rate_limited(bbb: GroomServer) -> None:
    """Last in the module: it locks 127.0.0.1 out of the API for a minute."""
    bad = f"{bbb.base_url}/bigbluebutton/api/getMeetings?checksum={'0' * 40}"
    statuses = [(await raw(bad))[0] for _ in range(25)]  # earlier tests made some wrong ones too
    first = statuses.index(429)
    assert first <= 20 and set(statuses[:first]) == {200} and set(statuses[first:]) == {429}
    assert (await raw(signed(bbb, "getMeetings", "")))[0] == 429



