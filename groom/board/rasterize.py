"""The page-to-image worker: a child process that turns one uploaded deck into slide images.

Drawing an untrusted PDF is the riskiest thing the server does (a damaged or hostile file can
use unbounded memory or time inside pdfium), so it never happens in the server process.
``groom.board.deck_import`` starts this file as a script, one process per deck, and the process first caps
its own address space (``RLIMIT_AS``) and CPU time; the parent enforces a deadline per page by
reading one JSON line per page with a timeout and killing the process when it is late.

Protocol (stdout, one JSON object per line):
``{"pages": N}`` once the source is open and checked, then ``{"page": i, "width": ..,
"height": .., "files": {"small": {"name": .., "bytes": ..}, "large": .., "thumb": .., "jpeg": ..}}``
per page; on a refusal ``{"error": code, "message": template, "params": {...}}`` and exit
status 2 (the template is English with ``{name}`` placeholders; the server translates it).

Each page is drawn at the size it is shown (not drawn big and shrunk): pdfium's text
anti-aliasing at the target size is both sharper and smaller to encode. Files are named by the
sha256 of their bytes, so equal slides in two decks share one file and can be cached forever.

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
from typing import Any, Iterator

import pypdfium2 as pdfium
from PIL import Image, ImageChops, ImageOps

LARGE = (1280, 720)
SMALL = (854, 480)
THUMB = (160, 120)
# WebP settings measured on media/sample-deck.pdf (scripts/bench_slides.py): q75 at method 6
# keeps text clean at 854x480 in 7-16 KB; lossless is tried for flat pages and kept when smaller.
WEBP_QUALITY = 75
THUMB_QUALITY = 60
JPEG_QUALITY = 70
FLAT_COLOURS = 4096  # at most this many colours: a drawn slide, worth trying lossless
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


def encode_webp(image: Image.Image, quality: int) -> bytes:
    """Lossy WebP, or lossless when the image is flat and lossless comes out smaller."""
    out = io.BytesIO()
    image.save(out, "WEBP", quality=quality, method=6)
    best = out.getvalue()
    if image.getcolors(FLAT_COLOURS) is not None:
        out = io.BytesIO()
        image.save(out, "WEBP", lossless=True, quality=50, method=4)
        if out.tell() < len(best):
            best = out.getvalue()
    return best


def encode_jpeg(image: Image.Image) -> bytes:
    """A JPEG twin for browsers without WebP; grey pages are stored as one channel."""
    diff = ImageChops.difference(image, image.convert("L").convert("RGB"))
    if diff.getbbox() is None:
        image = image.convert("L")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    return out.getvalue()


def encode_slide(large: Image.Image, small: Image.Image, out_dir: Path) -> dict[str, Any]:
    thumb = small.resize(fit_px(small.size, THUMB), Image.Resampling.LANCZOS)
    files = {
        "small": store(encode_webp(small, WEBP_QUALITY), "webp", out_dir),
        "large": store(encode_webp(large, WEBP_QUALITY), "webp", out_dir),
        "thumb": store(encode_webp(thumb, THUMB_QUALITY), "webp", out_dir),
        "jpeg": store(encode_jpeg(small), "jpg", out_dir),
    }
    return {"width": large.width, "height": large.height,
            "files": {k: {"name": v.name, "bytes": v.bytes} for k, v in files.items()}}


def draw(page: pdfium.PdfPage, size: tuple[float, float], box: tuple[int, int]) -> Image.Image:
    """Draw a page to fit ``box``. The scale comes from the page size, so the bitmap can never
    exceed the box however large the page claims to be (a 5 m poster page is not 830 MB)."""
    bitmap = page.render(scale=fit(size, box), fill_color=(255, 255, 255, 255))
    image: Image.Image = bitmap.to_pil()  # pypdfium2 is untyped; to_pil() returns a PIL image
    return image.convert("RGB")


def pdf_pages(path: Path, max_pages: int) -> tuple[int, Iterator[tuple[Image.Image, Image.Image]]]:
    """Open a PDF, check it, and return its page count and a generator of (large, small) images."""
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

    def render() -> Iterator[tuple[Image.Image, Image.Image]]:
        for index in range(count):
            page = pdf[index]
            size = page.get_size()
            if min(size) <= 0:
                raise Refusal("damaged", "Page {page} has no area.", page=index + 1)
            yield draw(page, size, LARGE), draw(page, size, SMALL)
            page.close()

    return count, render()


def image_pages(path: Path, max_pixels: int) -> tuple[int, Iterator[tuple[Image.Image, Image.Image]]]:
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

    def render() -> Iterator[tuple[Image.Image, Image.Image]]:
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
        yield large, large.resize(fit_px(large.size, SMALL, upscale=False), Image.Resampling.LANCZOS)

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
        for large, small in pages:
            emit({"page": done, **encode_slide(large, small, out_dir)})
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
