"""Words and lines with positions from a PDF's text layer (pypdfium2), top of page first."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from invoiceflow.extraction.pdf import open_pdf

log = logging.getLogger(__name__)

MIN_WORDS_FOR_TEXT = 3  # fewer words than this on a page means "no text"
MIN_WORDS_FOR_TEXT_LAYER = 20  # fewer words than this: the page is (mostly) an image, OCR it


@dataclass
class Word:
    """One word; coordinates in points from the top-left corner (y grows downwards)."""

    text: str
    x0: float
    x1: float
    top: float
    bottom: float

    @property
    def height(self) -> float:
        return max(self.bottom - self.top, 1.0)

    @property
    def xc(self) -> float:
        return (self.x0 + self.x1) / 2


@dataclass
class Segment:
    """Words on a line separated by small gaps: a table cell or a "label: value" phrase."""

    words: list[Word]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def x0(self) -> float:
        return self.words[0].x0

    @property
    def x1(self) -> float:
        return self.words[-1].x1

    @property
    def xc(self) -> float:
        return (self.x0 + self.x1) / 2


@dataclass
class Line:
    words: list[Word] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)

    @property
    def top(self) -> float:
        return min(w.top for w in self.words)

    @property
    def bottom(self) -> float:
        return max(w.bottom for w in self.words)

    @property
    def segments(self) -> list[Segment]:
        """Split where the gap between words is wider than ~1.2 character heights (column gutters)."""
        out: list[Segment] = []
        for word in self.words:
            if out:
                prev = out[-1].words[-1]
                if word.x0 - prev.x1 <= 1.2 * max(prev.height, word.height) * 0.8:
                    out[-1].words.append(word)
                    continue
            out.append(Segment([word]))
        return out


@dataclass
class PageText:
    page_number: int
    width: float
    height: float
    lines: list[Line]
    has_images: bool = True  # unknown counts as "may be a scan", so thin pages still get OCR'd

    @property
    def word_count(self) -> int:
        return sum(len(line.words) for line in self.lines)

    @property
    def has_text(self) -> bool:
        return self.word_count >= MIN_WORDS_FOR_TEXT


def _page_words(page) -> list[Word]:  # type: ignore[no-untyped-def]
    import pypdfium2.raw as pdfium_c

    textpage = page.get_textpage()
    page_height = page.get_height()
    words: list[Word] = []
    cur: list[tuple[str, float, float, float, float]] = []

    def flush() -> None:
        if cur:
            text = "".join(c[0] for c in cur)
            words.append(
                Word(
                    text=text,
                    x0=min(c[1] for c in cur),
                    x1=max(c[3] for c in cur),
                    top=page_height - max(c[4] for c in cur),
                    bottom=page_height - min(c[2] for c in cur),
                )
            )
            cur.clear()

    raw = textpage.raw
    soft_break = False  # PDFium inserted a space: a word break only if the gap is really a gap
    try:
        for i in range(textpage.count_chars()):
            code = pdfium_c.FPDFText_GetUnicode(raw, i)
            ch = chr(code) if code else ""
            if code in (0x02, 0xAD):  # PDFium's marker for a hyphen that ends a line
                ch = "-"
            if not ch or ch.isspace() or code in (0xFFFE, 0xFFFF) or 0xD800 <= code <= 0xDFFF:
                if ch == " " and pdfium_c.FPDFText_IsGenerated(raw, i) == 1:
                    soft_break = True
                else:
                    flush()
                continue
            angle = pdfium_c.FPDFText_GetCharAngle(raw, i)
            if 0.05 < angle < 2 * math.pi - 0.05:
                # Rotated text (vertical margin notes, stamps) is not part of the reading lines.
                flush()
                continue
            left, bottom, right, top = textpage.get_charbox(i, loose=True)
            if cur:
                _, pl, pb, pr, pt = cur[-1]
                height = max(pt - pb, top - bottom, 1.0)
                same_line = abs((top + bottom) / 2 - (pt + pb) / 2) < 0.5 * height
                gap = left - pr
                # Letter-spaced fonts make PDFium guess spaces inside words ("Br uttosumme"): a generated
                # space with a gap under ~0.15 em is kerning, not a word break.
                limit = 0.15 * height if soft_break else 0.25 * height
                if not same_line or left < pl - 0.5 or gap > limit:
                    flush()
            soft_break = False
            cur.append((ch, left, bottom, right, top))
        flush()
    finally:
        textpage.close()
    return words


def group_lines(words: list[Word]) -> list[Line]:
    """Words into reading lines (by vertical centre), each sorted left to right; lines top to bottom."""
    lines: list[Line] = []
    for word in sorted(words, key=lambda w: (round(w.top + w.height / 2, 1), w.x0)):
        mid = word.top + word.height / 2
        for line in reversed(lines[-3:]):
            line_mid = (line.top + line.bottom) / 2
            if abs(mid - line_mid) < 0.45 * max(word.height, line.bottom - line.top):
                line.words.append(word)
                break
        else:
            lines.append(Line([word]))
    for line in lines:
        line.words.sort(key=lambda w: w.x0)
    lines.sort(key=lambda ln: ln.top)
    return lines


def read_pdf_text(data: bytes) -> list[PageText]:
    """Every page of the PDF as lines of positioned words; a page that fails to parse comes back empty."""
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    pages: list[PageText] = []
    with open_pdf(data) as pdf:
        for index in range(len(pdf)):
            try:
                page = pdf[index]
            except pdfium.PdfiumError as exc:
                log.warning("page %d cannot be loaded: %s", index + 1, exc)
                pages.append(PageText(index + 1, 0.0, 0.0, []))
                continue
            try:
                words = _page_words(page)
                images = any(
                    True for _ in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=2)
                )
                pages.append(
                    PageText(
                        index + 1, page.get_width(), page.get_height(), group_lines(words), has_images=images
                    )
                )
            except Exception as exc:  # a broken content stream must not sink the document
                log.warning("text layer of page %d unreadable: %s", index + 1, exc)
                pages.append(PageText(index + 1, page.get_width(), page.get_height(), []))
            finally:
                page.close()
    return pages
