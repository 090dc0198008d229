"""``groom backup`` / ``groom restore``: a school survives being packed while its server runs and
unpacked into a new folder; hostile or mismatched archives are refused with nothing written."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from groom.core.backup_format import libpq_url, pg_dump_command, psql_command
from servers import ROOT_PASSWORD, ROOT_USER, ApiClient, GroomServer
from test_office_api import make_class, make_school, make_teacher

pytestmark = pytest.mark.timeout(240)
SAMPLE_DECK = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"


def groom(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "groom", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def manifest_of(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        f = tar.extractfile(tar.getmember("MANIFEST.json"))
        assert f is not None
        manifest: dict[str, Any] = json.loads(f.read())
        return manifest


async def test_backup_while_serving_then_restore_serves_the_same_school(tmp_path: Path) -> None:
    live = GroomServer(tmp_path / "live")
    live.create_root()
    live.start()
    root, teacher = ApiClient(live.base_url), ApiClient(live.base_url)
    archive = tmp_path / "school.tar.gz"
    try:
        await root.login(ROOT_USER, ROOT_PASSWORD)
        school = await make_school(root)
        t = await make_teacher(root, school["id"])
        classroom = await make_class(root, school["id"], t["id"])
        await teacher.login(t["username"], "teacher-pass-1")
        status, deck = await teacher.call(
            "POST", f"/api/classes/{classroom['id']}/decks?title=Backup&filename=deck.pdf",
            data=SAMPLE_DECK.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        assert status == 201, deck
        slide = deck["slides"][0]["small"]
        (live.data_dir / "slides" / ".staging").mkdir(exist_ok=True)
        (live.data_dir / "slides" / ".staging" / "half-done.png").write_bytes(b"partial")

        # The backup runs while the server keeps writing.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "groom", "backup", *live.common_args(), "-o", str(archive),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(5):
            await make_school(root)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "backup written" in out.decode()
        late = await make_school(root, name="After the backup")
    finally:
        live.stop()

    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    manifest = manifest_of(archive)
    assert manifest["app"] == "G-Room" and manifest["database"]["kind"] == "sqlite"
    assert manifest["database"]["alembic_revision"]
    names = {e["path"] for e in manifest["entries"]}
    assert {"database.sqlite3", "data/secret.key"} <= names
    assert f"data/slides/{slide}" in names
    assert not [n for n in names if n.endswith((".sqlite3-wal", ".sqlite3-shm"))
                or n.startswith("data/groom.sqlite3") or ".staging" in n]
    assert manifest["files"] == len(names)
    assert manifest["bytes"] == sum(e["size"] for e in manifest["entries"])
    with tarfile.open(archive) as tar:
        assert stat.S_IMODE(tar.getmember("data/secret.key").mode) == 0o600

    # Restore into a new folder; a new server on it is the same school.
    target = tmp_path / "restored"
    result = groom("restore", str(archive), "--data-dir", str(target))
    assert result.returncode == 0, result.stderr
    assert "groom serve --data-dir" in result.stdout
    assert (target / "secret.key").read_bytes() == (live.data_dir / "secret.key").read_bytes()
    assert stat.S_IMODE((target / "secret.key").stat().st_mode) == 0o600
    assert (target / "groom.sqlite3").is_file()
    assert not list(target.glob(".groom-restore-*")) and not (target / "MANIFEST.json").exists()
    assert not (target / "slides" / ".staging").exists()

    restored = GroomServer(target)
    restored.start()
    try:
        for client in (root, teacher):  # the same secret.key: the old session cookies still work
            client.base_url = restored.base_url
        status, me = await root.call("GET", "/api/me")
        assert status == 200 and me["user"]["username"] == ROOT_USER
        status, me = await teacher.call("GET", "/api/me")
        assert status == 200 and me["user"]["username"] == t["username"]
        status, schools = await root.call("GET", "/api/schools")
        assert status == 200
        ids = {s["id"] for s in schools}
        assert school["id"] in ids and late["id"] not in ids
        status, again = await root.call("GET", f"/api/classes/{classroom['id']}")
        assert status == 200 and again["join_code"] == classroom["join_code"]
        assert again["name"] == classroom["name"] and again["school_id"] == school["id"]
        fresh = ApiClient(restored.base_url)
        try:
            await fresh.login(t["username"], "teacher-pass-1")
            status, body = await fresh.call("POST", "/api/join", json={"code": classroom["join_code"]})
            assert status == 200, body
            status, decks = await fresh.call("GET", f"/api/classes/{classroom['id']}/decks")
            assert status == 200 and [d["id"] for d in decks] == [deck["id"]]
            status, _ = await fresh.call("GET", f"/slides/{slide}")
            assert status == 200
        finally:
            await fresh.close()
    finally:
        await root.close()
        await teacher.close()
        restored.stop()


@pytest.fixture(scope="module")
def small_backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of a small data folder (no server needed), made in the current directory."""
    tmp_path = tmp_path_factory.mktemp("small")
    data = tmp_path / "data"
    (data / "slides").mkdir(parents=True)
    (data / "secret.key").write_text("s3cret")
    (data / "secret.key").chmod(0o600)
    (data / "slides" / "a.webp").write_bytes(b"webp")
    (data / "tls-cert.pem").write_text("cert")
    (data / "tls-key.pem").write_text("key")
    (data / "tls-key.pem").chmod(0o600)
    (data / "closed.json.tmp").write_text("temporary")
    conn = sqlite3.connect(data / "groom.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE alembic_version (version_num TEXT)")
    conn.execute("INSERT INTO alembic_version VALUES ('0001')")
    conn.commit()
    conn.close()
    result = groom("backup", "--data-dir", str(data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [archive] = tmp_path.glob("groom-backup-*.tar.gz")
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".groom-backup-*"))
    again = groom("backup", "--data-dir", str(data), "-o", str(archive))
    assert again.returncode == 2 and "already exists" in again.stderr
    return archive


