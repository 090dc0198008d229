"""Behind a reverse proxy: forwarded client addresses and schemes, from trusted proxies only.

The parsing is checked directly (chains, IPv6, RFC 7239, garbage); then two real servers: one
that trusts 127.0.0.1 (where these tests connect from, as a proxy would) with an https public
URL, and one that trusts nobody. On the first, ten wrong join codes from one forwarded address
lock out that address and no other, cookies are Secure, HSTS is sent and the live page gets a
wss:// URL; on the second, the same headers change nothing.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import pytest

from groom.web import proxy
from servers import GroomServer

NETS = proxy.parse_networks("127.0.0.1, 10.1.0.0/16, ::1, fd00::/8")


def xff(value: str, proto: Optional[str] = None) -> Optional[tuple[str, Optional[str]]]:
    return proxy.from_x_forwarded(value, proto, NETS)


def test_networks_are_parsed_and_checked() -> None:
    assert len(NETS) == 4
    assert proxy.parse_networks("") == ()
    assert proxy.parse_networks(" , ") == ()
    assert proxy.parse_networks("192.168.1.7/24") == (ipaddress.ip_network("192.168.1.0/24"),)
    for bad in ("localhost", "10.0.0.0/33", "1.2.3", "::1/200"):
        with pytest.raises(ValueError, match="trusted_proxies"):
            proxy.parse_networks(bad)
    assert proxy.is_trusted(proxy.parse_address("10.1.200.3"), NETS)
    assert proxy.is_trusted(proxy.parse_address("::ffff:127.0.0.1"), NETS)  # v4-mapped peer
    assert proxy.is_trusted(proxy.parse_address("fd12::5"), NETS)
    assert not proxy.is_trusted(proxy.parse_address("10.2.0.1"), NETS)
    assert not proxy.is_trusted(None, NETS)


def test_x_forwarded_for_gives_the_rightmost_untrusted_address() -> None:
    assert xff("203.0.113.9", "https") == ("203.0.113.9", "https")
    # What the client claimed stays on the left: the proxy appended the real peer.
    assert xff("1.1.1.1, 203.0.113.9") == ("203.0.113.9", None)
    assert xff("203.0.113.9, 10.1.0.5, 127.0.0.1", "https") == ("203.0.113.9", "https")
    assert xff("203.0.113.9:5555") == ("203.0.113.9", None)
    assert xff('"[2001:db8::7]:_port"') == ("2001:db8::7", None)
    assert xff("2001:db8::7") == ("2001:db8::7", None)
    assert xff("[2001:db8::7]:443, ::1") == ("2001:db8::7", None)
    assert xff("10.1.0.9, 127.0.0.1") == ("10.1.0.9", None)  # only proxies: the first one
    # One proto per hop when the lists match; else the edge proxy's (last) one.
    assert xff("203.0.113.9, 10.1.0.5", "https, http") == ("203.0.113.9", "https")
    assert xff("203.0.113.9, 10.1.0.5", "HTTPS") == ("203.0.113.9", "https")
    assert xff("203.0.113.9", "gopher") == ("203.0.113.9", None)


@pytest.mark.parametrize("garbage", ["", "not-an-ip", "203.0.113.9, nonsense", "[::1",
                                     "unknown", ",,,", "1.2.3.4.5", "\x00\xff",
                                     ", ".join(["203.0.113.9"] * 100)])
def test_garbage_forwarded_for_falls_back_to_the_peer(garbage: str) -> None:
    assert xff(garbage) is None


def test_rfc7239_forwarded() -> None:
    f = proxy.from_forwarded
    assert f("for=192.0.2.60;proto=https;by=203.0.113.43", NETS) == ("192.0.2.60", "https")
    assert f('For="[2001:db8:cafe::17]:4711"', NETS) == ("2001:db8:cafe::17", None)
    assert f('for=192.0.2.43, for="[::1]";proto=https', NETS) == ("192.0.2.43", None)
    assert f("for=198.51.100.17;proto=http, for=192.0.2.60;proto=https", NETS) == \
        ("192.0.2.60", "https")
    assert f('for=10.1.0.3;proto=https, for=127.0.0.1', NETS) == ("10.1.0.3", "https")
    for garbage in ("for=unknown", "for=_hidden", "proto=https", "for", "for=1.2.3.4;;=x",
                    'for="1.2.3.4', "for=1.2.3.4 junk", ";;;", "for=10.1.0.3:x",
                    'for="[::1]x"', "for=10.1.0.3:"):
        assert f(garbage, NETS) is None, garbage


# --- real servers ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = GroomServer(tmp_path_factory.mktemp("proxy-trusted"),
                      args=("--trusted-proxies", "127.0.0.1, ::1",
                            "--public-url", "https://groom.test"))
    srv.start("--demo", "--json")
    yield srv, srv.demo_info()
    srv.stop()


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = GroomServer(tmp_path_factory.mktemp("proxy-untrusted"))
    srv.start("--demo", "--json")
    yield srv, srv.demo_info()
    srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def join(http: aiohttp.ClientSession, srv: GroomServer, code: str,
               headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    async with http.post(srv.base_url + "/api/join", json={"code": code},
                         headers=headers) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def test_the_join_limit_counts_the_forwarded_client(behind_proxy: Any,
                                                          http: aiohttp.ClientSession) -> None:
    srv, info = behind_proxy
    good, wrong = info["class_code"], "AAAAAAAA"
    a = {"X-Forwarded-For": "203.0.113.10", "X-Forwarded-Proto": "https"}
    b = {"X-Forwarded-For": "203.0.113.20", "X-Forwarded-Proto": "https"}
    for _ in range(10):
        status, _headers = await join(http, srv, wrong, a)
        assert status == 404
    status, headers = await join(http, srv, good, a)
    assert status == 429 and int(headers["Retry-After"]) > 0
    # The rest of the school (another address behind the same proxy) is not locked out.
    status, _headers = await join(http, srv, good, b)
    assert status == 200
    # A client cannot escape by claiming another address: the proxy appends the real one.
    status, _headers = await join(http, srv, good, {"X-Forwarded-For": "198.51.100.1, 203.0.113.10"})
    assert status == 429
    # The same address named the RFC 7239 way, or v6: the one locked out / another one.
    status, _headers = await join(http, srv, good, {"Forwarded": "for=203.0.113.10;proto=https"})
    assert status == 429
    status, _headers = await join(http, srv, good, {"Forwarded": 'for="[2001:db8::5]:443"'})
    assert status == 200
    # Garbage headers fall back to the peer (127.0.0.1, not locked out), never a 500.
    for junk in ({"X-Forwarded-For": "not an address"}, {"X-Forwarded-For": ""},
                 {"Forwarded": "for=unknown"}, {"Forwarded": '"""'},
                 {"X-Forwarded-For": "203.0.113.10", "X-Forwarded-Proto": "\u00e9\u00e9"}):
        status, _headers = await join(http, srv, good, junk)
        assert status in (200, 429), junk
    status, _headers = await join(http, srv, good, {"X-Forwarded-For": "1.2.3.4.5"})
    assert status == 200

    # The request log names the forwarded client.
    clients = {line.get("client") for line in srv.log_lines() if line.get("path") == "/api/join"}
    assert {"203.0.113.10", "203.0.113.20", "2001:db8::5", "127.0.0.1"} <= clients, clients


