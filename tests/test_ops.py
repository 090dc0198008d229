"""Operating G-Room: /healthz, /metrics (Prometheus) and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from groom.core.logs import redact
from groom.web.prometheus import _is_loopback
from peers import end_lesson, join_student, start_teacher
from servers import GroomServer

pytestmark = pytest.mark.timeout(120)

TOKEN = "scrape-token-0123456789"


async def _get(url: str, **headers: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers=headers) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], name: str, sample: str = "", **labels: str) -> float:
    for s in families[name].samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{sample or name} {labels}")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroomServer]:
    """A server with a metrics token and an impossible free-disk threshold."""
    srv = GroomServer(tmp_path_factory.mktemp("ops-guarded"),
                      args=("--metrics-token", TOKEN, "--health-min-free-mb", "100000000"))
    srv.start()
    yield srv
    srv.stop()


# --- unit: redaction and the loopback test ---------------------------------------------------

@pytest.mark.parametrize("raw, logged", [
    ("/join/ACDE4679", "/join/AC…"),
    ("/c/ACDEFGHJKM?lang=lo", "/c/AC…?lang=lo"),
    ("/r/ACDE4679/12/audio.ogg", "/r/AC…/12/audio.ogg"),
    ("/listen/Zm9vYmFyYmF6cXV4.ogg", "/listen/Zm….ogg"),
    ("/calendar/class/3/c2VjcmV0dG9rZW4.ics", "/calendar/class/3/c2….ics"),
    ("/%6Aoin/ACDE4679", "/join/AC…"),
    ("/lang/lo?next=%2Fjoin%2FACDE4679", "/lang/lo?next=/join/AC…"),
    ("/api/x?token=abcdef&code=ACDE4679&page=2", "/api/x?token=ab…&code=AC…&page=2"),
    ("/admin?tab=1", "/admin?tab=1"),
    ("/join", "/join"),
])
def test_redact(raw: str, logged: str) -> None:
    assert redact(raw) == logged


def test_loopback_only() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("127.8.9.10")
    assert not _is_loopback("10.0.0.5") and not _is_loopback("") and not _is_loopback(None)
    assert not _is_loopback("not-an-address")


# --- /healthz --------------------------------------------------------------------------------

async def test_healthz_ok(server: GroomServer) -> None:
    status, body, headers = await _get(server.base_url + "/healthz")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok"
    assert set(health["checks"]) == {"database", "disk", "jobs"}
    assert all(c["ok"] for c in health["checks"].values())
    assert health["checks"]["disk"]["free_mb"] >= 500
    assert headers["Cache-Control"] == "no-store"


async def test_healthz_fails_when_disk_below_threshold(guarded: GroomServer) -> None:
    status, body, _ = await _get(guarded.base_url + "/healthz")
    assert status == 503, body
    health = json.loads(body)
    assert health["status"] == "fail"
    assert health["checks"]["disk"]["ok"] is False and "error" in health["checks"]["disk"]
    assert health["checks"]["database"]["ok"] and health["checks"]["jobs"]["ok"]


# --- /metrics --------------------------------------------------------------------------------

async def test_metrics_need_the_token_when_one_is_set(guarded: GroomServer) -> None:
    url = guarded.base_url + "/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}):
        status, body, got = await _get(url, **headers)
        assert status == 401, (headers, body)
        assert json.loads(body)["error"]["code"] == "unauthorized"
        assert got["WWW-Authenticate"].startswith("Bearer")
    status, body, got = await _get(url, Authorization=f"Bearer {TOKEN}")
    assert status == 200, body
    assert got["Content-Type"].startswith("text/plain")
    families = _families(body)
    for name in ("groom_rooms_live", "groom_students", "groom_server_added_latency_seconds",
                 "groom_event_loop_lag_seconds", "groom_jobs", "groom_job_worker_up",
                 "groom_data_disk_free_bytes", "groom_packets_sent", "groom_deck_imports",
                 "groom_recorder_backlog_packets", "process_open_fds"):
        assert name in families, name
    assert _value(families, "groom_rooms_live") == 0
    assert _value(families, "groom_job_worker_up") == 1
    assert _value(families, "groom_jobs", state="failed") == 0


async def test_metrics_without_token_answer_loopback(server: GroomServer) -> None:
    status, body, _ = await _get(server.base_url + "/metrics")
    assert status == 200, body
    assert "groom_event_loop_lag_seconds" in _families(body)
    # What a reverse proxy on this host forwarded is not local, although it comes from loopback.
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        status, body, _ = await _get(server.base_url + "/metrics", **{header: "203.0.113.9"})
        assert status == 403, (header, body)
        assert json.loads(body)["error"]["code"] == "forbidden"


async def test_live_lesson_in_metrics_and_no_codes_in_log(
        live: tuple[GroomServer, dict[str, Any]]) -> None:
    srv, demo = live
    code = demo["class_code"]
    teacher = await start_teacher(srv, demo)
    student = await join_student(srv, demo, "Counted")
    listen_token = student.welcome["listen_token"]
    try:
        await asyncio.sleep(3)
        status, body, _ = await _get(srv.base_url + "/metrics")
        assert status == 200, body
        families = _families(body)
        assert _value(families, "groom_rooms_live") == 1
        assert _value(families, "groom_students", tier="low") == 1  # where every student starts
        assert _value(families, "groom_students_connected") == 1
        assert _value(families, "groom_teachers_present") == 1
        assert _value(families, "groom_packets_sent", "groom_packets_sent_total") > 10
        assert _value(families, "groom_server_added_latency_seconds",
                      "groom_server_added_latency_seconds_count") > 0
        assert _value(families, "groom_event_loop_lag_seconds",
                      "groom_event_loop_lag_seconds_count") >= 1

        # Requests carrying secrets: the student pages, the fallback stream, a calendar link.
        async with aiohttp.ClientSession() as http:
            for path in (f"/join/{code}", f"/c/{code}", f"/r/{code}", f"/lang/lo?next=/join/{code}",
                         f"/join/{code.lower()}?code={code}"):
                async with http.get(srv.base_url + path, allow_redirects=False) as resp:
                    await resp.read()
            async with http.get(f"{srv.base_url}/listen/{listen_token}.ogg") as resp:
                assert resp.status == 200
                await resp.content.read(1000)
        await asyncio.sleep(0.5)
    finally:
        await end_lesson(teacher)
        await teacher.close()
        await student.close()
    await asyncio.sleep(0.5)
    sent = _value(families, "groom_packets_sent", "groom_packets_sent_total")
    status, body, _ = await _get(srv.base_url + "/metrics")
    after = _families(body)
    assert _value(after, "groom_rooms_live") == 0
    assert _value(after, "groom_packets_sent", "groom_packets_sent_total") >= sent  # a counter

    lines = [line for line in Path(srv.log_path).read_text(errors="replace").splitlines()
             if '"admin_url"' not in line]  # the demo's own JSON line prints the class code
    text = "\n".join(lines)
    for secret in (code, code.lower(), listen_token):
        assert secret not in text, f"{secret} in the server log"
    assert f'"/join/{code[:2]}…"' in text  # the request was logged, redacted
    assert f'"/listen/{listen_token[:2]}….ogg"' in text
