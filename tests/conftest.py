"""Shared fixtures: one real server per database backend for the whole session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from typing import Any  # noqa: E402

from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer, database_backends  # noqa: E402


@pytest.fixture(scope="session", params=database_backends())
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GroomServer]:
    srv = GroomServer(tmp_path_factory.mktemp(f"groom-{request.param}"), request.param,
                      args=("--join-attempts-per-minute", "1000"))
    srv.create_root()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def root(server: GroomServer) -> AsyncIterator[ApiClient]:
    """A client logged in as the admin of all schools."""
    client = ApiClient(server.base_url)
    await client.login(ROOT_USER, ROOT_PASSWORD)
    yield client
    await client.close()


@pytest.fixture
async def anon(server: GroomServer) -> AsyncIterator[ApiClient]:
    client = ApiClient(server.base_url)
    yield client
    await client.close()


@pytest.fixture(scope="module", params=database_backends())
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GroomServer, dict[str, Any]]]:
    """A demo server per test module (its own PostgreSQL database), for live-lesson tests:
    yields the server and the demo's JSON (logins, class code and id, lesson id)."""
    srv = GroomServer(tmp_path_factory.mktemp(f"live-{request.param}"), request.param,
                      pg_database=f"groom_live_{request.module.__name__}",
                      args=("--demo", "--json", "--grace-seconds", "4", "--tier-up-seconds", "2",
                            "--join-attempts-per-minute", "1000"))
    srv.start()
    yield srv, srv.demo_info()
    srv.stop()
