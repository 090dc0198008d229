"""``groom backup`` and ``groom restore``: one archive holds a whole school.

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
* **Restore trusts nothing.** It refuses a non-empty target folder, then checks *every* member
  before extracting anything: no absolute paths, no ``..``, no links or device files, only known
  names, each listed in the manifest with its size. Extraction uses ``tarfile``'s ``data`` filter
  as a second guard, goes to a staging folder inside the target, and is checked against the
  manifest's hashes (and SQLite's ``integrity_check``) before anything is moved into place. On
  any failure the target is left as it was found.

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
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Optional

from sqlalchemy.engine import URL, make_url

from .config import Settings, add_arguments

FORMAT = 1
MANIFEST = "MANIFEST.json"
SQLITE_MEMBER = "database.sqlite3"
SQL_MEMBER = "database.sql"
DATA_PREFIX = "data"
EXIT_REFUSED = 2

SKIP_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal", ".tmp",
                 ".partial", ".work")
SKIP_DIRS = {".staging"}  # slides/.staging: decks being converted
# also skipped: folders named *.work, and recordings/<lesson>/work (a recording being processed)


class BackupError(Exception):
    """A refusal with a message for the user (exit code 2)."""


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


# --- helpers --------------------------------------------------------------------------------------

def groom_version() -> str:
    try:
        from importlib.metadata import version

        return version("groom")
    except Exception:  # running from a checkout
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            import tomllib

            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except Exception:
            return "unknown"


def database_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql" if url.startswith("postgres") \
        else url.split(":", 1)[0]


def sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError(f"the SQLite URL {url!r} names no database file")
    return Path(database)


def libpq_url(url: str, *, hide_password: bool) -> str:
    """``postgresql+asyncpg://u:p@h/db`` as ``postgresql://u@h/db`` for pg_dump/psql (the password
    goes through ``PGPASSWORD``, never the command line or the screen)."""
    parsed = make_url(url)
    query = dict(parsed.query)
    if "ssl" in query and "sslmode" not in query:  # asyncpg's ssl=require is libpq's sslmode
        query["sslmode"] = query.pop("ssl")
    clean = URL.create("postgresql", username=parsed.username,
                       password=None if hide_password else parsed.password, host=parsed.host,
                       port=parsed.port, database=parsed.database, query=query)
    return clean.render_as_string(hide_password=False)


def _pg_env(url: str) -> dict[str, str]:
    password = make_url(url).password
    return {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}


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
        tar.addfile(info, reader)  # type: ignore[arg-type]
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


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from .db import MIGRATIONS

    return {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}


def pg_dump_command(url: str, output: str = SQL_MEMBER) -> str:
    return (f"pg_dump --no-owner --no-privileges --file {output} "
            f"'{libpq_url(url, hide_password=True)}'")


def psql_command(url: str, dump: str) -> str:
    return (f"psql -v ON_ERROR_STOP=1 --single-transaction --file {dump} "
            f"'{libpq_url(url, hide_password=True)}'")


# --- backup ---------------------------------------------------------------------------------------

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
                    env=_pg_env(url), capture_output=True, text=True)
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


# --- restore --------------------------------------------------------------------------------------

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
         libpq_url(url, hide_password=True)], env=_pg_env(url), capture_output=True, text=True)
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
                    env=_pg_env(given_url), capture_output=True, text=True)
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
