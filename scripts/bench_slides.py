"""Benchmark deck import: convert a deck through the real pipeline and print one JSON object.

Usage: ``python scripts/bench_slides.py [DECK.pdf | --text] [--repeat N]`` (default:
media/sample-deck.pdf, made first when missing; ``--text`` makes a worksheet deck of dense
portrait text pages, scripts/make_text_deck.py). Runs ``groom.board.deck_import.import_deck``
against a throw-away SQLite database and data folder, so the numbers include the worker process
start, the database writes and the file moves, as a teacher's upload would.

Readability: each page's small, large and phone image is read back by tesseract OCR (Debian
``tesseract-ocr``), and ``ocr_recall_small``/``ocr_recall_large``/``ocr_recall_phone`` are the
share of the PDF's own words (pypdfium2's text layer) that OCR finds, the worst page of the deck
(null without tesseract or without a text layer). ``phone_bytes_first`` is the first page's phone
image: what a student on a thin link waits for first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from groom.board import deck_import, slides  # noqa: E402
from groom.core import db  # noqa: E402
from groom.core.models import Classroom, School, Slide  # noqa: E402
from make_sample_deck import OUT as SAMPLE  # noqa: E402
from make_sample_deck import make_deck  # noqa: E402
from make_text_deck import make_text_deck  # noqa: E402

WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ocr_words(image: Path) -> list[str]:
    """The words tesseract reads in one slide image (converted to PNG first: any format)."""
    png = image.with_suffix(".ocr.png")
    with Image.open(image) as im:
        im.convert("L").save(png)
    try:
        out = subprocess.run(["tesseract", str(png), "stdout", "-l", "eng"], capture_output=True,
                             text=True, check=True, timeout=120).stdout
    finally:
        png.unlink()
    return words(out)


def recall(reference: list[str], found: list[str]) -> float:
    """Share of the reference words (counted with repeats) that OCR found."""
    left: dict[str, int] = {}
    for w in found:
        left[w] = left.get(w, 0) + 1
    hits = 0
    for w in reference:
        if left.get(w, 0) > 0:
            left[w] -= 1
            hits += 1
    return hits / len(reference)


def pdf_words(deck: Path) -> list[list[str]]:
    """Each page's words from the PDF's text layer (empty for a non-PDF)."""
    if deck.suffix.lower() != ".pdf":
        return []
    pdf = pdfium.PdfDocument(deck)
    return [words(pdf[i].get_textpage().get_text_range()) for i in range(len(pdf))]


def ocr_recalls(deck: Path, folder: Path, rows: list[Slide]) -> dict[str, float | None]:
    """Worst page's recall for the small, large and phone image, over pages with >= 20 words."""
    pages = pdf_words(deck)
    keys = (("ocr_recall_small", "small"), ("ocr_recall_large", "large"), ("ocr_recall_phone", "phone"))
    result: dict[str, float | None] = {key: None for key, _ in keys}
    if not shutil.which("tesseract"):
        return result
    for key, attr in keys:
        scores = [recall(pages[r.index], ocr_words(folder / getattr(r, attr)))
                  for r in rows if r.index < len(pages) and len(pages[r.index]) >= 20]
        result[key] = round(min(scores), 3) if scores else None
    return result


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
        ocr = ocr_recalls(deck, Path(tmp) / "data" / slides.SLIDES_DIR, list(rows))
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
        "phone_bytes_first": rows[0].phone_bytes,
        "phone_bytes_max": max(r.phone_bytes or 0 for r in rows),
        "deck_bytes_phone": sum(r.phone_bytes or 0 for r in rows),
        "jpeg_bytes_median": int(statistics.median(r.jpeg_bytes for r in rows)),
        "deck_bytes_small": imported.small_bytes,
        "deck_bytes_large": sum(large),
        "large_height_min": min(r.height for r in rows),
        **ocr,
        "cpus": os.cpu_count(),
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("deck", nargs="?", type=Path, default=SAMPLE)
    parser.add_argument("--text", action="store_true", help="bench a made worksheet deck (3 A4 text pages)")
    parser.add_argument("--repeat", type=int, default=3, help="imports to run; the fastest counts")
    args = parser.parse_args()
    if args.text:
        with tempfile.TemporaryDirectory() as tmp:
            deck = make_text_deck(Path(tmp) / "worksheet.pdf")
            print(json.dumps(asyncio.run(bench(deck, max(1, args.repeat)))))
        return
    if args.deck == SAMPLE and not SAMPLE.exists():
        make_deck(SAMPLE)
    print(json.dumps(asyncio.run(bench(args.deck.resolve(), max(1, args.repeat)))))


if __name__ == "__main__":
    main()
