"""``groom backup`` and ``groom restore``: one archive holds a whole school.

This module makes the archive and holds both commands' command line; ``restore.py`` checks and
unpacks an archive, and ``backup_format.py`` is what the two agree on (member names, manifest).

Why it is done this way:

* **SQLite online backup.** Copying ``groom.sqlite3`` with ``cp`` while the server writes gives a
  torn file (and misses what is still in ``-wal``). ``sqlite3.Connection.backup`` copies a
  consistent snapshot page by page through SQLite itself; in WAL mode the server's writers are not
  blocked while it reads. The copy is switched to a single-file journal, integrity-checked, and
  stored as ``database.sqlite3``; the live ``*.sqlite3``, ``-wal``, ``-shm`` files are never
  packed. So the backup is safe while a server runs and records lessons.
* **PostgreSQL** is the administrator's database: we print the ``pg_dump`` command (asyncpg's
  ``postgresql+asyncpg://`` URL turned into libpq's ``postgresql://``), or with ``--pg-dump`` run
  it and store ``database.sql``. Restore loads it with ``psql`` only when asked to (a
  ``--database-url`` of an empty database and ``psql`` on PATH); otherwise it prints the command.
* **Everything else** of the data folder (``secret.key`` — so session cookies stay valid —
  slides, recordings, the self-signed TLS pair) goes under ``data/`` with its file mode.
  Temporary and partial files (``*.tmp``, ``tmp-*``, ``slides/.staging``, a recording's ``work``)
  and earlier ``groom-backup-*.tar.gz`` files are skipped. ``MANIFEST.json`` lists every file
  with its size and SHA-256 (of the bytes actually packed), the G-Room version, the database
  kind and its alembic revision. The archive is written to ``*.partial`` with mode 0600 and
  renamed when complete.
* **Restore trusts nothing**: every member is checked before anything is extracted, and the
  target is left as it was found on any failure (``restore.py``).

The CLI is its own process, so this is plain synchronous code.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Optional

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
    pg_dump_command,
    pg_env,
    sqlite_path,
)
from .config import Settings, add_arguments
from .restore import restore

EXIT_REFUSED = 2

SKIP_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal", ".tmp",
                 ".partial", ".work")
SKIP_DIRS = {".staging"}  # slides/.staging: decks being converted
# also skipped: folders named *.work, and recordings/<lesson>/work (a recording being processed)


# --- command line ---------------------------------------------------------------------------------

def add_parsers(sub: Any) -> None:
    """Add ``backup`` and ``restore`` to the ``groom`` subcommands."""
    backup = sub.add_parser(
        "backup", help="Pack the data folder and a consistent copy of the database into one file.",
        description="Write one .tar.gz with the database (SQLite: an online-backup copy, safe "
                    "while the server runs), secret.key, slides, recordings and a MANIFEST.json. "
                    "With PostgreSQL, prints the pg_dump command (or runs it with --pg-dump).")
    add_arguments(backup)
    backup.add_argument("-o", "--output", type=Path, default=None,
                        help="Archive to write (default groom-backup-<UTC time>.tar.gz here). "
                             "An existing file is never overwritten.")
    backup.add_argument("--pg-dump", action="store_true",
                        help="PostgreSQL: run pg_dump and include database.sql in the archive.")

    restore = sub.add_parser(
        "restore", help="Unpack a backup into an empty data folder.",
        description="Check the archive (manifest, hashes, no hostile paths), then unpack it into "
                    "--data-dir, which must be empty or missing. Afterwards: groom serve "
                    "--data-dir D. A PostgreSQL dump is loaded only with --database-url of an "
                    "empty database and psql on PATH; otherwise the psql command is printed.")
    restore.add_argument("archive", type=Path, help="The .tar.gz written by groom backup.")
    add_arguments(restore)


def main(command: str, settings: Settings, args: argparse.Namespace) -> int:
    try:
        if command == "backup":
            backup(settings, args.output, pg_dump=args.pg_dump)
        else:
            restore(args.archive, settings)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


# --- making the archive -------------------------------------------------------------------------

def _skipped(rel: PurePosixPath, *, is_dir: bool = False) -> bool:
    """Temporary and partial files and folders, and earlier backup archives."""
    name = rel.name
    if is_dir:
        return (name in SKIP_DIRS or name.endswith(".work")
                or name.startswith((".groom-backup-", ".groom-restore-"))  # ours, in progress
                or (len(rel.parts) == 3 and rel.parts[0] == "recordings" and name == "work"))
    return (name.endswith(SKIP_SUFFIXES) or name.startswith("tmp-")
            or (name.startswith("groom-backup-") and name.endswith((".tar.gz", ".partial"))))


def _data_files(data_dir: Path, exclude: set[Path]) -> list[tuple[Path, str]]:
    """The regular files of the data folder to pack, as (path, archive name), sorted."""
    found: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(data_dir, followlinks=False):
        rel_root = PurePosixPath(Path(root).relative_to(data_dir).as_posix())
        dirs[:] = sorted(d for d in dirs if not _skipped(rel_root / d, is_dir=True)
                         and not os.path.islink(os.path.join(root, d)))
        for name in sorted(files):
            path, rel = Path(root) / name, rel_root / name
            if _skipped(rel) or path.resolve() in exclude:
                continue
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):  # symlinks, sockets, fifos: never packed
                print(f"note: skipping {rel} (not a regular file)", file=sys.stderr)
                continue
            found.append((path, f"{DATA_PREFIX}/{rel.as_posix()}"))
    return found


class _HashingReader:
    """Reads exactly ``size`` bytes of a file for tarfile, hashing them; a file that shrank while
    being packed is padded with zeros (and reported) so the archive stays well-formed."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left, self.short = f, size, False
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        if len(data) < n:
            self.short = True
            data += b"\0" * (n - len(data))
        self.left -= len(data)
        self.sha.update(data)
        return data


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> Optional[dict[str, Any]]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:  # removed since the folder was listed (a deck deleted, a temp file)
        return None
    with f:
        info = tar.gettarinfo(arcname=arcname, fileobj=f)
        if not info.isreg():
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        reader = _HashingReader(f, info.size)
        tar.addfile(info, reader)
    if reader.short:
        print(f"note: {arcname} shrank while it was packed", file=sys.stderr)
    return {"path": arcname, "size": info.size, "mode": oct(info.mode),
            "sha256": reader.sha.hexdigest()}


