"""``groom restore``: check a backup archive, then unpack it into an empty data folder.

Restore trusts nothing. It refuses a non-empty target folder, then checks *every* member before
extracting anything: no absolute paths, no ``..``, no links or device files, only known names,
each listed in the manifest with its size. Extraction uses ``tarfile``'s ``data`` filter as a
second guard, goes to a staging folder inside the target, and is checked against the manifest's
hashes (and SQLite's ``integrity_check``) before anything is moved into place. On any failure the
target is left as it was found.

Its own module because checking and unpacking an archive that may be hostile is a job apart
from making one (``backup.py``); the two share only the archive's format (``backup_format.py``).
The CLI is its own process, so this is plain synchronous code.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from .backup_format import (
    DATA_PREFIX,
    FORMAT,
    MANIFEST,
    SQL_MEMBER,
    SQLITE_MEMBER,
    BackupError,
    database_kind,
    groom_version,
    libpq_url,
    pg_env,
    psql_command,
    sqlite_path,
)
from .config import Settings


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from .db import MIGRATIONS

    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    path = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise BackupError(f"refusing the archive: absolute path {name!r}")
    if ".." in path.parts or "\\" in name or "\0" in name:
        raise BackupError(f"refusing the archive: path {name!r} leaves the folder")
    if member.issym() or member.islnk():
        raise BackupError(f"refusing the archive: {name!r} is a link")
    if not (member.isreg() or member.isdir()):
        raise BackupError(f"refusing the archive: {name!r} is a device or special file")
    if member.isreg() and name not in (MANIFEST, SQLITE_MEMBER, SQL_MEMBER) and (
            len(path.parts) < 2 or path.parts[0] != DATA_PREFIX):
        raise BackupError(f"refusing the archive: unexpected member {name!r}")


def _read_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    info = members.get(MANIFEST)
    if info is None:
        raise BackupError("not a G-Room backup: MANIFEST.json is missing")
    if info.size > 64 << 20:
        raise BackupError("MANIFEST.json is implausibly large")
    f = tar.extractfile(info)
    assert f is not None
    try:
        manifest = json.loads(f.read())
    except ValueError as exc:
        raise BackupError(f"MANIFEST.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("app") != "G-Room":
        raise BackupError("not a G-Room backup (MANIFEST.json)")
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not supported by this "
                          f"G-Room (format {FORMAT}); use the G-Room version that wrote it")
    entries = manifest.get("entries")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("size"), int)
            and isinstance(e.get("sha256"), str) for e in entries):
        raise BackupError("MANIFEST.json has no valid file list")
    listed: dict[str, dict[str, Any]] = {e["path"]: e for e in entries}
    files = {name for name, m in members.items() if m.isreg() and name != MANIFEST}
    if set(listed) != files:
        extra, missing = sorted(files - set(listed)), sorted(set(listed) - files)
        raise BackupError(f"the archive does not match its manifest (unlisted: {extra[:5]}, "
                          f"missing: {missing[:5]})")
    for name in files:
        if listed[name].get("size") != members[name].size:
            raise BackupError(f"the archive does not match its manifest: size of {name}")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pg_is_empty(url: str) -> bool:
    result = subprocess.run(
        ["psql", "-X", "-A", "-t", "-c",
         "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
         libpq_url(url, hide_password=True)], env=pg_env(url), capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"cannot reach the PostgreSQL database: {result.stderr.strip()[-500:]}")
    return result.stdout.strip() == "0"


def restore(archive: Path, settings: Settings, *, out: Callable[[str], None] = print) -> None:
    target = settings.data_dir
    if target.exists() and not target.is_dir():
        raise BackupError(f"{target} is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty; restore only into an empty or new folder "
                          "(nothing was changed)")
    if not archive.is_file():
        raise BackupError(f"no archive at {archive}")
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"cannot read {archive}: {exc}") from None
    with tar:
        try:
            all_members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{archive} is damaged: {exc}") from None
        members: dict[str, tarfile.TarInfo] = {}
        for member in all_members:  # every member is checked before anything is extracted
            _check_member(member)
            if member.name in members:
                raise BackupError(f"refusing the archive: {member.name!r} appears twice")
            members[member.name] = member
        manifest = _read_manifest(tar, members)
        database = manifest.get("database") or {}
        kind = database.get("kind")
        revisions = database.get("alembic_revision") or []
        unknown = sorted(set(revisions) - known_revisions())
        if unknown:
            raise BackupError(f"the backup's database is at revision {unknown}, unknown to this "
                              f"G-Room {groom_version()}: restore it with a newer G-Room")
        url = settings.resolved_database_url()
        given_url = settings.database_url
        db_target: Optional[Path] = None
        load_sql = False
        if kind == "sqlite":
            if SQLITE_MEMBER not in members:
                raise BackupError("the backup has no database.sqlite3")
            if database_kind(url) != "sqlite":
                raise BackupError("this is a SQLite backup; restore it without --database-url "
                                  "(or with a sqlite URL)")
            db_target = sqlite_path(url)
            if db_target.exists():
                raise BackupError(f"{db_target} already exists (nothing was changed)")
        elif kind == "postgresql":
            if given_url and database_kind(given_url) != "postgresql":
                raise BackupError("this is a PostgreSQL backup; give a postgresql+asyncpg:// "
                                  "--database-url (or none, and load the dump yourself)")
            if SQL_MEMBER in members and given_url and shutil.which("psql"):
                if not _pg_is_empty(given_url):
                    raise BackupError("the PostgreSQL database of --database-url is not empty; "
                                      "give a new, empty database (nothing was changed)")
                load_sql = True
        else:
            raise BackupError(f"unknown database kind {kind!r} in MANIFEST.json")

        created = not target.exists()
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".groom-restore-", dir=target))
        try:
            tar.extractall(staging, members=[m for m in all_members if m.name != MANIFEST],
                           filter="data")
            for entry in manifest["entries"]:
                path = staging / entry["path"]
                if _sha256(path) != entry["sha256"]:
                    raise BackupError(f"{entry['path']} does not match its SHA-256 in the "
                                      "manifest: the archive is damaged")
            if db_target is not None:
                conn = sqlite3.connect(staging / SQLITE_MEMBER)
                try:
                    check = conn.execute("PRAGMA integrity_check").fetchone()[0]
                finally:
                    conn.close()
                if check != "ok":
                    raise BackupError(f"the database in the backup is damaged: {check}")
            if load_sql:
                result = subprocess.run(
                    ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                     "--file", str(staging / SQL_MEMBER), libpq_url(given_url, hide_password=True)],
                    env=pg_env(given_url), capture_output=True, text=True)
                if result.returncode != 0:
                    raise BackupError(f"psql could not load the dump (the database was left "
                                      f"unchanged): {result.stderr.strip()[-2000:]}")
            # Everything checked: move into place.
            data = staging / DATA_PREFIX
            if data.is_dir():
                for child in sorted(data.iterdir()):
                    child.rename(target / child.name)
            if db_target is not None:
                db_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(staging / SQLITE_MEMBER), db_target)
            dump_left = None
            if kind == "postgresql" and SQL_MEMBER in members and not load_sql:
                dump_left = target / SQL_MEMBER
                (staging / SQL_MEMBER).rename(dump_left)
        except BaseException:
            if created:
                shutil.rmtree(target, ignore_errors=True)
            else:  # leave the folder as empty as it was found
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    out(f"restored {manifest['files']} files from {archive} (made {manifest.get('created_at')} "
        f"by G-Room {manifest.get('version')}) into {target}")
    if kind == "sqlite":
        out(f"database: {db_target}")
    elif load_sql:
        out(f"database: loaded database.sql into {libpq_url(given_url, hide_password=True)}")
    elif dump_left is not None:
        out("The PostgreSQL dump was NOT loaded. Load it into a new, empty database with:\n"
            f"  {psql_command(given_url or 'postgresql://USER@HOST/DATABASE', str(dump_left))}\n"
            "then start the server with --database-url postgresql+asyncpg://USER@HOST/DATABASE.")
    else:
        out("This backup has no database dump: restore the PostgreSQL database from your own "
            "pg_dump file (psql -v ON_ERROR_STOP=1 --single-transaction --file FILE URL).")
    out(f"Start the server with: groom serve --data-dir {target}"
        + (f" --database-url {settings.database_url}" if settings.database_url else ""))
