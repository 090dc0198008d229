"""The page-to-image worker: a child process that turns one uploaded deck into slide images.

Drawing an untrusted PDF is the riskiest thing the server does (a damaged or hostile file can
use unbounded memory or time inside pdfium), so it never happens in the server process.
``groom.board.deck_import`` starts this file as a script, one process per deck, and the process first caps
its own address space (``RLIMIT_AS``) and CPU time; the parent enforces a deadline per page by
reading one JSON line per page with a timeout and killing the process when it is late.

Protocol (stdout, one JSON object per line):
``{"pages": N}`` once the source is open and checked, then ``{"page": i, "width": ..,
"height": .., "files": {"small": {"name": .., "bytes": ..}, "large": .., "thumb": .., "jpeg": ..,
"phone": ..}}``
per page; on a refusal ``{"error": code, "message": template, "params": {...}}`` and exit
status 2 (the template is English with ``{name}`` placeholders; the server translates it).

Each page is drawn at the size it is shown (not drawn big and shrunk): pdfium's text
anti-aliasing at the target size is both sharper and smaller to encode. A portrait page that is
mostly text (a worksheet) is sized by width for a phone instead (``TEXT_SMALL``, ``TEXT_LARGE``).
A third, smaller WebP (``phone``, ``PHONE``) is what a student on a thin or not yet measured link
fetches first: a 24 kbit/s link with the voice on it has ~4-8 kbit/s left, and the small image
of a first slide took 13-19 s there.
Files are named by the sha256 of their bytes, so equal slides in two decks share one file and
can be cached forever.

This file imports nothing from ``groom`` so that it runs by path in a bare interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import resource
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, cast

import pypdfium2 as pdfium
from PIL import Image, ImageChops, ImageOps, ImageStat

LARGE = (1280, 720)
SMALL = (854, 480)
THUMB = (160, 120)
# The first image on a thin link (24 kbit/s: ~4-8 kbit/s beside the voice), sized for a 360-CSS-px
# phone (720 device px): 600 px wide, as TEXT_SMALL. Stored in the fewest colours of
# PHONE_PALETTES whose worst 48-px tile (worst_tile) is at most PHONE_MAX_TILE grey levels from
# the drawing (or from the lossy image, if further), else lossy at PHONE_QUALITY. Measured on
# media/sample-deck.pdf (scripts/bench_slides.py): page 1 2.3 KB in 4 colours (small: 6.5 KB),
# the deck 17 KB (small: 41 KB); the picture page keeps its sun in 16 colours where 4 lose it
# (worst tile 39); OCR recall of the worst page as the small image's (0.82 / 0.83: tesseract
# at this text size is noisy from page to page). A text page's phone image is its small one.
PHONE = (600, 338)
PHONE_PALETTES = (4, 8, 16)
PHONE_MAX_TILE = 12.0
PHONE_QUALITY = 50
# WebP settings measured on media/sample-deck.pdf (scripts/bench_slides.py): q75 at method 6
# keeps text clean at 854x480 in 7-16 KB; lossless is tried for flat pages and kept when smaller.
WEBP_QUALITY = 75
THUMB_QUALITY = 60
JPEG_QUALITY = 70
FLAT_COLOURS = 4096  # at most this many colours: a drawn slide, worth trying lossless
# A drawn slide (flat colours, anti-aliased text) also fits a palette of 16-32 colours, stored
# lossless: on the sample deck a third fewer bytes than q75 (the small images 41 KB, were 63 KB;
# page 1, the first slide a 2G student waits for, 6.5 KB, was 10.8 KB) with half the error and
# the same OCR recall. It is kept only when no 48-px tile of the page is further from the drawing
# than in the lossy image: a picture in few colours (a colour ramp: one tile 17-24 grey levels
# off, lossy 3) keeps lossy WebP; a photo (more than FLAT_COLOURS colours) is not even tried.
PALETTE_SIZES = (16, 32)
TILE_PX = 48
# A portrait page that is mostly text (a worksheet, a textbook page) is sized by width to fill a
# 360-px phone rather than fitted into the 16:9 boxes (an A4 page became 340x480: OCR word
# recall 1 %), and stored as grey in TEXT_LEVELS levels, lossless: lossy WebP smears small text
# and costs 3-4x the bytes. Measured on scripts/make_text_deck.py pages (bench_slides.py --text):
# 600 px wide ~26 KB (recall ~0.95), 720 px wide (A4: 1019 px high) ~35 KB (recall ~0.99).
TEXT_SMALL = (600, 1200)
TEXT_LARGE = (720, 1440)
TEXT_LEVELS = 5
TEXT_MAX_COLOUR = 4.0  # mean |colour - grey| at most this: a black-and-white page
TEXT_MAX_ERROR = 6.0  # mean |grey - levels| at most this: text (dense text ~3.5, a photo ~16)
NAME_HEX = 32  # sha256 prefix length in file names (128 bits)
PDFIUM_PASSWORD_ERROR = 4


class Refusal(Exception):
    """The input is refused; ``code``, the message ``template`` and ``params`` travel to the
    parent unchanged (the template is a msgid of the server's translation catalog)."""

    def __init__(self, code: str, template: str, **params: Any) -> None:
        super().__init__(template.format(**params) if params else template)
        self.code = code
        self.template = template
        self.params = params

    def to_json(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.template, "params": self.params}


@dataclass(frozen=True)
class Encoded:
    name: str
    bytes: int


def fit(size: tuple[float, float], box: tuple[int, int], upscale: bool = True) -> float:
    """Scale that fits ``size`` inside ``box`` keeping the aspect (never above 1 without upscale)."""
    scale = min(box[0] / size[0], box[1] / size[1])
    return scale if upscale else min(scale, 1.0)


def fit_px(size: tuple[float, float], box: tuple[int, int], upscale: bool = True) -> tuple[int, int]:
    scale = fit(size, box, upscale)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def store(data: bytes, ext: str, out_dir: Path) -> Encoded:
    name = hashlib.sha256(data).hexdigest()[:NAME_HEX] + "." + ext
    path = out_dir / name
    if not path.exists():
        path.write_bytes(data)
    return Encoded(name, len(data))


def encode_webp(image: Image.Image, quality: int, palettes: tuple[int, ...] = PALETTE_SIZES,
                max_tile: float = 0.0) -> bytes:
    """The smallest of: lossy WebP; when the image is flat (a drawn slide, no photo), lossless
    in a palette of ``palettes`` colours (the fewest that does) if that is nowhere worse than
    the lossy one or than ``max_tile`` (``worst_tile``), else lossless in all its colours."""
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality, method=6)
    best = out.getvalue()
    if image.getcolors(FLAT_COLOURS) is None:
        return best
    with Image.open(io.BytesIO(best)) as decoded:
        allowed = max(worst_tile(image, decoded), max_tile)
    for colours in palettes:
        palette = image.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        if worst_tile(image, palette) <= allowed:
            out = io.BytesIO()  # (lossless in all its colours would only be larger)
            palette.save(out, "WEBP", lossless=True, quality=100, method=4)
            return out.getvalue() if out.tell() < len(best) else best
    out = io.BytesIO()
    image.save(out, "WEBP", lossless=True, quality=50, method=4)
    return out.getvalue() if out.tell() < len(best) else best


