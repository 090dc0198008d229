"""``offline.zip``: a lesson to take away, and ``listen.mp3`` served straight out of it.

Its own module because the pack is a format of its own, read by people's phones rather than by
the server: the MP3 (mono 11 kHz, 8 kbps: every phone and old player can play it), the slide
images, ``timeline.json`` and ``index.html`` (``web/templates/offline_player.html`` with the
online player's ``ink.js`` and ``playback.js`` and the lesson's manifest inlined, so it works
from ``file://``). ``timeline.json`` is that manifest: what the player shows (slides, ink, the
poll results the class saw), never the chat, names, hands or the floor, since anyone with the
class code may download the pack. Entries are stored, not deflated: media does not compress and
a stored zip can be unpacked by anything. ``listen.mp3`` is not a file: ``pack_member`` gives
where the pack's MP3 bytes lie, so it is offered on its own without being kept twice.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

from groom.core.config import WEB_DIR

from .playback import SlideChange, overlays

PACK = "offline.zip"
MP3 = "listen.mp3"  # virtual: the pack's PACK_AUDIO member
PACK_AUDIO = "audio.mp3"
VIRTUAL = frozenset({MP3})
PLAYER_TEMPLATE = WEB_DIR / "templates" / "offline_player.html"
PLAYER_SCRIPTS = WEB_DIR / "static"


def _script(path: Path) -> str:
    """A static script's text, safe inside an inline ``<script>`` block."""
    return re.sub(r"</(script)", r"<\\/\1", path.read_text(encoding="utf-8"), flags=re.IGNORECASE)


def _player_html(data: dict[str, Any]) -> str:
    """The offline ``index.html``: the page with the lesson data and the online player's own
    scripts (``ink.js``, ``playback.js``) inlined, so one player serves both."""
    payload = (json.dumps(data, ensure_ascii=False).replace("&", "\\u0026")
               .replace("<", "\\u003c").replace(">", "\\u003e"))
    parts = {"__GROOM_DATA__": payload,
             "__GROOM_INK_JS__": _script(PLAYER_SCRIPTS / "ink.js"),
             "__GROOM_PLAYBACK_JS__": _script(PLAYER_SCRIPTS / "playback.js")}
    return re.sub("|".join(parts), lambda m: parts[m.group(0)],
                  PLAYER_TEMPLATE.read_text(encoding="utf-8"))


def write_pack(out: Path, mp3: Path, events: list[dict[str, Any]], changes: list[SlideChange],
               slides_dir: Path, duration_s: float, title: str) -> None:
    """The offline zip (blocking: run in a thread). Missing slide files are left out."""
    kept: list[SlideChange] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as pack:
        pack.write(mp3, PACK_AUDIO)
        added: set[str] = set()
        for change in changes:
            source = slides_dir / change.image
            if change.image not in added:
                if not source.is_file():
                    continue
                pack.write(source, f"slides/{change.image}")
                added.add(change.image)
            kept.append(change)
        ink, polls = overlays(events, kept)
        slides = [{"at_ms": c.at_ms, "small": f"slides/{c.image}"} for c in kept]
        # Only what the player shows (slides, ink, the poll results the class saw): the pack
        # goes to anyone with the class code, so the chat, names, hands and the floor stay out.
        data = {"title": title, "audio": PACK_AUDIO, "duration_s": duration_s, "slides": slides,
                "ink": ink, "polls": polls}
        pack.writestr("timeline.json", json.dumps(data, ensure_ascii=False))
        pack.writestr("index.html", _player_html(data))


def pack_member(pack: Path, name: str = PACK_AUDIO) -> tuple[int, int]:
    """``(offset, size)`` of a stored (uncompressed) member's bytes in a zip, so it can be served
    as a file of its own; ``KeyError`` when it is missing, ``ValueError`` when it is compressed
    or the zip is damaged. Blocking (reads the zip's directory and the member's local header)."""
    try:
        with zipfile.ZipFile(pack) as archive:
            info = archive.getinfo(name)
    except zipfile.BadZipFile as exc:
        raise ValueError(str(exc)) from None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{name} is compressed or encrypted in {pack}")
    with open(pack, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header for {name} in {pack}")
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size
