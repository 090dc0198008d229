"""The cluster's Redis client from ``--redis-url``: one Redis, or the primary Redis Sentinel names.

A plain ``redis://``, ``rediss://`` or ``unix://`` URL is one server: if it fails, the cluster
carries on without Redis (each process falls back on its own, docs/operations.md) until it is
back. ``redis+sentinel://`` names Redis Sentinels instead, which watch a primary and its
replicas and promote a replica when the primary dies:

    redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/service-name[/db]

The client asks the Sentinels which server is the primary of ``service-name`` whenever it opens
a connection, so after a failover the next call reaches the new primary; nothing else in G-Room
knows the difference. The password (if any) is the Redis servers' own; the Sentinels are asked
without one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinels, service name, db, password) of a ``redis+sentinel://`` URL; ValueError if
    it names no Sentinel or no service."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"{url!r} is not a {SENTINEL_SCHEME}:// URL")
    auth, _, hosts = parts.netloc.rpartition("@")
    password = (unquote(auth.partition(":")[2]) or None) if auth else None
    sentinels = [_host_port(item, url) for item in filter(None, (h.strip() for h in hosts.split(",")))]
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ValueError(f"{url!r}: expected {SENTINEL_SCHEME}://host:port[,host:port...]/service[/db]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"{url!r}: the database {path[1]!r} is not a number") from None
    return sentinels, unquote(path[0]), db, password


def _host_port(item: str, url: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (the Sentinel port)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    try:
        return host, int(port) if port else SENTINEL_PORT
    except ValueError:
        raise ValueError(f"{item!r} in {url!r} is not host:port") from None


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (see the module docstring); ``options`` (timeouts, retry, decoding)
    apply to the connections to Redis, and the timeouts to the Sentinels too. No connection is
    made here: the first call makes one, so a Redis that is away at start does not stop a node."""
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.from_url(url, **options)
    sentinels, service, db, password = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items()
                if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **options)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = sentinel.master_for(service, db=db, password=password)
    return client
