"""Importing a slide deck: an upload becomes slide images once, or is refused leaving nothing.

A deck arrives as bytes from an upload route. Its type is decided by magic bytes, never by the
file name. PDFs and pictures go straight to the page worker (``groom/board/rasterize.py``, a child
process with a memory cap, killed when a page takes too long); PPTX/ODP are first checked as
zip files (entry count, total unpacked size, every entry really unpacked) and then converted to
PDF by LibreOffice, when it is installed.

Every refusal is a ``DeckError`` with a stable ``code`` and a message for the teacher. Nothing
is kept from a failed import: the worker writes into a private staging folder, the files move
into ``data_dir/slides/`` only when every page is done, and the rows are written in one
transaction after that (files moved for a deck whose rows then fail are removed again).

Its own module because importing (hostile input, child processes, limits) is a job apart from
keeping the stored decks (``slides.py``: listing, serving, deleting, sweeping), which only
shares the slide files' names and folder with it. It stays one module (about 440 lines) because
every check on the way in (type, zip bomb, office format, sandbox, page limits) guards the same
staging folder and must be read as one path from upload to stored images.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from xml.etree import ElementTree

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.board import rasterize, sandbox
from groom.core.models import Classroom, Deck, Slide

from .slides import FILE_NAME, SLIDES_DIR, STAGING_DIR, VARIANTS, unlink_all

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
"""Largest upload accepted; the route reads at most ``MAX_UPLOAD_BYTES + 1`` bytes."""

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
ZIP_MAGIC = b"PK\x03\x04"
ODP_MIMETYPE = b"application/vnd.oasis.opendocument.presentation"
CONTENT_TYPES_NS = "http://schemas.openxmlformats.org/package/2006/content-types"
MAX_CONTENT_TYPES_BYTES = 256 * 1024
_OOXML = "application/vnd.openxmlformats-officedocument."
PPTX_MAIN_TYPES = frozenset({
    _OOXML + "presentationml.presentation.main+xml",
    _OOXML + "presentationml.slideshow.main+xml",
    _OOXML + "presentationml.template.main+xml",
    "application/vnd.ms-powerpoint.presentation.macroEnabled.main+xml",
    "application/vnd.ms-powerpoint.slideshow.macroEnabled.main+xml",
})
OTHER_OFFICE_MAIN_TYPES = frozenset({
    _OOXML + "wordprocessingml.document.main+xml",
    _OOXML + "wordprocessingml.template.main+xml",
    _OOXML + "spreadsheetml.sheet.main+xml",
    _OOXML + "spreadsheetml.template.main+xml",
    "application/vnd.ms-word.document.macroEnabled.main+xml",
    "application/vnd.ms-excel.sheet.macroEnabled.main+xml",
})

# Runs LibreOffice under an address-space cap without a preexec_fn (unsafe in a process with
# threads, which the server has): a tiny interpreter sets the limit, then becomes soffice.
_LIMITED_EXEC = ("import os, resource, sys; m = int(sys.argv[1]) << 20; "
                 "resource.setrlimit(resource.RLIMIT_AS, (m, m)); os.execvp(sys.argv[2], sys.argv[2:])")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Limits:
    """How much one import may take; the defaults suit a small 2-4 GB server."""

    max_bytes: int = MAX_UPLOAD_BYTES
    max_pages: int = 300
    max_image_pixels: int = 50_000_000  # a picture slide (a 48 MP phone photo passes)
    open_seconds: float = 30.0  # starting the worker and opening the document
    page_seconds: float = 20.0  # per page
    deck_seconds: float = 900.0
    memory_mb: int = 1024  # address space of the page worker (~100 MB of it is the interpreter)
    office_seconds: float = 180.0
    office_memory_mb: int = 3072
    max_zip_entries: int = 5000
    max_unzipped_bytes: int = 300 * 1024 * 1024
    sandbox: str = "bwrap"  # settings.deck_sandbox: "bwrap" or "off" (see sandbox.py)


DEFAULT_LIMITS = Limits()


class DeckError(Exception):
    """An upload refused, with a stable ``code`` and a message meant for the teacher.

    ``status`` is the HTTP status a route should answer with (413 too large, 415 unknown type,
    422 for a file that is of a known type but cannot be used).

    Like ``AppError``, the message is a fixed English ``template`` with named ``params``: the
    template is the msgid in the translation catalog, so the route translates it for the teacher
    (``message`` is the English text, for logs and tests).
    """

    def __init__(self, code: str, template: str, status: int = 422, **params: Any) -> None:
        self.code = code
        self.template = template
        self.params = params
        self.message = template.format(**params) if params else template
        self.status = status
        super().__init__(f"{code}: {self.message}")


# --- what the routes call -------------------------------------------------------------------

async def import_deck(session_maker: async_sessionmaker[AsyncSession], data_dir: Path,
                      class_id: int, title: str, filename: str, data: bytes, *,
                      limits: Limits = DEFAULT_LIMITS, progress: Optional[Progress] = None) -> Deck:
    """Turn an upload into a stored deck, or raise ``DeckError`` leaving nothing behind.

    The heavy work runs in child processes; this coroutine only waits. It takes seconds to
    minutes, so run it from an app-owned task (a cancelled request would cancel the import,
    which is safe but wasteful). ``progress(done, total)`` is called after each page.
    """
    if len(data) > limits.max_bytes:
        raise DeckError("too_large", "The file is too large (at most {mb} MB).", 413,
                        mb=limits.max_bytes >> 20)
    kind = sniff(filename, data)
    suffix = ".pdf" if kind == "pdf" else ".bin"
    if kind == "office":
        suffix = await asyncio.to_thread(check_office_zip, data, limits)
    async with session_maker() as session:
        if await session.get(Classroom, class_id) is None:
            raise DeckError("no_class", "This class does not exist.", 404)
    slides_dir = data_dir / SLIDES_DIR
    staging = slides_dir / STAGING_DIR / secrets.token_hex(8)
    started = time.monotonic()
    try:
        source = await asyncio.to_thread(_write_source, staging, suffix, data)
        async with asyncio.timeout(limits.deck_seconds):
            if kind == "office":
                source = await _office_to_pdf(source, data_dir, limits)
            pages = await _rasterize(source, "image" if kind == "image" else "pdf", staging,
                                     data_dir, limits, progress)
        added = await asyncio.to_thread(_publish, staging, slides_dir, pages)
        try:
            deck = await _save(session_maker, class_id, title, filename, pages)
        except BaseException:
            await asyncio.to_thread(unlink_all, slides_dir, added)
            raise
    except TimeoutError:
        raise DeckError("deck_timeout", "The deck took longer than {seconds} s to prepare. "
                        "Split it into smaller decks.",
                        seconds=round(limits.deck_seconds)) from None
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    log.info("deck %d imported: class %d, %d pages, %.1f s, %d bytes small", deck.id, class_id,
             deck.pages, time.monotonic() - started, deck.small_bytes)
    return deck


# --- checking the upload --------------------------------------------------------------------

def sniff(filename: str, data: bytes) -> str:
    """The upload's kind from its first bytes: "pdf", "image" or "office"."""
    is_pdf = b"%PDF-" in data[:1024]  # readers accept some junk before the header
    if filename.lower().endswith(".pdf") and not is_pdf:
        raise DeckError("not_pdf", "This file is named .pdf but is not a PDF.", 415)
    if data.startswith((PNG_MAGIC, JPEG_MAGIC)):
        return "image"
    if data.startswith(ZIP_MAGIC):
        return "office"
    if is_pdf:
        return "pdf"
    raise DeckError("unsupported_type", "Upload a PDF, a PPTX or ODP presentation, or a PNG or "
                    "JPEG picture.", 415)


