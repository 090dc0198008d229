"""Behind a reverse proxy: the real client address and scheme, and the public base URL.

A proxy that terminates TLS (nginx, Caddy, a load balancer) connects to G-Room from its own
address over plain HTTP; it names the real client and scheme in ``X-Forwarded-For`` /
``X-Forwarded-Proto`` or in RFC 7239 ``Forwarded: for=...;proto=...``. Anyone can send those
headers, so they are read only when the TCP peer is in ``settings.trusted_proxies``
(comma-separated addresses or networks, IPv4 and IPv6; empty, the default, trusts nobody).

``forwarded`` is the first middleware: it replaces the request by ``request.clone(remote=...,
scheme=...)``, so everything after it (logs, the join limiter, cookies, the WebSocket URL) sees
the real client. The client is the rightmost address of the chain that is not itself a trusted
proxy (proxies append the address they got the request from, so addresses on the left are
whatever the client claimed). ``X-Forwarded-For`` wins over ``Forwarded`` when both are present
(nginx appends to the former and passes the latter through untouched). A header that cannot be
parsed is ignored: the request keeps the peer's address, it never fails.

``public_base`` is the base of every absolute URL the server produces (``settings.public_url``,
else the request's own scheme and host); ``hsts`` adds ``Strict-Transport-Security`` to every
response when the public URL or the (trusted) request scheme is https.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Awaitable, Callable, Optional, Union
from urllib.parse import urlsplit

from aiohttp import web

from groom.core.config import Settings

from .plumbing import SETTINGS

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HSTS = "max-age=31536000"
MAX_HOPS = 32  # a longer chain is garbage (or an attack); fall back to the peer
_SCHEME_KEY = "groom.web.proxy.scheme"  # the trusted scheme, kept on the original request too

_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")  # RFC 7239 node-port: a number or obfuscated
# One ``key=value`` pair of a Forwarded element; the value a token or a quoted string.
_PAIR = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]*)\s*')


@functools.lru_cache(maxsize=8)
def parse_networks(value: str) -> tuple[Network, ...]:
    """``"127.0.0.1, 10.0.0.0/8, ::1"`` -> networks; raises ValueError naming a bad entry."""
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {item!r} is not an IP address or network") from None
    return tuple(networks)


def parse_address(value: str) -> Optional[Address]:
    """An address as proxies write it: ``1.2.3.4``, ``1.2.3.4:5678``, ``[2001:db8::1]:443``,
    ``2001:db8::1``; None for anything else (``unknown``, obfuscated names, garbage)."""
    value = value.strip().strip('"').strip()
    port = ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            return None
        value, port = value[1:end], value[end + 2:]
    elif value.count(":") == 1:  # IPv4 with a port
        value, port = value.split(":", 1)
        if not port:
            return None
    if port and not _PORT.fullmatch(port):
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(address: Optional[Address], networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in networks)


def _scheme(value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    value = value.strip().strip('"').strip().lower()
    return value if value in ("http", "https") else None


def _pick(hops: list[tuple[Optional[Address], Optional[str]]],
          networks: tuple[Network, ...]) -> Optional[tuple[str, Optional[str]]]:
    """The client of a chain of (address, scheme) hops, left to right: the rightmost address
    that is not a trusted proxy (the leftmost one when all are trusted). None when the chain
    is empty, too long, or garbage before the client is reached."""
    if not hops or len(hops) > MAX_HOPS:
        return None
    for address, scheme in reversed(hops):
        if address is None:
            return None
        if not is_trusted(address, networks):
            return str(address), scheme
    address, scheme = hops[0]
    return str(address), scheme


def from_x_forwarded(forwarded_for: str, forwarded_proto: Optional[str],
                     networks: tuple[Network, ...]) -> Optional[tuple[str, Optional[str]]]:
    addresses = [parse_address(item) for item in forwarded_for.split(",")]
    protos = [_scheme(p) for p in forwarded_proto.split(",")] if forwarded_proto else []
    # One proto per hop when the proxies kept both lists in step; else the edge proxy's one.
    if len(protos) != len(addresses):
        protos = [protos[-1] if protos else None] * len(addresses)
    return _pick(list(zip(addresses, protos)), networks)


def from_forwarded(header: str, networks: tuple[Network, ...]
                   ) -> Optional[tuple[str, Optional[str]]]:
    """RFC 7239: ``for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"``."""
    hops: list[tuple[Optional[Address], Optional[str]]] = []
    for element in _split_elements(header):
        pairs: dict[str, str] = {}
        for part in _split(element, ";"):
            if not part.strip():
                continue
            match = _PAIR.fullmatch(part)
            if match is None:
                return None
            value = match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            pairs[match.group(1).lower()] = value
        if "for" not in pairs:
            return None
        hops.append((parse_address(pairs["for"]), _scheme(pairs.get("proto"))))
    return _pick(hops, networks)


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _split_elements(header: str) -> list[str]:
    return [e for e in _split(header, ",") if e.strip()]


