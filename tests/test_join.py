"""Joining with a class code or a personal card: what the code opens, and the rate limit that
keeps codes from being guessed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer
from test_office_api import make_class, make_school, make_teacher


async def test_class_and_card_codes(root: ApiClient, anon: ApiClient) -> None:
    school = await make_school(root)
    teacher = await make_teacher(root, school["id"])
    classroom = await make_class(root, school["id"], teacher["id"])
    status, student = await root.call("POST", f"/api/classes/{classroom['id']}/students",
                                      json={"name": "ຄຳແສງ ວົງສາ"})
    assert status == 201

    # No lesson yet: the code still opens the class, with no lesson to join.
    status, body = await anon.call("POST", "/api/join", json={"code": classroom["join_code"]})
    assert status == 200, body
    assert body["kind"] == "class" and body["class_id"] == classroom["id"]
    assert body["lesson"] is None and body["student_id"] is None

    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).replace(second=0,
                                                                              microsecond=0)
    for hours, title in ((26, "Later"), (0, "Next")):
        status, lesson = await root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
            "title": title, "starts_at": (soon + dt.timedelta(hours=hours)).isoformat(),
            "duration_minutes": 30})
        assert status == 201, lesson

    # Typed the way people type: lower case, spaces, dashes.
    code = classroom["join_code"].lower()
    status, body = await anon.call("POST", "/api/join", json={"code": f" {code[:4]}-{code[4:]} "})
    assert status == 200 and body["lesson"]["title"] == "Next", body
    assert body["lesson"]["state"] == "scheduled"
    assert dt.datetime.fromisoformat(body["lesson"]["starts_at"]) == soon

    status, body = await anon.call("POST", "/api/join", json={"code": student["card_code"]})
    assert status == 200 and body["kind"] == "student"
    assert body["student_id"] == student["id"] and body["student_name"] == "ຄຳແສງ ວົງສາ"
    assert body["class_id"] == classroom["id"] and body["lesson"]["title"] == "Next"

    for wrong in ("AAAAAAAA", "0OIL0OIL", "x", "ACDEFGHJKM"):
        status, body = await anon.call("POST", "/api/join", json={"code": wrong})
        assert status == 404 and body["error"]["code"] == "bad_code", (wrong, body)
    status, body = await anon.call("POST", "/api/join", json={"code": ""})
    assert status == 422
    status, body = await anon.call("POST", "/api/join", data=b"{",
                                   headers={"Content-Type": "application/json"})
    assert status == 400

    # A new card code: the old card stops working.
    status, renewed = await root.call("POST", f"/api/students/{student['id']}/card")
    status, body = await anon.call("POST", "/api/join", json={"code": student["card_code"]})
    assert status == 404
    status, body = await anon.call("POST", "/api/join", json={"code": renewed["card_code"]})
    assert status == 200


async def test_wrong_codes_are_rate_limited(tmp_path: Path) -> None:
    # Its own server (SQLite: the limit lives in memory) with a limit of 3 wrong codes a minute.
    server = GroomServer(tmp_path, args=("--join-attempts-per-minute", "3"))
    server.create_root()
    server.start()
    client = ApiClient(server.base_url)
    try:
        await client.login(ROOT_USER, ROOT_PASSWORD)
        school = await make_school(client)
        classroom = await make_class(client, school["id"], None)
        good = classroom["join_code"]
        status, _ = await client.call("POST", "/api/join", json={"code": good})
        assert status == 200
        for _ in range(3):
            status, body = await client.call("POST", "/api/join", json={"code": "AAAAAAAA"})
            assert status == 404
        # Right codes never count; once limited, every attempt waits except with a code already
        # used from this address (the rest of a class behind one school NAT): see joining.py.
        async with client.http.post(server.base_url + "/api/join", json={"code": "AAAAAAAA"}) as resp:
            assert resp.status == 429
            retry_after = int(resp.headers["Retry-After"])
            assert 1 <= retry_after <= 60
            body = await resp.json()
            assert body["error"]["code"] == "too_many_attempts"
            assert body["error"]["details"]["retry_after"] == retry_after
        status, body = await client.call("POST", "/api/join", json={"code": good})
        assert status == 200
        unused = (await make_class(client, school["id"], None))["join_code"]
        status, body = await client.call("POST", "/api/join", json={"code": unused})
        assert status == 429
    finally:
        await client.close()
        server.stop()
