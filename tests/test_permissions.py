"""Who may see and change what, across two schools: a school's admin and its teachers never read
or change another school's data, and a teacher sees only their own classes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from servers import ApiClient, GroomServer
from test_office_api import make_class, make_school, make_teacher, monday_in


async def login(server: GroomServer, user: dict[str, Any]) -> ApiClient:
    client = ApiClient(server.base_url)
    await client.login(user["username"], "teacher-pass-1")
    return client


async def setup_two_schools(root: ApiClient) -> dict[str, Any]:
    w: dict[str, Any] = {}
    for key in ("a", "b"):
        school = await make_school(root)
        admin = await make_teacher(root, school["id"], role="admin")
        teacher = await make_teacher(root, school["id"])
        classroom = await make_class(root, school["id"], teacher["id"])
        status, student = await root.call("POST", f"/api/classes/{classroom['id']}/students",
                                          json={"name": f"Student {key}"})
        assert status == 201
        monday = monday_in(5 if key == "a" else 6)
        status, lesson = await root.call("POST", f"/api/classes/{classroom['id']}/lessons", json={
            "title": f"Lesson {key}", "starts_at": f"{monday}T09:00", "duration_minutes": 45})
        assert status == 201, lesson
        w[key] = {"school": school, "admin": admin, "teacher": teacher, "class": classroom,
                  "student": student, "lesson": lesson, "monday": monday}
    # A second teacher in school A with a class of their own.
    w["a"]["teacher2"] = await make_teacher(root, w["a"]["school"]["id"])
    w["a"]["class2"] = await make_class(root, w["a"]["school"]["id"], w["a"]["teacher2"]["id"])
    return w


def foreign_requests(b: dict[str, Any], a: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Every way to read or change school B's data, by id."""
    sid, cid, lid = b["school"]["id"], b["class"]["id"], b["lesson"]["id"]
    return [
        ("GET", f"/api/schools/{sid}", None),
        ("PATCH", f"/api/schools/{sid}", {"name": "Taken over"}),
        ("GET", f"/api/schools/{sid}/teachers", None),
        ("POST", f"/api/schools/{sid}/teachers", {"username": "intruder", "password": "intruder-1"}),
        ("GET", f"/api/teachers/{b['teacher']['id']}", None),
        ("PATCH", f"/api/teachers/{b['teacher']['id']}", {"active": False}),
        ("GET", f"/api/teachers/{b['teacher']['id']}/calendar", None),
        ("POST", f"/api/schools/{sid}/classes", {"name": "Intruder class"}),
        ("GET", f"/api/classes/{cid}", None),
        ("PATCH", f"/api/classes/{cid}", {"name": "Taken over"}),
        ("POST", f"/api/classes/{cid}/join-code", None),
        ("GET", f"/api/classes/{cid}/calendar", None),
        ("GET", f"/api/classes/{cid}/students", None),
        ("POST", f"/api/classes/{cid}/students", {"name": "Intruder"}),
        ("DELETE", f"/api/students/{b['student']['id']}", None),
        ("POST", f"/api/students/{b['student']['id']}/card", None),
        ("GET", f"/api/classes/{cid}/lessons", None),
        ("POST", f"/api/classes/{cid}/lessons", {"starts_at": f"{b['monday']}T13:00",
                                                 "duration_minutes": 30}),
        ("POST", f"/api/classes/{cid}/series", {"weekdays": [3], "start_time": "13:00",
                                                "duration_minutes": 30,
                                                "first_date": str(b["monday"]),
                                                "last_date": str(b["monday"] + dt.timedelta(7))}),
        ("GET", f"/api/lessons/{lid}", None),
        ("POST", f"/api/lessons/{lid}/reschedule", {"starts_at": f"{b['monday']}T15:00"}),
        ("POST", f"/api/lessons/{lid}/cancel", {"scope": "one"}),
        ("GET", f"/api/lessons/{lid}/attendance", None),
        ("GET", f"/api/week?school_id={sid}", None),
        ("GET", f"/api/week?teacher_id={b['teacher']['id']}", None),
        ("GET", f"/api/week?class_id={cid}", None),
        ("GET", f"/api/classes?school_id={sid}", None),
        # Assigning another school's teacher to one's own class.
        ("PATCH", f"/api/classes/{a['class']['id']}", {"teacher_id": b["teacher"]["id"]}),
    ]


async def send(client: ApiClient, method: str, path: str, body: Any) -> tuple[int, Any]:
    if path.endswith("/import"):
        return await client.call(method, path, data=b"x\n", headers={"Content-Type": "text/csv"})
    return await client.call(method, path, json=body) if body is not None else \
        await client.call(method, path)


