"""Join codes: short, easy to read aloud and type on a phone, hard to guess.

The alphabet drops look-alikes (0/O, 1/I/L, 2/Z, 5/S, 8/B, U/V), leaving 23 characters. A class
code has 8 characters (23^8 ≈ 7.8e10 combinations) and a personal card 10; with wrong attempts
limited per address (``joining.py``), guessing is out of reach.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "ACDEFGHJKMNPQRTWXY34679"
CLASS_CODE_LENGTH = 8
CARD_CODE_LENGTH = 10

_CLEAN = re.compile(r"[\s\-]+")


def new_code(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_class_code() -> str:
    return new_code(CLASS_CODE_LENGTH)


def new_card_code() -> str:
    return new_code(CARD_CODE_LENGTH)


def normalize(raw: str) -> str:
    """What a person typed -> canonical code: upper case, no spaces or dashes."""
    return _CLEAN.sub("", raw).upper()[:32]


def is_well_formed(code: str) -> bool:
    return len(code) in (CLASS_CODE_LENGTH, CARD_CODE_LENGTH) and all(c in ALPHABET for c in code)


def pretty(code: str) -> str:
    """Grouped for reading aloud: ABCD-EFGH."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))
