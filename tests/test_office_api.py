"""The school office through its JSON API, against a real server: the admin's journey from an
empty server to a subscribed calendar, and the bad input an office will inevitably send."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import icalendar

from servers import ApiClient, GroomServer

LAO = ZoneInfo("Asia/Vientiane")
LAO_NAMES = ["ສົມສັກ ພົມມະຈັນ", "ນ້ອຍ ສີສຸວັນ", "ບຸນມີ ແກ້ວມະນີ"]


def uid() -> str:
    return uuid.uuid4().hex[:8]


def monday_in(weeks: int) -> dt.date:
    """A Monday at least ``weeks`` weeks ahead in the school's time zone."""
    today = dt.datetime.now(LAO).date()
    return today + dt.timedelta(days=7 * weeks - today.weekday())


async def make_school(client: ApiClient, **fields: Any) -> dict[str, Any]:
    status, body = await client.call("POST", "/api/schools", json={"name": f"School {uid()}",
                                                                   **fields})
    assert status == 201 and isinstance(body, dict), body
    return body


async def make_teacher(client: ApiClient, school_id: int, role: str = "teacher") -> dict[str, Any]:
    username = f"t-{uid()}"
    status, body = await client.call("POST", f"/api/schools/{school_id}/teachers", json={
        "username": username, "password": "teacher-pass-1", "display_name": "ອາຈານ " + username,
        "role": role})
    assert status == 201 and isinstance(body, dict), body
    return body


async def make_class(client: ApiClient, school_id: int, teacher_id: int | None) -> dict[str, Any]:
    status, body = await client.call("POST", f"/api/schools/{school_id}/classes", json={
        "name": f"ປ.4 {uid()}", "subject": "ພາສາລາວ", "grade": "4", "teacher_id": teacher_id})
    assert status == 201 and isinstance(body, dict), body
    return body


