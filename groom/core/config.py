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


OPTIONS: list[Option] = [
    Option("host", str, "127.0.0.1", "Address to listen on (0.0.0.0 for a school LAN)."),
    Option("port", int, 8080, "TCP port to listen on (0 picks a free one)."),
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
    Option("ice_servers", _ice, [], "STUN/TURN servers for server and pages: JSON list of "
           "RTCIceServer objects or comma-separated URLs. Empty means host candidates only."),
    Option("turn_secret", str, "", "Shared secret of a coturn server (use-auth-secret): pages get "
           "time-limited TURN credentials derived from it."),
    Option("tls_cert", str, "", "PEM certificate file: serve HTTPS (browsers need it for the "
           "microphone anywhere but localhost)."),
    Option("tls_key", str, "", "PEM private key for --tls-cert."),
    Option("self_signed", _bool, False, "Make (once) and use a self-signed certificate in the "
           "data folder, for a school LAN without a domain."),
    Option("grace_seconds", float, 60.0, "How long a live room waits for a teacher whose "
           "connection dropped before it ends the lesson."),
    Option("tier_up_seconds", float, 20.0, "How long a student's link must stay good before "
           "they move up one audio tier (down-steps are fast; up-steps are patient)."),
    Option("join_attempts_per_minute", int, 10, "Wrong join codes allowed per client address per "
           "minute before further attempts are refused."),
    Option("log_level", str, "INFO", "Logging level (DEBUG, INFO, WARNING)."),
    Option("health_min_free_mb", int, 500, "GET /healthz fails (503) when the data folder's disk "
           "has less free space than this many MiB."),
    Option("metrics_token", str, "", "Bearer token Prometheus must send for GET /metrics; empty "
           "means /metrics answers only to the server's own host (loopback)."),
]


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    database_url: str = ""
    secret: str = ""
    public_url: str = ""
    trusted_proxies: str = ""
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    turn_secret: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    self_signed: bool = False
    grace_seconds: float = 60.0
    tier_up_seconds: float = 20.0
    join_attempts_per_minute: int = 10
    log_level: str = "INFO"
    health_min_free_mb: int = 500
    metrics_token: str = ""

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
                path.write_text(secrets.token_urlsafe(32))
                path.chmod(0o600)
            self.secret = path.read_text().strip()


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
    return Settings(**{k: v for k, v in values.items() if k in known})