def check_office_zip(data: bytes, limits: Limits) -> str:
    """Refuse zip bombs and non-presentations; return the extension LibreOffice should see.

    The declared sizes are checked first (cheap), then every entry is really unpacked with a
    running total, because a crafted zip can declare small sizes and unpack to gigabytes.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DeckError("damaged", "This presentation file is damaged.") from exc
    too_big = DeckError("zip_bomb", "This presentation unpacks to more than {mb} MB; it cannot "
                        "be used.", mb=limits.max_unzipped_bytes >> 20)
    if len(entries) > limits.max_zip_entries:
        raise DeckError("zip_bomb", "This presentation has more than {parts} parts; it cannot "
                        "be used.", parts=limits.max_zip_entries)
    if sum(e.file_size for e in entries) > limits.max_unzipped_bytes:
        raise too_big
    ext = _office_kind(archive, entries)
    if ext is None:
        raise DeckError("unsupported_type", "This zip file is not a PPTX or ODP presentation.", 415)
    total = 0
    try:
        for entry in entries:
            with archive.open(entry) as part:
                while chunk := part.read(1 << 20):
                    total += len(chunk)
                    if total > limits.max_unzipped_bytes:
                        raise too_big
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
        raise DeckError("damaged", "This presentation file is damaged or uses an unknown "
                        "compression.") from exc
    return ext


def _office_kind(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> Optional[str]:
    """".pptx" or ".odp" when the package says so itself, else None.

    A file name proves nothing (a DOCX with a dummy ``ppt/presentation.xml`` is still a DOCX), so:
    ODP (OpenDocument): the first member is ``mimetype``, stored, naming a presentation. PPTX
    (Open Packaging): ``[Content_Types].xml`` gives a part that exists the content type of a
    presentation's main part, and no part a document's or a workbook's."""
    first = entries[0] if entries else None
    if first is not None and first.filename == "mimetype":
        if first.file_size <= 128 and archive.read(first) == ODP_MIMETYPE:
            return ".odp"
        return None
    names = {e.filename for e in entries}
    try:
        types = archive.getinfo("[Content_Types].xml")
    except KeyError:
        return None
    if types.file_size > MAX_CONTENT_TYPES_BYTES:
        return None
    try:
        with archive.open(types) as part:
            root = ElementTree.fromstring(part.read(MAX_CONTENT_TYPES_BYTES + 1))
    except (ElementTree.ParseError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            OSError, EOFError, ValueError):
        return None
    main = False
    for override in root.iter(f"{{{CONTENT_TYPES_NS}}}Override"):
        content_type = override.get("ContentType", "")
        if content_type in OTHER_OFFICE_MAIN_TYPES:
            return None
        part_name = override.get("PartName", "")
        if content_type in PPTX_MAIN_TYPES and part_name.lstrip("/") in names:
            main = True
    return ".pptx" if main else None


