"""Text typed by people, cleaned the same way everywhere: office names and titles, live names.

``clean`` makes NFC (Lao input methods differ in how they compose), removes the characters that
are never meant in a name and only do harm when shown or stored: control characters (PostgreSQL
refuses NUL in text), bidirectional overrides and isolates (they reverse what follows them on the
teacher's screen: a name that displays as another), zero-width characters (two names that look the
same but are not) and other invisible format characters, then turns runs of white space into one
space and strips the ends. ``has_control`` says whether a text had control characters at all, for
the office forms that refuse them instead of quietly dropping them.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")

# Invisible characters removed from names: bidi marks, embeddings, overrides and isolates, zero-width
# spaces/joiners, word joiner, the BOM, soft hyphen, Mongolian vowel separator, invisible operators.
_INVISIBLE = frozenset(
    [0x00AD, 0x061C, 0x180E, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0xFEFF]
    + list(range(0x202A, 0x202F))  # LRE RLE PDF LRO RLO
    + list(range(0x2060, 0x2070))  # word joiner, invisible operators, LRI RLI FSI PDI, deprecated
)


def _unwanted(ch: str) -> bool:
    if ord(ch) in _INVISIBLE:
        return True
    category = unicodedata.category(ch)
    return category in ("Cc", "Cs", "Cf")  # any other invisible format character (tags, interlinear marks)


def has_control(value: str) -> bool:
    """Whether ``value`` holds control characters other than white space (NUL, escapes, ...)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n\r" for c in value)


def clean(value: str) -> str:
    """NFC, without control/bidi/zero-width/format characters, single spaces, stripped."""
    value = unicodedata.normalize("NFC", value)
    value = "".join(c for c in value if not _unwanted(c))
    return _SPACES.sub(" ", value).strip()
