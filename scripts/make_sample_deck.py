"""Make ``media/sample-deck.pdf``: a small lesson deck like the ones teachers export from Office.

The pages hold what real decks hold and what the slide pipeline must keep readable at 854x480:
vector Latin and Lao text (Lao embedded from fonts-lao when installed), filled shapes, and a
photo-like JPEG picture. Written with pdfium's page-editing API so the text stays vector, as in
an exported deck; a deck of flat page images would flatter the image sizes.

Usage: ``python scripts/make_sample_deck.py [OUT.pdf]``
"""

from __future__ import annotations

import ctypes
import io
import math
import random
import sys
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as raw
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parent.parent / "media" / "sample-deck.pdf"
LAO_FONTS = [Path("/usr/share/fonts/truetype/noto/NotoSansLao-Regular.ttf"),
             Path("/usr/share/fonts/truetype/lao/Phetsarath_OT.ttf")]
WIDTH, HEIGHT = 960.0, 540.0  # PowerPoint's 16:9 page, in points
Color = tuple[int, int, int]


class DeckWriter:
    """Adds pages with text, boxes and pictures to a new PDF; keeps the fonts it embedded."""

    def __init__(self) -> None:
        self.pdf = pdfium.PdfDocument.new()
        self._keep: list[object] = []  # ctypes buffers pdfium reads until the PDF is saved
        self._pages: list[pdfium.PdfPage] = []  # edits live in these handles until gen_content
        self.lao_font = self._load_lao_font()

    def _load_lao_font(self) -> object | None:
        for path in LAO_FONTS:
            if path.exists():
                data = path.read_bytes()
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                self._keep.append(buf)
                return raw.FPDFText_LoadFont(self.pdf.raw, buf, len(data), raw.FPDF_FONT_TRUETYPE, 1)
        return None

    def page(self, title: str, band: Color) -> pdfium.PdfPage:
        page = self.pdf.new_page(WIDTH, HEIGHT)
        self._pages.append(page)
        self.box(page, 0, HEIGHT - 90, WIDTH, 90, band)
        self.text(page, title, 48, HEIGHT - 66, 38, (255, 255, 255))
        return page

    def box(self, page: pdfium.PdfPage, x: float, y: float, w: float, h: float, fill: Color) -> None:
        obj = raw.FPDFPageObj_CreateNewRect(x, y, w, h)
        raw.FPDFPageObj_SetFillColor(obj, *fill, 255)
        raw.FPDFPath_SetDrawMode(obj, raw.FPDF_FILLMODE_WINDING, False)
        raw.FPDFPage_InsertObject(page.raw, obj)

    def circle(self, page: pdfium.PdfPage, cx: float, cy: float, r: float, fill: Color) -> None:
        obj = raw.FPDFPageObj_CreateNewPath(cx + r, cy)
        for step in range(1, 49):
            a = 2 * math.pi * step / 48
            raw.FPDFPath_LineTo(obj, cx + r * math.cos(a), cy + r * math.sin(a))
        raw.FPDFPath_Close(obj)
        raw.FPDFPageObj_SetFillColor(obj, *fill, 255)
        raw.FPDFPath_SetDrawMode(obj, raw.FPDF_FILLMODE_WINDING, False)
        raw.FPDFPage_InsertObject(page.raw, obj)

    def text(self, page: pdfium.PdfPage, text: str, x: float, y: float, size: float,
             color: Color = (20, 20, 20), lao: bool = False) -> None:
        """Vector text; Lao lines use the embedded Lao font (unshaped, so pick words without
        stacked marks) and are skipped when no Lao font is installed."""
        if lao:
            if self.lao_font is None:
                return
            obj = raw.FPDFPageObj_CreateTextObj(self.pdf.raw, self.lao_font, size)
        else:
            obj = raw.FPDFPageObj_NewTextObj(self.pdf.raw, b"Helvetica", size)
        encoded = (text + "\0").encode("utf-16-le")
        buf = ctypes.create_string_buffer(encoded, len(encoded))
        raw.FPDFText_SetText(obj, ctypes.cast(buf, ctypes.POINTER(raw.FPDF_WCHAR)))
        raw.FPDFPageObj_SetFillColor(obj, *color, 255)
        raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, y)
        raw.FPDFPage_InsertObject(page.raw, obj)

    def picture(self, page: pdfium.PdfPage, jpeg: bytes, x: float, y: float, w: float, h: float) -> None:
        image = pdfium.PdfImage.new(self.pdf)
        image.load_jpeg(io.BytesIO(jpeg), pages=[page], inline=False)
        image.set_matrix(pdfium.PdfMatrix().scale(w, h).translate(x, y))
        page.insert_obj(image)

    def save(self, path: Path) -> None:
        for page in self._pages:
            page.gen_content()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pdf.save(str(path))


