"""Structured logging: one JSON object per line, each carrying the request or connection id.

Handlers and room code log with ordinary ``logging`` calls plus ``extra={...}`` fields; the id of
the request (or WebSocket connection) in progress is added from a context variable, so a line can
always be traced back to the request that caused it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import unquote, unquote_plus

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Paths whose segment is a secret (a join code, a card, a listen or calendar token): the
# segment after the prefix is masked. ``redact`` keeps the first characters, to debug.
_SECRET_SEGMENT = re.compile(r"^(/(?:join|c|r|listen)/|/calendar/[^/]+/[^/]+/)([^/]+)")
_SECRET_PARAMS = {"code", "card", "token", "resume", "secret", "key", "password", "listen_token"}
_PATH_PARAMS = {"next"}  # parameters holding a path of ours, itself possibly secret
KEEP = 2


def mask(secret: str) -> str:
    """``ABCDEFGH`` -> ``AB…``: enough to tell two codes apart in a log, not to use one."""
    return secret[:KEEP] + "…" if secret else secret


def redact(path_qs: str) -> str:
    """A request's path and query string fit for a log: secrets in it masked.

    ``/join/ABCD2345`` -> ``/join/AB…``, ``/listen/xyz….ogg`` keeps its ``.ogg``,
    ``/calendar/class/3/<token>.ics`` keeps ``.ics``, ``?code=…&token=…`` are masked and a
    ``next=`` path is redacted the same way."""
    path, sep, query = path_qs.partition("?")
    path = unquote(path)  # as the router sees it: "/%6Aoin/CODE" is "/join/CODE"
    match = _SECRET_SEGMENT.match(path)
    if match:
        segment = match.group(2)
        stem, dot, ext = segment.rpartition(".")
        if not dot or ext not in ("ogg", "ics"):
            stem, ext = segment, ""
        path = match.group(1) + mask(stem) + ("." + ext if ext else "") + path[match.end():]
    if not sep:
        return path
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        key = unquote_plus(name).lower()
        if eq and key in _SECRET_PARAMS:
            value = mask(unquote_plus(value))
        elif eq and key in _PATH_PARAMS:
            value = redact(unquote_plus(value))
        parts.append(name + eq + value)
    return path + "?" + "&".join(parts)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiortc/aioice are chatty at INFO about every ICE check; keep their warnings only.
    for name in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
