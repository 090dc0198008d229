"""Translations: Lao first, English too.

English strings are the message ids; ``web/translations/lo.po`` holds the Lao catalog. Catalogs
are compiled in memory at start (Babel), so no build step or compiled files are kept. A page's
language comes from ``?lang=``, then the ``lang`` cookie, then ``Accept-Language``; Lao is the
default because most users read it best.
"""

from __future__ import annotations

import gettext
import io
from pathlib import Path
from typing import Any, Callable, Optional

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from .config import WEB_DIR

LANGUAGES = ("lo", "en")
DEFAULT_LANGUAGE = "lo"
LANGUAGE_NAMES = {"lo": "ລາວ", "en": "English"}


def load_catalogs(folder: Path = WEB_DIR / "translations") -> dict[str, gettext.NullTranslations]:
    catalogs: dict[str, gettext.NullTranslations] = {"en": gettext.NullTranslations()}
    for lang in LANGUAGES:
        path = folder / f"{lang}.po"
        if lang == "en" or not path.exists():
            continue
        with path.open("rb") as f:
            catalog = read_po(f, locale=lang)
        buf = io.BytesIO()
        write_mo(buf, catalog)
        buf.seek(0)
        catalogs[lang] = gettext.GNUTranslations(buf)
    return catalogs


def choose_language(query: Optional[str], cookie: Optional[str], accept_language: str,
                    default: str = DEFAULT_LANGUAGE) -> str:
    """``?lang=``, the ``lang`` cookie, ``Accept-Language``, then ``default`` (the web layer
    passes a request's three; nothing here knows HTTP)."""
    for candidate in (query, cookie):
        if candidate is not None and candidate in LANGUAGES:
            return candidate
    for part in accept_language.split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return default


def translator(catalogs: dict[str, gettext.NullTranslations], lang: str) -> Callable[..., str]:
    """``_("Hello {name}", name=...)``: translate, then fill the named parameters."""
    trans = catalogs.get(lang) or catalogs["en"]

    def _(message: str, **params: Any) -> str:
        text = trans.gettext(message)
        return text.format(**params) if params else text

    return _
