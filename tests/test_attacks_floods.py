"""Floods that cost students money, files that try to leak, timelines that tell too much.

Each attack runs against the real server on loopback (both databases) while an honest student is
in the same lesson: the defence must hold *and* that student must keep hearing the teacher.
The sandbox, the file-type check, the manifest cache and the offline pack's contents are checked
on the functions themselves, with real processes and files.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from groom.board import sandbox
from groom.board.deck_import import DEFAULT_LIMITS, DeckError, check_office_zip
from groom.recordings import offline_pack, playback
from groom.web import recordings as web_recordings
from peers import Peer, end_lesson, join_student, other_class, start_teacher
from servers import ApiClient, GroomServer, database_backends

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "media" / "sample-deck.pdf"
CHAT_BUDGET = 20


@pytest.fixture(scope="module", params=database_backends())
def flood(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GroomServer, dict[str, Any]]]:
    """A demo server with small budgets, so a handful of peers can go over them."""
    srv = GroomServer(tmp_path_factory.mktemp(f"floods-{request.param}"), request.param,
                      pg_database="groom_attacks_floods",
                      args=("--demo", "--json", "--grace-seconds", "4", "--tier-up-seconds", "2",
                            "--join-attempts-per-minute", "1000",
                            "--chat-class-per-minute", str(CHAT_BUDGET),
                            "--deck-imports-per-user", "1", "--deck-imports-total", "2"))
    srv.start()
    yield srv, srv.demo_info()
    srv.stop()


async def _chat_only(srv: GroomServer, demo: dict[str, Any], name: str) -> Peer:
    """A student on the WebSocket only (no media): all a flooder needs."""
    peer = Peer(srv.base_url)
    welcome = await peer.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                  "name": name})
    assert welcome["type"] == "welcome", welcome
    return peer


async def _finish(teacher: Peer, *others: Peer) -> None:
    """End the lesson (even when the test failed halfway, so the next one may start), close all."""
    try:
        if teacher.closed_code is None:
            await end_lesson(teacher)
    finally:
        for p in (teacher, *others):
            await p.close()


async def _teacher_client(srv: GroomServer, demo: dict[str, Any]) -> ApiClient:
    client = ApiClient(srv.base_url)
    await client.login(demo["teacher_login"]["username"], demo["teacher_login"]["password"])
    return client


async def _events(srv: GroomServer, demo: dict[str, Any], lesson_id: int) -> list[dict[str, Any]]:
    """The whole timeline, page by page (the API gives at most ``limit`` events per call)."""
    client = await _teacher_client(srv, demo)
    try:
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            status, page = await client.call(
                "GET", f"/api/lessons/{lesson_id}/events?limit=50&after={after}")
            assert status == 200, page
            events += page
            if len(page) < 50:
                return events
            after = page[-1]["id"]
    finally:
        await client.close()


# --- hands ----------------------------------------------------------------------------------------

async def test_hand_toggle_flood_is_limited_and_coalesced(flood: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = flood
    teacher = await start_teacher(srv, demo)
    lesson_id = demo["lesson_id"]
    honest = await join_student(srv, demo, "Honest")
    toggler = await _chat_only(srv, demo, "Toggler")
    try:
        async def toggle() -> None:
            for i in range(36):  # under the socket's own message limit (burst 40)
                await toggler.send({"type": "hand", "up": i % 2 == 0})
                await asyncio.sleep(0.03)

        flooding = asyncio.create_task(toggle())
        await honest.keeps_hearing(3.0)
        await flooding
        await asyncio.sleep(0.5)
        refused = [m for m in toggler.messages if m["type"] == "error"]
        assert refused and {m["code"] for m in refused} == {"hand_too_fast"}
        assert len(refused) >= 36 - 12
        assert toggler.closed_code is None  # refused, not thrown out
        await honest.keeps_hearing(1.0)
    finally:
        await _finish(teacher, honest, toggler)
    events = await _events(srv, demo, lesson_id)
    mine = [e for e in events if e["kind"] == "hand"
            and e["data"]["id"] == toggler.welcome["participant_id"]]
    # 12 accepted changes in ~1 s: the first goes in at once, the rest coalesce into one.
    assert 1 <= len(mine) <= 3, mine


# --- chat -------------------------------------------------------------------------------------------

async def test_class_chat_budget_refuses_the_flood(flood: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = flood
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Listener")
    chatters = [await _chat_only(srv, demo, f"Chatter {i}") for i in range(3)]
    try:
        async def chatter(peer: Peer, n: int) -> None:
            for i in range(10):  # each under their own 12 per minute; together over the class's
                await peer.send({"type": "chat", "text": f"spam {n}.{i}"})
                await asyncio.sleep(0.05)

        flooding = asyncio.gather(*(chatter(p, n) for n, p in enumerate(chatters)))
        await honest.keeps_hearing(3.0)
        await flooding
        await teacher.send({"type": "chat", "text": "Quiet please"})  # the teacher is never refused
        await honest.expect("chat")
        await asyncio.sleep(0.5)
        spam = [m for m in honest.messages if m["type"] == "chat" and m["text"].startswith("spam")]
        assert len(spam) <= CHAT_BUDGET, len(spam)
        assert any(m["type"] == "chat" and m["text"] == "Quiet please" for m in honest.messages)
        refused = [m for p in chatters for m in p.messages if m["type"] == "error"]
        assert len(refused) == 30 - len(spam) and {m["code"] for m in refused} == {"chat_busy"}
        await honest.keeps_hearing(1.0)
    finally:
        await _finish(teacher, honest, *chatters)


# --- the timeline API -----------------------------------------------------------------------------

async def test_lesson_events_are_paginated(flood: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = flood
    teacher = await start_teacher(srv, demo)
    lesson_id = demo["lesson_id"]
    honest = await join_student(srv, demo, "Reader")
    try:
        for i in range(7):
            await teacher.send({"type": "chat", "text": f"note {i}"})
            await honest.expect("chat")
        await honest.keeps_hearing(1.0)
    finally:
        await _finish(teacher, honest)
    client = await _teacher_client(srv, demo)
    try:
        status, first = await client.call("GET", f"/api/lessons/{lesson_id}/events?limit=3")
        assert status == 200 and len(first) == 3, first
        status, second = await client.call(
            "GET", f"/api/lessons/{lesson_id}/events?limit=3&after={first[-1]['id']}")
        assert status == 200 and len(second) == 3
        assert first[-1]["id"] < second[0]["id"]
        notes = [e["data"]["text"] for e in first + second if e["kind"] == "chat"]
        assert notes == sorted(notes) and len(set(notes)) == len(notes)
        status, body = await client.call("GET", f"/api/lessons/{lesson_id}/events?limit=100000")
        assert status == 422, body  # a page has a maximum size
        status, everything = await client.call("GET", f"/api/lessons/{lesson_id}/events")
        assert status == 200 and len(everything) <= 500
        status, spec = await client.call("GET", "/api/openapi.json")
        params = {p["name"] for p in spec["paths"]["/api/lessons/{lesson_id}/events"]["get"]["parameters"]}
        assert {"limit", "after"} <= params
    finally:
        await client.close()


# --- deck uploads -----------------------------------------------------------------------------------

async def _stalled_upload(client: ApiClient, class_id: int, started: asyncio.Event) -> int:
    """An upload that sends a little and then nothing: it holds its slot until cancelled."""
    async def body() -> AsyncIterator[bytes]:
        yield b"%PDF-1.4\n" + b"0" * 65536
        started.set()
        await asyncio.sleep(3600)

    status, _ = await client.call("POST", f"/api/classes/{class_id}/decks?filename=a.pdf",
                                  data=body(), headers={"Content-Type": "application/octet-stream"})
    return status


async def test_deck_uploads_are_bounded_before_the_body_is_read(
        flood: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = flood
    teacher = await start_teacher(srv, demo)
    honest = await join_student(srv, demo, "Watcher")
    first = await _teacher_client(srv, demo)
    admin = ApiClient(srv.base_url)
    await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
    other = await other_class(srv, demo, "uploader")
    third = ApiClient(srv.base_url)
    await third.login(other["teacher_login"]["username"], other["teacher_login"]["password"])
    stalled: list[asyncio.Task[int]] = []
    try:
        for client in (first, admin):
            started = asyncio.Event()
            stalled.append(asyncio.create_task(_stalled_upload(client, demo["class_id"], started)))
            await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(0.3)
        # The same teacher again: refused at once, although the rest of the body never comes.
        async def never() -> AsyncIterator[bytes]:
            yield b"%PDF"  # (the client sends its headers with the first bytes)
            await asyncio.sleep(3600)

        async with asyncio.timeout(5):
            status, body = await first.call("POST", f"/api/classes/{demo['class_id']}/decks",
                                            data=never(), headers={
                                                "Content-Type": "application/octet-stream"})
        assert (status, body["error"]["code"]) == (429, "too_many_imports"), body
        # Another teacher, while the server holds its total: refused too.
        async with asyncio.timeout(5):
            status, body = await third.call("POST", f"/api/classes/{other['class_id']}/decks",
                                            data=never(), headers={
                                                "Content-Type": "application/octet-stream"})
        assert (status, body["error"]["code"]) == (429, "imports_busy"), body
        await honest.keeps_hearing(2.0)
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)
        await asyncio.sleep(0.5)
        # The slots of the abandoned uploads are free again: a real deck goes through.
        status, deck = await third.call("POST", f"/api/classes/{other['class_id']}/decks?filename=s.pdf",
                                        data=SAMPLE.read_bytes(),
                                        headers={"Content-Type": "application/octet-stream"})
        assert status == 201, deck
        await honest.keeps_hearing(1.0)
    finally:
        for task in stalled:
            task.cancel()
        for c in (first, admin, third):
            await c.close()
        await _finish(teacher, honest)


# --- the conversion sandbox -------------------------------------------------------------------------

@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "slides" / "staging" / "job").mkdir(parents=True)
    (data / "secret.key").write_text("the-server-secret")
    return data


def _run_sandboxed(data: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    work = data / "slides" / "staging" / "job"
    command = sandbox.wrap(argv, data_dir=data, workdir=work, mode="bwrap")
    return subprocess.run(command, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "GROOM_SECRET": "from-the-environment"})


@pytest.mark.skipif(not sandbox.available(), reason="bubblewrap cannot run here")
def test_sandbox_hides_the_data_folder_the_network_and_the_environment(data_dir: Path) -> None:
    secret = data_dir / "secret.key"
    assert _run_sandboxed(data_dir, ["cat", str(secret)]).returncode != 0
    assert "the-server-secret" not in _run_sandboxed(data_dir, ["sh", "-c", f"cat {secret}"]).stdout
    connect = ("import socket; socket.create_connection(('127.0.0.1', %d), 3)"
               % int(os.environ.get("GROOM_TEST_PG_PORT", "5432")))
    assert _run_sandboxed(data_dir, [sys.executable, "-c", connect]).returncode != 0
    outside = _run_sandboxed(data_dir, [sys.executable, "-c",
                                        "import socket; socket.create_connection(('1.1.1.1', 80), 3)"])
    assert outside.returncode != 0 and "unreachable" in outside.stderr.lower()
    environ = _run_sandboxed(data_dir, ["sh", "-c", "env; cat /proc/1/environ 2>/dev/null"])
    assert "from-the-environment" not in environ.stdout
    # The one job folder is there and writable; the rest of the system is read-only.
    work = data_dir / "slides" / "staging" / "job"
    assert _run_sandboxed(data_dir, ["sh", "-c", f"echo ok > {work}/out.txt"]).returncode == 0
    assert (work / "out.txt").read_text() == "ok\n"
    assert _run_sandboxed(data_dir, ["sh", "-c", f"echo x > {ROOT}/pwned"]).returncode != 0
    assert not (ROOT / "pwned").exists()


def test_without_bubblewrap_office_files_cannot_be_wrapped(data_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_BWRAP", None)
    monkeypatch.setattr(sandbox, "_checked", True)
    with pytest.raises(sandbox.Unavailable):
        sandbox.wrap(["soffice"], data_dir=data_dir, workdir=data_dir, mode="bwrap", office=True)
    # The page worker (PDFs) still runs, under its own limits (the server warned at start).
    assert sandbox.wrap(["python3"], data_dir=data_dir, workdir=data_dir, mode="bwrap") == ["python3"]
    # Explicitly off: the command runs as given (the operator chose it).
    assert sandbox.wrap(["soffice"], data_dir=data_dir, workdir=data_dir, mode="off",
                        office=True) == ["soffice"]


# --- what a zip really is ----------------------------------------------------------------------------

def _zip(entries: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in entries.items():
            archive.writestr(name, text)
    return out.getvalue()


DOCX_TYPES = ('<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
              '<Override PartName="/word/document.xml" ContentType="application/'
              'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
PPTX_TYPES = ('<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
              '<Override PartName="/ppt/presentation.xml" ContentType="application/'
              'vnd.openxmlformats-officedocument.presentationml.presentation.main+xml"/></Types>')


def test_a_docx_with_a_dummy_presentation_part_is_refused() -> None:
    docx = _zip({"[Content_Types].xml": DOCX_TYPES, "word/document.xml": "<w:document/>",
                 "ppt/presentation.xml": "<p:presentation/>"})
    with pytest.raises(DeckError) as refused:
        check_office_zip(docx, DEFAULT_LIMITS)
    assert refused.value.code == "unsupported_type"
    no_types = _zip({"ppt/presentation.xml": "<p:presentation/>"})
    with pytest.raises(DeckError):
        check_office_zip(no_types, DEFAULT_LIMITS)
    assert check_office_zip(_zip({"[Content_Types].xml": PPTX_TYPES,
                                  "ppt/presentation.xml": "<p:presentation/>"}), DEFAULT_LIMITS) == ".pptx"
    # ODP: the mimetype member, first, says so; an ODT (text) does not pass.
    odt = _zip({"mimetype": "application/vnd.oasis.opendocument.text", "content.xml": "<x/>"})
    with pytest.raises(DeckError):
        check_office_zip(odt, DEFAULT_LIMITS)
    late = _zip({"content.xml": "<x/>", "mimetype": "application/vnd.oasis.opendocument.presentation"})
    with pytest.raises(DeckError):
        check_office_zip(late, DEFAULT_LIMITS)
    odp = _zip({"mimetype": "application/vnd.oasis.opendocument.presentation", "content.xml": "<x/>"})
    assert check_office_zip(odp, DEFAULT_LIMITS) == ".odp"


# --- recordings: the manifest and the offline pack ------------------------------------------------

def _timeline(directory: Path, events: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "timeline.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


SLIDE = "a" * 32 + ".webp"
EVENTS = [
    {"at_ms": 0, "kind": "slide", "data": {"deck_id": 1, "page": 0, "image": SLIDE,
                                           "large": "b" * 32 + ".webp"}},
    {"at_ms": 500, "kind": "chat", "data": {"from": "Noy Phommachanh", "id": "p1",
                                            "text": "my phone number is 020 555", "teacher": False}},
    {"at_ms": 700, "kind": "hand", "data": {"id": "p1", "name": "Noy Phommachanh", "up": True}},
    {"at_ms": 900, "kind": "floor", "data": {"id": "p1", "name": "Noy Phommachanh"}},
    {"at_ms": 1000, "kind": "ink", "data": {"page": 0, "points": [1, 2, 3, 4], "color": 1, "width": 2}},
    {"at_ms": 1200, "kind": "poll_result", "data": {"id": "q", "question": "Ready?", "choices": ["y", "n"],
                                                    "counts": [3, 1], "shown": True}},
    {"at_ms": 1300, "kind": "poll_result", "data": {"id": "r", "question": "Secret?", "choices": ["y", "n"],
                                                    "counts": [0, 4], "shown": False}},
]


def test_manifest_is_built_once_until_the_timeline_changes(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "rec"
    _timeline(directory, EVENTS)
    reads: list[Path] = []
    real = playback.read_timeline

    def counting(d: Path) -> list[dict[str, Any]]:
        reads.append(d)
        return real(d)

    monkeypatch.setattr(web_recordings, "read_timeline", counting)
    web_recordings.MANIFESTS.clear()
    first = web_recordings._manifest(directory, "Water", "/a/listen.ogg", 12.0)
    for _ in range(200):  # a flood of manifest requests
        assert web_recordings._manifest(directory, "Water", "/a/listen.ogg", 12.0) == first
    assert len(reads) == 1
    assert len(first.slides) == 1 and len(first.ink) == 1 and len(first.polls) == 1
    # The timeline grows (a repaired recording): the next manifest sees it.
    _timeline(directory, EVENTS + [{"at_ms": 2000, "kind": "ink_clear", "data": {"page": 0}}])
    second = web_recordings._manifest(directory, "Water", "/a/listen.ogg", 12.0)
    assert len(reads) == 2 and len(second.ink) == 2
    assert len(web_recordings.MANIFESTS) <= web_recordings.MANIFEST_CACHE_SIZE


def test_offline_pack_carries_only_what_the_player_shows(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    _timeline(directory, EVENTS)
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    (slides_dir / SLIDE).write_bytes(b"RIFF....WEBP")
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(b"ID3" + b"\0" * 100)
    events = playback.read_timeline(directory)
    out = tmp_path / "offline.zip"
    offline_pack.write_pack(out, mp3, events, playback.slide_changes(events), slides_dir, 2.0, "Water")
    with zipfile.ZipFile(out) as pack:
        everything = b"".join(pack.read(name) for name in pack.namelist()).decode("utf-8", "replace")
        timeline = json.loads(pack.read("timeline.json"))
    for private in ("Noy", "020 555", "Secret?", '"hand"', '"floor"', '"chat"'):
        assert private not in everything, private
    assert [s["small"] for s in timeline["slides"]] == [f"slides/{SLIDE}"]
    assert len(timeline["ink"]) == 1 and [p["question"] for p in timeline["polls"]] == ["Ready?"]
