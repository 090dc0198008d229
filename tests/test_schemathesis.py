"""Schemathesis against ``/api/openapi.json``: generated requests (valid and invalid) for every
operation, logged in as the admin of all schools. No answer may be a 5xx, and every answer must
match the document.

It runs against a server of its own (it renames, deletes and cancels whatever ids it hits, which
must not disturb the other tests). On PostgreSQL that server uses a database of its own next to
the test database, because resetting the shared one would pull it from under the session server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer, database_backends

MAX_EXAMPLES = "12"


async def _own_postgres_database(url: str) -> str:
    """``<test database>_schemathesis``, created if missing, emptied otherwise."""
    base, name = url.rsplit("/", 1)
    own = f"{name}_schemathesis"
    plain = base.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(f"{plain}/{name}")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", own):
            await conn.execute(f'CREATE DATABASE "{own}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(f"{plain}/{own}")
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    return f"{base}/{own}"


@pytest.fixture(params=database_backends())
async def fuzz_server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[GroomServer]:
    server = GroomServer(tmp_path, request.param, reset_database=False)
    if request.param == "postgresql":
        server.database_url = await _own_postgres_database(os.environ["GROOM_TEST_DATABASE_URL"])
    server.create_root()
    server.start()
    yield server
    server.stop()


async def _seed(client: ApiClient) -> None:
    """Something for generated ids to find: a school with a teacher, a class, a roster and
    lessons (ids start at 1, which the generator tries often)."""
    status, school = await client.call("POST", "/api/schools", json={"name": "ໂຮງຮຽນ"})
    assert status == 201
    status, teacher = await client.call("POST", f"/api/schools/{school['id']}/teachers", json={
        "username": "fuzz-teacher", "password": "fuzz-password"})
    assert status == 201
    status, classroom = await client.call("POST", f"/api/schools/{school['id']}/classes", json={
        "name": "ປ.1", "teacher_id": teacher["id"]})
    assert status == 201
    status, _ = await client.call("POST", f"/api/classes/{classroom['id']}/students/import",
                                  data="ນ້ອຍ\nບຸນມີ\n".encode(), headers={"Content-Type": "text/csv"})
    assert status == 201
    first = dt.date.today() + dt.timedelta(days=2)
    status, _ = await client.call("POST", f"/api/classes/{classroom['id']}/series", json={
        "weekdays": [0, 1, 2, 3, 4], "start_time": "08:00", "duration_minutes": 45,
        "first_date": first.isoformat(), "last_date": (first + dt.timedelta(days=13)).isoformat()})
    assert status == 201


async def test_api_matches_its_document(fuzz_server: GroomServer) -> None:
    client = ApiClient(fuzz_server.base_url)
    try:
        await client.login(ROOT_USER, ROOT_PASSWORD)
        await _seed(client)
        cookie = next(c for c in client.http.cookie_jar if c.key == "groom_session")
        command = [
            sys.executable, "-m", "schemathesis.cli", "run",
            f"{fuzz_server.base_url}/api/openapi.json",
            "--checks", "not_a_server_error,response_schema_conformance",
            "--max-examples", MAX_EXAMPLES, "--no-shrink", "--seed", "20240601",
            "--phases", "coverage,fuzzing,stateful",
            # Logging out would only clear schemathesis's copy of the cookie, but keep it simple.
            "--exclude-path", "/api/logout",
            "-H", f"Cookie: groom_session={cookie.value}", "-H", f"X-CSRF-Token: {client.csrf}",
        ]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                         timeout=240, cwd=fuzz_server.data_dir)
    finally:
        await client.close()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    tested = re.search(r"Tested:\s+(\d+)", result.stdout)
    assert tested and int(tested.group(1)) >= 30, result.stdout[-3000:]
    errors = [line for line in fuzz_server.log_lines() if line.get("event") == "unhandled error"]
    assert not errors, errors[:3]
