"""A recording's files over HTTP: ranged, cached answers, for staff and for students alike.

Why a module of its own: serving bytes (Range, If-Range, ETag, HEAD, a zip member read in place)
is a job apart from deciding who may see a recording (``recordings.py``). Files are served by
``web.FileResponse``; ``listen.mp3``, which is not a file but the offline pack's stored MP3, by a
ranged read of the zip at the member's bytes (``member_response``), with the same permissions.
No path ever comes from the URL: the name must be one of ``FILES`` and one of the recording's
outputs. Slide images are ``/slides/{name}`` (``decks.py``), which the playback manifest points to.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Optional

from aiohttp import web

from groom.core.errors import not_found
from groom.core.models import Lesson, Recording, RecordingState
from groom.recordings.offline_pack import MP3, PACK, VIRTUAL, pack_member
from groom.recordings.recorder import recording_dir

from .params import path_id
from .plumbing import SESSIONS, SETTINGS, viewer
from .recordings import FILES, staff_lesson, student_lesson

FILE_CACHE = "private, max-age=86400"  # outputs never change once made (deleting removes them)
RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")
CHUNK = 64 * 1024


def _byte_range(request: web.Request, size: int, etag: str) -> Optional[tuple[int, int]]:
    """``(start, end)`` inclusive for a single satisfiable ``Range``, None for the whole file (no
    Range, a stale If-Range, or one this does not parse: several ranges); 416 if unsatisfiable."""
    header = request.headers.get("Range")
    if_range = request.headers.get("If-Range")
    if header is None or (if_range is not None and if_range != etag):
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:  # the last n bytes
        start, end = max(0, size - int(match[2])), size - 1
    if start > end or start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, end


async def member_response(request: web.Request, pack: Path, headers: dict[str, str]
                          ) -> web.StreamResponse:
    """The offline pack's stored MP3 as a file of its own: ranged reads at its bytes in the zip
    (Range, If-Range, ETag, HEAD), never a copy on disk. A pack without it (or damaged) is 404."""
    try:
        offset, size = await asyncio.to_thread(pack_member, pack)
        stat = await asyncio.to_thread(pack.stat)
    except (OSError, KeyError, ValueError):
        raise not_found("file") from None
    etag = f'"{stat.st_mtime_ns:x}-{size:x}"'
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": FILE_CACHE})
    span = _byte_range(request, size, etag)
    start, end = span if span is not None else (0, size - 1)
    response = web.StreamResponse(status=206 if span is not None else 200,
                                  headers={**headers, "Accept-Ranges": "bytes", "ETag": etag})
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response.last_modified = stat.st_mtime
    response.content_length = end - start + 1
    fd = await asyncio.to_thread(os.open, pack, os.O_RDONLY)
    try:
        await response.prepare(request)
        if request.method != "HEAD":
            position = offset + start
            left = end - start + 1
            while left > 0:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, left), position)
                if not chunk:  # the pack shrank under us: end short, the client sees it
                    break
                await response.write(chunk)
                position += len(chunk)
                left -= len(chunk)
        await response.write_eof()
    finally:
        os.close(fd)
    return response


async def file_response(request: web.Request, lesson: Lesson, rec: Recording, name: str
                        ) -> web.StreamResponse:
    """One output file, or 404 for anything that is not one (no path ever comes from the URL:
    the name must be one of ``FILES`` and listed in the recording's outputs; ``listen.mp3`` is
    served out of ``offline.zip`` whenever the pack is, also for packs made before it was
    listed)."""
    outputs = rec.outputs or {}
    source = PACK if name in VIRTUAL else name
    if name not in FILES or rec.state != RecordingState.ready or source not in outputs:
        raise not_found("file")
    path = recording_dir(request.app[SETTINGS].data_dir, lesson.id) / source
    headers = {"Content-Type": FILES[name], "Cache-Control": FILE_CACHE}
    if name == MP3:
        headers["Content-Disposition"] = f'inline; filename="groom-lesson-{lesson.id}.mp3"'
        return await member_response(request, path, headers)
    if not path.is_file():
        raise not_found("file")
    if name == PACK:
        headers["Content-Disposition"] = f'attachment; filename="groom-lesson-{lesson.id}.zip"'
    return web.FileResponse(path, headers=headers)


async def staff_file(request: web.Request) -> web.StreamResponse:
    v = await viewer(request)
    if v is None:
        raise not_found("file")
    async with request.app[SESSIONS]() as db:
        lesson, rec = await staff_lesson(db, v, path_id(request, "id", "lesson"))
    return await file_response(request, lesson, rec, request.match_info["name"])


async def student_file(request: web.Request) -> web.StreamResponse:
    _found, lesson, rec = await student_lesson(request, path_id(request, "id", "lesson"))
    return await file_response(request, lesson, rec, request.match_info["name"])
