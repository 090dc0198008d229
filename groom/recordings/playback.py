"""What a replay shows, read from a recording's ``timeline.jsonl``: the slides, the ink, the polls.

Its own module because three outputs read the timeline the same way and must agree on it: the
online player's manifest (``playback_manifest``, for ``web/static/playback.js``), the offline
pack's ``index.html`` (``offline_pack.py``) and the video of the slides (``video.py``). None of
them writes anything; the recorder (``recorder.py``) is the timeline's only writer. A recording
made in several runs of its lesson is read as one: its parts' timelines one after the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .recorder import TIMELINE, joined_parts, part_seconds


@dataclass(frozen=True)
class SlideChange:
    at_ms: int
    image: str  # file name in data_dir/slides/


def _part_events(directory: Path) -> list[dict[str, Any]]:
    """One part's events as written; unreadable lines (a torn write) are skipped, not fatal."""
    events: list[dict[str, Any]] = []
    try:
        lines = (directory / TIMELINE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return events
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("at_ms"), int):
            events.append(event)
    return events


def read_timeline(directory: Path) -> list[dict[str, Any]]:
    """The recording's events in time order, on the clock of its audio (blocking).

    A recording in several parts (``recorder.joined_parts``) plays them one after the other,
    so each part's events move by the length of the parts before it; an event logged after the
    last audio that reached the disk (a part cut by a crash) shows at the end of its part."""
    events: list[dict[str, Any]] = []
    offset_ms = 0
    for part in joined_parts(directory):
        length_ms = round(part_seconds(part) * 1000)
        events += [{**e, "at_ms": offset_ms + min(max(0, e["at_ms"]), length_ms)}
                   for e in _part_events(part)]
        offset_ms += length_ms
    events += [{**e, "at_ms": offset_ms + max(0, e["at_ms"])} if offset_ms else e
               for e in _part_events(directory)]
    events.sort(key=lambda e: e["at_ms"])  # stable: a part's events stay before the next's
    return events


def slide_changes(events: list[dict[str, Any]]) -> list[SlideChange]:
    """Slide events whose image is a plain file name (never a path out of the slides folder)."""
    changes: list[SlideChange] = []
    for event in events:
        data = event.get("data")
        image = data.get("image") if event.get("kind") == "slide" and isinstance(data, dict) else None
        if not isinstance(image, str) or not image or Path(image).name != image:
            continue
        if changes and changes[-1].image == image:
            continue
        changes.append(SlideChange(max(0, event["at_ms"]), image))
    return changes


def _ints(value: Any) -> Optional[list[int]]:
    if not isinstance(value, list) or not all(type(x) is int for x in value):
        return None
    return value


def overlays(events: list[dict[str, Any]], changes: list[SlideChange]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What is drawn over the slides in playback: ``(ink, polls)``.

    ``ink``: strokes ``{at_ms, page, points, color, width}`` and clears ``{at_ms, page,
    clear: True}``, where ``page`` is the index in ``changes`` of the first change that showed the
    slide the ink is on (the players compute the same from their slide list, so no slide entry
    carries anything new). Ink on a slide not in ``changes`` (no image, a file left out) is
    dropped. Loading another deck starts its slides without ink, as the live board does, so the
    pages inked so far get a clear at that moment. ``polls``: the results shown to the class,
    ``{at_ms, question, choices, counts}``."""
    key_of: dict[str, int] = {}
    for i, change in enumerate(changes):
        key_of.setdefault(change.image, i)
    ink: list[dict[str, Any]] = []
    polls: list[dict[str, Any]] = []
    current: Optional[int] = None
    deck: Any = None
    inked: set[int] = set()
    for event in events:
        kind, data, at_ms = event.get("kind"), event.get("data"), max(0, event["at_ms"])
        if not isinstance(data, dict):
            continue
        if kind == "slide":
            if data.get("deck_id") != deck:
                ink.extend({"at_ms": at_ms, "page": k, "clear": True} for k in sorted(inked))
                inked.clear()
                deck = data.get("deck_id")
            image = data.get("image")
            current = key_of.get(image) if isinstance(image, str) else None
        elif kind == "ink" and current is not None:
            points = _ints(data.get("points"))
            color, width = data.get("color", 0), data.get("width", 1)
            if points and len(points) % 2 == 0 and type(color) is int and type(width) is int:
                ink.append({"at_ms": at_ms, "page": current, "points": points, "color": color,
                            "width": width})
                inked.add(current)
        elif kind == "ink_clear" and current is not None:
            ink.append({"at_ms": at_ms, "page": current, "clear": True})
            inked.discard(current)
        elif kind == "poll_result" and data.get("shown") is True:
            question, choices, counts = data.get("question"), data.get("choices"), data.get("counts")
            if (isinstance(question, str) and isinstance(choices, list)
                    and all(isinstance(c, str) for c in choices) and _ints(counts) is not None):
                polls.append({"at_ms": at_ms, "question": question, "choices": choices,
                              "counts": counts})
    return ink, polls


def playback_manifest(directory: Path, duration_s: float, audio_url: str,
                      slide_urls: Callable[[str], dict[str, str]], title: str = "") -> dict[str, Any]:
    """The JSON ``web/static/playback.js`` expects (blocking: reads the timeline).

    ``slide_urls(image)`` gives ``{"small": url, "large": url}`` for a slide image name; the
    slides module owns those URLs.
    """
    events = read_timeline(directory)
    changes = slide_changes(events)
    ink, polls = overlays(events, changes)
    slides = [{"at_ms": c.at_ms, **slide_urls(c.image)} for c in changes]
    return {"title": title, "audio": audio_url, "duration_s": duration_s, "slides": slides,
            "ink": ink, "polls": polls}
