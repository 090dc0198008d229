"""The cluster's Redis client from ``--redis-url``: one Redis, Redis Sentinels, or a Redis Cluster.

A plain ``redis://``, ``rediss://`` or ``unix://`` URL is one server: if it fails, the cluster
carries on without Redis (each process falls back on its own, docs/operations.md) until it is
back. ``redis+sentinel://`` names Redis Sentinels instead, which watch a primary and its
replicas and promote a replica when the primary dies:

    redis+sentinel://[:password@]host1:26379,host2:26379,host3:26379/service-name[/db]

The client asks the Sentinels which server is the primary of ``service-name`` whenever it opens
a connection, so after a failover the next call reaches the new primary; nothing else in G-Room
knows the difference. The password (if any) is the Redis servers' own; the Sentinels are asked
without one.

``redis+cluster://`` names some nodes of a Redis Cluster (any of them is enough to find the rest;
Cluster has database 0 only):

    redis+cluster://[[user]:password@]host1:7000,host2:7001,host3:7002[/0]

Cluster runs a command, and a Lua script, only on keys of one hash slot, and G-Room's scripts
and ``MGET`` touch several keys at once; so in a Cluster every key starts with the prefix as a
hash tag (``{groom}:...``, ``key_prefix``) and all of them live in one slot, on one primary and
its replicas. Cluster gives G-Room failover, not sharding, which is all it needs: the live plane
is a few keys per node and per lesson.
"""

from __future__ import annotations

from typing import Any, Union
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_PORT = 6379

RedisClient = Union[aioredis.Redis, RedisCluster]
# What a call may raise when Redis does not answer. The Cluster client raises its own
# RedisClusterException, which is no RedisError, when it cannot reach any node to learn the
# slots (every node down, or a cluster not formed yet): an outage like any other.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinels, service name, db, password) of a ``redis+sentinel://`` URL; ValueError if
    it names no Sentinel or no service."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"{url!r} is not a {SENTINEL_SCHEME}:// URL")
    auth, _, hosts = parts.netloc.rpartition("@")
    password = (unquote(auth.partition(":")[2]) or None) if auth else None
    sentinels = _hosts(hosts, url, SENTINEL_PORT)
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ValueError(f"{url!r}: expected {SENTINEL_SCHEME}://host:port[,host:port...]/service[/db]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"{url!r}: the database {path[1]!r} is not a number") from None
    return sentinels, unquote(path[0]), db, password


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """(startup nodes, username, password) of a ``redis+cluster://`` URL; ValueError if it
    names no node, or a database other than 0, or has a query (no option is read from it)."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        raise ValueError(f"{url!r} is not a {CLUSTER_SCHEME}:// URL")
    auth, _, hosts = parts.netloc.rpartition("@")
    user, _, secret = auth.partition(":")
    nodes = _hosts(hosts, url, CLUSTER_PORT)
    if not nodes or parts.query or parts.fragment:
        raise ValueError(f"{url!r}: expected {CLUSTER_SCHEME}://host:port[,host:port...][/0]")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"{url!r}: Redis Cluster has database 0 only")
    return nodes, unquote(user) or None, unquote(secret) or None


def _hosts(hosts: str, url: str, default_port: int) -> list[tuple[str, int]]:
    return [_host_port(item, url, default_port)
            for item in filter(None, (h.strip() for h in hosts.split(",")))]


def _host_port(item: str, url: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare host (the scheme's usual port)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    try:
        if not host:
            raise ValueError
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"{item!r} in {url!r} is not host:port") from None


def key_prefix(url: str, prefix: str) -> str:
    """The start of every G-Room key in the Redis of ``url``: ``--redis-prefix`` itself, or in a
    Cluster ``{prefix}``, a hash tag that puts every key in one slot (module docstring).

    Only Cluster keys carry the tag: on one server or Sentinels the names stay what they have
    always been, so while a cluster of G-Room nodes is upgraded one machine at a time the old
    and the new nodes still find each other's keys. A Cluster has no old nodes to agree with.
    ValueError for a prefix that cannot be a tag of its own (empty, or with braces: the tag
    would end early or be ignored)."""
    if not url.startswith(CLUSTER_SCHEME + "://"):
        return prefix
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"{prefix!r} cannot be a Redis Cluster hash tag "
                         "(it must not be empty or hold '{' or '}')")
    return "{" + prefix + "}"


def redis_client(url: str, **options: Any) -> RedisClient:
    """A client for ``url`` (see the module docstring); ``options`` (timeouts, retry, decoding)
    apply to the connections to Redis, and the timeouts to the Sentinels too (a Cluster client
    reads ``retry`` as how many times to ask again, learning the slots anew each time). No
    connection is made here: the first call makes one, so a Redis that is away at start does
    not stop a node."""
    if url.startswith(CLUSTER_SCHEME + "://"):
        nodes, username, password = parse_cluster_url(url)
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                            username=username, password=password, **options)
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return aioredis.from_url(url, **options)
    sentinels, service, db, password = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items()
                if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **options)  # type: ignore[no-untyped-call]
    client: aioredis.Redis = sentinel.master_for(service, db=db, password=password)
    return client
