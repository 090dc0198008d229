"""The office pages against a real server: roles, schools, CSRF, forms, cards, Lao text.

Data is set up through the JSON API (as root); the pages are then used like a browser would,
with form posts that carry the hidden CSRF field.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from typing import Any, AsyncIterator
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from servers import ApiClient, GroomServer

_n = itertools.count(1)
TEACHER_PASSWORD = "teacher-password-1"


class PageClient:
    """A cookie-keeping HTTP client that logs in through the login form and posts forms."""

    def __init__(self, base_url: str, lang: str = "") -> None:
        self.base_url = base_url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.headers = {"Accept-Language": lang} if lang else {}

    async def login(self, username: str, password: str) -> str:
        status, _, location = await self.post("/login", {"username": username,
                                                         "password": password}, csrf=False)
        assert status == 302, status
        return location

    async def get(self, path: str) -> tuple[int, str, str]:
        async with self.http.get(self.base_url + path, allow_redirects=False,
                                 headers=self.headers) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location", "")

    async def csrf_from(self, path: str) -> str:
        status, html, _ = await self.get(path)
        assert status == 200, (path, status)
        match = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert match, "no CSRF field on " + path
        return match.group(1)

    async def post(self, path: str, data: Any, *, csrf: Any = True,
                   page: str = "/admin") -> tuple[int, str, str]:
        if csrf is True:
            token = await self.csrf_from(page)
        else:
            token = csrf
        if isinstance(data, aiohttp.FormData):
            if token:
                data.add_field("csrf_token", token)
        else:
            data = {**data, **({"csrf_token": token} if token else {})}
        async with self.http.post(self.base_url + path, data=data, allow_redirects=False,
                                  headers=self.headers) as resp:
            return resp.status, await resp.text(), resp.headers.get("Location", "")

    async def close(self) -> None:
        await self.http.close()


async def _api(client: ApiClient, method: str, path: str, **kw: Any) -> Any:
    status, body = await client.call(method, path, **kw)
    assert status in (200, 201), (path, status, body)
    return body


@pytest.fixture
async def world(root: ApiClient) -> dict[str, Any]:
    """Two schools: A with a teacher, a class and a roster; B with a class."""
    n = next(_n)
    a = await _api(root, "POST", "/api/schools", json={"name": f"ໂຮງຮຽນ A {n}"})
    b = await _api(root, "POST", "/api/schools", json={"name": f"School B {n}"})
    teacher = await _api(root, "POST", f"/api/schools/{a['id']}/teachers",
                         json={"username": f"teacher-a-{n}", "password": TEACHER_PASSWORD,
                               "display_name": "ອາຈານ ກ"})
    admin_a = await _api(root, "POST", f"/api/schools/{a['id']}/teachers",
                         json={"username": f"admin-a-{n}", "password": TEACHER_PASSWORD,
                               "display_name": "Admin A", "role": "admin"})
    class_a = await _api(root, "POST", f"/api/schools/{a['id']}/classes",
                         json={"name": "ປ.3 ກ", "subject": "ພາສາລາວ", "teacher_id": teacher["id"]})
    class_b = await _api(root, "POST", f"/api/schools/{b['id']}/classes", json={"name": "B-1"})
    students = [await _api(root, "POST", f"/api/classes/{class_a['id']}/students",
                           json={"name": name}) for name in ("ສົມສັກ ພົມມະຈັນ", "ນ້ອຍ ສີສຸວັນ")]
    return {"a": a, "b": b, "teacher": teacher, "admin_a": admin_a, "class_a": class_a,
            "class_b": class_b, "students": students}


@pytest.fixture
async def pages(server: GroomServer) -> AsyncIterator[PageClient]:
    client = PageClient(server.base_url)
    yield client
    await client.close()


async def _as(server: GroomServer, username: str, password: str = TEACHER_PASSWORD) -> PageClient:
    client = PageClient(server.base_url)
    await client.login(username, password)
    return client


async def test_anonymous_is_sent_to_the_login_page(pages: PageClient, world: dict[str, Any]) -> None:
    cid = world["class_a"]["id"]
    for path in ("/admin", "/teacher", f"/schools/{world['a']['id']}", f"/classes/{cid}",
                 f"/classes/{cid}/cards", f"/classes/{cid}/week", "/lessons/1"):
        status, _, location = await pages.get(path)
        assert status == 302 and location.startswith("/login?"), path
        assert parse_qs(urlsplit(location).query) == {"next": [path]}, location
    status, _, _ = await pages.post(f"/classes/{cid}/students", {"name": "x"}, csrf=False)
    assert status == 302  # to the login page, and nothing added
    status, html, _ = await pages.get("/join")
    assert status == 200 and 'name="code"' in html


async def test_login_goes_back_to_the_page_asked_for(server: GroomServer,
                                                     world: dict[str, Any]) -> None:
    """Anonymous -> /login?next=<page> -> the form carries it -> after login, that page again."""
    page = f"/classes/{world['class_a']['id']}/week"
    username = world["teacher"]["username"]
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        async with http.get(server.base_url + page) as resp:  # follows to the login page
            assert resp.status == 200 and resp.url.path == "/login"
            assert resp.url.query.get("next") == page
            html = await resp.text()
        match = re.search(r'<input type="hidden" name="next" value="([^"]*)">', html)
        assert match and match.group(1) == page, html
        async with http.post(server.base_url + "/login", data={
                "username": username, "password": TEACHER_PASSWORD, "next": match.group(1)}) as resp:
            assert resp.status == 200 and resp.url.path == page  # followed the redirect
            assert [r.headers["Location"] for r in resp.history] == [page]
        # Already logged in: the login page sends a safe next on at once.
        async with http.get(server.base_url + "/login",
                            params={"next": "/teacher?x=1"}, allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/teacher?x=1"
        async with http.get(server.base_url + "/login", params={"next": "//evil.example"},
                            allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/teacher"
    finally:
        await http.close()


@pytest.mark.parametrize("unsafe", ["//evil.example", "//evil.example/teacher", "https://evil.example/",
                                    "/\\evil.example", "/\t/evil.example", "javascript:alert(1)",
                                    "evil.example", ""])
async def test_login_ignores_a_next_that_leaves_the_site(server: GroomServer, world: dict[str, Any],
                                                         unsafe: str) -> None:
    """An unsafe next is neither put in the form nor followed: the role's home instead."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    try:
        async with http.get(server.base_url + "/login", params={"next": unsafe}) as resp:
            assert resp.status == 200
            assert 'name="next"' not in await resp.text()
        async with http.post(server.base_url + "/login", data={
                "username": world["teacher"]["username"], "password": TEACHER_PASSWORD,
                "next": unsafe}) as resp:
            assert resp.status == 200 and resp.url.host == "127.0.0.1", resp.url
            assert resp.url.path == "/teacher", resp.url
            assert [r.headers["Location"] for r in resp.history] == ["/teacher"]
    finally:
        await http.close()


