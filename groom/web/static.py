"""The pages' own JS and CSS: compressed once, versioned, cached by phones for a year.

The files are small and few, so they are read and gzip-compressed once at start and served from
memory. Templates link them as ``{{ static("student.js") }}``, which adds ``?v=<content hash>``:
a phone keeps the file until it changes, and a changed file has a new URL. A 2G student
therefore downloads the page's scripts once, compressed (about a third of their size).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from groom.core.errors import AppError

YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    version: str


class StaticFiles:
    def __init__(self, folder: Path) -> None:
        self.assets: dict[str, Asset] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file():
                continue
            body = path.read_bytes()
            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self.assets[path.name] = Asset(body, gzip.compress(body, 9, mtime=0), content_type,
                                           hashlib.sha256(body).hexdigest()[:12])

    def url(self, name: str) -> str:
        """The versioned URL of a file (a template helper); a missing file fails the page."""
        return f"/static/{name}?v={self.assets[name].version}"

    async def serve(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info["name"])
        if asset is None:
            raise AppError("not_found", "Not found: {what}", status=404, what="file")
        current = request.query.get("v") == asset.version
        headers = {"Content-Type": asset.content_type, "Vary": "Accept-Encoding",
                   "ETag": f'"{asset.version}"',
                   "Cache-Control": f"public, max-age={YEAR}, immutable" if current else "no-cache"}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=asset.gzipped, headers=headers)
        return web.Response(body=asset.body, headers=headers)