async def test_admin_journey(root: ApiClient, anon: ApiClient) -> None:
    # A school, a teacher, two classes.
    school = await make_school(root, name="ໂຮງຮຽນ ບ້ານໜອງບົວ " + uid())
    assert school["timezone"] == "Asia/Vientiane"
    teacher = await make_teacher(root, school["id"])
    status, teachers = await root.call("GET", f"/api/schools/{school['id']}/teachers")
    assert status == 200 and [t["id"] for t in teachers] == [teacher["id"]]
    classroom = await make_class(root, school["id"], teacher["id"])
    other_class = await make_class(root, school["id"], teacher["id"])
    assert len(classroom["join_code"]) == 8 and classroom["teacher_name"] == teacher["display_name"]

    # A roster from a CSV saved by Excel: BOM, a header, Lao names, a blank line.
    csv = ("\ufeffname,age\r\n" + "".join(f"{n},10\r\n" for n in LAO_NAMES) + ",\r\n").encode()
    status, added = await root.call("POST", f"/api/classes/{classroom['id']}/students/import",
                                    data=csv, headers={"Content-Type": "text/csv"})
    assert status == 201, added
    assert sorted(s["name"] for s in added) == sorted(LAO_NAMES)
    assert all(len(s["card_code"]) == 10 for s in added)
    status, again = await root.call("POST", f"/api/classes/{classroom['id']}/students/import",
                                    data=csv, headers={"Content-Type": "text/csv"})
    assert status == 201 and again == []  # re-importing the same list adds nobody twice
    status, roster = await root.call("GET", f"/api/classes/{classroom['id']}/students")
    assert status == 200 and sorted(s["name"] for s in roster) == sorted(LAO_NAMES)

    # A weekly series: Monday, Wednesday, Friday at 08:00 for four weeks.
    monday = monday_in(3)
    status, series = await root.call("POST", f"/api/classes/{classroom['id']}/series", json={
        "title": "ພາສາລາວ", "weekdays": [0, 2, 4], "start_time": "08:00", "duration_minutes": 45,
        "first_date": monday.isoformat(), "last_date": (monday + dt.timedelta(days=25)).isoformat()})
    assert status == 201, series
    lessons = series["lessons"]
    assert len(lessons) == 12
    assert lessons[0]["starts_at"] == f"{monday.isoformat()}T01:00:00Z"  # 08:00 at UTC+7
    assert lessons[0]["local_start"] == f"{monday.isoformat()}T08:00:00+07:00"
    assert lessons[1]["local_start"].startswith((monday + dt.timedelta(days=2)).isoformat())

    # A clash with the same teacher (other class) is refused and names the lesson.
    wednesday = monday + dt.timedelta(days=2)
    one_off = {"title": "Maths", "starts_at": f"{wednesday.isoformat()}T08:30",
               "duration_minutes": 40}
    status, body = await root.call("POST", f"/api/classes/{other_class['id']}/lessons", json=one_off)
    assert status == 409 and body["error"]["code"] == "clash", body
    assert "ພາສາລາວ" in body["error"]["message"] and "08:00" in body["error"]["message"]
    assert body["error"]["details"]["lesson_id"] == lessons[1]["id"]

    # A series with one clash on the same class is refused as a whole.
    status, body = await root.call("POST", f"/api/classes/{classroom['id']}/series", json={
        "weekdays": [1, 4], "start_time": "08:30", "duration_minutes": 30,
        "first_date": monday.isoformat(), "last_date": (monday + dt.timedelta(days=6)).isoformat()})
    assert status == 409 and body["error"]["details"]["lesson_id"] == lessons[2]["id"], body
    status, upcoming = await root.call("GET", f"/api/classes/{classroom['id']}/lessons")
    assert status == 200 and len(upcoming) == 12

    # Cancel Wednesday's lesson: the slot is free for the other class now.
    status, cancelled = await root.call("POST", f"/api/lessons/{lessons[1]['id']}/cancel",
                                        json={"scope": "one"})
    assert status == 200 and [x["state"] for x in cancelled] == ["cancelled"]
    status, moved_in = await root.call("POST", f"/api/classes/{other_class['id']}/lessons",
                                       json=one_off)
    assert status == 201, moved_in
    assert moved_in["starts_at"] == f"{wednesday.isoformat()}T01:30:00Z"

    # The week view shows the week as the office sees it.
    status, week = await root.call("GET", f"/api/week?class_id={classroom['id']}"
                                          f"&week_start={monday.isoformat()}")
    assert status == 200 and week["timezone"] == "Asia/Vientiane"
    assert [len(d["lessons"]) for d in week["days"]] == [1, 0, 1, 0, 1, 0, 0]
    assert week["days"][2]["lessons"][0]["state"] == "cancelled"
    status, teacher_week = await root.call("GET", f"/api/week?teacher_id={teacher['id']}"
                                                  f"&week_start={monday.isoformat()}")
    assert status == 200 and len(teacher_week["days"][2]["lessons"]) == 2

    # The class's calendar feed: no cookie needed, parses, right events, right times.
    status, feed = await root.call("GET", f"/api/classes/{classroom['id']}/calendar")
    assert status == 200 and feed["webcal_url"].startswith("webcal://")
    path = feed["url"].split("://", 1)[1].split("/", 1)[1]
    status, text = await anon.call("GET", "/" + path)
    assert status == 200, text
    cal = icalendar.Calendar.from_ical(text)
    events = sorted(cal.walk("VEVENT"), key=lambda e: e.decoded("dtstart"))
    assert len(events) == 12
    first = events[0]
    start = first.decoded("dtstart")
    assert start == dt.datetime.combine(monday, dt.time(8), LAO)
    assert start.astimezone(dt.timezone.utc) == dt.datetime.combine(monday, dt.time(1),
                                                                    dt.timezone.utc)
    assert first.decoded("dtend") - start == dt.timedelta(minutes=45)
    assert str(first["summary"]) == "ພາສາລາວ"
    assert [str(e["status"]) for e in events].count("CANCELLED") == 1
    assert str(events[1]["status"]) == "CANCELLED"
    assert cal.walk("VTIMEZONE"), "times carry their zone"
    # A forged or altered token is refused like an unknown feed.
    status, _ = await anon.call("GET", "/" + path.replace(".ics", "x.ics"))
    assert status == 404
    status, _ = await anon.call("GET", f"/calendar/class/{other_class['id']}/"
                                       + path.rsplit("/", 1)[1])
    assert status == 404

    # The teacher's feed has both classes' lessons.
    status, feed = await root.call("GET", f"/api/teachers/{teacher['id']}/calendar")
    assert status == 200
    status, text = await anon.call("GET", "/" + feed["url"].split("://", 1)[1].split("/", 1)[1])
    assert status == 200
    assert len(icalendar.Calendar.from_ical(text).walk("VEVENT")) == 13

    # A new join code changes the class's feed URL (a leaked link can be revoked).
    status, renewed = await root.call("POST", f"/api/classes/{classroom['id']}/join-code")
    assert status == 200 and renewed["join_code"] != classroom["join_code"]
    status, _ = await anon.call("GET", "/" + path)
    assert status == 404


