"""Recordings over HTTP, end to end: a real server, aiortc peers, real post-processing, PyAV.

The lesson's recording is made by the room and processed by the server's job worker; these tests
only use what a user has: the API, the pages, the download links, and kill -9.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import av
import pytest

from peers import Peer, join_student, new_lesson, start_teacher
from servers import ApiClient, GroomServer, database_backends

pytestmark = pytest.mark.timeout(150)

DONE = {"ready", "failed", "no_audio"}
OTHER_ADMIN = ("other-admin", "other-admin-pw-1")


async def logged_in(srv: GroomServer, login: dict[str, str]) -> ApiClient:
    client = ApiClient(srv.base_url)
    await client.login(login["username"], login["password"])
    return client


async def wait_recording(client: ApiClient, lesson_id: int, states: set[str] = DONE,
                         timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = await client.call("GET", f"/api/lessons/{lesson_id}/recording")
        if status == 200 and body["state"] in states:
            return body  # type: ignore[no-any-return]
        await asyncio.sleep(0.3)
    raise AssertionError(f"recording of lesson {lesson_id} not in {states}: {body}")


async def fetch(client: ApiClient, path: str, **headers: str) -> tuple[int, bytes, Any]:
    async with client.http.get(client.base_url + path, headers=headers,
                               allow_redirects=False) as resp:
        return resp.status, await resp.read(), resp.headers


def audio_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return sum(frame.samples for frame in container.decode(stream)) / stream.sample_rate


async def other_school(srv: GroomServer) -> tuple[ApiClient, str]:
    """An admin of another school (made through a global admin) and a class code of it."""
    result = srv.groom("admin", "create", "--username", "root2", "--password", "root2-password",
                       *srv.common_args())
    root = ApiClient(srv.base_url)
    await root.login("root2", "root2-password")
    status, school = await root.call("POST", "/api/schools", json={"name": f"Other {time.time()}"})
    assert status == 201, (school, result.stderr)
    status, body = await root.call("POST", f"/api/schools/{school['id']}/teachers", json={
        "username": f"{OTHER_ADMIN[0]}{school['id']}", "password": OTHER_ADMIN[1],
        "display_name": "Other admin", "role": "admin"})
    assert status == 201, body
    status, klass = await root.call("POST", f"/api/schools/{school['id']}/classes",
                                    json={"name": "Other class"})
    assert status == 201, klass
    await root.close()
    other = ApiClient(srv.base_url)
    await other.login(f"{OTHER_ADMIN[0]}{school['id']}", OTHER_ADMIN[1])
    return other, klass["join_code"]


async def test_lesson_recording_plays_for_its_class_only(
        live: tuple[GroomServer, dict[str, Any]], tmp_path: Path) -> None:
    srv, demo = live
    teacher = await start_teacher(srv, demo)
    lesson_id, code = demo["lesson_id"], demo["class_code"]
    student = await join_student(srv, demo, "Listener")
    try:
        await asyncio.sleep(6)
    finally:
        await teacher.send({"type": "end"})
        await teacher.expect("ended")
        await teacher.close()
        await student.close()

    admin = await logged_in(srv, demo["admin_login"])
    teach = await logged_in(srv, demo["teacher_login"])
    anon = ApiClient(srv.base_url)
    other, other_code = await other_school(srv)
    try:
        rec = await wait_recording(admin, lesson_id)
        assert rec["state"] == "ready", rec
        assert rec["error"] is None and not rec["recovered"]
        names = {f["name"]: f for f in rec["files"]}
        assert set(names) == {"listen.opus", "offline.zip", "listen.mp3"}
        # listen.mp3 is the pack's MP3 served out of the zip: not counted twice
        assert rec["total_bytes"] == names["listen.opus"]["bytes"] + names["offline.zip"]["bytes"]

        # The audio lasts as long as the lesson did (live from start to end), within 1 s.
        import datetime as dt
        wall = (dt.datetime.fromisoformat(rec["lesson_ended_at"])
                - dt.datetime.fromisoformat(rec["lesson_started_at"])).total_seconds()
        assert 5.5 < wall < 10, wall
        status, opus, headers = await fetch(admin, names["listen.opus"]["url"])
        assert status == 200 and headers["Content-Type"].startswith("audio/ogg")
        assert len(opus) == names["listen.opus"]["bytes"]
        assert abs(audio_seconds(opus) - wall) < 1.0, (audio_seconds(opus), wall)
        assert abs(rec["duration_s"] - wall) < 1.0

        # The class's teacher sees it too, in the class list and as a page.
        status, listed = await teach.call("GET", f"/api/classes/{demo['class_id']}/recordings")
        assert status == 200 and lesson_id in [r["lesson_id"] for r in listed]
        status, page = await teach.call("GET", f"/recordings/{lesson_id}")
        assert status == 200 and "/static/playback.js" in page
        assert f"/api/lessons/{lesson_id}/recording/manifest" in page
        status, manifest = await teach.call("GET", f"/api/lessons/{lesson_id}/recording/manifest")
        assert status == 200 and manifest["audio"] == f"/recordings/{lesson_id}/listen.opus"
        status, page = await admin.call("GET", f"/classes/{demo['class_id']}/recordings")
        assert status == 200 and f"/recordings/{lesson_id}" in page

        # Students by class code: the list, the page, the manifest, Range requests, the pack.
        status, page = await anon.call("GET", f"/r/{code}")
        assert status == 200 and f"/r/{code}/{lesson_id}" in page
        status, page = await anon.call("GET", f"/r/{code}/{lesson_id}")
        assert status == 200 and f"/r/{code}/{lesson_id}/manifest.json" in page
        status, manifest = await anon.call("GET", f"/r/{code}/{lesson_id}/manifest.json")
        assert status == 200, manifest
        assert manifest["audio"] == f"/r/{code}/{lesson_id}/listen.opus"
        assert abs(manifest["duration_s"] - rec["duration_s"]) < 0.01
        status, part, headers = await fetch(anon, manifest["audio"], Range="bytes=0-99")
        assert status == 206 and part == opus[:100], status
        assert headers["Content-Range"] == f"bytes 0-99/{len(opus)}"
        status, pack, headers = await fetch(anon, f"/r/{code}/{lesson_id}/offline.zip")
        assert status == 200 and pack[:4] == b"PK\x03\x04"
        assert headers["Content-Disposition"].startswith("attachment")

        # The MP3 for old players: streamed out of the pack, same bytes, same people, ranged.
        import zipfile
        with zipfile.ZipFile(io.BytesIO(pack)) as archive:
            packed_mp3 = archive.read("audio.mp3")
        assert not (srv.data_dir / "recordings" / str(lesson_id) / "listen.mp3").exists()
        assert f"/recordings/{lesson_id}/listen.mp3" in (
            await teach.call("GET", f"/recordings/{lesson_id}"))[1]
        assert f"/r/{code}/{lesson_id}/listen.mp3" in (
            await anon.call("GET", f"/r/{code}/{lesson_id}"))[1]
        for client, url in ((anon, f"/r/{code}/{lesson_id}/listen.mp3"),
                            (teach, f"/recordings/{lesson_id}/listen.mp3"),
                            (admin, names["listen.mp3"]["url"])):
            status, mp3, headers = await fetch(client, url)
            assert status == 200 and headers["Content-Type"] == "audio/mpeg", (url, status)
            assert mp3 == packed_mp3 and len(mp3) == names["listen.mp3"]["bytes"]
            assert headers["Accept-Ranges"] == "bytes"
        assert abs(audio_seconds(mp3) - wall) < 1.0, (audio_seconds(mp3), wall)
        mp3_url = f"/r/{code}/{lesson_id}/listen.mp3"
        status, part, headers = await fetch(anon, mp3_url, Range="bytes=100-199")
        assert status == 206 and part == mp3[100:200]
        assert headers["Content-Range"] == f"bytes 100-199/{len(mp3)}"
        status, part, _ = await fetch(anon, mp3_url, Range="bytes=-50")
        assert status == 206 and part == mp3[-50:]
        status, part, _ = await fetch(anon, mp3_url, Range=f"bytes={len(mp3) - 10}-")
        assert status == 206 and part == mp3[-10:]
        status, _, headers = await fetch(anon, mp3_url, Range=f"bytes={len(mp3)}-")
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(mp3)}"
        etag = (await fetch(anon, mp3_url))[2]["ETag"]
        status, _, _ = await fetch(anon, mp3_url, **{"If-None-Match": etag})
        assert status == 304
        status, part, _ = await fetch(anon, mp3_url, Range="bytes=0-9", **{"If-Range": '"old"'})
        assert status == 200 and part == mp3  # a stale If-Range gets the whole file
        async with anon.http.head(srv.base_url + mp3_url) as resp:
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(mp3)

        # Nobody else: another school's admin, a wrong code, another class's code, no login.
        for path in (f"/api/lessons/{lesson_id}/recording",
                     f"/api/lessons/{lesson_id}/recording/manifest",
                     f"/api/classes/{demo['class_id']}/recordings",
                     f"/recordings/{lesson_id}", f"/recordings/{lesson_id}/listen.opus",
                     f"/recordings/{lesson_id}/listen.mp3",
                     f"/classes/{demo['class_id']}/recordings"):
            status, body = await other.call("GET", path)
            assert status == 404, (path, status, body)
        status, _ = await other.call("DELETE", f"/api/lessons/{lesson_id}/recording")
        assert status == 404
        status, _ = await other.call("POST", f"/api/lessons/{lesson_id}/recording/video")
        assert status == 404
        for path in (f"/r/{other_code}/{lesson_id}", f"/r/{other_code}/{lesson_id}/listen.opus",
                     f"/r/{other_code}/{lesson_id}/listen.mp3", f"/r/ZZZZZZZZ/{lesson_id}/listen.mp3",
                     f"/r/{other_code}/{lesson_id}/manifest.json", "/r/ZZZZZZZZ",
                     f"/r/ZZZZZZZZ/{lesson_id}/listen.opus"):
            status, body = await anon.call("GET", path)
            assert status == 404, (path, status)
        status, page = await anon.call("GET", f"/r/{other_code}")
        assert status == 200 and f"/{lesson_id}" not in page
        status, _ = await anon.call("GET", f"/api/lessons/{lesson_id}/recording")
        assert status == 401
        for name in ("listen.opus", "listen.mp3"):
            status, _ = await anon.call("GET", f"/recordings/{lesson_id}/{name}")
            assert status == 404

        # Forged and guessed links: never a file outside the outputs, never a 500.
        for name in ("audio.ogg", "timeline.jsonl", "closed.json", "..%2F..%2Fgroom.sqlite3",
                     "%2E%2E", "video.webm", "listen.opus%00", "x" * 300, "audio.mp3",
                     "listen.mp3%00", "LISTEN.MP3", "listen.mp3.zip", "offline.zip%2Faudio.mp3"):
            for base in (f"/recordings/{lesson_id}", f"/r/{code}/{lesson_id}"):
                status, body = await admin.call("GET", f"{base}/{name}")
                assert status == 404, (base, name, status)
        for path in ("/api/lessons/99999999999/recording", "/api/lessons/2147483648/recording",
                     "/recordings/99999999999", f"/r/{code}/99999999999",
                     "/api/classes/0/recordings", "/r/" + "A" * 500):
            status, body = await admin.call("GET", path)
            assert status == 404, (path, status, body)

        # Admins ask for the video; a form without the CSRF token changes nothing.
        async with admin.http.post(f"{srv.base_url}/recordings/{lesson_id}/delete",
                                   allow_redirects=False) as resp:
            assert resp.status == 403
        status, body = await teach.call("POST", f"/api/lessons/{lesson_id}/recording/video")
        assert status == 403, body
        status, body = await admin.call("POST", f"/api/lessons/{lesson_id}/recording/video")
        assert status == 202 and body["video_pending"], body
        deadline = time.monotonic() + 60
        while "video.webm" not in {f["name"] for f in rec["files"]}:
            assert time.monotonic() < deadline, rec
            await asyncio.sleep(0.3)
            rec = await wait_recording(admin, lesson_id)
        assert not rec["video_pending"]
        status, video, _ = await fetch(anon, f"/r/{code}/{lesson_id}/video.webm")
        assert status == 200
        with av.open(io.BytesIO(video)) as container:
            assert container.streams.video and container.streams.audio

        # Deleting it (admins only) removes the files; the links then answer 404.
        status, _ = await teach.call("DELETE", f"/api/lessons/{lesson_id}/recording")
        assert status == 403
        status, _ = await admin.call("DELETE", f"/api/lessons/{lesson_id}/recording")
        assert status == 204
        assert not (srv.data_dir / "recordings" / str(lesson_id)).exists()
        for name in ("listen.opus", "listen.mp3"):
            status, _ = await anon.call("GET", f"/r/{code}/{lesson_id}/{name}")
            assert status == 404
    finally:
        for c in (admin, teach, anon, other):
            await c.close()


async def test_lesson_without_audio_has_a_clear_state(live: tuple[GroomServer, dict[str, Any]]
                                                      ) -> None:
    srv, demo = live
    lesson_id = await new_lesson(srv, demo)
    teacher = Peer(srv.base_url)
    async with teacher.http.post(srv.base_url + "/api/login", json=demo["teacher_login"]) as resp:
        assert resp.status == 200
    welcome = await teacher.connect({"type": "hello", "role": "teacher", "lesson_id": lesson_id})
    assert welcome["type"] == "welcome", welcome
    await teacher.send({"type": "end"})  # no media at all, ended at once
    await teacher.expect("ended")
    await teacher.close()

    admin = await logged_in(srv, demo["admin_login"])
    anon = ApiClient(srv.base_url)
    code = demo["class_code"]
    try:
        rec = await wait_recording(admin, lesson_id)
        assert rec["state"] == "no_audio", rec
        assert rec["files"] == [] and rec["error"] is None
        status, page = await admin.call("GET", f"/recordings/{lesson_id}")
        assert status == 200 and 'data-state="no_audio"' in page
        assert "playback.js" not in page
        status, page = await admin.call("GET", f"/classes/{demo['class_id']}/recordings")
        assert status == 200 and f'data-lesson="{lesson_id}" data-state="no_audio"' in page
        status, _ = await admin.call("GET", f"/api/lessons/{lesson_id}/recording/manifest")
        assert status == 404
        status, _ = await admin.call("POST", f"/api/lessons/{lesson_id}/recording/video")
        assert status == 409
        # Students never see a recording that cannot be played.
        status, page = await anon.call("GET", f"/r/{code}")
        assert status == 200 and f"/r/{code}/{lesson_id}" not in page
        for path in (f"/r/{code}/{lesson_id}", f"/r/{code}/{lesson_id}/manifest.json",
                     f"/r/{code}/{lesson_id}/listen.opus", f"/r/{code}/{lesson_id}/listen.mp3"):
            status, _ = await anon.call("GET", path)
            assert status == 404, path

        # An admin deletes it: row and files go; the API then says 404.
        folder = srv.data_dir / "recordings" / str(lesson_id)
        assert folder.is_dir()
        async with admin.http.post(f"{srv.base_url}/recordings/{lesson_id}/delete",
                                   data={"csrf_token": admin.csrf}, allow_redirects=False) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == f"/classes/{demo['class_id']}/recordings?done=deleted"
        assert not folder.exists()
        status, _ = await admin.call("GET", f"/api/lessons/{lesson_id}/recording")
        assert status == 404
        status, _ = await admin.call("DELETE", f"/api/lessons/{lesson_id}/recording")
        assert status == 404
    finally:
        await admin.close()
        await anon.close()


def _demo_line(srv: GroomServer, after: int = 0) -> dict[str, Any]:
    for _ in range(200):
        lines = [line for line in srv.log_lines()[after:] if "admin_url" in line]
        if lines:
            return lines[-1]
        time.sleep(0.1)
    raise AssertionError("the demo did not print its JSON line")


@pytest.mark.parametrize("backend", database_backends())
async def test_recording_survives_kill_9(backend: str, tmp_path: Path) -> None:
    srv = GroomServer(tmp_path / "crash", backend, pg_database="groom_recordings_crash",
                      args=("--demo", "--json", "--join-attempts-per-minute", "1000"))
    srv.start()
    try:
        demo = _demo_line(srv)
        teacher = await start_teacher(srv, demo)
        lesson_id = demo["lesson_id"]
        await asyncio.sleep(4)
        srv.kill()  # mid-lesson, no goodbye
        await teacher.close()
        lines_before = len(srv.log_lines())
        srv.start()
        demo = {**demo, **_demo_line(srv, lines_before)}  # fresh demo passwords
        admin = await logged_in(srv, demo["admin_login"])
        try:
            rec = await wait_recording(admin, lesson_id)
            assert rec["state"] == "ready" and rec["recovered"], rec
            assert 2.5 < rec["duration_s"] < 6, rec
            status, lesson = await admin.call("GET", f"/api/lessons/{lesson_id}")
            assert status == 200 and lesson["state"] == "ended", lesson
            status, opus, _ = await fetch(admin, f"/recordings/{lesson_id}/listen.opus")
            assert status == 200
            assert abs(audio_seconds(opus) - rec["duration_s"]) < 0.2
            status, page = await admin.call("GET", f"/recordings/{lesson_id}")
            assert status == 200 and "/static/playback.js" in page
        finally:
            await admin.close()
    finally:
        srv.stop()