def _sqlite_snapshot(source: Path, target: Path) -> list[str]:
    """A consistent copy of a live SQLite database; returns its alembic revision(s)."""
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source} (is --data-dir right?)")
    src = sqlite3.connect(source, timeout=30)  # only reads; the file exists (checked above)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step: a single read transaction, a consistent snapshot
            dst.execute("PRAGMA journal_mode=DELETE")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the database copy failed its integrity check: {check}")
            return _revisions(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"could not copy the SQLite database {source}: {exc}") from exc
    finally:
        src.close()
        if target.exists():
            target.chmod(0o600)


def _revisions(conn: sqlite3.Connection) -> list[str]:
    try:
        return sorted(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error:
        return []


def _pg_revisions(url: str) -> Optional[list[str]]:
    async def fetch() -> list[str]:
        import asyncpg

        conn = await asyncpg.connect(libpq_url(url, hide_password=False), timeout=10)
        try:
            rows = await conn.fetch("SELECT version_num FROM alembic_version")
            return sorted(r[0] for r in rows)
        finally:
            await conn.close()

    try:
        return asyncio.run(asyncio.wait_for(fetch(), 15))
    except Exception:
        return None


def backup(settings: Settings, output: Optional[Path] = None, *, pg_dump: bool = False,
           out: Callable[[str], None] = print) -> Path:
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        raise BackupError(f"no data folder at {data_dir}")
    url = settings.resolved_database_url()
    kind = database_kind(url)
    if pg_dump and kind != "postgresql":
        raise BackupError("--pg-dump is for a PostgreSQL --database-url")
    if pg_dump and not shutil.which("pg_dump"):
        raise BackupError("--pg-dump: pg_dump is not on PATH (install the PostgreSQL client)")
    stamp = dt.datetime.now(dt.timezone.utc)
    if output is None:
        output = Path(f"groom-backup-{stamp:%Y%m%dT%H%M%SZ}.tar.gz")
    if output.exists():
        raise BackupError(f"{output} already exists; choose another --output")
    if not output.parent.is_dir():
        raise BackupError(f"no folder {output.parent} for the archive")
    partial = output.with_name(output.name + ".partial")
    exclude = {output.resolve(), partial.resolve()}
    database: dict[str, Any] = {"kind": kind}
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=".groom-backup-", dir=output.parent) as tmp:
        db_file: Optional[tuple[Path, str]] = None
        if kind == "sqlite":
            live = sqlite_path(url)
            exclude.add(live.resolve())
            copy = Path(tmp) / SQLITE_MEMBER
            database["alembic_revision"] = _sqlite_snapshot(live, copy)
            database["file"] = SQLITE_MEMBER
            db_file = (copy, SQLITE_MEMBER)
        elif kind == "postgresql":
            database["alembic_revision"] = _pg_revisions(url)
            if pg_dump:
                dump = Path(tmp) / SQL_MEMBER
                result = subprocess.run(
                    ["pg_dump", "--no-owner", "--no-privileges", "--file", str(dump),
                     libpq_url(url, hide_password=True)],
                    env=pg_env(url), capture_output=True, text=True)
                if result.returncode != 0:
                    raise BackupError(f"pg_dump failed: {result.stderr.strip()[-2000:]}")
                dump.chmod(0o600)
                database["file"] = SQL_MEMBER
                db_file = (dump, SQL_MEMBER)
            else:
                database["file"] = None
        else:
            raise BackupError(f"unsupported database URL {url.split(':', 1)[0]}:")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                if db_file:
                    entry = _add_file(tar, *db_file)
                    assert entry is not None
                    entries.append(entry)
                for path, arcname in _data_files(data_dir, exclude):
                    entry = _add_file(tar, path, arcname)
                    if entry:
                        entries.append(entry)
                manifest = {
                    "format": FORMAT, "app": "G-Room", "version": groom_version(),
                    "created_at": stamp.isoformat().replace("+00:00", "Z"),
                    "database": database, "files": len(entries),
                    "bytes": sum(e["size"] for e in entries), "entries": entries}
                blob = json.dumps(manifest, indent=1, ensure_ascii=False).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode, info.mtime = len(blob), 0o600, int(stamp.timestamp())
                tar.addfile(info, io.BytesIO(blob))
            os.replace(partial, output)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    size_mb = output.stat().st_size / 1e6
    out(f"backup written: {output} ({manifest['files']} files, {manifest['bytes'] / 1e6:.1f} MB "
        f"packed into {size_mb:.1f} MB; database {kind}, revision "
        f"{','.join(database.get('alembic_revision') or []) or 'unknown'})")
    if kind == "postgresql" and not pg_dump:
        out("The PostgreSQL database is NOT in this archive. Dump it beside the archive with:\n"
            f"  {pg_dump_command(url)}\n"
            "(set PGPASSWORD or use ~/.pgpass for the password), or run groom backup --pg-dump "
            "to include it.")
    return output
