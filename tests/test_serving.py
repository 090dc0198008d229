"""How the server is reached: HTTPS with a self-signed certificate, and ICE/TURN for the pages."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import re
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp

from groom.live.ice import for_server, ice_servers_for
from servers import GroomServer


async def test_self_signed_https_serves_pages_and_websocket(tmp_path: Path) -> None:
    srv = GroomServer(tmp_path, args=("--self-signed", "--demo", "--json",
                                      "--ice-servers", "stun:stun.example.la:3478,turn:turn.example.la:3478",
                                      "--turn-secret", "s3cret"))
    srv.start()
    try:
        assert (tmp_path / "tls-cert.pem").exists()
        demo = srv.demo_info()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=insecure)) as http:
            async with http.get(srv.base_url + "/login") as resp:
                assert resp.status == 200 and resp.url.scheme == "https"
            # The student page asks for a secure WebSocket, and the socket hands out ICE
            # servers with time-limited TURN credentials (never the secret).
            async with http.get(demo["student_url"]) as resp:
                assert "wss://" in await resp.text()
            async with http.ws_connect(srv.base_url.replace("https", "wss") + "/ws") as ws:
                await ws.send_json({"type": "hello", "role": "student", "code": demo["class_code"],
                                    "name": "Secure"})
                reply = json.loads((await ws.receive()).data)
    finally:
        srv.stop()
    assert reply["type"] == "waiting"  # no lesson is live: the student waits


def test_turn_credentials_are_time_limited_hmacs() -> None:
    configured: list[dict[str, Any]] = [{"urls": "stun:stun.example.la"},
                                        {"urls": ["turn:turn.example.la:3478"]}]
    now = time.time()
    servers = ice_servers_for(configured, "s3cret", "s-abc", now=now)
    assert servers[0] == {"urls": "stun:stun.example.la"}
    turn = servers[1]
    expiry, name = turn["username"].split(":", 1)
    assert name == "s-abc" and 0 < int(expiry) - now <= 6 * 3600 + 1
    expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()
    assert ice_servers_for(configured, "", "x") == configured  # no secret: as configured


async def test_student_page_first_load_is_small_compressed_and_cached(
        live: tuple[GroomServer, dict[str, Any]]) -> None:
    """What a phone really downloads on first load (HTML + JS + CSS, on the wire) stays
    under 30 KB, and the scripts are cached for good (versioned URLs)."""
    srv, demo = live
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        headers = {"Accept-Encoding": "gzip"}
        async with http.get(demo["student_url"], headers=headers) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            page = await resp.read()
        total = len(page)
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', gzip.decompress(page).decode())
        assert any(a.endswith(".js") or ".js?" in a for a in assets)
        for asset in assets:
            async with http.get(srv.base_url + asset.replace("&amp;", "&"), headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Encoding"] == "gzip"
                assert "immutable" in resp.headers["Cache-Control"]
                total += len(await resp.read())
            async with http.get(srv.base_url + asset.split("?")[0], headers=headers) as resp:
                assert resp.headers["Cache-Control"] == "no-cache"  # unversioned: revalidate
    assert total < 30 * 1024, total


def test_the_server_itself_uses_stun_only() -> None:
    configured: list[dict[str, Any]] = [
        {"urls": ["stun:stun.example.la:3478", "turn:turn.example.la:3478?transport=udp"]},
        {"urls": "turns:turn.example.la:5349?transport=tcp", "username": "u", "credential": "c"},
        {"urls": "stun:stun2.example.la"}]
    assert for_server(configured) == [{"urls": ["stun:stun.example.la:3478"]},
                                      {"urls": ["stun:stun2.example.la"]}]
    assert for_server([{"urls": "turn:turn.example.la"}]) == []
