"""Ids that come from outside: URL paths, form fields, JSON bodies and WebSocket messages.

Why a module of its own: every id a client sends is read the same way, here, so that no handler
can forget a check and "id 0", "id ²", "id 99999999999" or "id abc" all answer like an unknown id
(404 ``not_found``, naming what was looked for) instead of a 500 or a query the database refuses.
An id is ASCII digits, 1 to ``MAX_ID`` (PostgreSQL's INTEGER, ``core/db.py``). Whether the viewer
may see the row is then ``office/lookup.py``'s question.
"""

from __future__ import annotations

from typing import Annotated, Optional

from aiohttp import web
from pydantic import Field

from groom.core.db import MAX_ID
from groom.core.errors import not_found

# Digits in the longest id: a longer string is refused before ``int()`` reads it.
_MAX_DIGITS = len(str(MAX_ID))

# An id in a JSON body, a query string or a WebSocket message (pydantic checks it: 422 / an error
# message on the socket, as for any other invalid field).
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


def parse_id(raw: str, what: str = "item") -> int:
    """``raw`` as an id, or 404 ``not_found`` (``what`` names the thing looked for)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _MAX_DIGITS:
        raise not_found(what)
    ident = int(raw)
    if not 1 <= ident <= MAX_ID:
        raise not_found(what)
    return ident


def path_id(request: web.Request, name: str = "id", what: str = "item") -> int:
    """The id in the URL's ``{name}`` part."""
    return parse_id(request.match_info[name], what)


def optional_id(raw: str, what: str = "item") -> Optional[int]:
    """An id typed into or chosen in a form: blank is None (e.g. "no teacher")."""
    raw = raw.strip()
    return None if not raw else parse_id(raw, what)