async def test_a_wrong_password_keeps_next_in_the_form(server: GroomServer,
                                                       world: dict[str, Any]) -> None:
    page = f"/classes/{world['class_a']['id']}"
    http = aiohttp.ClientSession()
    try:
        async with http.post(server.base_url + "/login", data={
                "username": world["teacher"]["username"], "password": "wrong", "next": page},
                allow_redirects=False) as resp:
            assert resp.status == 401
            assert f'<input type="hidden" name="next" value="{page}">' in await resp.text()
    finally:
        await http.close()


async def test_root_sees_every_page(server: GroomServer, world: dict[str, Any]) -> None:
    from servers import ROOT_PASSWORD, ROOT_USER
    client = await _as(server, ROOT_USER, ROOT_PASSWORD)
    try:
        sid, cid = world["a"]["id"], world["class_a"]["id"]
        for path in ("/admin", f"/schools/{sid}", f"/schools/{sid}/week", f"/classes/{cid}",
                     f"/classes/{cid}/week?week=2026-01-07", f"/classes/{cid}/cards",
                     f"/teachers/{world['teacher']['id']}/week", "/teacher"):
            status, html, _ = await client.get(path)
            assert status == 200, (path, html[-500:])
        status, html, _ = await client.get(f"/schools/{sid}")
        assert world["teacher"]["username"] in html and "ປ.3 ກ" in html
    finally:
        await client.close()