def landscape_photo(width: int = 1200, height: int = 800, seed: int = 5) -> bytes:
    """A photo-like JPEG (sky gradient, sun, hills, rice field texture) with real noise."""
    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), int(230 - 40 * t)))
    draw.ellipse((width * 0.7, 80, width * 0.7 + 140, 220), fill=(255, 220, 90))
    for i, colour in enumerate([(70, 110, 70), (50, 130, 60), (40, 100, 45)]):
        base = height * (0.45 + 0.12 * i)
        points = [(x, base - 60 * math.sin(x / (150 + 40 * i) + i) - rnd.randint(0, 12))
                  for x in range(0, width + 20, 20)]
        draw.polygon(points + [(width, height), (0, height)], fill=colour)
    noise = Image.effect_noise((width, height), 28).convert("RGB")
    img = Image.blend(img, noise, 0.12).filter(ImageFilter.SMOOTH)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_deck(path: Path = OUT) -> Path:
    """Write the six-page sample lesson to ``path`` and return it."""
    deck = DeckWriter()
    blue, green, teal = (30, 80, 160), (40, 120, 70), (20, 110, 120)

    page = deck.page("Grade 5 Science: The Water Cycle", blue)
    deck.text(page, "ບົດຮຽນ ວິທະຍາສາດ", 48, 330, 44, lao=True)
    deck.text(page, "Lesson 7  -  Teacher: Ms. Keo", 48, 250, 28, (90, 90, 90))
    deck.text(page, "Listen, look at the slide, raise your hand to ask.", 48, 200, 24, (90, 90, 90))

    page = deck.page("What we will learn today", green)
    for i, line in enumerate(["1.  Where does rain come from?", "2.  Evaporation: water becomes vapour",
                              "3.  Condensation: clouds form", "4.  Precipitation: rain falls",
                              "5.  Collection: rivers, lakes, the sea"]):
        deck.text(page, line, 60, 380 - 52 * i, 30)
    deck.text(page, "ສະບາຍດີ ນັກຮຽນ", 600, 60, 30, teal, lao=True)

    page = deck.page("Look at the picture", teal)
    deck.picture(page, landscape_photo(), 48, 40, 540, 360)
    for i, line in enumerate(["Sun heats the water", "Vapour rises", "Clouds form", "Rain falls"]):
        deck.text(page, line, 620, 360 - 56 * i, 26)
    deck.text(page, "ແສງຕາເວັນ  ເມກ  ຝົນ", 620, 100, 28, blue, lao=True)

    page = deck.page("The cycle", blue)
    for i, (label, colour) in enumerate([("Sea", (40, 120, 200)), ("Vapour", (180, 180, 200)),
                                         ("Cloud", (120, 130, 150)), ("Rain", (60, 90, 170))]):
        cx = 150 + 220 * i
        deck.circle(page, cx, 250, 80, colour)
        deck.text(page, label, cx - 40, 245, 24, (255, 255, 255))
        if i < 3:
            deck.box(page, cx + 85, 246, 50, 8, (60, 60, 60))
    deck.text(page, "ທະເລ  ເມກ  ຝົນ", 60, 90, 30, teal, lao=True)

    page = deck.page("Exercise", green)
    rows = [("Step", "Where", "What happens"), ("1", "Sea", "Water warms up"),
            ("2", "Air", "Vapour rises and cools"), ("3", "Sky", "Drops join into clouds"),
            ("4", "Land", "Rain fills the rivers")]
    for r, row in enumerate(rows):
        y = 380 - 60 * r
        deck.box(page, 48, y - 14, 860, 2, (180, 180, 180))
        for c, cell in enumerate(row):
            deck.text(page, cell, 60 + [0, 120, 330][c], y, 26 if r else 28)

    page = deck.page("Homework", teal)
    deck.text(page, "Draw the water cycle in your notebook.", 60, 360, 30)
    deck.text(page, "Write one sentence for each step.", 60, 300, 30)
    deck.text(page, "ນັກຮຽນ ແຕ້ມ ຮູບ", 60, 200, 36, blue, lao=True)
    deck.save(path)
    return path


if __name__ == "__main__":
    print(make_deck(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
