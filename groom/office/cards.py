"""Join cards: what a student holds to get into a lesson without an account.

A card shows the school, the class, the student's name, the personal code grouped for reading
aloud, the short link ``{public base}/c/{card code}`` and a QR code of that link. The QR code is
inline SVG (no image request, sharp when printed, allowed by the CSP). A class also gets one card
with the class code, for students who are not on the roster. The public base is the caller's to
give (the web layer knows the server's address; the office does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import qrcode
import qrcode.constants
from markupsafe import Markup
from qrcode.image.svg import SvgPathImage

from .codes import pretty

_XML_DECL = re.compile(r"^<\?xml[^>]*>\s*")
_SIZE = re.compile(r'\s(?:width|height)="[^"]*"')


def qr_svg(data: str, label: str = "") -> Markup:
    """An inline ``<svg>`` QR code of ``data``; its size is left to the stylesheet."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=2,
                         image_factory=SvgPathImage)
    code.add_data(data)
    code.make(fit=True)
    svg = code.make_image().to_string(encoding="unicode")
    svg = _XML_DECL.sub("", svg).replace(' id="qr-path"', "")
    head, rest = svg.split(">", 1)
    head = _SIZE.sub("", head)
    title = f"<title>{Markup.escape(label)}</title>" if label else ""
    return Markup(f'{head} class="qr" role="img">{title}{rest}')


@dataclass(frozen=True)
class Card:
    school: str
    classroom: str
    name: str  # the student's name; empty on the class-code card
    code: str  # grouped for reading aloud
    link: str
    qr: Markup


def student_card(base: str, school: str, classroom: str, name: str, card_code: str) -> Card:
    link = f"{base}/c/{card_code}"
    return Card(school, classroom, name, pretty(card_code), link, qr_svg(link, name))


def class_card(base: str, school: str, classroom: str, join_code: str) -> Card:
    link = f"{base}/join/{join_code}"
    return Card(school, classroom, "", pretty(join_code), link, qr_svg(link, classroom))


def class_sheet(base: str, school: str, classroom: str, join_code: str,
                students: Iterable[tuple[str, str]]) -> list[Card]:
    """The printable sheet: the class-code card first, then one card per (name, card code)."""
    cards = [class_card(base, school, classroom, join_code)]
    cards += [student_card(base, school, classroom, name, code) for name, code in students]
    return cards