def test_restore_refuses_a_folder_that_is_not_empty(tmp_path: Path, small_backup: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    before = tree(target)
    result = groom("restore", str(small_backup), "--data-dir", str(target))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert tree(target) == before and sorted(os.listdir(target)) == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    result = groom("restore", str(small_backup), "--data-dir", str(empty))
    assert result.returncode == 0, result.stderr
    assert (empty / "secret.key").read_text() == "s3cret"
    assert (empty / "slides" / "a.webp").read_bytes() == b"webp"
    assert (empty / "tls-cert.pem").read_text() == "cert"
    assert stat.S_IMODE((empty / "tls-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((empty / "secret.key").stat().st_mode) == 0o600
    assert sorted(os.listdir(empty)) == ["groom.sqlite3", "secret.key", "slides", "tls-cert.pem",
                                         "tls-key.pem"]
    conn = sqlite3.connect(empty / "groom.sqlite3")
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
    conn.close()


def _rewrite(source: Path, target: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]],
             change: dict[str, bytes] | None = None) -> None:
    """A copy of ``source`` with extra members appended and some files' contents replaced."""
    with tarfile.open(source) as src, tarfile.open(target, "w:gz") as dst:
        for member in src.getmembers():
            f = src.extractfile(member)
            data = f.read() if f else b""
            if change and member.name in change:
                data = change[member.name]
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if member.isreg() else None)
        for info, payload in extra:
            if payload is not None:
                info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload) if payload is not None else None)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "device", "fifo",
                                  "unlisted", "tampered"])
