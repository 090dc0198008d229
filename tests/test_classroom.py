"""Slides, ink, chat, polls and the timeline in a live lesson, over the real WebSocket."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from peers import Peer, new_lesson
from servers import ApiClient, GroomServer

pytestmark = pytest.mark.timeout(120)
SAMPLE_DECK = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"


async def _teacher_client(srv: GroomServer, demo: dict[str, Any]) -> ApiClient:
    client = ApiClient(srv.base_url)
    await client.login(demo["teacher_login"]["username"], demo["teacher_login"]["password"])
    return client


async def _upload(client: ApiClient, class_id: int, data: bytes, filename: str) -> tuple[int, Any]:
    return await client.call("POST", f"/api/classes/{class_id}/decks?title=Test&filename={filename}",
                             data=data, headers={"Content-Type": "application/octet-stream"})


async def test_deck_upload_and_slide_images(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    teacher = await _teacher_client(srv, demo)
    anon = ApiClient(srv.base_url)
    try:
        status, deck = await _upload(teacher, demo["class_id"], SAMPLE_DECK.read_bytes(), "deck.pdf")
        assert status == 201, deck
        assert deck["pages"] == len(deck["slides"]) >= 3
        first = deck["slides"][0]
        status, body = await anon.call("GET", f"/slides/{first['small']}")
        assert status == 200
        async with anon.http.get(f"{srv.base_url}/slides/{first['small']}") as resp:
            assert resp.headers["Content-Type"] == "image/webp"
            assert "immutable" in resp.headers["Cache-Control"]
            image = Image.open(io.BytesIO(await resp.read()))
            assert image.width <= 854 and image.height <= 480
        async with anon.http.get(f"{srv.base_url}/slides/{first['phone']}") as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/webp"
            assert "immutable" in resp.headers["Cache-Control"]
            image = Image.open(io.BytesIO(await resp.read()))
            assert image.width <= 600 and first["phone"] != first["small"]
        for name in ("../secret.key", "nothex.webp", "0" * 32 + ".png"):
            status, _ = await anon.call("GET", f"/slides/{name}")
            assert status == 404
        status, decks = await teacher.call("GET", f"/api/classes/{demo['class_id']}/decks")
        assert status == 200 and deck["id"] in [d["id"] for d in decks]
        # Hostile or wrong uploads are refused and leave no deck behind.
        for data, name in ((b"hello, not a pdf", "notes.pdf"), (b"%PDF-1.4\n garbage", "broken.pdf"),
                           (b"PK\x03\x04" + b"\0" * 100, "bomb.pptx")):
            status, body = await _upload(teacher, demo["class_id"], data, name)
            assert 400 <= status < 500, (name, status, body)
            assert body["error"]["code"]
        # The refusal is a template translated at the edge: English by default, Lao when asked.
        broken = b"%PDF-1.4\n garbage"
        status, body = await _upload(teacher, demo["class_id"], broken, "broken.pdf")
        assert body["error"] == {"code": "damaged",
                                 "message": "This PDF is damaged and cannot be read."}, body
        status, body = await teacher.call(
            "POST", f"/api/classes/{demo['class_id']}/decks?filename=broken.pdf", data=broken,
            headers={"Content-Type": "application/octet-stream", "Accept-Language": "lo"})
        assert status == 422 and body["error"]["message"] == "PDF ນີ້ເສຍຫາຍ ແລະ ອ່ານບໍ່ໄດ້.", body
        status, after = await teacher.call("GET", f"/api/classes/{demo['class_id']}/decks")
        assert len(after) == len(decks)
        status, _ = await _upload(anon, demo["class_id"], SAMPLE_DECK.read_bytes(), "deck.pdf")
        assert status == 401
    finally:
        await teacher.close()
        await anon.close()


async def _join(srv: GroomServer, demo: dict[str, Any], name: str) -> Peer:
    peer = Peer(srv.base_url)
    welcome = await peer.connect({"type": "hello", "role": "student", "code": demo["class_code"],
                                  "name": name})
    assert welcome["type"] == "welcome", welcome
    return peer


async def test_slides_ink_chat_polls_reach_the_class(live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    client = await _teacher_client(srv, demo)
    status, deck = await _upload(client, demo["class_id"], SAMPLE_DECK.read_bytes(), "deck.pdf")
    assert status == 201
    lesson_id = await new_lesson(srv, demo)
    teacher = Peer(srv.base_url, http=client.http)
    peers: list[Peer] = []
    try:
        welcome = await teacher.connect({"type": "hello", "role": "teacher", "lesson_id": lesson_id})
        assert welcome["type"] == "welcome" and welcome["slide"] is None
        early = await _join(srv, demo, "Early")
        peers.append(early)
        await teacher.send({"type": "deck", "deck_id": deck["id"]})
        got = await early.expect("deck")
        assert len(got["deck"]["slides"]) == deck["pages"]
        await teacher.send({"type": "slide", "page": 2})
        slide = await early.expect("slide")
        while slide["slide"]["page"] != 2:
            slide = await early.expect("slide")
        assert slide["slide"]["small"] == deck["slides"][2]["small"]
        stroke = [100, 100, 200, 150, 300, 220]
        await teacher.send({"type": "ink", "points": stroke, "color": 1, "width": 2})
        ink = await early.expect("ink")
        assert ink["stroke"]["points"] == stroke and ink["page"] == 2
        # A student may not change slides, draw, or run polls.
        for message in ({"type": "slide", "page": 0}, {"type": "ink", "points": [1, 2]},
                        {"type": "poll", "question": "q", "choices": ["a", "b"]}):
            await early.send(message)
            assert (await early.expect("error"))["code"] == "forbidden"
        # Ink floods and malformed ink are refused.
        await teacher.send({"type": "ink", "points": [1, 2, 3]})
        assert (await teacher.expect("error"))["code"] == "bad_message"
        await teacher.send({"type": "ink", "points": [5000, 1]})
        assert (await teacher.expect("error"))["code"] == "bad_message"
        # A late joiner sees the current slide and its ink at once.
        late = await _join(srv, demo, "Late")
        peers.append(late)
        assert late.welcome["slide"]["page"] == 2
        assert late.welcome["slide"]["ink"][0]["points"] == stroke
        assert len(late.welcome["deck"]["slides"]) == deck["pages"]
        # Chat: script is relayed as text; floods and chat-off are refused.
        await late.send({"type": "chat", "text": "<script>alert(1)</script> ສະບາຍດີ"})
        chat = await early.expect("chat")
        assert chat["text"] == "<script>alert(1)</script> ສະບາຍດີ" and chat["from"] == "Late"
        for i in range(15):
            await early.send({"type": "chat", "text": f"spam {i}"})
        error = await early.expect("error")
        assert error["code"] == "chat_too_fast"
        await teacher.send({"type": "chat_enabled", "on": False})
        await late.expect("chat_enabled")
        await late.send({"type": "chat", "text": "hello?"})
        assert (await late.expect("error"))["code"] == "chat_off"
        # Poll: each student answers once; the teacher sees counts; the class sees the result.
        await teacher.send({"type": "poll", "question": "2 + 2 = 4?", "choices": ["True", "False"]})
        poll = (await early.expect("poll"))["poll"]
        await late.expect("poll")
        await early.send({"type": "vote", "poll_id": poll["id"], "choice": 0})
        await late.send({"type": "vote", "poll_id": poll["id"], "choice": 1})
        await early.expect("voted")
        await early.send({"type": "vote", "poll_id": poll["id"], "choice": 1})
        assert (await early.expect("error"))["code"] == "already_voted"
        counts = await teacher.expect("poll_counts")
        while counts["voters"] < 2:
            counts = await teacher.expect("poll_counts")
        assert counts["counts"] == [1, 1]
        await teacher.send({"type": "poll_close", "show": True})
        result = await late.expect("poll_result")
        assert result["counts"] == [1, 1] and result["shown"] is True
        await early.send({"type": "hand", "up": True})
        await teacher.expect("hands")
        await teacher.send({"type": "end"})
        await teacher.expect("ended")
    finally:
        for p in (teacher, *peers):
            await p.close()
    # Everything the class saw is on the lesson's timeline.
    client = await _teacher_client(srv, demo)
    try:
        for _ in range(20):
            status, events = await client.call("GET", f"/api/lessons/{lesson_id}/events")
            assert status == 200
            kinds = {e["kind"] for e in events}
            if {"slide", "ink", "chat", "poll", "poll_result", "hand"} <= kinds:
                break
            await asyncio.sleep(0.2)
        assert {"slide", "ink", "chat", "chat_enabled", "poll", "poll_result", "hand"} <= kinds, kinds
        slides = [e for e in events if e["kind"] == "slide"]
        assert [e["data"]["page"] for e in slides] == [0, 2]
        assert all(a["at_ms"] <= b["at_ms"] for a, b in zip(events, events[1:]))
    finally:
        await client.close()
