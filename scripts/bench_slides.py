"""Benchmark deck import: convert a deck through the real pipeline and print one JSON object.

Usage: ``python scripts/bench_slides.py [DECK.pdf] [--repeat N]`` (default: media/sample-deck.pdf,
made first when missing). Runs ``groom.board.deck_import.import_deck`` against a throw-away SQLite database
and data folder, so the numbers include the worker process start, the database writes and the
file moves, as a teacher's upload would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from groom.board import deck_import, slides  # noqa: E402
from groom.core import db  # noqa: E402
from groom.core.models import Classroom, School  # noqa: E402
from make_sample_deck import OUT as SAMPLE  # noqa: E402
from make_sample_deck import make_deck  # noqa: E402


async def bench(deck: Path, repeat: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite+aiosqlite:///{tmp}/bench.sqlite3")
        await db.migrate(engine)
        session_maker = db.make_sessionmaker(engine)
        async with session_maker() as session, session.begin():
            school = School(name="Bench")
            session.add(school)
            await session.flush()
            classroom = Classroom(school_id=school.id, name="Bench", join_code="BENCH1")
            session.add(classroom)
            await session.flush()
        data = deck.read_bytes()
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            imported = await deck_import.import_deck(session_maker, Path(tmp) / "data",
                                                     classroom.id, "Bench", deck.name, data)
            timings.append(time.perf_counter() - started)
        rows = await slides.deck_slides(session_maker, classroom.id, imported.id) or []
        await engine.dispose()
    small = sorted(r.small_bytes for r in rows)
    large = sorted(r.large_bytes for r in rows)
    best = min(timings)
    return {
        "deck": str(deck.relative_to(ROOT) if deck.is_relative_to(ROOT) else deck),
        "source_bytes": len(data),
        "pages": imported.pages,
        "seconds_per_deck": round(best, 3),
        "seconds_per_page": round(best / imported.pages, 3),
        "small_bytes_min": small[0], "small_bytes_median": int(statistics.median(small)),
        "small_bytes_max": small[-1],
        "large_bytes_min": large[0], "large_bytes_median": int(statistics.median(large)),
        "large_bytes_max": large[-1],
        "thumb_bytes_max": max(r.thumb_bytes for r in rows),
        "jpeg_bytes_median": int(statistics.median(r.jpeg_bytes for r in rows)),
        "deck_bytes_small": imported.small_bytes,
        "deck_bytes_large": sum(large),
        "cpus": os.cpu_count(),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("deck", nargs="?", type=Path, default=SAMPLE)
    parser.add_argument("--repeat", type=int, default=3, help="imports to run; the fastest counts")
    args = parser.parse_args()
    if args.deck == SAMPLE and not SAMPLE.exists():
        make_deck(SAMPLE)
    print(json.dumps(asyncio.run(bench(args.deck.resolve(), max(1, args.repeat)))))


if __name__ == "__main__":
    main()
