"""Make a worksheet deck: portrait A4 pages dense with vector text, like a textbook page export.

Used by ``scripts/bench_slides.py --text`` and ``tests/test_slides.py`` to check that a page that
is mostly text stays readable on a 360-px-wide phone (OCR word recall against the PDF's own text).

Usage: ``python scripts/make_text_deck.py OUT.pdf [PAGES]``
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from make_sample_deck import DeckWriter

A4 = (595.0, 842.0)  # points
WORDS = ("water river rain cloud plant seed soil farmer market school teacher student village "
         "mountain forest animal buffalo chicken rice field harvest season morning evening "
         "number answer question reading writing lesson example picture sentence country "
         "weather summer winter north south mother father brother sister family house kitchen "
         "garden bridge road bicycle doctor medicine health clean drink carry count measure "
         "length weight heavy light bright dark small large green yellow orange purple").split()


def page_lines(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for n in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(9, 12))]
        lines.append(f"{n + 1}. " + " ".join(words).capitalize() + ".")
    return lines


def make_text_deck(path: Path, pages: int = 3, font_size: float = 11.0) -> Path:
    """``pages`` A4 pages: a heading and ~55 numbered lines of 11 pt text each."""
    writer = DeckWriter()
    width, height = A4
    for index in range(pages):
        page = writer.pdf.new_page(width, height)
        writer._pages.append(page)
        writer.text(page, f"Worksheet {index + 1}: reading and writing", 50, height - 60, 18)
        y = height - 95
        for line in page_lines(index, int((height - 140) / (font_size * 1.3))):
            writer.text(page, line, 50, y, font_size)
            y -= font_size * 1.3
    writer.save(path)
    return path


if __name__ == "__main__":
    make_text_deck(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