def client(request: web.Request, networks: tuple[Network, ...]
           ) -> Optional[tuple[str, Optional[str]]]:
    """(address, scheme or None) the trusted proxy in front of us names, or None."""
    if not networks or not is_trusted(parse_address(request.remote or ""), networks):
        return None
    headers = request.headers
    forwarded_for = headers.getall("X-Forwarded-For", [])
    if forwarded_for:
        protos = headers.getall("X-Forwarded-Proto", [])
        return from_x_forwarded(",".join(forwarded_for), ",".join(protos) or None, networks)
    forwarded = headers.getall("Forwarded", [])
    if forwarded:
        return from_forwarded(",".join(forwarded), networks)
    proto = _scheme(headers.get("X-Forwarded-Proto"))  # a proxy that names the scheme only
    return (request.remote or "", proto) if proto else None


@web.middleware
async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    networks = parse_networks(request.app[SETTINGS].trusted_proxies)
    found = client(request, networks) if networks else None
    if found is None:
        return await handler(request)
    address, scheme = found
    scheme = scheme or request.scheme
    request[_SCHEME_KEY] = scheme  # the response is prepared with this request, not the clone
    return await handler(request.clone(remote=address, scheme=scheme))


def remember_scheme(request: web.Request, scheme: str) -> None:
    """The client's scheme, kept on the request the response is prepared with (``hsts``)."""
    request[_SCHEME_KEY] = scheme


def public_https(settings: Settings) -> bool:
    return settings.public_url.strip().lower().startswith("https://")


def is_https(request: web.Request) -> bool:
    """Whether browsers reach this server over https: directly, through a trusted proxy, or
    as the public URL says."""
    scheme = request.get(_SCHEME_KEY, request.scheme)
    return scheme == "https" or request.app[SETTINGS].tls or public_https(request.app[SETTINGS])


def public_base(request: web.Request) -> str:
    """The base of absolute URLs: the public URL, else the scheme and host asked for."""
    configured = request.app[SETTINGS].public_url.strip().rstrip("/")
    return configured or f"{request.scheme}://{request.host}"


def ws_url(request: web.Request) -> str:
    """The live WebSocket's URL: wss whenever pages are https."""
    configured = request.app[SETTINGS].public_url.strip().rstrip("/")
    if configured:
        parts = urlsplit(configured)
        scheme = "wss" if parts.scheme.lower() == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path}/ws"
    return f"{'wss' if is_https(request) else 'ws'}://{request.host}/ws"


def public_host(settings: Settings) -> str:
    """``host[:port]`` of the public URL (empty without one), for the WebSocket origin check."""
    return urlsplit(settings.public_url.strip()).netloc if settings.public_url.strip() else ""


async def hsts(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streams and WebSockets included."""
    if is_https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)