async def test_https_public_url_gives_secure_cookies_hsts_and_wss(
        behind_proxy: Any, http: aiohttp.ClientSession) -> None:
    srv, info = behind_proxy
    async with http.post(srv.base_url + "/api/login", json=info["teacher_login"],
                         headers={"X-Forwarded-For": "203.0.113.30",
                                  "X-Forwarded-Proto": "https"}) as resp:
        assert resp.status == 200
        cookie = resp.headers["Set-Cookie"]
        assert "groom_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
        session = resp.cookies["groom_session"].value
    # Calendar feed URLs (and join cards, which share the base) use the public URL.
    async with http.get(f"{srv.base_url}/api/classes/{info['class_id']}/calendar",
                        headers={"Cookie": f"groom_session={session}"}) as resp:
        assert resp.status == 200, await resp.text()
        feed = await resp.json()
    assert feed["url"].startswith(f"https://groom.test/calendar/class/{info['class_id']}/")
    assert feed["webcal_url"].startswith("webcal://groom.test/calendar/")
    # The public URL is https: every response says so, even one reached without the proxy.
    async with http.get(srv.base_url + "/login") as resp:
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
    async with http.get(srv.base_url + "/nowhere") as resp:
        assert resp.status == 404
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"

    async with http.get(f"{srv.base_url}/join/{info['class_code']}?lang=en",
                        headers={"X-Forwarded-For": "203.0.113.30"}) as resp:
        assert resp.status == 200
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
        config = page_config(await resp.text())
    assert config["ws"] == "wss://groom.test/ws"
    # Links the server prints use the public URL too.
    assert info["student_url"] == f"https://groom.test/join/{info['class_code']}"


