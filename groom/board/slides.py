"""Slide decks once imported: list them, serve their files, delete them, sweep what is left.

Slide files are named by content hash, so a file name is its own cache key (serve them with
``Cache-Control: immutable``) and decks that share a page share the file. Importing an upload
into these files and rows is ``deck_import.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.board import rasterize
from groom.core.models import Deck, LessonEvent, Slide

SLIDES_DIR = "slides"
STAGING_DIR = ".staging"  # inside SLIDES_DIR: same file system, so publishing is a rename
FILE_NAME = re.compile(r"^[0-9a-f]{%d}\.(webp|jpg)$" % rasterize.NAME_HEX)
CONTENT_TYPES = {"webp": "image/webp", "jpg": "image/jpeg"}
VARIANTS = ("small", "large", "thumb", "jpeg", "phone")  # phone: null in decks older than it


async def list_decks(session_maker: async_sessionmaker[AsyncSession], class_id: int) -> list[Deck]:
    """The class's decks, newest first."""
    async with session_maker() as session:
        rows = await session.scalars(select(Deck).where(Deck.class_id == class_id)
                                     .order_by(Deck.created_at.desc(), Deck.id.desc()))
        return list(rows)


async def deck_slides(session_maker: async_sessionmaker[AsyncSession], class_id: int,
                      deck_id: int) -> Optional[list[Slide]]:
    """The deck's slides in page order, or None when the deck is not this class's.

    Taking ``class_id`` makes the ownership check part of the query, so a route cannot forget it.
    """
    async with session_maker() as session:
        deck = await session.get(Deck, deck_id)
        if deck is None or deck.class_id != class_id:
            return None
        rows = await session.scalars(select(Slide).where(Slide.deck_id == deck_id)
                                     .order_by(Slide.index))
        return list(rows)


async def delete_deck(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                      class_id: int, deck_id: int) -> bool:
    """Delete the class's deck and the files no other deck uses; False when there is no such deck.

    A lesson already recorded keeps only file names in its timeline, so its replay loses these
    slides; the routes may want to refuse deleting decks that recordings refer to.
    """
    async with session_maker() as session, session.begin():
        deck = await session.get(Deck, deck_id)
        if deck is None or deck.class_id != class_id:
            return False
        slides = await session.scalars(select(Slide).where(Slide.deck_id == deck_id))
        names = {getattr(s, v) for s in slides for v in VARIANTS} - {None}
        await session.execute(delete(Slide).where(Slide.deck_id == deck_id))
        await session.delete(deck)
        names -= await _referenced(session, names)
    await asyncio.to_thread(unlink_all, data_dir / SLIDES_DIR, names)
    return True


def slide_file(data_dir: Path, name: str) -> Optional[tuple[Path, str]]:
    """The file behind a slide URL and its content type, or None.

    Only names this module makes are accepted (hex hash + extension), so no name can reach
    outside the slides folder or into the staging area.
    """
    match = FILE_NAME.match(name)
    if match is None:
        return None
    path = data_dir / SLIDES_DIR / name
    if not path.is_file():
        return None
    return path, CONTENT_TYPES[match.group(1)]


async def sweep(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                older_than_s: float = 3600.0) -> int:
    """Remove staging folders and slide files no slide refers to; returns how many files went.

    For start-up (and now and then): an import killed with the process, or decks removed with
    their class, leave such files. Only files older than ``older_than_s`` are touched, so an
    import that has published its files but not yet committed its rows keeps them.
    """
    slides_dir = data_dir / SLIDES_DIR
    if not slides_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    await asyncio.to_thread(_remove_old_staging, slides_dir / STAGING_DIR, cutoff)
    candidates = await asyncio.to_thread(_old_files, slides_dir, cutoff)
    async with session_maker() as session:
        unused = set(candidates) - await _referenced(session, set(candidates))
    await asyncio.to_thread(unlink_all, slides_dir, unused)
    return len(unused)


async def _referenced(session: AsyncSession, names: set[str]) -> set[str]:
    """Which of ``names`` some slide row, or some lesson's timeline, still uses.

    Recorded lessons name their slide images in their timeline; a deck deleted later must not
    take the images away from those recordings' playback."""
    used: set[str] = set()
    shown = await session.scalars(select(LessonEvent.data).where(LessonEvent.kind == "slide"))
    for data in shown:
        if isinstance(data, dict):
            used.update(name for name in (data.get("image"), data.get("large")) if isinstance(name, str))
    ordered = sorted(names)
    for start in range(0, len(ordered), 200):  # keep the IN lists short for SQLite
        chunk = ordered[start:start + 200]
        rows = await session.execute(select(Slide.small, Slide.large, Slide.thumb, Slide.jpeg, Slide.phone)
                                     .where(or_(*(getattr(Slide, v).in_(chunk) for v in VARIANTS))))
        used.update(n for row in rows for n in row if n is not None)
    return used & names


def unlink_all(folder: Path, names: Any) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _remove_old_staging(staging_root: Path, cutoff: float) -> None:
    if staging_root.is_dir():
        for entry in staging_root.iterdir():
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def _old_files(slides_dir: Path, cutoff: float) -> list[str]:
    return [e.name for e in os.scandir(slides_dir)
            if e.is_file() and FILE_NAME.match(e.name) and e.stat().st_mtime < cutoff]