# --- the heavy steps ------------------------------------------------------------------------

def _write_source(staging: Path, suffix: str, data: bytes) -> Path:
    (staging / "out").mkdir(parents=True)  # the worker's files, until they are published
    source = staging / ("source" + suffix)  # LibreOffice picks its import filter by suffix
    source.write_bytes(data)
    return source


async def _office_to_pdf(source: Path, data_dir: Path, limits: Limits) -> Path:
    """Let LibreOffice, when installed, convert the (already checked) presentation to PDF,
    inside the sandbox (``sandbox.py``: no network, only this job's folder of the data folder)."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        raise DeckError("office_unavailable", "This server cannot read PPTX or ODP files. Save "
                        "the presentation as PDF and upload the PDF.", 415)
    staging = source.parent
    argv = [sys.executable, "-c", _LIMITED_EXEC, str(limits.office_memory_mb), soffice,
            "--headless", "--norestore", "--nolockcheck", "--nodefault",
            f"-env:UserInstallation={(staging / 'lo-profile').as_uri()}",
            "--convert-to", "pdf", "--outdir", str(staging), str(source)]
    await asyncio.to_thread(sandbox.available)  # checked once, off the event loop
    try:
        command = sandbox.wrap(argv, data_dir=data_dir, workdir=staging, mode=limits.sandbox,
                               office=True)
    except sandbox.Unavailable:
        raise DeckError("office_unsandboxed", "This server cannot open PPTX or ODP files safely "
                        "(its sandbox is not installed). Save the presentation as PDF and upload "
                        "the PDF.", 415) from None
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        await asyncio.wait_for(proc.wait(), limits.office_seconds)
    except TimeoutError:
        raise DeckError("office_timeout", "The presentation took too long to convert. Save it "
                        "as PDF and upload the PDF.") from None
    finally:
        await _kill_group(proc)
    pdf = source.with_suffix(".pdf")
    if proc.returncode != 0 or not pdf.is_file():
        raise DeckError("office_failed", "The presentation could not be converted. Save it as "
                        "PDF and upload the PDF.")
    return pdf


async def _rasterize(source: Path, kind: str, staging: Path, data_dir: Path, limits: Limits,
                     progress: Optional[Progress]) -> list[dict[str, Any]]:
    """Run the page worker on ``source`` (in the sandbox); return its page records in order."""
    out = staging / "out"
    cpu = int(limits.page_seconds * (limits.max_pages + 1))
    await asyncio.to_thread(sandbox.available)  # checked once, off the event loop
    command = sandbox.wrap(
        [sys.executable, rasterize.__file__, "--source", str(source), "--kind", kind,
         "--out", str(out), "--max-pages", str(limits.max_pages),
         "--max-pixels", str(limits.max_image_pixels), "--memory-mb", str(limits.memory_mb),
         "--cpu-seconds", str(cpu)], data_dir=data_dir, workdir=staging, mode=limits.sandbox)
    stderr = await asyncio.to_thread(open, staging / "worker.log", "wb")
    with stderr:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, start_new_session=True)
        try:
            header = await _next_message(proc, limits.open_seconds, None)
            total = int(header["pages"])
            pages = []
            for index in range(total):
                page = await _next_message(proc, limits.page_seconds, index + 1)
                pages.append(page)
                if progress is not None:
                    progress(index + 1, total)
            await proc.wait()
        except DeckError:
            await _kill_group(proc)
            log.warning("page worker refused %s: exit %s, log: %s", source.name, proc.returncode,
                        await asyncio.to_thread(_tail, staging / "worker.log"))
            raise
        finally:
            await _kill_group(proc)
    return pages


async def _next_message(proc: asyncio.subprocess.Process, timeout: float,
                        page: Optional[int]) -> dict[str, Any]:
    """The worker's next line, turned into a DeckError when it is late, missing or a refusal.

    ``page`` is the 1-based page being waited for, or None while the file is being opened.
    """
    assert proc.stdout is not None
    seconds = round(timeout)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except TimeoutError:
        if page is None:
            raise DeckError("page_timeout", "Opening the file took longer than {seconds} s. "
                            "Export the deck again as PDF.", seconds=seconds) from None
        raise DeckError("page_timeout", "Page {page} took longer than {seconds} s to draw. "
                        "Simplify it or export the deck again as PDF.",
                        page=page, seconds=seconds) from None
    if not line:
        if page is None:
            raise DeckError("page_failed", "The file could not be opened: it is damaged or needs "
                            "more memory than the server allows.")
        raise DeckError("page_failed", "Page {page} could not be drawn: it is damaged or needs "
                        "more memory than the server allows.", page=page)
    try:
        message: dict[str, Any] = json.loads(line)
    except ValueError:
        if page is None:
            raise DeckError("page_failed", "The file could not be opened.") from None
        raise DeckError("page_failed", "Page {page} could not be drawn.", page=page) from None
    if "error" in message:
        # The worker sends a template of its own (a ``Refusal`` in rasterize.py) and its params.
        params = message.get("params")
        raise DeckError(str(message["error"]), str(message["message"]),
                        **(params if isinstance(params, dict) else {}))
    return message


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Stop the child and anything it started (LibreOffice forks), then reap it."""
    if proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace")
    except OSError:
        return ""


