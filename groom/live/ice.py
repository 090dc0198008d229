"""ICE servers for pages and for the server, with time-limited TURN credentials.

coturn's ``use-auth-secret`` mode (the TURN REST API convention): the username is
``<expiry unix time>:<name>`` and the password is base64(HMAC-SHA1(secret, username)). The
secret stays on the server; a leaked page credential stops working when it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

TTL_SECONDS = 3 * 3600  # default of ``settings.turn_ttl_seconds``


def _is_turn(server: dict[str, Any]) -> bool:
    urls = server.get("urls", [])
    urls = [urls] if isinstance(urls, str) else urls
    return any(str(u).startswith(("turn:", "turns:")) for u in urls)


def ice_servers_for(configured: list[dict[str, Any]], turn_secret: str, name: str,
                    now: float | None = None, ttl: int = TTL_SECONDS) -> list[dict[str, Any]]:
    """The configured servers, TURN ones given fresh credentials when a secret is set."""
    if not turn_secret:
        return [dict(s) for s in configured]
    expiry = int((now if now is not None else time.time()) + ttl)
    username = f"{expiry}:{name}"
    digest = hmac.new(turn_secret.encode(), username.encode(), hashlib.sha1).digest()
    password = base64.b64encode(digest).decode()
    return [dict(s, username=username, credential=password) if _is_turn(s) else dict(s)
            for s in configured]


def for_server(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The servers the server's own peer connections use: the STUN URLs only.

    A participant behind a firewall brings its own relayed candidate, and the TURN server relays
    to the server's host (or STUN) address: that is the whole path. A TURN allocation of the
    server's own would cost the TURN server a second relay per participant, and aioice gathers
    before the server answers: every join would wait for the allocation, 5 s when the TURN
    server is down. STUN stays: behind a 1:1 NAT (a cloud VM) it names the public address."""
    out = []
    for server in servers:
        urls = server.get("urls", [])
        urls = [urls] if isinstance(urls, str) else urls
        stun = [str(u) for u in urls if str(u).startswith(("stun:", "stuns:"))]
        if stun:
            out.append({"urls": stun})
    return out
