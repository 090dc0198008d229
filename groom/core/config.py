"""Settings: declared once, read from flags or ``GROOM_*`` environment variables.

Each option is one ``Option`` row with its help text; the CLI builds its flags from this list and
``docs/settings.md`` is checked against it by a test, so a setting can never be undocumented.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .redis_client import check_url, key_prefix


def _web_dir() -> Path:
    """Templates, static files and translations: ``web/`` beside the package in a checkout, or
    ``groom/web_files`` inside an installed wheel (pyproject.toml maps the one to the other)."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "web_files"
    return installed if installed.is_dir() else package.parent / "web"


WEB_DIR = _web_dir()


class SettingError(ValueError):
    """A flag or GROOM_* variable that cannot be read; the CLI prints it and exits with 2."""


@dataclass(frozen=True)
class Option:
    name: str
    type: Callable[[str], Any]
    default: Any
    help: str


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _ice(value: str) -> list[dict[str, Any]]:
    """ICE servers as JSON (``[{"urls": "stun:..."}]``) or a comma-separated list of URLs."""
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        servers = json.loads(value)
        if not isinstance(servers, list):
            raise ValueError("ICE servers JSON must be a list")
        return servers
    return [{"urls": url.strip()} for url in value.split(",") if url.strip()]


def _networks(value: str) -> str:
    """Addresses/networks, comma-separated; checked here so that a typo stops the start with a
    clear message instead of trusting nobody (or everybody) by surprise."""
    for item in filter(None, (part.strip() for part in value.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return value


def _redis_url(value: str) -> str:
    """Checked here (the form, the query, the TLS files) so that a typo or a missing
    certificate stops the start instead of every join failing later."""
    value = value.strip()
    if value:
        check_url(value)
    return value


def _workers(value: str) -> int:
    count = int(value)
    if count < 0:
        raise ValueError("must be 0 (one per CPU core) or more")
    return count


def _sandbox_mode(value: str) -> str:
    value = value.strip().lower()
    if value not in {"bwrap", "off"}:
        raise ValueError(f"{value!r} is not 'bwrap' or 'off'")
    return value


CHECKSUM_ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")


@dataclass(frozen=True)
class ApiClientSpec:
    """One program allowed to drive G-Room through the BigBlueButton-compatible API: its name,
    its shared secret(s) (several while a secret is being rotated), the school its meetings
    live in, and the checksum algorithms it may use."""

    name: str
    secrets: tuple[str, ...]
    school: str
    algorithms: tuple[str, ...] = CHECKSUM_ALGORITHMS


def _api_clients(value: str) -> list[ApiClientSpec]:
    """``[{"name": "moodle", "secret": "...", "school": "Moodle", "checksums": ["sha256"]}]``;
    ``secret`` may be a list (old and new during a rotation). Checked at start: a client whose
    secret is short, or two clients sharing a secret or a name, stop the server with a message
    instead of answering some requests with the wrong client."""
    value = value.strip()
    if not value:
        return []
    raw = json.loads(value)
    if not isinstance(raw, list):
        raise ValueError("must be a JSON list of clients")
    clients: list[ApiClientSpec] = []
    seen_secrets: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("each client must be a JSON object")
        name, school = str(item.get("name", "")).strip(), str(item.get("school", "")).strip()
        secret = item.get("secret", [])
        found = tuple(secret if isinstance(secret, list) else [secret])
        algorithms = tuple(str(a).lower() for a in item.get("checksums", CHECKSUM_ALGORITHMS))
        if not name or len(name) > 64 or not school or len(school) > 200:
            raise ValueError("each client needs a name (at most 64 characters) and a school")
        if not found or any(not isinstance(s, str) or len(s) < 16 for s in found):
            raise ValueError(f"client {name!r}: each secret needs at least 16 characters")
        if not algorithms or any(a not in CHECKSUM_ALGORITHMS for a in algorithms):
            raise ValueError(f"client {name!r}: checksums must be among {', '.join(CHECKSUM_ALGORITHMS)}")
        if name in {c.name for c in clients} or seen_secrets & set(found):
            raise ValueError(f"client {name!r}: names and secrets must be unique")
        seen_secrets.update(found)
        clients.append(ApiClientSpec(name, found, school, algorithms))
    return clients


OPTIONS: list[Option] = [
    Option("host", str, "127.0.0.1", "Address to listen on (0.0.0.0 for a school LAN)."),
    Option("workers", _workers, 0, "Processes that serve (groom serve): each takes a share of "
           "the connections on the same port and runs its own live lessons; 0 means one per CPU "
           "core, 1 means a single process with no supervisor."),
    Option("port", int, 8080, "TCP port to listen on (0 picks a free one)."),
    Option("redis_url", _redis_url, "", "Redis of a cluster of G-Room nodes (redis://host:6379/0, "
           "redis+sentinel://host:26379,host2:26379/service for Redis Sentinel failover, or "
           "redis+cluster://host:7000,host2:7001 for a Redis Cluster; rediss://, "
           "rediss+sentinel:// and rediss+cluster:// for the same over TLS, with "
           "?ssl_ca_certs=FILE for a private CA and ssl_certfile=FILE&ssl_keyfile=FILE for a "
           "client certificate): every process registers there and the nodes agree on which one "
           "runs each class's lesson, and count wrong join codes, logins and API checksums "
           "together. Empty: this machine alone (placement and limits kept in memory)."),
    Option("redis_prefix", str, "groom", "Prefix of every Redis key this cluster uses (several "
           "clusters, or tests, may share one Redis). In a Redis Cluster the keys start with "
           "{prefix}, a hash tag that keeps them in one slot (so no braces in it)."),
    Option("node_id", str, "", "This machine's name in the cluster (unique per machine); empty "
           "means the host name. Workers add /w0, /w1, ..."),
    Option("node_address", str, "127.0.0.1", "Address of this machine that the other nodes "
           "reach it on (a private network): each process listens there on a port of its own for "
           "connections relayed to the lessons it runs."),
    Option("data_dir", Path, Path("data"), "Folder for the SQLite database, uploads and recordings."),
    Option("database_url", str, "", "SQLAlchemy URL; empty means SQLite in the data folder. "
           "PostgreSQL: postgresql+asyncpg://user@host/db."),
    Option("secret", str, "", "Secret that signs session cookies and links; empty means one is "
           "made and kept in the data folder."),
    Option("public_url", str, "", "Base URL of every absolute link the server makes (join "
           "cards, calendar feeds, the live WebSocket: wss when https); https also marks cookies "
           "Secure and sends HSTS. Empty means http(s)://host:port as asked."),
    Option("trusted_proxies", _networks, "", "Comma-separated addresses/networks (IPv4, IPv6) of "
           "reverse proxies whose X-Forwarded-For/-Proto or Forwarded headers name the real "
           "client and scheme. Empty trusts nobody."),
    Option("ice_servers", _ice, [], "STUN/TURN servers: JSON list of RTCIceServer objects or "
           "comma-separated URLs. Pages get them all (TURN with credentials when turn_secret is "
           "set); the server's own connections use the STUN ones only. Empty means host "
           "candidates only."),
    Option("turn_secret", str, "", "Shared secret of a coturn server (use-auth-secret): pages get "
           "time-limited TURN credentials derived from it."),
    Option("ice_link_local", _bool, False, "Let participants' offers name link-local addresses "
           "(169.254.0.0/16, fe80::/10) as ICE candidates. Off: the server never sends connectivity "
           "checks there (cloud metadata services, the server's own neighbours); turn on only for a "
           "school LAN without DHCP, where phones have nothing but link-local addresses."),
    Option("tls_cert", str, "", "PEM certificate file: serve HTTPS (browsers need it for the "
           "microphone anywhere but localhost)."),
    Option("tls_key", str, "", "PEM private key for --tls-cert."),
    Option("self_signed", _bool, False, "Make (once) and use a self-signed certificate in the "
           "data folder, for a school LAN without a domain."),
    Option("grace_seconds", float, 60.0, "How long a live room waits for a teacher whose "
           "connection dropped before it ends the lesson."),
    Option("tier_up_seconds", float, 20.0, "How long a student's link must stay good before "
           "they are tried one audio tier up, when no slide download has measured its capacity "
           "(a measured link moves up within seconds; down-steps are fast)."),
    Option("join_attempts_per_minute", int, 10, "Wrong join codes allowed per client address per "
           "minute before further attempts are refused."),
    Option("students_per_lesson", int, 300, "Students one live lesson seats (its design size), "
           "and the most that may wait for it to start; one more is told the lesson is full."),
    Option("students_per_address", int, 60, "Students one client address (IPv6: one /64) may "
           "seat in one lesson or keep waiting for it: a school's class of 20-40 behind one NAT, "
           "with room for reloads."),
    Option("sockets_per_address", int, 250, "Open live connections (/ws, before hello included) "
           "one client address (IPv6: one /64) may hold at once across all lessons."),
    Option("log_level", str, "INFO", "Logging level (DEBUG, INFO, WARNING)."),
    Option("health_min_free_mb", int, 500, "GET /healthz fails (503) when the data folder's disk "
           "has less free space than this many MiB."),
    Option("metrics_token", str, "", "Bearer token Prometheus must send for GET /metrics; empty "
           "means /metrics answers only to the server's own host (loopback)."),
    Option("login_failures_per_address", int, 10, "Wrong logins one client address may make in "
           "15 minutes before its logins are refused (429 + Retry-After) for login_lock_seconds, "
           "doubling with each further lock up to an hour."),
    Option("login_failures_per_user", int, 20, "Wrong logins for one username (from all addresses) "
           "in 15 minutes before addresses that already failed on it are refused; an address "
           "without failures (the real owner) may still log in."),
    Option("login_lock_seconds", float, 60.0, "First lock after too many wrong logins; each "
           "further lock of the same address or username doubles it (at most 1 hour)."),
    Option("password_threads", int, 1, "Threads that check and hash passwords (argon2, ~50 ms "
           "of CPU each), apart from everything else, so a login flood cannot take the CPU or the "
           "shared thread pool from live lessons, recordings and file serving."),
    Option("password_queue", int, 16, "Password checks allowed to wait for a thread; beyond it, "
           "logins are refused at once with 503 + Retry-After instead of piling up."),
    Option("max_body_kb", int, 64, "Largest request body, in KiB, for every route without a "
           "limit of its own (forms, logins, JSON); deck uploads and roster imports have theirs. "
           "Larger bodies get 413 before they are read."),
    Option("turn_ttl_seconds", int, 3 * 3600, "How long the TURN credentials a page gets stay "
           "valid; they are used to start or restart ICE, so this covers a long lesson joined an "
           "hour early, and a leaked credential dies soon after."),
    Option("hand_changes_per_minute", int, 12, "Times a student may raise or lower their hand per "
           "minute; more are refused (the timeline keeps at most one hand change per student "
           "every 10 s)."),
    Option("chat_class_per_minute", int, 60, "Chat messages per minute the whole class may send "
           "(besides each student's own 12); over it a message is refused, not sent to anyone."),
    Option("deck_imports_per_user", int, 2, "Slide uploads one person may have converting or "
           "waiting at once; more are refused (429) before the file is read."),
    Option("deck_imports_total", int, 4, "Slide uploads the server holds converting or waiting "
           "at once (each may be 50 MB in memory); more are refused (429) before the file is read."),
    Option("deck_sandbox", _sandbox_mode, "bwrap", "How LibreOffice and the page worker are isolated: "
           "'bwrap' (bubblewrap: no network, the data folder hidden; PPTX/ODP refused without "
           "it) or 'off' (no sandbox: only for trusted uploaders)."),
    Option("bbb_clients", _api_clients, [], "Programs that may use the BigBlueButton-compatible "
           "API at /bigbluebutton/api/ (Moodle, Greenlight, a portal): JSON list of {name, secret "
           "(or a list of secrets while rotating), school, checksums}. Empty: the API is off."),
    Option("bbb_private_hosts", _networks, "", "Comma-separated addresses/networks that slide "
           "URLs and webhook callbacks of the API may reach although they are loopback, private "
           "or link-local (a Moodle on the school LAN). Empty: only public addresses."),
    Option("bbb_hook_attempts", int, 5, "Times a webhook callback is tried before it is given "
           "up (the waits between tries double)."),
    Option("bbb_hook_retry_seconds", float, 10.0, "Wait before the second try of a webhook "
           "callback that failed; each further wait doubles."),
]


@dataclass
class Settings:
    host: str = "127.0.0.1"
    workers: int = 0
    port: int = 8080
    redis_url: str = ""
    redis_prefix: str = "groom"
    node_id: str = ""
    node_address: str = "127.0.0.1"
    data_dir: Path = Path("data")
    database_url: str = ""
    secret: str = ""
    public_url: str = ""
    trusted_proxies: str = ""
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    turn_secret: str = ""
    ice_link_local: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    self_signed: bool = False
    grace_seconds: float = 60.0
    tier_up_seconds: float = 20.0
    join_attempts_per_minute: int = 10
    students_per_lesson: int = 300
    students_per_address: int = 60
    sockets_per_address: int = 250
    log_level: str = "INFO"
    health_min_free_mb: int = 500
    metrics_token: str = ""
    login_failures_per_address: int = 10
    login_failures_per_user: int = 20
    login_lock_seconds: float = 60.0
    password_threads: int = 1
    password_queue: int = 16
    max_body_kb: int = 64
    turn_ttl_seconds: int = 3 * 3600
    hand_changes_per_minute: int = 12
    chat_class_per_minute: int = 60
    deck_imports_per_user: int = 2
    deck_imports_total: int = 4
    deck_sandbox: str = "bwrap"
    bbb_clients: list[ApiClientSpec] = field(default_factory=list)
    bbb_private_hosts: str = ""
    bbb_hook_attempts: int = 5
    bbb_hook_retry_seconds: float = 10.0

    @property
    def worker_count(self) -> int:
        """How many processes ``groom serve`` runs: ``workers``, or one per CPU core."""
        return self.workers or os.cpu_count() or 1

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert or self.self_signed)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'groom.sqlite3').resolve()}"

    def prepare(self) -> None:
        """Create the data folder and fill in a persistent secret when none was given."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.secret:
            path = self.data_dir / "secret.key"
            if not path.exists():
                write_private(path, secrets.token_urlsafe(32).encode())
            self.secret = path.read_text().strip()


def write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only from the first byte (mode 0600 at creation,
    whatever the umask), so a secret is never briefly world readable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per option; defaults come from the environment, then the spec."""
    for opt in OPTIONS:
        env = f"GROOM_{opt.name.upper()}"
        flag = "--" + opt.name.replace("_", "-")
        if opt.type is _bool:  # "--self-signed" alone means yes; "--self-signed no" also works
            parser.add_argument(flag, dest=opt.name, default=None, nargs="?", const="true",
                                metavar="yes|no", help=f"{opt.help} [env {env}]")
        else:
            parser.add_argument(flag, dest=opt.name, default=None, metavar=opt.name.upper(),
                                help=f"{opt.help} [env {env}]")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.name, None)
        if raw is None:
            raw = os.environ.get(f"GROOM_{opt.name.upper()}")
        if raw is None:
            continue
        try:
            values[opt.name] = opt.type(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise SettingError(f"--{opt.name.replace('_', '-')} (GROOM_{opt.name.upper()}): {exc}") from None
    known = {f.name for f in fields(Settings)}
    settings = Settings(**{k: v for k, v in values.items() if k in known})
    try:  # a Cluster's keys start with the prefix as a hash tag: not every prefix can be one
        key_prefix(settings.redis_url, settings.redis_prefix)
    except ValueError as exc:
        raise SettingError(f"--redis-prefix (GROOM_REDIS_PREFIX): {exc}") from None
    return settings
