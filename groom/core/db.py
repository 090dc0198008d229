"""The database: one async engine per server, migrations applied on start.

SQLite (the default) runs in WAL mode with a busy timeout so the web requests and the live
rooms can write without "database is locked"; PostgreSQL is used through asyncpg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# Largest id PostgreSQL's INTEGER holds: larger ids cannot exist, and asking for them would fail
# (asyncpg refuses the parameter). Every id that comes from outside is checked against this.
MAX_ID = 2**31 - 1

Row = TypeVar("Row")


async def load(db: AsyncSession, model: type[Row], ident: int) -> Optional[Row]:
    """The row with this primary key, or None, also for ids no row can have (0, negative, or
    beyond ``MAX_ID``), which are not sent to the database at all."""
    if not 1 <= ident <= MAX_ID:
        return None
    return await db.get(model, ident)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration (idempotent; runs at every start). "head", not
    "heads": a second head is a mistake that should stop the server, not be applied silently."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), "head"))
