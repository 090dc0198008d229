"""Abuse limits shared by the nodes of a cluster (``--redis-url``): one budget, not one per node.

Two real nodes share a database, a data folder and a throwaway Redis (as in ``test_cluster.py``).
A guesser who spreads wrong join codes, wrong logins or wrong BigBlueButton API checksums over
both nodes is stopped at the budget in total; the "known code" exception (a school behind one
NAT) holds whichever node the class's first pupil came through; and with Redis killed, lessons are
still joined while each node goes on limiting guessers by itself, until Redis is back and the
count is shared again. Each step uses addresses of its own (``X-Forwarded-For`` from the trusted
loopback proxy), so the steps do not share counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from peers import other_class
from servers import GroomServer, database_backends
from test_cluster import RedisServer

pytestmark = pytest.mark.timeout(180)  # redis-server: scripts/test installs it

WRONG_CODES = 4  # --join-attempts-per-minute
PER_ADDRESS, PER_USER = 3, 5  # --login-failures-per-address, --login-failures-per-user
WRONG_CODE = "ZZZZZZZZ"
API_SECRET = "shared-limits-secret-0123456789"
CLIENTS = [{"name": "lms", "secret": API_SECRET, "school": "LMS meetings"}]


class Pair:
    """Two nodes of one cluster and its Redis."""

    def __init__(self, root: Path, backend: str) -> None:
        self.redis = RedisServer()
        self.redis.start()
        prefix = "t" + secrets.token_hex(4)
        self.nodes: list[GroomServer] = []
        for i in range(2):
            node = GroomServer(root, backend, pg_database="groom_shared_limits", reset_database=i == 0,
                               args=("--redis-url", self.redis.url, "--redis-prefix", prefix,
                                     "--node-id", f"n{i}", "--trusted-proxies", "127.0.0.1",
                                     "--join-attempts-per-minute", str(WRONG_CODES),
                                     "--login-failures-per-address", str(PER_ADDRESS),
                                     "--login-failures-per-user", str(PER_USER),
                                     "--bbb-clients", json.dumps(CLIENTS)))
            node.log_path = root / f"n{i}.log"
            self.nodes.append(node)
        self.nodes[0].start("--demo", "--json")
        self.demo = self.nodes[0].demo_info()
        self.nodes[1].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.kill()


@pytest.fixture(scope="module", params=database_backends())
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    group = Pair(tmp_path_factory.mktemp(f"shared-limits-{request.param}"), request.param)
    try:
        yield group
    finally:
        group.stop()


async def join(node: GroomServer, code: str, address: str) -> tuple[int, dict[str, Any], str]:
    """POST /api/join from ``address``: the status, the body and the Retry-After header."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(node.base_url + "/api/join", json={"code": code},
                             headers={"X-Forwarded-For": address}) as resp:
            return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def login(node: GroomServer, username: str, password: str, address: str) -> tuple[int, str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.post(node.base_url + "/api/login", headers={"X-Forwarded-For": address},
                             json={"username": username, "password": password}) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After", "")


async def test_wrong_codes_count_once_across_nodes(pair: Pair) -> None:
    n0, n1 = pair.nodes
    good = pair.demo["class_code"]
    # Wrong codes spread over both nodes: each node saw only half of them, yet the address is
    # stopped at the budget (per node, it would get twice as many).
    guesser = "203.0.113.1"
    for i in range(WRONG_CODES):
        status, body, _ = await join(pair.nodes[i % 2], WRONG_CODE, guesser)
        assert status == 404, body
    for node in (n0, n1):
        status, body, wait = await join(node, WRONG_CODE, guesser)
        assert status == 429 and body["error"]["code"] == "too_many_attempts", body
        assert 1 <= int(wait) <= 60 and body["error"]["details"]["retry_after"] == int(wait)

    # A school behind one NAT: its first pupil joins through node 0; then a guesser at the same
    # address locks it with wrong codes on node 1. The class's code (used from this address, on
    # the other node) still gets the classmates in on node 1 ...
    school = "198.51.100.7"
    status, body, _ = await join(n0, good, school)
    assert status == 200, body
    for _ in range(WRONG_CODES):
        status, body, _ = await join(n1, WRONG_CODE, school)
        assert status == 404, body
    status, body, _ = await join(n1, WRONG_CODE, school)
    assert status == 429, body
    status, body, _ = await join(n1, good, school)
    assert status == 200, body
    # ... but a code never used from there stays behind the limit on every node, although
    # node 0 never saw a wrong code from this address: no oracle for the guesser.
    other = await other_class(n0, pair.demo, "Neighbours")
    for node in (n0, n1):
        status, body, wait = await join(node, other["class_code"], school)
        assert status == 429 and int(wait) >= 1, body
    # Another address is not affected.
    status, body, _ = await join(n0, other["class_code"], "198.51.100.8")
    assert status == 200, body


async def test_wrong_logins_count_once_across_nodes(pair: Pair) -> None:
    n0, n1 = pair.nodes
    teacher = pair.demo["teacher_login"]
    # Per address: wrong logins spread over both nodes lock the address on both.
    guesser = "203.0.113.2"
    for i in range(PER_ADDRESS):
        status, _ = await login(pair.nodes[i % 2], "ghost", f"guess-{i}", guesser)
        assert status == 401
    for node in (n0, n1):
        status, wait = await login(node, teacher["username"], teacher["password"], guesser)
        assert status == 429 and int(wait) >= 1

    # Per username: one wrong password from each of PER_USER addresses, over both nodes; then
    # an address that failed on it (through node 0) is refused on node 1, even with the right
    # password, while an address that never failed (the real teacher) logs in.
    sprayers = [f"203.0.113.{10 + i}" for i in range(PER_USER)]
    for i, address in enumerate(sprayers):
        status, _ = await login(pair.nodes[i % 2], teacher["username"], f"spray-{i}", address)
        assert status == 401
    status, wait = await login(n1, teacher["username"], teacher["password"], sprayers[0])
    assert status == 429 and int(wait) >= 1
    status, _ = await login(n1, teacher["username"], teacher["password"], "203.0.113.99")
    assert status == 200


async def api_call(node: GroomServer, secret: str, address: str) -> tuple[int, str, str]:
    """A BigBlueButton ``getMeetings`` signed with ``secret``: status, returncode/messageKey, Retry-After."""
    checksum = hashlib.sha1(f"getMeetings{secret}".encode()).hexdigest()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{node.base_url}/bigbluebutton/api/getMeetings?checksum={checksum}",
                            headers={"X-Forwarded-For": address}) as resp:
            text = await resp.text()
            key = "SUCCESS" if "<returncode>SUCCESS" in text else text.partition(
                "<messageKey>")[2].partition("<")[0]
            return resp.status, key, resp.headers.get("Retry-After", "")