async def test_teacher_sees_own_class_only(server: GroomServer, world: dict[str, Any]) -> None:
    teacher = await _as(server, world["teacher"]["username"])
    try:
        status, _, location = await teacher.get("/admin")
        assert status == 302 and location == "/teacher"
        status, html, _ = await teacher.get("/teacher")
        assert status == 200 and "ປ.3 ກ" in html
        status, html, _ = await teacher.get(f"/classes/{world['class_a']['id']}")
        assert status == 200 and "ສົມສັກ ພົມມະຈັນ" in html
        assert "/students\"" not in html  # no roster forms for a teacher
        status, html, _ = await teacher.get(f"/classes/{world['class_a']['id']}/cards")
        assert status == 200
        # Another school's class: the same answer as a class that does not exist.
        for path in (f"/classes/{world['class_b']['id']}", f"/classes/{world['class_b']['id']}/cards",
                     f"/classes/{world['class_b']['id']}/week", "/classes/999999",
                     "/classes/99999999999999999999"):
            status, html, _ = await teacher.get(path)
            assert status == 404, path
        for path in (f"/schools/{world['a']['id']}", f"/schools/{world['b']['id']}/week"):
            status, _, _ = await teacher.get(path)
            assert status in (403, 404), path
        # A teacher cannot change the roster (403, nothing added).
        status, _, _ = await teacher.post(f"/classes/{world['class_a']['id']}/students",
                                          {"name": "Intruder"}, page="/teacher")
        assert status == 403
    finally:
        await teacher.close()


async def test_school_admin_cannot_open_another_school(server: GroomServer,
                                                       world: dict[str, Any], root: ApiClient) -> None:
    admin = await _as(server, world["admin_a"]["username"])
    try:
        status, html, _ = await admin.get("/admin")
        assert status == 200 and world["a"]["name"] in html and world["b"]["name"] not in html
        assert 'action="/admin/schools"' not in html  # only the admin of all opens schools
        for path in (f"/schools/{world['b']['id']}", f"/classes/{world['class_b']['id']}",
                     f"/schools/{world['b']['id']}/week"):
            status, _, _ = await admin.get(path)
            assert status == 404, path
        status, _, _ = await admin.post(f"/classes/{world['class_b']['id']}/students",
                                        {"name": "Intruder"})
        assert status == 404
        roster = await _api(root, "GET", f"/api/classes/{world['class_b']['id']}/students")
        assert roster == []
    finally:
        await admin.close()


async def test_forms_without_or_with_a_wrong_csrf_token_change_nothing(
        server: GroomServer, world: dict[str, Any], root: ApiClient) -> None:
    from servers import ROOT_PASSWORD, ROOT_USER
    client = await _as(server, ROOT_USER, ROOT_PASSWORD)
    cid = world["class_a"]["id"]
    try:
        for token in (False, "forged-token"):
            status, html, _ = await client.post(f"/classes/{cid}/students",
                                                {"name": "Forged"}, csrf=token)
            assert status == 403, status
        fd = aiohttp.FormData()
        fd.add_field("names", "Forged\n")
        status, _, _ = await client.post(f"/classes/{cid}/import", fd, csrf="nope")
        assert status == 403
        status, _, _ = await client.post("/lessons/1/cancel", {"scope": "one"}, csrf=False)
        assert status == 403
        roster = await _api(root, "GET", f"/api/classes/{cid}/students")
        assert [s["name"] for s in roster] == sorted(s["name"] for s in world["students"])
        # With the token: added, and the answer is a redirect with a notice.
        status, _, location = await client.post(f"/classes/{cid}/students", {"name": "ຄຳແສງ"})
        assert status == 302 and location == f"/classes/{cid}?done=student_added"
        status, html, _ = await client.get(location)
        assert "ຄຳແສງ" in html and 'class="ok"' in html
    finally:
        await client.close()