def test_hostile_or_damaged_archives_are_refused(tmp_path: Path, small_backup: Path,
                                                 case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = tarfile.TarInfo()
    payload: bytes | None = b"pwned"
    change = None
    if case == "dotdot":
        evil.name = "data/../../outside/evil"
    elif case == "absolute":
        evil.name = str(outside / "evil")
    elif case == "symlink":
        evil.name, evil.type, evil.linkname, payload = "data/link", tarfile.SYMTYPE, str(outside), None
    elif case == "hardlink":
        evil.name, evil.type, evil.linkname, payload = "data/hard", tarfile.LNKTYPE, "/etc/passwd", None
    elif case == "device":
        evil.name, evil.type, evil.devmajor, evil.devminor, payload = "data/sda", tarfile.BLKTYPE, 8, 0, None
    elif case == "fifo":
        evil.name, evil.type, payload = "data/pipe", tarfile.FIFOTYPE, None
    elif case == "unlisted":
        evil.name = "data/not-in-manifest"
    else:  # same size, other bytes: caught by the manifest's SHA-256
        evil, change = None, {"data/secret.key": b"S3CRET"}  # type: ignore[assignment]
    hostile = tmp_path / "hostile.tar.gz"
    _rewrite(small_backup, hostile, [(evil, payload)] if evil else [], change)
    target = tmp_path / "target"
    result = groom("restore", str(hostile), "--data-dir", str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ")
    reason = {"dotdot": "leaves the folder", "absolute": "absolute path", "symlink": "is a link",
              "hardlink": "is a link", "device": "device", "fifo": "special file",
              "unlisted": "does not match its manifest", "tampered": "SHA-256"}[case]
    assert reason in result.stderr
    assert not target.exists()  # nothing written, the new folder not even left behind
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        info = tarfile.TarInfo("data/secret.key")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    result = groom("restore", str(bogus), "--data-dir", str(tmp_path / "t"))
    assert result.returncode == 2 and "MANIFEST" in result.stderr
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    result = groom("restore", str(tmp_path / "junk.tar.gz"), "--data-dir", str(tmp_path / "t"))
    assert result.returncode == 2
    assert not (tmp_path / "t").exists()


def test_postgresql_commands_never_show_the_password() -> None:
    url = "postgresql+asyncpg://groom:p%40ss@db.school.la:5433/groom?ssl=require"
    assert libpq_url(url, hide_password=True) == \
        "postgresql://groom@db.school.la:5433/groom?sslmode=require"
    assert "p%40ss" not in pg_dump_command(url) and "p%40ss" not in psql_command(url, "x.sql")
    assert pg_dump_command(url).startswith("pg_dump --no-owner --no-privileges --file database.sql ")


@pytest.mark.skipif(not os.environ.get("GROOM_TEST_DATABASE_URL"), reason="needs PostgreSQL")
async def test_postgresql_backup_and_restore(tmp_path: Path) -> None:
    live = GroomServer(tmp_path / "live", "postgresql", pg_database="groom_backup_src")
    live.create_root()
    live.start()
    client = ApiClient(live.base_url)
    try:
        await client.login(ROOT_USER, ROOT_PASSWORD)
        school = await make_school(client)
        plain = tmp_path / "plain.tar.gz"
        result = groom("backup", *live.common_args(), "-o", str(plain))
        assert result.returncode == 0, result.stderr
        assert "pg_dump --no-owner --no-privileges --file database.sql 'postgresql://" in result.stdout
        assert "+asyncpg" not in result.stdout.split("pg_dump", 1)[1]
        manifest = manifest_of(plain)
        assert manifest["database"]["kind"] == "postgresql" and manifest["database"]["file"] is None
        assert "data/secret.key" in {e["path"] for e in manifest["entries"]}
        if not shutil.which("pg_dump"):
            return
        dumped = tmp_path / "dumped.tar.gz"
        result = groom("backup", *live.common_args(), "--pg-dump", "-o", str(dumped))
        assert result.returncode == 0, result.stderr
        assert "database.sql" in {e["path"] for e in manifest_of(dumped)["entries"]}
    finally:
        await client.close()
        live.stop()
    if not shutil.which("psql"):
        return
    # Into a fresh database (made and emptied by GroomServer) and an empty folder.
    restored = GroomServer(tmp_path / "restored", "postgresql", pg_database="groom_backup_dst")
    result = groom("restore", str(dumped), *restored.common_args())
    assert result.returncode == 0, result.stderr
    assert "loaded database.sql" in result.stdout
    again = groom("restore", str(dumped), "--data-dir", str(tmp_path / "other"),
                  "--database-url", restored.database_url)
    assert again.returncode == 2 and "not empty" in again.stderr  # the database is in use now
    restored.start()
    client = ApiClient(restored.base_url)
    try:
        await client.login(ROOT_USER, ROOT_PASSWORD)
        status, schools = await client.call("GET", "/api/schools")
        assert status == 200 and school["id"] in {s["id"] for s in schools}
    finally:
        await client.close()
        restored.stop()