async def test_bad_input_is_refused_and_changes_nothing(root: ApiClient) -> None:
    school = await make_school(root)
    sid = school["id"]
    # Malformed JSON, wrong types, unknown fields, wrong content type.
    status, body = await root.call("POST", "/api/schools", data=b"{nope",
                                   headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"]["code"] == "malformed_json"
    status, body = await root.call("POST", "/api/schools", json={"name": 5})
    assert status == 422 and body["error"]["code"] == "invalid"
    status, body = await root.call("POST", "/api/schools", json={"name": "x", "colour": "red"})
    assert status == 422
    status, body = await root.call("POST", "/api/schools", data=b"name=x",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, body = await root.call("POST", "/api/schools", json={"name": "x", "timezone": "Mars/Base"})
    assert status == 422 and body["error"]["code"] == "bad_timezone"
    for name in ("", "   ", "bad\x00name", "x" * 201):
        status, body = await root.call("POST", "/api/schools", json={"name": name})
        assert status == 422, (name, body)
    status, body = await root.call("PATCH", f"/api/schools/{sid}", json={"timezone": "../../etc"})
    assert status == 422
    status, again = await root.call("GET", f"/api/schools/{sid}")
    assert again == school

    # Unknown ids: 404, whatever their size or shape.
    for path in ("/api/schools/999999", "/api/schools/99999999999", "/api/classes/0",
                 "/api/lessons/2147483648", "/api/classes/abc"):
        status, body = await root.call("GET", path)
        assert status == 404, (path, body)
        assert body["error"]["code"] in ("not_found", "not_found")

    teacher = await make_teacher(root, sid)
    status, body = await root.call("POST", f"/api/schools/{sid}/teachers", json={
        "username": teacher["username"], "password": "another-pass-1"})
    assert status == 409 and body["error"]["code"] == "username_taken"
    status, body = await root.call("POST", f"/api/schools/{sid}/teachers", json={
        "username": f"x-{uid()}", "password": "short"})
    assert status == 422
    status, body = await root.call("POST", f"/api/schools/{sid}/classes", json={
        "name": "Class", "teacher_id": 999999})
    assert status == 404 and body["error"]["details"]["what"] == "teacher"

    # CSV imports that are not acceptable import nothing.
    classroom = await make_class(root, sid, teacher["id"])
    url = f"/api/classes/{classroom['id']}/students/import"
    bad_files = [
        ("ສົມສັກ\n".encode("utf-16"), 422, "bad_csv"),            # not UTF-8
        ("Élève\n".encode("cp1252"), 422, "bad_csv"),              # Windows-1252
        ("name,age\nສົມສັກ,9\n,10\n".encode(), 422, "bad_csv"),   # an empty name
        (("ກ" * 201 + "\n").encode(), 422, "bad_csv"),             # a name over 200 characters
        (b"", 422, "bad_csv"),                                      # nothing at all
        (b"name\n", 422, "bad_csv"),                                # a header only
        (("x\n" * 2001).encode(), 413, "too_large"),                # too many rows
        (b"a" * (256 * 1024 + 1), 413, "too_large"),                # too many bytes
    ]
    for data, expected, code in bad_files:
        status, body = await root.call("POST", url, data=data, headers={"Content-Type": "text/csv"})
        assert status == expected and body["error"]["code"] == code, (data[:20], body)
    status, body = await root.call("POST", url, data=b"x\n",
                                   headers={"Content-Type": "application/pdf"})
    assert status == 415
    status, body = await root.call("POST", url, data=b"x\n", headers={"Content-Type": "text/csv",
                                                                       "X-CSRF-Token": "forged"})
    assert status == 403 and body["error"]["code"] == "csrf"
    status, roster = await root.call("GET", f"/api/classes/{classroom['id']}/students")
    assert status == 200 and roster == []

    # Semicolons (European Excel) and a name column that is not the first one.
    data = "No;ຊື່\n1;  ສົມສັກ   ພົມມະຈັນ \n2;ນ້ອຍ\n".encode()
    status, added = await root.call("POST", url, data=data, headers={"Content-Type": "text/csv"})
    assert status == 201 and [s["name"] for s in added] == ["ສົມສັກ ພົມມະຈັນ", "ນ້ອຍ"]


async def test_roster_add_remove_and_new_card(root: ApiClient) -> None:
    school = await make_school(root)
    classroom = await make_class(root, school["id"], None)
    status, student = await root.call("POST", f"/api/classes/{classroom['id']}/students",
                                      json={"name": "ວັນນາ ສຸລິຍະ"})
    assert status == 201 and student["name"] == "ວັນນາ ສຸລິຍະ"
    status, renewed = await root.call("POST", f"/api/students/{student['id']}/card")
    assert status == 200 and renewed["card_code"] != student["card_code"]
    status, _ = await root.call("DELETE", f"/api/students/{student['id']}")
    assert status == 204
    status, _ = await root.call("DELETE", f"/api/students/{student['id']}")
    assert status == 404
    status, roster = await root.call("GET", f"/api/classes/{classroom['id']}/students")
    assert roster == []


async def test_missing_session_is_401(anon: ApiClient, server: GroomServer) -> None:
    for method, path in (("GET", "/api/schools"), ("POST", "/api/schools"), ("GET", "/api/classes"),
                         ("GET", "/api/week"), ("GET", "/api/agenda"),
                         ("GET", "/api/lessons/1/attendance")):
        status, body = await anon.call(method, path, json={"name": "x"} if method == "POST" else None)
        assert status == 401 and body["error"]["code"] == "unauthorized", (path, body)