async def test_form_errors_keep_the_input_and_say_why(server: GroomServer,
                                                      world: dict[str, Any]) -> None:
    client = await _as(server, world["admin_a"]["username"])
    cid = world["class_a"]["id"]
    page = f"/classes/{cid}"
    tomorrow = (dt.datetime.now(ZoneInfo("Asia/Vientiane")) + dt.timedelta(days=1)).date()
    try:
        # A weekly series with no days: 422, the message in Lao, the title kept.
        status, html, _ = await client.post(f"/classes/{cid}/lessons", {
            "title": "ຄະນິດ ປະຈຳອາທິດ", "repeat": "weekly", "start_time": "08:00",
            "duration": "45", "first_date": tomorrow.isoformat(),
            "last_date": (tomorrow + dt.timedelta(days=30)).isoformat()}, page=page)
        assert status == 422
        assert "ເລືອກຢ່າງໜ້ອຍໜຶ່ງມື້ໃນອາທິດ." in html and 'value="ຄະນິດ ປະຈຳອາທິດ"' in html
        # Impossible date.
        status, html, _ = await client.post(f"/classes/{cid}/lessons", {
            "title": "x", "repeat": "once", "start_time": "08:00", "duration": "45",
            "date": "2026-02-31"}, page=page)
        assert status == 422 and 'role="alert"' in html
        # A series, then a one-off that clashes with it: 409 naming the lesson.
        status, _, location = await client.post(f"/classes/{cid}/lessons", {
            "title": "ພາສາລາວ", "repeat": "weekly", "day": ["mon", "wed", "fri"],
            "start_time": "08:00", "duration": "45", "first_date": tomorrow.isoformat(),
            "last_date": (tomorrow + dt.timedelta(days=20)).isoformat()}, page=page)
        assert status == 302 and location.endswith("done=series_added"), location
        first = tomorrow + dt.timedelta(days=(7 - tomorrow.weekday()) % 7)  # a Monday
        status, html, _ = await client.post(f"/classes/{cid}/lessons", {
            "title": "ຊ້ຳ", "repeat": "once", "start_time": "08:30", "duration": "30",
            "date": first.isoformat()}, page=page)
        assert status == 409 and "ພາສາລາວ" in html and 'value="ຊ້ຳ"' in html
        # A bad CSV: 422, nothing imported.
        fd = aiohttp.FormData()
        fd.add_field("file", b"\xff\xfe\x00bad", filename="roster.csv", content_type="text/csv")
        status, html, _ = await client.post(f"/classes/{cid}/import", fd, page=page)
        assert status == 422 and "UTF-8" in html
        # A good CSV with a header and Lao names.
        fd = aiohttp.FormData()
        fd.add_field("file", "ຊື່\nບຸນມີ ແກ້ວມະນີ\nວັນນາ ສຸລິຍະ\n".encode(), filename="r.csv",
                     content_type="text/csv")
        status, _, location = await client.post(f"/classes/{cid}/import", fd, page=page)
        assert status == 302 and "done=imported" in location and "n=2" in location
        status, html, _ = await client.get(page)
        assert "ບຸນມີ ແກ້ວມະນີ" in html and "ພາສາລາວ" in html
    finally:
        await client.close()