async def test_untrusted_peers_forwarded_headers_are_ignored(
        direct: Any, http: aiohttp.ClientSession) -> None:
    srv, info = direct
    for n in range(10):
        status, _headers = await join(http, srv, "AAAAAAAA",
                                      {"X-Forwarded-For": f"203.0.113.{n}",
                                       "Forwarded": f"for=198.51.100.{n}"})
        assert status == 404
    status, _headers = await join(http, srv, info["class_code"],
                                  {"X-Forwarded-For": "203.0.113.99"})
    assert status == 429  # every attempt came from 127.0.0.1, whatever the headers said
    clients = {line.get("client") for line in srv.log_lines() if line.get("path") == "/api/join"}
    assert clients == {"127.0.0.1"}

    async with http.post(srv.base_url + "/api/login", json=info["teacher_login"],
                         headers={"X-Forwarded-Proto": "https"}) as resp:
        assert resp.status == 200
        assert "Secure" not in resp.headers["Set-Cookie"]
        assert "Strict-Transport-Security" not in resp.headers
    async with http.get(srv.base_url + "/api/openapi.json",
                        headers={"X-Forwarded-Proto": "https"}) as resp:
        assert "Strict-Transport-Security" not in resp.headers


async def test_trusted_proxy_scheme_without_public_url(tmp_path: Path,
                                                       http: aiohttp.ClientSession) -> None:
    """No public URL: the WebSocket URL and HSTS follow the scheme the trusted proxy names."""
    srv = GroomServer(tmp_path, args=("--trusted-proxies", "127.0.0.0/8",
                                      "--join-attempts-per-minute", "1000"))
    srv.start("--demo", "--json")
    try:
        info = srv.demo_info()
        url = f"{srv.base_url}/join/{info['class_code']}?lang=en"
        async with http.get(url, headers={"X-Forwarded-For": "203.0.113.40",
                                          "X-Forwarded-Proto": "https",
                                          "Host": "school.example"}) as resp:
            assert resp.headers["Strict-Transport-Security"] == "max-age=31536000"
            assert page_config(await resp.text())["ws"] == "wss://school.example/ws"
        async with http.get(url) as resp:
            assert "Strict-Transport-Security" not in resp.headers
            assert page_config(await resp.text())["ws"] == f"ws://127.0.0.1:{srv.port}/ws"
    finally:
        srv.stop()


def page_config(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="config">(.*?)</script>', html, re.S)
    assert found, html[:2000]
    return json.loads(found.group(1))  # type: ignore[no-any-return]
