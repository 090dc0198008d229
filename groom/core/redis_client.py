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

TLS: ``rediss://``, ``rediss+sentinel://`` (the Sentinels and the servers they name) and
``rediss+cluster://`` (every node, including those learnt from the Cluster) are the same forms
over TLS, for a Redis whose traffic crosses machines. The servers' certificates are always
verified, host name included (for Sentinel and Cluster: the address they announce), against the
system's CAs and, with ``ssl_ca_certs``, a private CA; ``ssl_certfile`` and ``ssl_keyfile`` give
this node a certificate of its own for servers that ask for one (``tls-auth-clients yes``). These
are query parameters, with redis-py's names for ``rediss://``, so one URL says everything and the
same files apply to every connection it leads to:

    rediss+cluster://host1:7000,host2:7001?ssl_ca_certs=/etc/groom/redis-ca.pem
        &ssl_certfile=/etc/groom/redis-client.pem&ssl_keyfile=/etc/groom/redis-client.key

``check_url`` reads each file once at start, so a missing or wrong file, or an unknown query
parameter, stops the server with a message instead of failing at every connection later.
"""

from __future__ import annotations

import ssl
from typing import Any, Union
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisClusterException, RedisError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_TLS_SCHEME = "rediss+cluster"
CLUSTER_PORT = 6379
SENTINEL_SCHEMES = (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME)
CLUSTER_SCHEMES = (CLUSTER_SCHEME, CLUSTER_TLS_SCHEME)
# One server: redis-py reads these URLs itself (from_url), the query's database and files too.
SERVER_SCHEMES = ("redis", "rediss", "unix")
TLS_SCHEMES = ("rediss", SENTINEL_TLS_SCHEME, CLUSTER_TLS_SCHEME)
# The query parameters of a TLS URL (module docstring): a private CA, a client certificate, its key.
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

RedisClient = Union[aioredis.Redis, RedisCluster]
# What a call may raise when Redis does not answer. The Cluster client raises its own
# RedisClusterException, which is no RedisError, when it cannot reach any node to learn the
# slots (every node down, or a cluster not formed yet): an outage like any other.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def check_url(url: str) -> None:
    """ValueError, saying what is wrong, for a ``--redis-url`` no client can be made from: a
    scheme G-Room does not know, a malformed host list, an unknown query parameter, or a TLS
    file that cannot be read (``tls_files``)."""
    scheme = urlsplit(url).scheme
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url)
    elif scheme in CLUSTER_SCHEMES:
        parse_cluster_url(url)
    elif scheme in SERVER_SCHEMES:
        db = _query(url).get("db", "0")
        if not db.isdigit():
            raise ValueError(f"the database {db!r} is not a number")
    else:
        known = ", ".join(s + "://" for s in SERVER_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES)
        raise ValueError(f"{url!r} is not a URL of one of {known}")
    tls_files(url)


def tls_files(url: str) -> dict[str, str]:
    """The TLS files named in ``url``'s query, each loaded once to check it: the CA file must
    hold PEM certificates, the client certificate must go with its key (``ssl_keyfile``, or the
    certificate file itself), and the key must have no passphrase, since no one is at a
    terminal to type it (OpenSSL would ask there and the start would hang). ValueError names
    the file and what is wrong with it."""
    files = {name: value for name, value in _query(url).items() if name in TLS_FILES}
    ca, cert, key = (files.get(name) for name in TLS_FILES)
    if key and not cert:
        raise ValueError("ssl_keyfile needs ssl_certfile, the certificate the key belongs to")
    context = ssl.create_default_context()
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except OSError as exc:
            raise ValueError(f"ssl_ca_certs {ca!r} is not a readable PEM file of CA "
                             f"certificates: {exc}") from None
    if cert:
        try:
            context.load_cert_chain(cert, key, password=_no_passphrase)
        except (OSError, ValueError) as exc:
            raise ValueError(f"ssl_certfile {cert!r} and ssl_keyfile {key or cert!r} are not a "
                             f"readable PEM certificate and its key: {exc}") from None
    return files


def _no_passphrase() -> str:
    raise ValueError("the key is encrypted; give it without a passphrase")


def _query(url: str) -> dict[str, str]:
    """The query of ``url``, each parameter once and each one its form takes: ``db`` for one
    server (redis-py reads it: a ``unix://`` URL has no other place for it) and the TLS files
    for a TLS form. Anything else is refused rather than handed to redis-py, where it would
    override the timeouts G-Room sets, or fail only at the first connection."""
    parts = urlsplit(url)
    allowed = (("db",) if parts.scheme in SERVER_SCHEMES else ()) + (
        TLS_FILES if parts.scheme in TLS_SCHEMES else ())
    found: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            takes = "only " + ", ".join(allowed) if allowed else "none"
            raise ValueError(f"unknown query parameter {name!r} "
                             f"(a {parts.scheme}:// URL takes {takes})")
        if name in found or not value:
            raise ValueError(f"the query parameter {name!r} must be given once, with a value")
        found[name] = value
    return found


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinels, service name, db, password) of a ``redis+sentinel://`` or
    ``rediss+sentinel://`` URL; ValueError if it names no Sentinel or no service, or its query
    holds anything but the TLS files of the TLS form."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"{url!r} is not a {SENTINEL_SCHEME}:// or {SENTINEL_TLS_SCHEME}:// URL")
    _query(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    password = (unquote(auth.partition(":")[2]) or None) if auth else None
    sentinels = _hosts(hosts, url, SENTINEL_PORT)
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path or len(path) > 2:
        raise ValueError(f"{url!r}: expected {parts.scheme}://host:port[,host:port...]/service[/db]")
    try:
        db = int(path[1]) if len(path) == 2 else 0
    except ValueError:
        raise ValueError(f"{url!r}: the database {path[1]!r} is not a number") from None
    return sentinels, unquote(path[0]), db, password


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """(startup nodes, username, password) of a ``redis+cluster://`` or ``rediss+cluster://``
    URL; ValueError if it names no node, or a database other than 0, or its query holds
    anything but the TLS files of the TLS form."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"{url!r} is not a {CLUSTER_SCHEME}:// or {CLUSTER_TLS_SCHEME}:// URL")
    _query(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    user, _, secret = auth.partition(":")
    nodes = _hosts(hosts, url, CLUSTER_PORT)
    if not nodes or parts.fragment:
        raise ValueError(f"{url!r}: expected {parts.scheme}://host:port[,host:port...][/0]")
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
    if urlsplit(url).scheme not in CLUSTER_SCHEMES:
        return prefix
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"{prefix!r} cannot be a Redis Cluster hash tag "
                         "(it must not be empty or hold '{' or '}')")
    return "{" + prefix + "}"


def redis_client(url: str, **options: Any) -> RedisClient:
    """A client for ``url`` (see the module docstring); ``options`` (timeouts, retry, decoding)
    apply to the connections to Redis, and the timeouts and TLS to the Sentinels too (a Cluster
    client reads ``retry`` as how many times to ask again, learning the slots anew each time).
    No connection is made here: the first call makes one, so a Redis that is away at start does
    not stop a node."""
    scheme = urlsplit(url).scheme
    if scheme in SERVER_SCHEMES:  # redis-py reads the query (db, the TLS files) itself
        return aioredis.from_url(url, **options)
    # Verification is redis-py's default with ssl=True: required, host name checked.
    tls: dict[str, Any] = {"ssl": True, **tls_files(url)} if scheme in TLS_SCHEMES else {}
    if scheme in CLUSTER_SCHEMES:
        nodes, username, password = parse_cluster_url(url)
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                            username=username, password=password, **tls, **options)
    sentinels, service, db, password = parse_sentinel_url(url)
    timeouts = {k: v for k, v in options.items()
                if k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs={**timeouts, **tls},  # type: ignore[no-untyped-call]
                        **tls, **options)
    client: aioredis.Redis = sentinel.master_for(service, db=db, password=password)
    return client