async def test_cancel_and_reschedule_from_the_lesson_page(server: GroomServer,
                                                          world: dict[str, Any],
                                                          root: ApiClient) -> None:
    cid = world["class_a"]["id"]
    day = (dt.datetime.now(ZoneInfo("Asia/Vientiane")) + dt.timedelta(days=2)).date()
    series = await _api(root, "POST", f"/api/classes/{cid}/series", json={
        "title": "ວິທະຍາສາດ", "weekdays": [day.weekday()], "start_time": "14:00",
        "duration_minutes": 40, "first_date": day.isoformat(),
        "last_date": (day + dt.timedelta(days=21)).isoformat()})
    lessons = series["lessons"]
    assert len(lessons) == 4
    client = await _as(server, world["admin_a"]["username"])
    try:
        lid = lessons[1]["id"]
        status, html, _ = await client.get(f"/lessons/{lid}")
        assert status == 200 and "14:00" in html and 'value="rest"' in html
        status, _, location = await client.post(f"/lessons/{lid}/reschedule", {
            "date": (day + dt.timedelta(days=7)).isoformat(), "start_time": "15:00",
            "duration": "40", "scope": "rest"}, page=f"/lessons/{lid}")
        assert status == 302 and location == f"/lessons/{lid}?done=rescheduled"
        status, html, _ = await client.get(f"/lessons/{lessons[3]['id']}")
        assert "15:00" in html
        status, _, location = await client.post(f"/lessons/{lessons[0]['id']}/cancel",
                                                {"scope": "one"}, page=f"/lessons/{lid}")
        assert status == 302
        states = [(await _api(root, "GET", f"/api/lessons/{x['id']}"))["state"] for x in lessons]
        assert states == ["cancelled", "scheduled", "scheduled", "scheduled"]
        # Changing a cancelled lesson again is refused on the page.
        status, html, _ = await client.post(f"/lessons/{lessons[0]['id']}/cancel",
                                            {"scope": "one"}, page=f"/lessons/{lid}")
        assert status == 409 and 'role="alert"' in html
        # The week view shows the week asked for, with links to the weeks around it.
        status, html, _ = await client.get(f"/classes/{cid}/week?week={day.isoformat()}")
        monday = day - dt.timedelta(days=day.weekday())
        assert status == 200 and "ວິທະຍາສາດ" in html
        assert f"?week={(monday + dt.timedelta(days=7)).isoformat()}" in html
        assert f"?week={(monday - dt.timedelta(days=7)).isoformat()}" in html
    finally:
        await client.close()


async def test_cards_sheet_has_every_student_with_an_svg_qr(server: GroomServer,
                                                            world: dict[str, Any]) -> None:
    client = await _as(server, world["admin_a"]["username"])
    cid = world["class_a"]["id"]
    try:
        status, html, _ = await client.get(f"/classes/{cid}/cards")
        assert status == 200
        cards = re.findall(r'<article class="card.*?</article>', html, re.S)
        assert len(cards) == 1 + len(world["students"])  # the class card first
        assert world["class_a"]["join_code"][:4] in cards[0]
        for student in world["students"]:
            card = next(c for c in cards if student["name"] in c)
            assert "<svg" in card and 'class="qr"' in card
            code = student["card_code"]
            assert f"{code[:4]}-{code[4:8]}-{code[8:]}" in card
            assert f"/c/{code}" in card
        # Inline SVG needs no inline style (the CSP forbids it) and no script.
        assert "style=" not in html and "<script" not in html
    finally:
        await client.close()


async def test_lao_by_default_english_by_header_or_switch(server: GroomServer) -> None:
    lao = PageClient(server.base_url)
    eng = PageClient(server.base_url, lang="en-US,en;q=0.8")
    try:
        async with lao.http.get(server.base_url + "/login") as resp:
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            raw = await resp.read()
        assert "ເຂົ້າສູ່ລະບົບ".encode("utf-8") in raw and b'lang="lo"' in raw
        status, html, _ = await eng.get("/join")
        assert status == 200 and "Join a lesson" in html and 'lang="en"' in html
        # The switch sets a cookie and goes back to the page.
        async with lao.http.get(server.base_url + "/lang/en?next=/join",
                                allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "/join"
        status, html, _ = await lao.get("/join")
        assert "Join a lesson" in html
    finally:
        await lao.close()
        await eng.close()


async def test_join_page_sends_codes_on(pages: PageClient, world: dict[str, Any]) -> None:
    code = world["class_a"]["join_code"]
    status, _, location = await pages.post("/join", {"code": f" {code[:4].lower()}-{code[4:]} "},
                                           csrf=False)
    assert status == 302 and location == f"/join/{code}"
    card = world["students"][0]["card_code"]
    status, _, location = await pages.post("/join", {"code": card}, csrf=False)
    assert status == 302 and location == f"/c/{card}"
    status, html, _ = await pages.post("/join", {"code": "  "}, csrf=False)
    assert status == 422 and 'role="alert"' in html
