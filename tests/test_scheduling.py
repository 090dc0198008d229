"""The schedule through the API: series rules and limits, rescheduling and cancelling one lesson
or the rest of a series, all-or-nothing clashes, a class changing teacher, week views, agendas."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from servers import ApiClient, GroomServer
from test_office_api import LAO, make_class, make_school, make_teacher, monday_in


async def series(client: ApiClient, class_id: int, **fields: Any) -> tuple[int, Any]:
    return await client.call("POST", f"/api/classes/{class_id}/series", json=fields)


async def setup(root: ApiClient) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    school = await make_school(root)
    teacher = await make_teacher(root, school["id"])
    classroom = await make_class(root, school["id"], teacher["id"])
    return school, teacher, classroom


async def test_series_limits_and_bad_dates(root: ApiClient) -> None:
    _, _, classroom = await setup(root)
    cid = classroom["id"]
    monday = monday_in(2)
    good = {"weekdays": [0], "start_time": "08:00", "duration_minutes": 45,
            "first_date": str(monday), "last_date": str(monday + dt.timedelta(days=28))}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"weekdays": []}, "invalid"),
        ({"weekdays": [7]}, "invalid"),
        ({"weekdays": ["monday"]}, "invalid"),
        ({"last_date": str(monday - dt.timedelta(days=1))}, "bad_dates"),
        ({"last_date": str(monday + dt.timedelta(days=400))}, "series_too_long"),
        ({"first_date": "2030-02-30"}, "invalid"),
        ({"first_date": "9999-12-31", "last_date": "9999-12-31"}, "bad_date"),
        ({"start_time": "25:00"}, "invalid"),
        ({"duration_minutes": 0}, "invalid"),
        ({"duration_minutes": 10_000}, "invalid"),
        ({"weekdays": [1], "last_date": str(monday)}, "empty_series"),
        ({"first_date": "2020-01-06", "last_date": "2020-02-03"}, "in_the_past"),
        ({"title": "x" * 201}, "invalid"),
    ]
    for change, code in cases:
        status, body = await series(root, cid, **{**good, **change})
        assert status == 422 and body["error"]["code"] == code, (change, body)
    status, lessons = await root.call("GET", f"/api/classes/{cid}/lessons")
    assert lessons == []  # nothing refused left anything behind
    status, created = await series(root, cid, **good)
    assert status == 201 and len(created["lessons"]) == 5
    assert created["weekdays"] == [0] and created["start_time"] == "08:00"
    # Lessons get the class's name when no title is given.
    assert created["lessons"][0]["title"] == classroom["name"]

    status, body = await root.call("POST", f"/api/classes/{cid}/lessons", json={
        "starts_at": "2020-01-01T08:00", "duration_minutes": 45})
    assert status == 422 and body["error"]["code"] == "in_the_past"


async def test_series_is_all_or_nothing(root: ApiClient) -> None:
    school, teacher, classroom = await setup(root)
    other = await make_class(root, school["id"], teacher["id"])
    monday = monday_in(2)
    thursday = monday + dt.timedelta(days=17)
    status, blocker = await root.call("POST", f"/api/classes/{other['id']}/lessons", json={
        "title": "ຄະນິດສາດ", "starts_at": f"{thursday}T09:00", "duration_minutes": 60})
    assert status == 201
    status, body = await series(root, classroom["id"], weekdays=[0, 1, 2, 3, 4], start_time="09:30",
                                duration_minutes=45, first_date=str(monday),
                                last_date=str(monday + dt.timedelta(days=27)))
    assert status == 409, body
    assert body["error"]["details"]["lesson_id"] == blocker["id"]
    assert "ຄະນິດສາດ" in body["error"]["message"] and "09:00" in body["error"]["message"]
    assert "same teacher" in body["error"]["message"]
    status, lessons = await root.call("GET", f"/api/classes/{classroom['id']}/lessons")
    assert lessons == []
    # Touching is not overlapping: a lesson may start when the previous one ends.
    status, after = await root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
        "starts_at": f"{thursday}T10:00", "duration_minutes": 30})
    assert status == 201, after


async def test_reschedule_and_cancel_one_or_the_rest(root: ApiClient) -> None:
    _, _, classroom = await setup(root)
    monday = monday_in(2)
    status, created = await series(root, classroom["id"], title="Lao", weekdays=[0, 3],
                                   start_time="08:00", duration_minutes=45, first_date=str(monday),
                                   last_date=str(monday + dt.timedelta(days=34)))
    assert status == 201
    lessons = created["lessons"]
    assert len(lessons) == 10

    # One lesson moves to Tuesday 14:00 and gets longer; the others stay.
    tuesday = monday + dt.timedelta(days=1)
    status, moved = await root.call("POST", f"/api/lessons/{lessons[0]['id']}/reschedule", json={
        "starts_at": f"{tuesday}T14:00", "duration_minutes": 60, "scope": "one"})
    assert status == 200 and len(moved) == 1, moved
    assert moved[0]["local_start"] == f"{tuesday}T14:00:00+07:00"
    assert moved[0]["duration_minutes"] == 60
    status, second = await root.call("GET", f"/api/lessons/{lessons[1]['id']}")
    assert second == lessons[1]

    # The rest of the series from the 4th lesson moves from 08:00 to 09:30.
    fourth = dt.datetime.fromisoformat(lessons[3]["local_start"])
    status, moved = await root.call("POST", f"/api/lessons/{lessons[3]['id']}/reschedule", json={
        "starts_at": f"{fourth.date()}T09:30", "scope": "rest"})
    assert status == 200 and [x["id"] for x in moved] == [x["id"] for x in lessons[3:]]
    for before, after in zip(lessons[3:], moved):
        old, new = (dt.datetime.fromisoformat(before["local_start"]),
                    dt.datetime.fromisoformat(after["local_start"]))
        assert new - old == dt.timedelta(hours=1, minutes=30)
        assert new.tzinfo is not None and new.utcoffset() == dt.timedelta(hours=7)
        assert after["duration_minutes"] == 45
    status, third = await root.call("GET", f"/api/lessons/{lessons[2]['id']}")
    assert third == lessons[2]

    # Moving onto another lesson of the class is refused, and nothing moves.
    status, body = await root.call("POST", f"/api/lessons/{lessons[4]['id']}/reschedule", json={
        "starts_at": moved[0]["local_start"], "scope": "one"})
    assert status == 409 and body["error"]["details"]["lesson_id"] == lessons[3]["id"]
    status, fifth = await root.call("GET", f"/api/lessons/{lessons[4]['id']}")
    assert fifth == moved[1]
    # The same move for the rest of the series is refused as a whole too.
    status, body = await root.call("POST", f"/api/lessons/{lessons[4]['id']}/reschedule", json={
        "starts_at": moved[0]["local_start"], "scope": "rest"})
    assert status == 409 and body["error"]["details"]["lesson_id"] == lessons[3]["id"]
    status, later = await root.call("GET", f"/api/classes/{classroom['id']}/lessons")
    assert [x["starts_at"] for x in later[3:]] == [x["starts_at"] for x in moved]
    # Moving the rest one week later is fine: the moved lessons keep their spacing.
    status, body = await root.call("POST", f"/api/lessons/{lessons[8]['id']}/reschedule", json={
        "starts_at": (dt.datetime.fromisoformat(moved[5]["local_start"]) + dt.timedelta(days=7))
        .replace(tzinfo=None).isoformat(), "scope": "rest"})
    assert status == 200 and len(body) == 2

    # Cancel the rest from the 8th lesson; cancelled lessons cannot be moved or cancelled again.
    status, cancelled = await root.call("POST", f"/api/lessons/{lessons[7]['id']}/cancel",
                                        json={"scope": "rest"})
    assert status == 200 and [x["id"] for x in cancelled] == [x["id"] for x in lessons[7:]]
    assert {x["state"] for x in cancelled} == {"cancelled"}
    status, body = await root.call("POST", f"/api/lessons/{lessons[7]['id']}/cancel",
                                   json={"scope": "one"})
    assert status == 409 and body["error"]["code"] == "not_scheduled"
    status, body = await root.call("POST", f"/api/lessons/{lessons[8]['id']}/reschedule",
                                   json={"starts_at": f"{monday}T10:00"})
    assert status == 409
    status, upcoming = await root.call("GET", f"/api/classes/{classroom['id']}/lessons")
    assert len(upcoming) == 7
    status, body = await root.call("POST", f"/api/lessons/{lessons[1]['id']}/cancel",
                                   json={"scope": "all"})
    assert status == 422


async def test_aware_times_week_views_and_agenda(root: ApiClient, server: GroomServer) -> None:
    school, teacher, classroom = await setup(root)
    # An aware time is taken as given: 02:00 UTC is 09:00 in Vientiane.
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3)).replace(
        minute=0, second=0, microsecond=0)
    status, lesson = await root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
        "title": "Soon", "starts_at": soon.isoformat(), "duration_minutes": 30})
    assert status == 201, lesson
    assert dt.datetime.fromisoformat(lesson["starts_at"]) == soon
    assert dt.datetime.fromisoformat(lesson["local_start"]) == soon.astimezone(LAO)

    client = ApiClient(server.base_url)
    try:
        await client.login(teacher["username"], "teacher-pass-1")
        status, agenda = await client.call("GET", "/api/agenda?days=2")
        assert status == 200 and [x["id"] for x in agenda] == [lesson["id"]]
        status, body = await client.call("GET", "/api/agenda?days=0")
        assert status == 422
        status, week = await client.call("GET", "/api/week?week_start="
                                         + str(soon.astimezone(LAO).date()))
        assert status == 200 and week["days"][0]["lessons"][0]["id"] == lesson["id"]
    finally:
        await client.close()

    status, week = await root.call("GET", f"/api/week?school_id={school['id']}")
    assert status == 200 and week["timezone"] == "Asia/Vientiane"
    assert len(week["days"]) == 7 and dt.date.fromisoformat(week["week_start"]).weekday() == 0
    status, body = await root.call("GET", f"/api/week?school_id={school['id']}"
                                          f"&class_id={classroom['id']}")
    assert status == 422
    status, body = await root.call("GET", "/api/week")  # the admin of all: which school?
    assert status == 422
    status, body = await root.call("GET", "/api/week?week_start=2030-13-01&class_id=1")
    assert status == 422

    # A school in another time zone shows the same instant at its own wall clock.
    status, moved = await root.call("PATCH", f"/api/schools/{school['id']}",
                                    json={"timezone": "Asia/Bangkok"})
    assert status == 200
    status, same = await root.call("GET", f"/api/lessons/{lesson['id']}")
    assert same["starts_at"] == lesson["starts_at"] and same["timezone"] == "Asia/Bangkok"


async def test_class_changes_teacher(root: ApiClient) -> None:
    school, teacher, classroom = await setup(root)
    other_teacher = await make_teacher(root, school["id"])
    busy_class = await make_class(root, school["id"], other_teacher["id"])
    monday = monday_in(3)
    status, mine = await root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
        "starts_at": f"{monday}T08:00", "duration_minutes": 45})
    assert status == 201 and mine["teacher_id"] == teacher["id"]
    status, theirs = await root.call("POST", f"/api/classes/{busy_class['id']}/lessons", json={
        "title": "Busy", "starts_at": f"{monday}T08:30", "duration_minutes": 45})
    assert status == 201
    # The new teacher is busy at that time: refused, nothing changes.
    status, body = await root.call("PATCH", f"/api/classes/{classroom['id']}",
                                   json={"teacher_id": other_teacher["id"]})
    assert status == 409 and body["error"]["details"]["lesson_id"] == theirs["id"], body
    status, again = await root.call("GET", f"/api/classes/{classroom['id']}")
    assert again["teacher_id"] == teacher["id"]
    # After the busy lesson is cancelled the change goes through, lessons included.
    await root.call("POST", f"/api/lessons/{theirs['id']}/cancel", json={})
    status, changed = await root.call("PATCH", f"/api/classes/{classroom['id']}",
                                      json={"teacher_id": other_teacher["id"], "grade": "5"})
    assert status == 200 and changed["teacher_name"] == other_teacher["display_name"]
    assert changed["grade"] == "5" and changed["name"] == classroom["name"]
    status, lesson = await root.call("GET", f"/api/lessons/{mine['id']}")
    assert lesson["teacher_id"] == other_teacher["id"]
    # null removes the teacher.
    status, changed = await root.call("PATCH", f"/api/classes/{classroom['id']}",
                                      json={"teacher_id": None})
    assert status == 200 and changed["teacher_id"] is None


async def test_simultaneous_bookings_of_one_slot(root: ApiClient) -> None:
    """Two offices booking the same slot at the same moment: exactly one wins."""
    _, _, classroom = await setup(root)
    monday = monday_in(4)
    answers = await asyncio.gather(*(
        root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
            "title": f"Try {i}", "starts_at": f"{monday}T10:{i:02d}", "duration_minutes": 45})
        for i in range(6)))
    assert sorted(status for status, _ in answers) == [201] + [409] * 5, answers
    status, lessons = await root.call("GET", f"/api/classes/{classroom['id']}/lessons")
    assert len(lessons) == 1
