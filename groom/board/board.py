"""What the class sees: the deck, the current slide, the teacher's pointer and ink.

Slides travel as static files by HTTP; here a slide change is a tiny event naming the page.
Ink travels as compact vector strokes: points quantized to a 0-1000 grid of the slide (so one
point is two small integers whatever the screen), simplified by the teacher's page before
sending. Ink belongs to its slide: going back to a slide shows its strokes again; "clear"
empties the current slide. Everything is bounded (points per stroke, strokes per slide) so an
ink flood cannot grow memory without end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from groom.core.errors import AppError
from groom.core.models import Slide

MAX_POINTS = 400  # per stroke (x, y pairs)
MAX_STROKES = 300  # per slide
COLORS = 6  # palette indexes; the pages hold the actual colours
WIDTHS = 3


@dataclass
class Board:
    deck_id: Optional[int] = None
    deck_title: str = ""
    slides: list[dict[str, Any]] = field(default_factory=list)
    page: Optional[int] = None
    ink: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # page -> strokes

    def load_deck(self, deck_id: int, title: str, slides: list[Slide]) -> None:
        self.deck_id = deck_id
        self.deck_title = title
        self.slides = [{"small": s.small, "large": s.large, "thumb": s.thumb, "jpeg": s.jpeg,
                        "phone": s.phone_name,
                        "width": s.width, "height": s.height} for s in slides]
        self.page = 0 if slides else None
        self.ink = {}

    def show(self, page: int) -> None:
        if not self.slides:
            raise AppError("no_deck", "Choose a deck first.", status=409)
        if not 0 <= page < len(self.slides):
            raise AppError("bad_page", "There is no such slide.", status=400)
        self.page = page

    def add_stroke(self, points: list[int], color: int, width: int) -> dict[str, Any]:
        if self.page is None:
            raise AppError("no_deck", "Choose a deck first.", status=409)
        strokes = self.ink.setdefault(self.page, [])
        if len(strokes) >= MAX_STROKES:
            raise AppError("too_much_ink", "This slide has too much ink; clear it first.",
                           status=429)
        stroke = {"points": points, "color": color, "width": width}
        strokes.append(stroke)
        return stroke

    def clear(self) -> None:
        if self.page is not None:
            self.ink.pop(self.page, None)

    def current(self) -> Optional[dict[str, Any]]:
        """The slide on screen with its ink: what a late joiner is sent at once."""
        if self.page is None:
            return None
        return {"deck_id": self.deck_id, "page": self.page, **self.slides[self.page],
                "ink": self.ink.get(self.page, [])}

    def deck(self) -> Optional[dict[str, Any]]:
        if self.deck_id is None:
            return None
        return {"deck_id": self.deck_id, "title": self.deck_title, "slides": self.slides}