async def assert_b_unchanged(root: ApiClient, w: dict[str, Any]) -> None:
    b = w["b"]
    status, school = await root.call("GET", f"/api/schools/{b['school']['id']}")
    assert school == b["school"]
    status, classroom = await root.call("GET", f"/api/classes/{b['class']['id']}")
    assert classroom["name"] == b["class"]["name"]
    assert classroom["join_code"] == b["class"]["join_code"]
    status, roster = await root.call("GET", f"/api/classes/{b['class']['id']}/students")
    assert roster == [b["student"]]
    status, lesson = await root.call("GET", f"/api/lessons/{b['lesson']['id']}")
    assert lesson == b["lesson"]
    status, lessons = await root.call("GET", f"/api/classes/{b['class']['id']}/lessons")
    assert len(lessons) == 1
    status, teacher = await root.call("GET", f"/api/teachers/{b['teacher']['id']}")
    assert teacher["active"] is True


async def test_school_admin_cannot_touch_another_school(root: ApiClient, server: GroomServer) -> None:
    w = await setup_two_schools(root)
    admin = await login(server, w["a"]["admin"])
    try:
        status, schools = await admin.call("GET", "/api/schools")
        assert status == 200 and [s["id"] for s in schools] == [w["a"]["school"]["id"]]
        status, classes = await admin.call("GET", "/api/classes")
        assert {c["school_id"] for c in classes} == {w["a"]["school"]["id"]}
        for method, path, body in foreign_requests(w["b"], w["a"]):
            status, answer = await send(admin, method, path, body)
            # Never a confirmation that the id exists in another school.
            assert status == 404, (method, path, status, answer)
        status, body = await admin.call("POST", "/api/schools", json={"name": "Mine now"})
        assert status == 403
        # Their own school works.
        status, _ = await admin.call("PATCH", f"/api/schools/{w['a']['school']['id']}",
                                     json={"name": w["a"]["school"]["name"]})
        assert status == 200
        status, teachers = await admin.call("GET", f"/api/schools/{w['a']['school']['id']}/teachers")
        assert status == 200 and len(teachers) == 2
    finally:
        await admin.close()
    await assert_b_unchanged(root, w)


async def test_teacher_sees_only_their_own_classes(root: ApiClient, server: GroomServer) -> None:
    w = await setup_two_schools(root)
    a = w["a"]
    teacher = await login(server, a["teacher"])
    try:
        status, classes = await teacher.call("GET", "/api/classes")
        assert status == 200 and [c["id"] for c in classes] == [a["class"]["id"]]
        # Their own class: readable, but the schedule and roster are the office's to change.
        status, _ = await teacher.call("GET", f"/api/classes/{a['class']['id']}/students")
        assert status == 200
        status, _ = await teacher.call("GET", f"/api/lessons/{a['lesson']['id']}")
        assert status == 200
        for method, path, body in [
                ("POST", f"/api/classes/{a['class']['id']}/students", {"name": "x"}),
                ("POST", f"/api/classes/{a['class']['id']}/lessons",
                 {"starts_at": f"{a['monday']}T14:00", "duration_minutes": 30}),
                ("POST", f"/api/lessons/{a['lesson']['id']}/cancel", {"scope": "one"}),
                ("PATCH", f"/api/classes/{a['class']['id']}", {"name": "Mine"}),
                ("POST", f"/api/schools/{a['school']['id']}/teachers",
                 {"username": "new-one", "password": "password-1"}),
                ("GET", f"/api/week?school_id={a['school']['id']}", None)]:
            status, answer = await send(teacher, method, path, body)
            assert status == 403, (method, path, answer)
        # A colleague's class in the same school is as invisible as another school's.
        for method, path, body in [
                ("GET", f"/api/classes/{a['class2']['id']}", None),
                ("GET", f"/api/classes/{a['class2']['id']}/students", None),
                ("GET", f"/api/week?class_id={a['class2']['id']}", None),
                ("GET", f"/api/teachers/{a['teacher2']['id']}", None),
                *foreign_requests(w["b"], a)[:-1]]:
            status, answer = await send(teacher, method, path, body)
            assert status == 404, (method, path, answer)
        # Their own week, agenda and calendar.
        status, week = await teacher.call("GET", f"/api/week?week_start={a['monday']}")
        assert status == 200
        assert [x["id"] for d in week["days"] for x in d["lessons"]] == [a["lesson"]["id"]]
        status, feed = await teacher.call("GET", f"/api/teachers/{a['teacher']['id']}/calendar")
        assert status == 200
    finally:
        await teacher.close()
    await assert_b_unchanged(root, w)
