"""How the server is reached: HTTPS with a self-signed certificate, and ICE/TURN for the pages."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
from pathlib import Path

import aiohttp

from groom.turn import ice_servers_for
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
    configured = [{"urls": "stun:stun.example.la"}, {"urls": ["turn:turn.example.la:3478"]}]
    now = time.time()
    servers = ice_servers_for(configured, "s3cret", "s-abc", now=now)
    assert servers[0] == {"urls": "stun:stun.example.la"}
    turn = servers[1]
    expiry, name = turn["username"].split(":", 1)
    assert name == "s-abc" and 0 < int(expiry) - now <= 6 * 3600 + 1
    expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest())
    assert turn["credential"] == expected.decode()
    assert ice_servers_for(configured, "", "x") == configured  # no secret: as configured
