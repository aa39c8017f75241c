"""Tesseract, the optional second OCR backend (``INVOICEFLOW_OCR_BACKEND=tesseract``).

Needs the Debian packages ``tesseract-ocr`` and one language pack per language you read (``tesseract-ocr-eng``,
``-deu``, ``-fra``, ``-spa``, ``-nld``, ``-ita``); ``.ci/run`` installs them. It is slower than rapidocr (about
3 s per page on 2 cores against 1.2 s, see ``offline-extraction.md``) and never the default.

Tesseract reads best with the one right language: a blanket ``eng+fra+deu`` confuses diacritics ("Müller" read as
"Môller"). So the language is chosen per document: a quick English pass over the top third of the first page at half
resolution, then the language whose invoice words it saw most (``INVOICEFLOW_TESSERACT_LANG`` overrides it).
Words come from ``image_to_data`` with their boxes, levelled on tilted scans, given their line's height and
cleared of low-confidence specks (``_level_words``), and scaled to PDF points like every other word source.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from functools import cache
from typing import Any

from .textlayer import PageText, Word, group_lines

log = logging.getLogger(__name__)

_A4_WIDTH_PT = 595.0
_MIN_SHORT_CONF = 50.0  # a word of one or two characters read with less confidence is scanner noise
_FONT_BOX = 1.3  # a text layer's word box (the font's ascent to descent) over Tesseract's glyph box
#: Words that give an invoice's language away, per Tesseract language code. Stems of five letters or more also
#: count inside longer words ("rechnung" in "Handelsrechnung"); shorter words count only as whole lower-case words,
#: so a country code such as "DE" is not taken for Spanish "de".
_LANGUAGE_WORDS = {
    "eng": (
        "invoice amount total quantity price description the and of due bill number date tax vat from to "
        "payment terms"
    ),
    "deu": (
        "rechnung nummer datum betrag summe mwst ust gesamt netto brutto menge preis bezeichnung zahlbar "
        "anschrift lieferant kunde steuer und der die das vom bis mit für"
    ),
    "fra": (
        "facture avoir montant quantité prix désignation échéance total tva et le la les des du au de pour ht "
        "ttc date client fournisseur siret"
    ),
    "spa": (
        "factura fecha importe cantidad precio descripción vencimiento imponible cliente proveedor iva el los "
        "de y del"
    ),
    "nld": (
        "factuur datum bedrag totaal aantal prijs omschrijving vervaldatum leverancier klant btw het een en "
        "van"
    ),
    "ita": (
        "fattura importo totale quantità prezzo descrizione scadenza imponibile cliente fornitore iva il di e "
        "del della"
    ),
}
LANGUAGE_WORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split()) for lang, words in _LANGUAGE_WORDS.items()
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


class TesseractUnavailable(RuntimeError):
    """The tesseract binary (or pytesseract) is missing: install the Debian packages or use rapidocr."""


@cache
def installed_languages() -> frozenset[str]:
    """Language packs Tesseract has here; raises :class:`TesseractUnavailable` without a tesseract binary."""
    if shutil.which(os.environ.get("TESSERACT_CMD", "tesseract")) is None:
        raise TesseractUnavailable(
            "INVOICEFLOW_OCR_BACKEND=tesseract needs the tesseract binary: "
            "apt-get install tesseract-ocr tesseract-ocr-eng (plus -deu, -fra, ... for other languages)"
        )
    import pytesseract

    if "TESSERACT_CMD" in os.environ:
        pytesseract.pytesseract.tesseract_cmd = os.environ["TESSERACT_CMD"]
    return frozenset(pytesseract.get_languages(config=""))


def language_scores(text: str, available: frozenset[str] | None = None) -> dict[str, int]:
    """How many invoice words of each language ``text`` holds."""
    words = _WORD.findall(text)
    scores = {
        lang: sum(1 for word in words if _speaks(word, vocabulary))
        for lang, vocabulary in LANGUAGE_WORDS.items()
        if available is None or lang in available
    }
    return scores


def guess_language(text: str, available: frozenset[str] | None = None) -> str:
    """The language whose invoice words occur most in ``text`` (English on a tie or when nothing matches)."""
    scores = language_scores(text, available)
    best = max(scores.items(), key=lambda item: (item[1], item[0] == "eng"), default=("eng", 0))
    return best[0] if best[1] > 0 else "eng"


#: Tax acronyms, printed in capitals: they count whatever their case.
_ACRONYMS = frozenset({"vat", "tva", "ttc", "ht", "btw", "iva", "ust", "mwst"})


def _speaks(word: str, vocabulary: frozenset[str]) -> bool:
    lower = word.lower()
    if lower in vocabulary:
        return len(lower) >= 4 or word == lower or lower in _ACRONYMS
    return len(lower) > 5 and any(len(stem) >= 5 and stem in lower for stem in vocabulary)


def choose_language(image: Any) -> str:
    """Tesseract language for a document, from its first page (or ``INVOICEFLOW_TESSERACT_LANG``)."""
    available = installed_languages()
    forced = os.environ.get("INVOICEFLOW_TESSERACT_LANG")
    if forced:
        return forced
    if "eng" not in available:
        return sorted(available - {"osd"})[0]
    import pytesseract

    half = image.resize((max(1, image.width // 2), max(1, image.height // 2)))
    # The top third (title, parties, first labels) usually tells, in ~0.7 s; else the whole page.
    text = pytesseract.image_to_string(half.crop((0, 0, half.width, max(1, half.height // 3))), lang="eng")
    if max(language_scores(text, available).values(), default=0) < 2:
        text = pytesseract.image_to_string(half, lang="eng")
    language = guess_language(text, available)
    log.info("Tesseract language for this document: %s", language)
    return language


def ocr_image(image: Any, page_number: int = 1, language: str | None = None) -> PageText:
    """OCR one PIL image with Tesseract into positioned words grouped into lines (points, top-left origin)."""
    import pytesseract

    language = language or choose_language(image)
    data = pytesseract.image_to_data(image, lang=language, output_type=pytesseract.Output.DICT)
    scale = _A4_WIDTH_PT / max(image.width, 1)
    words = [
        Word(text, max(0.0, x0) * scale, min(float(image.width), x1) * scale, top * scale, bottom * scale)
        for text, x0, x1, top, bottom in _level_words(data, image.width / 2, image.height / 2)
    ]
    return PageText(page_number, image.width * scale, image.height * scale, group_lines(words))


def _level_words(
    data: dict[str, list[Any]], cx: float, cy: float
) -> list[tuple[str, float, float, float, float]]:
    """Tesseract's words as a text layer would give them: (text, x0, x1, top, bottom) in image pixels.

    * A scan tilted by a degree moves the right end of an A4 line by more than a line height, so a label and
      its amount at the far right would land on different lines: the tilt is the median slope of Tesseract's
      own lines, and word positions are turned back by it.
    * Tesseract's word boxes hug the glyphs ("von" is x-height only, "Müller" reaches up to the umlaut): every
      word of a Tesseract line gets the line's height (times ``_FONT_BOX``) and centre, like a text layer's
      font-sized boxes, so the gap between two words is judged as on a text layer.
    """
    import math
    import statistics

    lines: dict[tuple[int, int, int], list[tuple[str, float, float, float, float]]] = {}
    for text, conf, left, top, width, height, block, par, line in zip(
        data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"],
        data["block_num"], data["par_num"], data["line_num"], strict=True,
    ):  # fmt: skip
        text = str(text).strip()
        if not text or float(conf) < 0 or (len(text) <= 2 and float(conf) < _MIN_SHORT_CONF):
            continue  # nothing read, or a speck or table rule read as a letter or two
        lines.setdefault((block, par, line), []).append(
            (text, float(left), float(left + width), float(top), float(top + height))
        )
    slopes = []
    for words in lines.values():
        xs = [(w[1] + w[2]) / 2 for w in words]
        if len(words) >= 3 and max(xs) - min(xs) > 8 * max(w[4] - w[3] for w in words):
            ys = [(w[3] + w[4]) / 2 for w in words]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var)
    angle = math.atan(statistics.median(slopes)) if slopes else 0.0
    if abs(angle) > 0.2:  # not a scan tilt: no guessing
        angle = 0.0
    cos, sin = math.cos(angle), math.sin(angle)
    heights = [w[4] - w[3] for words in lines.values() for w in words]
    page_height = statistics.median(heights) if heights else 0.0
    out: list[tuple[str, float, float, float, float]] = []
    for words in lines.values():
        turned = []
        for text, x0, x1, top, bottom in words:
            x, y = (x0 + x1) / 2 - cx, (top + bottom) / 2 - cy
            xc, yc = cx + x * cos + y * sin, cy - x * sin + y * cos
            turned.append((text, xc - (x1 - x0) / 2, xc + (x1 - x0) / 2, yc))
        height = _FONT_BOX * max(statistics.median(w[4] - w[3] for w in words), 0.6 * page_height)
        mid = statistics.median(t[3] for t in turned)
        out.extend((text, x0, x1, mid - height / 2, mid + height / 2) for text, x0, x1, _yc in turned)
    return out


def ocr_images(images: list[Any]) -> list[PageText]:
    """Pages of one document, in one language chosen from its first page."""
    if not images:
        return []
    language = choose_language(images[0])
    return [ocr_image(image, number, language) for number, image in enumerate(images, start=1)]
