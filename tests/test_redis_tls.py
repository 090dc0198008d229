"""TLS to Redis: ``rediss+cluster://``, ``rediss+sentinel://`` and ``rediss://`` with a private CA.

A throwaway CA (made here with ``cryptography``) signs the Redis servers' certificate (for
127.0.0.1) and a client certificate for G-Room. The servers listen on TLS ports only (``--port
0``: a client without TLS gets no answer at all) and ask clients for a certificate of the CA
(``--tls-auth-clients yes``), so whatever works below went over mutual TLS.

- A Redis Cluster of three primaries and their replicas, with TLS on the cluster bus and
  replication too (``RedisClusterGroup`` of tests/test_redis_cluster.py, with TLS options): two
  G-Room nodes on ``rediss+cluster://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...`` run
  a lesson on one node heard by a student relayed through the other, and stop wrong join codes
  and logins at one budget across both, with the keys in the Cluster. A third node given another
  CA does not start, and says the certificate failed verification.
- One TLS primary, which answers G-Room's client on ``rediss://`` with the same query, watched
  by one TLS Sentinel: a node on ``rediss+sentinel://`` registers in the primary the Sentinel
  names; a node given another CA does not start either (it says no primary was found: redis-py
  does not pass on the TLS error of a Sentinel).
- Bad TLS settings (a missing CA file, a file that is no certificate, an unknown or misplaced
  query parameter, an encrypted key) are refused with a message naming the problem; given to
  ``groom serve``, they stop it at once with exit status 2 and no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from groom.core.redis_client import check_url, key_prefix, parse_cluster_url, parse_sentinel_url, redis_client
from peers import new_lesson
from servers import GroomServer, database_backends, free_port
from test_cluster import closing, connect
from test_redis_cluster import Pair, RedisClusterGroup, one_budget_across_nodes
from test_sentinel import origins_of, redis_cli, wait_for

pytestmark = pytest.mark.timeout(180)  # redis-server (built with TLS): scripts/test installs it

SERVICE = "groom-tls"


@dataclass(frozen=True)
class Authority:
    """A CA: its key signs certificates, its certificate (``path``) is what clients trust."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path


def authority(folder: Path, name: str) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, path)


def issue(ca: Authority, folder: Path, name: str,
          encryption: serialization.KeySerializationEncryption = serialization.NoEncryption(),
          ) -> tuple[Path, Path]:
    """A certificate of ``ca`` for 127.0.0.1 and localhost, good for a server and a client
    (Redis uses its server certificate as a client too: the cluster bus, replication, the
    Sentinel's checks), and its key: the two files' paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, ca.cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path


def _builder(subject: x509.Name, issuer: x509.Name,
             public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


@dataclass(frozen=True)
class Certificates:
    """The files of one test: the CA, the servers' certificate and key, G-Room's client pair,
    and another CA that signed none of them."""

    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    stranger: Path

    def server_options(self) -> list[str]:
        """redis-server's options: TLS everywhere, clients must show a certificate of the CA."""
        cert, key = self.server
        return ["--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes",
                "--tls-cluster", "yes", "--tls-replication", "yes"]

    def cli_options(self) -> list[str]:
        cert, key = self.client
        return ["--tls", "--cacert", str(self.ca), "--cert", str(cert), "--key", str(key)]

    def query(self, ca: Path | None = None) -> str:
        """The TLS part of a ``--redis-url``: trust ``ca`` (this test's CA unless another is
        given), show the client certificate."""
        cert, key = self.client
        return f"ssl_ca_certs={ca or self.ca}&ssl_certfile={cert}&ssl_keyfile={key}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = authority(folder, "groom-test-ca")
    return Certificates(ca.path, issue(ca, folder, "redis"), issue(ca, folder, "groom-node"),
                        authority(folder, "stranger-ca").path)


class TlsCluster(RedisClusterGroup):
    """The Redis Cluster of tests/test_redis_cluster.py with every port on TLS only."""

    def __init__(self, certs: Certificates) -> None:
        super().__init__(tls=certs.server_options(), cli=certs.cli_options())
        self.hosts = f"127.0.0.1:{self.ports[0]},127.0.0.1:{self.ports[1]}"
        self.url = f"rediss+cluster://{self.hosts}?{certs.query()}"


@pytest.fixture(params=database_backends())
def pair(request: pytest.FixtureRequest, tmp_path: Path, certs: Certificates) -> Iterator[Pair]:
    group = Pair(tmp_path, request.param, lambda: TlsCluster(certs))
    try:
        yield group
    finally:
        group.stop()


def test_tls_urls(tmp_path: Path, certs: Certificates) -> None:
    cert, key = certs.client
    both = tmp_path / "client-and-key.pem"  # a certificate file may hold its key too
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert parse_cluster_url(f"rediss+cluster://:pw@h:7000,h2?{certs.query()}") == (
        [("h", 7000), ("h2", 6379)], None, "pw")
    assert parse_sentinel_url(f"rediss+sentinel://h:26379/groom/2?ssl_ca_certs={certs.ca}") == (
        [("h", 26379)], "groom", 2, None)
    assert key_prefix(f"rediss+cluster://h:7000?ssl_ca_certs={certs.ca}", "groom") == "{groom}"
    for good in (f"rediss://h:6380/0?{certs.query()}", f"rediss://h?ssl_certfile={both}",
                 "rediss+cluster://h:7000", "redis://h:6379?db=3", "unix:///run/redis.sock?db=1"):
        check_url(good)
    bad = {
        f"rediss+cluster://h:7000?ssl_ca_certs={certs.ca.parent / 'missing.pem'}": "missing.pem",
        f"rediss+cluster://h:7000?ssl_ca_certs={key}": "not a readable PEM file of CA",
        f"rediss+sentinel://h/groom?ssl_keyfile={key}": "ssl_keyfile needs ssl_certfile",
        f"rediss://h?ssl_certfile={cert}&ssl_keyfile={certs.server[1]}": "its key",
        "rediss+cluster://h:7000?ssl_cert_reqs=none": "unknown query parameter 'ssl_cert_reqs'",
        f"redis+cluster://h:7000?ssl_ca_certs={certs.ca}": "unknown query parameter 'ssl_ca_certs'",
        f"redis+sentinel://h/groom?ssl_ca_certs={certs.ca}": "takes none",
        f"rediss://h?ssl_ca_certs={certs.ca}&ssl_ca_certs={certs.ca}": "once",
        "redis://h?db=x": "is not a number",
        "redis://h?socket_timeout=30": "unknown query parameter 'socket_timeout'",
        "rediss+clusters://h:7000": "is not a URL of one of",
    }
    for url, message in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            check_url(url)


