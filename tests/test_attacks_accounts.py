"""Attacks on accounts, sessions, bodies and headers, against a real server on loopback.

Each attack runs while a real lesson is live, and an honest student must keep hearing the
teacher (``Peer.keeps_hearing``) while it happens. The server trusts 127.0.0.1 as a proxy so that
the tests can speak from several client addresses (``X-Forwarded-For``), as behind nginx.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any, Awaitable, Iterator, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from peers import Peer, end_lesson, join_student, new_lesson, other_class, start_teacher
from servers import ApiClient, GroomServer, database_backends

pytestmark = pytest.mark.timeout(240)

T = TypeVar("T")


@pytest.fixture(scope="module", params=database_backends())
def srv(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GroomServer, dict[str, Any]]]:
    server = GroomServer(tmp_path_factory.mktemp(f"attacks-accounts-{request.param}"), request.param,
                         pg_database="groom_attacks_accounts",
                         args=("--demo", "--json", "--grace-seconds", "30",
                               "--join-attempts-per-minute", "1000",
                               "--trusted-proxies", "127.0.0.1",
                               "--turn-secret", "s3cret", "--ice-servers", "turn:turn.example:3478"))
    server.start()
    yield server, server.demo_info()
    server.stop()


async def while_hearing(student: Peer, attack: Awaitable[T], seconds: float = 3.0) -> T:
    """Run ``attack`` and, meanwhile, check that the honest student keeps hearing the teacher."""
    task = asyncio.ensure_future(attack)
    try:
        await student.keeps_hearing(seconds)
    except BaseException:
        task.cancel()
        raise
    return await task


def from_address(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def lesson(srv: GroomServer, demo: dict[str, Any]) -> tuple[Peer, Peer]:
    """A live lesson whose honest student hears the teacher (ended again if it cannot start, so
    the next test's lesson is not refused as ``class_busy``)."""
    teacher = await start_teacher(srv, demo)
    try:
        student = await join_student(srv, demo, "Honest")
        for _ in range(100):  # audio starts within a few seconds on a busy machine
            if student.seconds_received() > 0.5:
                return teacher, student
            await asyncio.sleep(0.1)
        await student.close()
        raise AssertionError("the honest student never heard the teacher")
    except BaseException:
        await end_lesson(teacher)
        await teacher.close()
        raise


async def finish(teacher: Peer, student: Peer) -> None:
    try:
        if teacher.closed_code is None:
            await end_lesson(teacher)
    finally:
        await student.close()
        await teacher.close()


# --- passwords -------------------------------------------------------------------------------

async def test_login_flood_is_limited_and_lesson_goes_on(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher, student = await lesson(server, demo)
    login = demo["teacher_login"]
    http = aiohttp.ClientSession()
    try:
        async def wrong(i: int, address: str) -> tuple[int, str]:
            if i % 2:
                async with http.post(server.base_url + "/api/login", headers=from_address(address),
                                     json={"username": login["username"], "password": f"guess-{i}"}) as r:
                    return r.status, r.headers.get("Retry-After", "")
            async with http.post(server.base_url + "/login", headers=from_address(address),
                                 data={"username": login["username"], "password": f"guess-{i}"},
                                 allow_redirects=False) as r:
                return r.status, r.headers.get("Retry-After", "")

        async def flood() -> list[tuple[int, str]]:
            results = []
            for i in range(60):
                results.append(await wrong(i, "10.6.6.6"))
            return results

        results = await while_hearing(student, flood())
        statuses = [s for s, _ in results]
        assert set(statuses) <= {401, 429}, statuses
        assert statuses.count(429) >= 45, statuses  # the address is stopped after a few tries
        assert all(int(wait) >= 1 for s, wait in results if s == 429)
        # The right password from another address still works: the flood locks out the
        # attacker, not the teacher.
        async with http.post(server.base_url + "/api/login", headers=from_address("10.7.7.7"),
                             json=login) as r:
            assert r.status == 200, await r.text()

        # Many addresses at once (each under its own limit): password checks run on a small
        # pool of their own; when it is full, logins are refused quickly and the lesson goes on.
        async def spray() -> list[tuple[int, str]]:
            return await asyncio.gather(*(wrong(i, f"10.9.{i // 200}.{i % 200 + 1}")
                                          for i in range(120)))

        started = time.monotonic()
        results = await while_hearing(student, spray())
        statuses = [s for s, _ in results]
        assert set(statuses) <= {401, 429, 503}, statuses
        assert 503 in statuses or 429 in statuses, statuses
        assert time.monotonic() - started < 20
        async with http.post(server.base_url + "/api/login", headers=from_address("10.7.7.8"),
                             json=login) as r:
            assert r.status == 200, await r.text()
    finally:
        await http.close()
        await finish(teacher, student)


# --- bodies ------------------------------------------------------------------------------------

async def test_big_bodies_refused_before_reading(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher, student = await lesson(server, demo)
    http = aiohttp.ClientSession()
    try:
        async def big_login() -> int:
            body = b"username=a&password=" + b"x" * (20 * 1024 * 1024)
            try:
                async with http.post(server.base_url + "/login", data=body, headers={
                        "Content-Type": "application/x-www-form-urlencoded"}) as r:
                    return r.status
            except aiohttp.ClientError:
                return 413  # the server may close the connection instead of reading the rest

        async def chunked_login() -> int:
            async def chunks() -> Any:
                for _ in range(200):
                    yield b"x" * (100 * 1024)

            try:
                async with http.post(server.base_url + "/login", data=chunks(), headers={
                        "Content-Type": "application/x-www-form-urlencoded"}) as r:
                    return r.status
            except aiohttp.ClientError:
                return 413

        statuses = await while_hearing(student, asyncio.gather(big_login(), chunked_login()))
        assert list(statuses) == [413, 413]
        # The deck upload keeps its own, larger limit.
        admin = ApiClient(server.base_url)
        try:
            await admin.login(demo["admin_login"]["username"], demo["admin_login"]["password"])
            status, body = await admin.call("POST", f"/api/classes/{demo['class_id']}/decks?name=x",
                                            data=b"%PDF-1.4 junk" + b"0" * 300_000,
                                            headers={"Content-Type": "application/pdf"})
            assert status != 413, body
        finally:
            await admin.close()
    finally:
        await http.close()
        await finish(teacher, student)


# --- sessions ----------------------------------------------------------------------------------

async def _client(server: GroomServer, login: dict[str, str]) -> ApiClient:
    client = ApiClient(server.base_url)
    await client.login(login["username"], login["password"])
    return client


def _cookie(client: ApiClient) -> str:
    return next(c.value for c in client.http.cookie_jar if c.key == "groom_session")


async def _me_with(server: GroomServer, cookie: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.base_url + "/api/me",
                            headers={"Cookie": f"groom_session={cookie}"}) as r:
            return r.status


async def test_logout_revokes_the_cookie(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    login = demo["teacher_login"]
    for path in ("/api/logout", "/logout"):
        client = await _client(server, login)
        other = await _client(server, login)
        try:
            stolen = _cookie(client)
            assert await _me_with(server, stolen) == 200
            status, _ = await client.call("POST", path)
            assert status in (204, 302)
            assert await _me_with(server, stolen) == 401  # a copied cookie is dead too
            assert (await other.call("GET", "/api/me"))[0] == 200  # another session lives on
        finally:
            await client.close()
            await other.close()


async def test_logout_everywhere_closes_the_teacher_socket(
        srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher, student = await lesson(server, demo)
    login = demo["teacher_login"]
    other = await _client(server, login)
    stolen = _cookie(other)
    try:
        status, _ = await other.call("POST", "/api/logout-everywhere")
        assert status == 204

        async def closed() -> dict[str, Any]:
            return await teacher.expect("_closed", timeout=5)

        message = await while_hearing(student, closed())
        assert message["code"] == 4401
        assert await _me_with(server, stolen) == 401
        async with teacher.http.get(server.base_url + "/api/me") as r:
            assert r.status == 401
        teacher.closed_code = None  # end the lesson from a fresh login
        again = Peer(server.base_url)
        async with again.http.post(server.base_url + "/api/login", json=login) as r:
            assert r.status == 200
        welcome = await again.connect({"type": "hello", "role": "teacher",
                                       "lesson_id": demo["lesson_id"]})
        assert welcome["type"] == "welcome"
        await end_lesson(again)
        await again.close()
    finally:
        await other.close()
        await student.close()
        await teacher.close()


async def test_password_change_and_deactivation_close_sockets(
        srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher, student = await lesson(server, demo)
    other = await other_class(server, demo, "leaver")
    peer = Peer(server.base_url)
    admin = await _client(server, demo["admin_login"])
    try:
        async with peer.http.post(server.base_url + "/api/login", json=other["teacher_login"]) as r:
            assert r.status == 200
            me = await r.json()
        assert (await peer.connect({"type": "hello", "role": "teacher",
                                    "lesson_id": other["lesson_id"]}))["type"] == "welcome"
        second = await _client(server, other["teacher_login"])
        status, _ = await second.call("POST", "/api/password", json={
            "old_password": other["teacher_login"]["password"], "new_password": "a-new-password-1"})
        assert status == 200
        assert (await while_hearing(student, peer.expect("_closed", timeout=5)))["code"] == 4401
        await peer.close()
        peer = Peer(server.base_url, http=second.http)
        assert (await peer.connect({"type": "hello", "role": "teacher",
                                    "lesson_id": other["lesson_id"]}))["type"] == "welcome"
        status, body = await admin.call("PATCH", f"/api/teachers/{me['user']['id']}",
                                        json={"active": False})
        assert status == 200, body
        assert (await while_hearing(student, peer.expect("_closed", timeout=5)))["code"] == 4401
    finally:
        await admin.close()
        await peer.close()
        await finish(teacher, student)


# --- small holes -------------------------------------------------------------------------------

async def test_language_switch_is_no_open_redirect(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, _ = srv
    async with aiohttp.ClientSession() as http:
        for evil in ("/%09/evil.example", "/\\evil.example", "//evil.example", "https://evil.example",
                     "/%0a/evil.example"):
            async with http.get(f"{server.base_url}/lang/en?next={evil}", allow_redirects=False) as r:
                assert r.status == 302
                location = r.headers["Location"]
                assert location == "/", location
        async with http.get(f"{server.base_url}/lang/lo?next=/join", allow_redirects=False) as r:
            assert r.headers["Location"] == "/join"


def test_csrf_exemptions_are_exact_routes(tmp_path: Path) -> None:
    from groom.core.config import Settings
    from groom.web.app import create_app
    from groom.web.plumbing import CSRF_EXEMPT

    app = create_app(Settings(data_dir=tmp_path))
    posts = {r.resource.canonical for r in app.router.routes()
             if r.method == "POST" and r.resource is not None}
    assert set(CSRF_EXEMPT) <= posts, set(CSRF_EXEMPT) - posts
    assert set(CSRF_EXEMPT) == {"/login", "/api/login", "/api/join", "/join"}


def test_secret_and_tls_key_never_world_readable(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Created 0600 from the start: even if the process stopped before any chmod, no other
    user could have read them (here chmod is made to do nothing)."""
    from groom.core.config import Settings
    from groom.web.tls import ensure_self_signed

    monkeypatch.setattr(Path, "chmod", lambda self, mode: None)
    monkeypatch.setattr(os, "chmod", lambda *a, **k: None)
    old = os.umask(0o022)
    try:
        settings = Settings(data_dir=tmp_path)
        settings.prepare()
        _, key = ensure_self_signed(tmp_path, "127.0.0.1")
    finally:
        os.umask(old)
    for path in (tmp_path / "secret.key", Path(key)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_teacher_calendar_token_rotates(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher = await _client(server, demo["teacher_login"])
    try:
        status, me = await teacher.call("GET", "/api/me")
        tid = me["user"]["id"]
        status, feed = await teacher.call("GET", f"/api/teachers/{tid}/calendar")
        assert status == 200
        old = urlsplit(feed["url"]).path
        assert (await teacher.call("GET", old))[0] == 200
        status, rotated = await teacher.call("POST", f"/api/teachers/{tid}/calendar/rotate")
        assert status == 200, rotated
        new = urlsplit(rotated["url"]).path
        assert new != old
        assert (await teacher.call("GET", old))[0] == 404
        assert (await teacher.call("GET", new))[0] == 200
        status, page = await teacher.call("GET", "/teacher")
        assert new in page and 'action="/teacher/calendar/rotate"' in page
    finally:
        await teacher.close()


async def test_turn_credentials_are_short_lived(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher, student = await lesson(server, demo)
    try:
        turn = [s for s in student.welcome["ice_servers"] if "username" in s]
        assert turn, student.welcome["ice_servers"]
        expiry = int(turn[0]["username"].split(":")[0])
        assert 2 * 3600 <= expiry - time.time() <= 3 * 3600 + 60
    finally:
        await finish(teacher, student)


async def test_security_headers(srv: tuple[GroomServer, dict[str, Any]]) -> None:
    server, demo = srv
    teacher = await _client(server, demo["teacher_login"])
    admin = await _client(server, demo["admin_login"])
    try:
        async with teacher.http.get(server.base_url + "/login",
                                    headers={"X-Forwarded-Proto": "https"}) as r:
            assert r.headers["X-Frame-Options"] == "DENY"
            assert "Strict-Transport-Security" in r.headers
            assert "microphone=()" in r.headers["Permissions-Policy"]
        async with teacher.http.get(server.base_url + "/login") as r:
            assert "Strict-Transport-Security" not in r.headers
        no_store = [f"/join/{demo['class_code']}", "/teacher", f"/classes/{demo['class_id']}",
                    f"/classes/{demo['class_id']}/cards"]
        for path in no_store:
            client = teacher if path.startswith(("/join", "/teacher")) else admin
            async with client.http.get(server.base_url + path, allow_redirects=False) as r:
                assert r.status == 200, (path, r.status)
                assert "no-store" in r.headers.get("Cache-Control", ""), path
                assert r.headers["X-Frame-Options"] == "DENY"
        status, students = await admin.call("GET", f"/api/classes/{demo['class_id']}/students")
        if status == 200 and students:
            card = students[0]["card_code"]
            async with admin.http.get(f"{server.base_url}/c/{card}") as r:
                assert "no-store" in r.headers.get("Cache-Control", "")
        lesson_id = await new_lesson(server, demo)
        async with teacher.http.get(f"{server.base_url}/lessons/{lesson_id}/teach",
                                    allow_redirects=False) as r:
            assert r.status == 200
            assert "no-store" in r.headers.get("Cache-Control", "")
            assert "microphone=(self)" in r.headers["Permissions-Policy"]
            assert "camera=()" in r.headers["Permissions-Policy"]
    finally:
        await teacher.close()
        await admin.close()
