"""Outgoing HTTP for the BBB-compatible API (slides by URL, webhook callbacks), safe from SSRF.

Both URLs come from an API client, so they could name the server's own neighbours: a cloud
metadata service (169.254.169.254), a database on loopback, the school's router. BBB itself
shipped advisories for exactly this with presentation URLs. The rules here:

- only ``http``/``https``, no user info in the URL, no proxy from the environment;
- every address a host name resolves to must be public (not loopback, private, link-local,
  multicast, reserved, unspecified, shared 100.64/10), unless it lies in
  ``settings.bbb_private_hosts``; a literal address (also the odd forms ``0x7f000001`` or
  ``2130706433`` that resolvers accept) is checked the same way;
- the check happens in the connector's resolver, so the connection goes to the very address
  that was checked (a second DNS answer cannot swap it), and redirects are followed by hand,
  each hop checked again, at most ``MAX_REDIRECTS``;
- timeouts on connect and on the whole exchange, and a size cap enforced while reading.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Optional, Sequence
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from groom.core.errors import AppError

MAX_REDIRECTS = 3
CONNECT_SECONDS = 5.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def refused(message: str) -> AppError:
    return AppError("badURL", message, status=200)


def parse_networks(value: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(part.strip(), strict=False)
            for part in value.split(",") if part.strip()]


def address_allowed(address: str, allowed: Sequence[IPNetwork]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allowed):
        return True
    return ip.is_global and not ip.is_multicast


class CheckedResolver(AbstractResolver):
    """Resolves like the system, then refuses the host if any of its addresses is not allowed
    (all, not some: a name must not be half internal)."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = list(allowed)
        self._inner = ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            found = await self._inner.resolve(host, port, family)
        except OSError:
            raise refused(f"The host {host} could not be resolved.") from None
        if not found or not all(address_allowed(r["host"], self._allowed) for r in found):
            raise refused(f"The host {host} is not a public address.")
        return found

    async def close(self) -> None:
        await self._inner.close()


def session(allowed: Sequence[IPNetwork], total_seconds: float) -> aiohttp.ClientSession:
    """A client session whose every connection passes ``CheckedResolver``."""
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(allowed), use_dns_cache=False,
                                     limit=8)
    timeout = aiohttp.ClientTimeout(total=total_seconds, connect=CONNECT_SECONDS)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                 auto_decompress=False)


def check_url(raw: str, allowed: Sequence[IPNetwork]) -> URL:
    """The URL if its form is acceptable; a literal address is checked here, since the
    connector does not resolve (so does not check) literal addresses."""
    try:
        url = URL(raw)
    except ValueError:
        raise refused("The URL is not valid.") from None
    if url.scheme not in ("http", "https") or not url.host or url.user or url.password:
        raise refused("Only http and https URLs without a user name are accepted.")
    host = url.host
    try:
        literal: Optional[str] = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        literal = None
    if literal is not None and not address_allowed(literal, allowed):
        raise refused(f"The host {host} is not a public address.")
    return url


async def request(http: aiohttp.ClientSession, method: str, raw_url: str,
                  allowed: Sequence[IPNetwork], *, max_bytes: int,
                  **kwargs: Any) -> tuple[int, bytes, URL]:
    """``method`` to the URL, following redirects by hand (each hop checked); the answer's
    status, its body (at most ``max_bytes``, else refused) and the final URL."""
    url = check_url(raw_url, allowed)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            async with http.request(method, url, allow_redirects=False, **kwargs) as resp:
                if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                    url = check_url(urljoin(str(url), resp.headers["Location"]), allowed)
                    if resp.status == 303:
                        method, kwargs = "GET", {}
                    continue
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise refused("The file is too large.")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > max_bytes:
                        raise refused("The file is too large.")
                return resp.status, bytes(body), url
        except aiohttp.ClientConnectorError as exc:
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, AppError):
                raise inner from None
            raise refused(f"Could not connect to {url.host}.") from None
        except (aiohttp.ClientError, TimeoutError):
            raise refused(f"No answer from {url.host}.") from None
    raise refused("Too many redirects.")
