"""Real G-Room servers for tests: a subprocess on a free loopback port, real HTTP.

``GroomServer`` runs ``python -m groom serve`` exactly as a user would, with its own data folder
and database (SQLite, or the PostgreSQL named by ``GROOM_TEST_DATABASE_URL``, reset first).
``ApiClient`` is an aiohttp session that keeps the session cookie and sends the CSRF header.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

import aiohttp

ROOT_USER, ROOT_PASSWORD = "root", "root-password-1"

_RESET_PG = """
import asyncio, sys, asyncpg
async def main(url, name):
    base = url.replace('postgresql+asyncpg://', 'postgresql://')
    if name:
        conn = await asyncpg.connect(base)
        if not await conn.fetchval('SELECT 1 FROM pg_database WHERE datname = $1', name):
            await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        base = base.rsplit('/', 1)[0] + '/' + name
    conn = await asyncpg.connect(base)
    await conn.execute('DROP SCHEMA public CASCADE; CREATE SCHEMA public')
    await conn.close()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def database_backends() -> list[str]:
    backends = ["sqlite"]
    if os.environ.get("GROOM_TEST_DATABASE_URL"):
        backends.append("postgresql")
    return backends


class GroomServer:
    def __init__(self, data_dir: Path, backend: str = "sqlite", *, args: tuple[str, ...] = (),
                 reset_database: bool = True, pg_database: str = "") -> None:
        """``pg_database``: a PostgreSQL database of its own (made if missing), for a server
        that runs beside the session's shared one; empty means the database of the URL."""
        self.data_dir = data_dir
        self.backend = backend
        self.args = args
        self.port = free_port()
        self.tls = "--self-signed" in args
        self.base_url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        if backend == "postgresql":
            url = os.environ["GROOM_TEST_DATABASE_URL"]
            self.database_url = url.rsplit("/", 1)[0] + "/" + pg_database if pg_database else url
        else:
            self.database_url = f"sqlite+aiosqlite:///{data_dir / 'groom.sqlite3'}"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.log_path = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        if backend == "postgresql" and reset_database:
            subprocess.run([sys.executable, "-c", _RESET_PG, os.environ["GROOM_TEST_DATABASE_URL"],
                            pg_database], check=True)

    def common_args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--database-url", self.database_url]

    def groom(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "groom", *args], capture_output=True,
                              text=True, timeout=60)

    def create_root(self) -> None:
        result = self.groom("admin", "create", "--username", ROOT_USER, "--password",
                            ROOT_PASSWORD, *self.common_args())
        assert result.returncode == 0, result.stderr

    def start(self, *extra: str) -> "GroomServer":
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "groom", "serve", "--port", str(self.port), "--workers", "1",
             *self.common_args(), *self.args, *extra],
            stdout=log, stderr=log, env={**os.environ, "GROOM_LOG_LEVEL": "INFO"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                context = ssl._create_unverified_context() if self.tls else None
                urllib.request.urlopen(self.base_url + "/api/openapi.json", timeout=1,
                                       context=context).read()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start: " + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """kill -9: the power-cut case."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def demo_info(self, timeout: float = 15.0) -> dict[str, Any]:
        """The JSON line ``--demo --json`` prints (links, logins, class code, lesson id)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if "admin_url" in line:
                    return line
            time.sleep(0.1)
        raise AssertionError("the demo did not print its JSON line")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                lines.append({"raw": raw})
        return lines


class ApiClient:
    """A logged-in (or anonymous) HTTP client against one server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def login(self, username: str, password: str) -> dict[str, Any]:
        status, body = await self.call("POST", "/api/login",
                                       json={"username": username, "password": password})
        assert status == 200 and isinstance(body, dict), body
        self.csrf = body["csrf_token"]
        return body

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = kwargs.pop("headers", {})
        if self.csrf:
            headers.setdefault("X-CSRF-Token", self.csrf)
        async with self.http.request(method, self.base_url + path, headers=headers,
                                     allow_redirects=False, **kwargs) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, json.loads(raw)
            return resp.status, raw.decode("utf-8", "replace")

    async def close(self) -> None:
        await self.http.close()