def test_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    """A key with a passphrase would make OpenSSL ask for it on the terminal at the first
    connection: refused at start instead."""
    ca = authority(tmp_path, "ca")
    cert, key = issue(ca, tmp_path, "locked", serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ValueError, match="encrypted"):
        check_url(f"rediss+cluster://h:7000?ssl_ca_certs={ca.path}&ssl_certfile={cert}&ssl_keyfile={key}")


def test_a_bad_tls_setting_stops_the_start(tmp_path: Path, certs: Certificates) -> None:
    srv = GroomServer(tmp_path)
    for url, message in ((f"rediss+cluster://h:7000?ssl_ca_certs={tmp_path / 'nope.pem'}", "nope.pem"),
                         ("rediss+cluster://h:7000?ssl_ca=/etc/ca.pem", "unknown query parameter")):
        result = srv.groom("serve", "--port", "0", *srv.common_args(), "--redis-url", url)
        assert result.returncode == 2, result.stderr
        assert "--redis-url" in result.stderr and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr


async def test_a_cluster_on_redis_cluster_over_tls(pair: Pair, certs: Certificates,
                                                   tmp_path: Path) -> None:
    demo = pair.demo
    n0, n1 = pair.nodes
    lesson_id = await new_lesson(n0, demo)
    teacher = await connect(n0.base_url, {"type": "hello", "role": "teacher", "lesson_id": lesson_id},
                            demo["teacher_login"])
    async with closing(teacher) as peers:
        await teacher.negotiate(send_audio=True, receive_audio=True)
        relayed = await connect(n1.base_url, {"type": "hello", "role": "student", "name": "Relayed",
                                              "code": demo["class_code"]})
        peers.append(relayed)
        await relayed.negotiate(send_audio=False, receive_audio=True)
        await relayed.keeps_hearing(1.0)
        assert await origins_of(n1, demo, lesson_id) == ["c0"]
        await one_budget_across_nodes(pair)
        tag = "{" + pair.prefix + "}:"
        owner = pair.redis.primary_of(tag)
        assert owner is not None and any(k.startswith(tag + "node:") for k in pair.redis.keys(owner))

    assert isinstance(pair.redis, TlsCluster)
    refused_with_another_ca(tmp_path / "stranger",
                            f"rediss+cluster://{pair.redis.hosts}?{certs.query(certs.stranger)}",
                            "certificate verify failed")


async def answers(url: str) -> bool:
    """Whether the Redis of ``url`` answers a PING through G-Room's client."""
    client = redis_client(url, socket_timeout=5)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()


def refused_with_another_ca(folder: Path, url: str, says: str) -> None:
    """A node whose ``url`` trusts a CA that signed none of the servers' certificates stops
    with ``cannot join the cluster`` and ``says``."""
    stranger = GroomServer(folder, args=("--redis-url", url, "--node-id", "stranger"))
    try:
        with contextlib.suppress(RuntimeError):  # it listens, then joins: it may exit before
            stranger.start()                     # or after its first HTTP answer
        assert stranger.proc is not None and stranger.proc.wait(15) != 0
        log = stranger.log_path.read_text()
        assert "cannot join the cluster" in log and says in log, log[-2000:]
    finally:
        stranger.stop()


def test_one_server_and_a_sentinel_over_tls(tmp_path: Path, certs: Certificates) -> None:
    primary, sentinel = free_port(), free_port()
    tls = certs.server_options()
    procs = [subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(primary), *tls, "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port 0\ntls-port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n")
    node = GroomServer(tmp_path / "node", args=(
        "--redis-url", f"rediss+sentinel://127.0.0.1:{sentinel}/{SERVICE}?{certs.query()}",
        "--redis-prefix", "tls", "--node-id", "s0"))
    cli = certs.cli_options()
    try:
        wait_for(lambda: redis_cli(primary, "ping", cli=cli) == "PONG", "the TLS primary")
        assert asyncio.run(answers(f"rediss://127.0.0.1:{primary}/0?{certs.query()}"))
        procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel", *tls],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: redis_cli(sentinel, "sentinel", "get-master-addr-by-name", SERVICE,
                                   cli=cli).split() == ["127.0.0.1", str(primary)], "the TLS Sentinel")
        node.start()
        wait_for(lambda: redis_cli(primary, "exists", "tls:node:s0", cli=cli) == "1",
                 "the node registered in the primary")
        # redis-py 8 reports only the kind of each Sentinel's error (ConnectionError), not why.
        refused_with_another_ca(tmp_path / "stranger", f"rediss+sentinel://127.0.0.1:{sentinel}/"
                                f"{SERVICE}?{certs.query(certs.stranger)}",
                                f"No master found for '{SERVICE}'")
    finally:
        node.stop()
        for proc in procs:
            proc.kill()
            proc.wait()