def worst_tile(image: Image.Image, other: Image.Image) -> float:
    """The largest mean difference (grey levels) between ``image`` and ``other`` over the
    TILE_PX-square tiles of the page: a flaw confined to one picture or one line of text counts
    in full instead of vanishing in the page's average."""
    diff = ImageChops.difference(image, other.convert("RGB")).convert("L").convert("F")
    tiles = diff.resize((-(-diff.width // TILE_PX), -(-diff.height // TILE_PX)), Image.Resampling.BOX)
    return cast(tuple[float, float], tiles.getextrema())[1]  # an "F" image: floats


def encode_jpeg(image: Image.Image) -> bytes:
    """A JPEG twin for browsers without WebP; grey pages are stored as one channel."""
    if image.mode != "L":
        diff = ImageChops.difference(image, image.convert("L").convert("RGB"))
        if diff.getbbox() is None:
            image = image.convert("L")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return out.getvalue()


def text_levels(image: Image.Image) -> Image.Image | None:
    """The page as grey in TEXT_LEVELS levels when it is mostly text (little colour, little lost
    to the levels), else None: pictures and colour pages keep lossy WebP."""
    grey = image.convert("L")
    colour = ImageChops.difference(image, grey.convert("RGB")).convert("L")
    if ImageStat.Stat(colour).mean[0] > TEXT_MAX_COLOUR:
        return None
    step = 255 / (TEXT_LEVELS - 1)
    levels = grey.point([round(round(v / step) * step) for v in range(256)])
    if ImageStat.Stat(ImageChops.difference(grey, levels)).mean[0] > TEXT_MAX_ERROR:
        return None
    return levels


def encode_lossless(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "WEBP", lossless=True, quality=100, method=4)  # method 6: same bytes, 5x slower
    return out.getvalue()


@dataclass(frozen=True)
class Page:
    """One page drawn twice; ``text`` when both are grey text-page images (lossless levels).
    ``jpeg``: the picture for the JPEG twin when not ``small`` (a text page keeps today's
    16:9-box size there: JPEG at the text size costs ~3x the bytes)."""
    large: Image.Image
    small: Image.Image
    text: bool = False
    jpeg: Image.Image | None = None
    phone: Image.Image | None = None  # None: made from ``small`` (a text page: ``small`` itself)


def encode_slide(page: Page, out_dir: Path) -> dict[str, Any]:
    large, small = page.large, page.small
    thumb = small.convert("RGB").resize(fit_px(small.size, THUMB), Image.Resampling.LANCZOS)
    encode = encode_lossless if page.text else lambda image: encode_webp(image, WEBP_QUALITY)
    files = {
        "small": store(encode(small), "webp", out_dir),
        "large": store(encode(large), "webp", out_dir),
        "thumb": store(encode_webp(thumb, THUMB_QUALITY), "webp", out_dir),
        "jpeg": store(encode_jpeg(small if page.jpeg is None else page.jpeg), "jpg", out_dir),
    }
    if page.text:
        files["phone"] = files["small"]  # already a phone's width, lossless grey
    else:
        phone = page.phone or small.resize(fit_px(small.size, PHONE, upscale=False), Image.Resampling.LANCZOS)
        files["phone"] = store(encode_webp(phone, PHONE_QUALITY, PHONE_PALETTES, PHONE_MAX_TILE),
                               "webp", out_dir)
    return {"width": large.width, "height": large.height,
            "files": {k: {"name": v.name, "bytes": v.bytes} for k, v in files.items()}}


def draw(page: pdfium.PdfPage, size: tuple[float, float], box: tuple[int, int]) -> Image.Image:
    """Draw a page to fit ``box``. The scale comes from the page size, so the bitmap can never
    exceed the box however large the page claims to be (a 5 m poster page is not 830 MB)."""
    bitmap = page.render(scale=fit(size, box), fill_color=(255, 255, 255, 255))
    image: Image.Image = bitmap.to_pil()  # pypdfium2 is untyped; to_pil() returns a PIL image
    return image.convert("RGB")


def draw_text_page(page: pdfium.PdfPage, size: tuple[float, float]) -> Page | None:
    """A portrait page that is mostly text, drawn to fill a phone's width; None otherwise."""
    if size[1] <= size[0]:
        return None
    small = text_levels(draw(page, size, TEXT_SMALL))
    if small is None:
        return None
    large = text_levels(draw(page, size, TEXT_LARGE))
    return None if large is None else Page(large, small, text=True, jpeg=draw(page, size, SMALL))


def pdf_pages(path: Path, max_pages: int) -> tuple[int, Iterator[Page]]:
    """Open a PDF, check it, and return its page count and a generator of drawn pages."""
    try:
        pdf = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == PDFIUM_PASSWORD_ERROR:
            raise Refusal("encrypted", "This PDF is protected by a password. Save it again "
                          "without a password and upload it again.") from exc
        raise Refusal("damaged", "This PDF is damaged and cannot be read.") from exc
    count = len(pdf)
    if count == 0:
        raise Refusal("empty", "This PDF has no pages.")
    if count > max_pages:
        raise Refusal("too_many_pages", "This PDF has {pages} pages; a deck may have at most "
                      "{limit}. Split it into smaller decks.", pages=count, limit=max_pages)

    def render() -> Iterator[Page]:
        for index in range(count):
            page = pdf[index]
            size = page.get_size()
            if min(size) <= 0:
                raise Refusal("damaged", "Page {page} has no area.", page=index + 1)
            yield draw_text_page(page, size) or Page(draw(page, size, LARGE), draw(page, size, SMALL),
                                                     phone=draw(page, size, PHONE))
            page.close()

    return count, render()


def image_pages(path: Path, max_pixels: int) -> tuple[int, Iterator[Page]]:
    """A PNG or JPEG is one slide; its header size is checked before any pixel is decoded."""
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own check raises at open; ours has a clear message
    try:
        image = Image.open(path)
        width, height = image.size
    except OSError as exc:
        raise Refusal("damaged", "This picture is damaged and cannot be read.") from exc
    if width * height > max_pixels:
        raise Refusal("image_too_large", "This picture is {width}x{height} pixels; at most "
                      "{megapixels} megapixels are allowed.", width=width, height=height,
                      megapixels=max_pixels // 1_000_000)

    def render() -> Iterator[Page]:
        # Few full-size copies: a 48 MP photo is 144 MB per copy. JPEGs decode at a reduced
        # scale straight away (draft); the large size is made first and the small one from it.
        image.draft("RGB", LARGE)
        try:
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                flat = Image.new("RGB", rgba.size, "white")
                flat.paste(rgba, mask=rgba.getchannel("A"))
                del rgba
            else:
                flat = image if image.mode == "RGB" else image.convert("RGB")
            large = flat.resize(fit_px(flat.size, LARGE, upscale=False),
                                Image.Resampling.LANCZOS, reducing_gap=2.0)
        except OSError as exc:
            raise Refusal("damaged", "This picture is damaged and cannot be read.") from exc
        del flat
        image.close()
        yield Page(large, large.resize(fit_px(large.size, SMALL, upscale=False), Image.Resampling.LANCZOS))

    return 1, render()


def limit_resources(memory_mb: int, cpu_seconds: int) -> None:
    """Cap this process: allocations beyond the cap fail (MemoryError) instead of starving the
    server; the CPU cap is a backstop should the parent's deadline ever not fire."""
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Open, then draw page after page; every failure becomes one error line for the parent."""
    source, out_dir = Path(args.source), Path(args.out)
    done = 0
    try:
        if args.kind == "pdf":
            count, pages = pdf_pages(source, args.max_pages)
        else:
            count, pages = image_pages(source, args.max_pixels)
        emit({"pages": count})
        for page in pages:
            emit({"page": done, **encode_slide(page, out_dir)})
            done += 1
    except Refusal as exc:
        emit(exc.to_json())
        return 2
    except MemoryError:
        emit(Refusal("page_too_complex", "Page {page} needs more memory to draw than the server "
                     "allows. Simplify it or export the deck again as PDF.", page=done + 1).to_json())
        return 2
    except Exception:  # pdfium and the codecs fail in many ways; the parent only needs the page
        traceback.print_exc()
        emit(Refusal("page_failed", "Page {page} could not be drawn: it is damaged or needs "
                     "more memory than the server allows.", page=done + 1).to_json())
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--kind", choices=("pdf", "image"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-pages", type=int, required=True)
    parser.add_argument("--max-pixels", type=int, required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-seconds", type=int, required=True)
    args = parser.parse_args(argv)
    limit_resources(args.memory_mb, args.cpu_seconds)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