async def test_wrong_api_checksums_count_once_across_nodes(pair: Pair) -> None:
    from groom.web.joining import CHECKSUM_FAILURES_PER_MINUTE

    guesser = "203.0.113.50"
    for i in range(CHECKSUM_FAILURES_PER_MINUTE):
        status, key, _ = await api_call(pair.nodes[i % 2], f"guess-{i}", guesser)
        assert (status, key) == (200, "checksumError")
    for node in pair.nodes:  # each node saw half of the budget, yet both refuse
        status, key, wait = await api_call(node, API_SECRET, guesser)
        assert (status, key) == (429, "tooManyRequests") and 1 <= int(wait) <= 60
    # The client itself, from its own address, is not affected.
    status, key, _ = await api_call(pair.nodes[1], API_SECRET, "203.0.113.51")
    assert (status, key) == (200, "SUCCESS")


async def test_without_redis_each_node_limits_alone_and_lessons_go_on(pair: Pair) -> None:
    n0, n1 = pair.nodes
    good = pair.demo["class_code"]
    pair.redis.kill()
    try:
        # Pupils still join (the first request finds Redis gone and falls back at once).
        started = time.monotonic()
        status, body, _ = await join(n0, good, "192.0.2.1")
        assert status == 200, body
        status, body, _ = await join(n1, good, "192.0.2.2")
        assert status == 200, body
        assert time.monotonic() - started < 5
        teacher = pair.demo["teacher_login"]
        status, _ = await login(n1, teacher["username"], teacher["password"], "192.0.2.3")
        assert status == 200

        # A guesser is limited by each node's own count (the budget per node, as without Redis).
        guesser = "192.0.2.4"
        for _ in range(WRONG_CODES):
            status, body, _ = await join(n0, WRONG_CODE, guesser)
            assert status == 404, body
        status, body, wait = await join(n0, WRONG_CODE, guesser)
        assert status == 429 and int(wait) >= 1, body
        status, body, _ = await join(n1, WRONG_CODE, guesser)
        assert status == 404, body

        # The known-code exception holds on the node's own count too.
        school = "192.0.2.5"
        status, body, _ = await join(n1, good, school)
        assert status == 200, body
        for _ in range(WRONG_CODES):
            await join(n1, WRONG_CODE, school)
        status, body, _ = await join(n1, good, school)
        assert status == 200, body
        status, body, _ = await join(n1, WRONG_CODE, school)
        assert status == 429, body
    finally:
        pair.redis.start()  # back, empty (no persistence): the harder case

    # Redis is back: after the nodes' retry pause, the count is shared again.
    await asyncio.sleep(2.5)
    guesser = "192.0.2.6"
    for i in range(WRONG_CODES):
        status, body, _ = await join(pair.nodes[i % 2], WRONG_CODE, guesser)
        assert status == 404, body
    for node in (n0, n1):
        status, body, _ = await join(node, WRONG_CODE, guesser)
        assert status == 429, body
    logs = [line for node in (n0, n1) for line in node.log_lines()]
    assert any("redis unavailable" in str(line.get("event", "")) for line in logs)
    assert any("redis answers again" in str(line.get("event", "")) for line in logs)