def _publish(staging: Path, slides_dir: Path, pages: list[dict[str, Any]]) -> list[str]:
    """Move the pages' files from staging into the slides folder; return the names that are new.

    A name already present is the same content (the name is its hash), so it is left alone.
    """
    added = []
    for page in pages:
        for variant in VARIANTS:
            name = page["files"][variant]["name"]
            target = slides_dir / name
            if not FILE_NAME.match(name):
                raise DeckError("page_failed", "The page worker made an unexpected file.")
            if not target.exists():
                os.replace(staging / "out" / name, target)
                added.append(name)
    return added


async def _save(session_maker: async_sessionmaker[AsyncSession], class_id: int, title: str,
                filename: str, pages: list[dict[str, Any]]) -> Deck:
    name = Path(filename.replace("\\", "/")).name[:255]
    title = " ".join(title.split())[:200] or Path(name).stem[:200] or "Slides"
    try:
        async with session_maker() as session, session.begin():
            deck = Deck(class_id=class_id, title=title, filename=name, pages=len(pages),
                        small_bytes=sum(p["files"]["small"]["bytes"] for p in pages))
            session.add(deck)
            await session.flush()
            _add_slides(session, deck.id, pages)
    except IntegrityError as exc:  # the only constraint a new deck can break: its class is gone
        raise DeckError("no_class", "This class was removed while the deck was being "
                        "prepared.", 404) from exc
    return deck


def _add_slides(session: AsyncSession, deck_id: int, pages: list[dict[str, Any]]) -> None:
    for index, page in enumerate(pages):
        files = page["files"]
        session.add(Slide(
            deck_id=deck_id, index=index, width=page["width"], height=page["height"],
            small=files["small"]["name"], small_bytes=files["small"]["bytes"],
            large=files["large"]["name"], large_bytes=files["large"]["bytes"],
            thumb=files["thumb"]["name"], thumb_bytes=files["thumb"]["bytes"],
            jpeg=files["jpeg"]["name"], jpeg_bytes=files["jpeg"]["bytes"],
            phone=files["phone"]["name"], phone_bytes=files["phone"]["bytes"]))
