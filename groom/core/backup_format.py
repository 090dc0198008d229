"""What a ``groom backup`` archive is, as both sides see it: its member names, the manifest's
format, and the databases it can hold (SQLite as a file; PostgreSQL through pg_dump and psql).

Its own module because making an archive (``backup.py``) and checking and unpacking one
(``restore.py``) must agree on all of this, and ``backup.py`` (which holds the ``groom backup``
and ``groom restore`` command line) imports ``restore.py``: the shared part sits below both.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sqlalchemy.engine import URL, make_url

FORMAT = 1
MANIFEST = "MANIFEST.json"
SQLITE_MEMBER = "database.sqlite3"
SQL_MEMBER = "database.sql"
DATA_PREFIX = "data"


class BackupError(Exception):
    """A refusal with a message for the user (exit code 2)."""


def groom_version() -> str:
    """The installed distribution's version (scripts/install always installs the package, even
    for a checkout, so the metadata is there)."""
    try:
        return version("groom")
    except PackageNotFoundError:
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


def pg_env(url: str) -> dict[str, str]:
    password = make_url(url).password
    return {**os.environ, **({"PGPASSWORD": str(password)} if password else {})}


def pg_dump_command(url: str, output: str = SQL_MEMBER) -> str:
    return (f"pg_dump --no-owner --no-privileges --file {output} "
            f"'{libpq_url(url, hide_password=True)}'")


def psql_command(url: str, dump: str) -> str:
    return (f"psql -v ON_ERROR_STOP=1 --single-transaction --file {dump} "
            f"'{libpq_url(url, hide_password=True)}'")
