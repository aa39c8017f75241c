"""Choosing the OCR backend: rapidocr by default, Tesseract by setting, and loud errors for a wrong setup."""

from __future__ import annotations

import io
from itertools import pairwise
from typing import Any

import pytest
from PIL import Image

from invoiceflow.extraction import (
    OcrBackendError,
    TesseractUnavailable,
    extract_pages,
    ocr_backend,
    tesseract,
)
from invoiceflow.extraction import ocr as rapid
from invoiceflow.extraction.textlayer import PageText, Word, group_lines

LINES = ["Muster GmbH Musterweg 5", "Rechnung Nr. 4711", "Gesamtbetrag 119,00 EUR"]


def _tiff(pages: int = 2) -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("L", (200, 280), 255) for _ in range(pages)]
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _fake_pages(images: list[Any]) -> list[PageText]:
    pages = []
    for number, _image in enumerate(images, start=1):
        words = [
            Word(token, 50 + 60 * k, 100 + 60 * k, 100 + 20 * row, 110 + 20 * row)
            for row, text in enumerate(LINES)
            for k, token in enumerate(text.split())
        ]
        pages.append(PageText(number, 595.0, 842.0, group_lines(words)))
    return pages


def _forbid(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the other backend was used")


def test_default_backend_is_rapidocr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOICEFLOW_OCR_BACKEND", raising=False)
    assert ocr_backend() == "rapidocr"
    monkeypatch.setattr(rapid, "ocr_images", _fake_pages)
    monkeypatch.setattr(tesseract, "ocr_images", _forbid)
    merged = extract_pages(_tiff(), "scan.tiff").merged()
    assert merged["invoice_number"] == "4711" and merged["total_amount"] == 119.0


def test_tesseract_backend_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICEFLOW_OCR_BACKEND", " Tesseract ")
    assert ocr_backend() == "tesseract"
    seen: list[int] = []

    def pages(images: list[Any]) -> list[PageText]:
        seen.append(len(images))  # one call per document: Tesseract picks the language once
        return _fake_pages(images)

    monkeypatch.setattr(tesseract, "ocr_images", pages)
    monkeypatch.setattr(rapid, "ocr_images", _forbid)
    result = extract_pages(_tiff(pages=2), "scan.tiff")
    assert seen == [2] and result.source == "ocr"
    assert result.merged()["invoice_number"] == "4711"


def test_unknown_backend_is_an_error_not_an_empty_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICEFLOW_OCR_BACKEND", "easyocr")
    with pytest.raises(OcrBackendError, match="rapidocr, tesseract"):
        extract_pages(_tiff(), "scan.tiff")


def test_tesseract_not_installed_is_an_error_not_an_empty_document(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICEFLOW_OCR_BACKEND", "tesseract")
    monkeypatch.setenv("TESSERACT_CMD", "/nonexistent/tesseract")
    tesseract.installed_languages.cache_clear()
    try:
        with pytest.raises(TesseractUnavailable):
            extract_pages(_tiff(), "scan.tiff")
    finally:
        tesseract.installed_languages.cache_clear()


def test_cli_option_selects_the_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from invoiceflow.cli import main

    monkeypatch.setenv("INVOICEFLOW_OCR_BACKEND", "rapidocr")  # so the CLI's setting is undone afterwards
    monkeypatch.setattr(tesseract, "ocr_images", _fake_pages)
    monkeypatch.setattr(rapid, "ocr_images", _forbid)
    scan = tmp_path / "scan.tiff"
    scan.write_bytes(_tiff())
    assert main(["extract", str(scan), "--ocr", "tesseract", "--out", str(tmp_path / "out")]) == 0
    assert '"invoice_number": "4711"' in (tmp_path / "out" / "scan.json").read_text()


def _tesseract_data(degrees: float) -> dict[str, list[Any]]:
    """``image_to_data`` output for a level page turned by ``degrees`` (like ``Image.rotate``).

    Line 1 is a long sentence (one Tesseract line); line 2 is a label at the left and its amount at the far
    right, which Tesseract puts in two blocks.  Glyph boxes differ in height ("von" is x-height only).
    """
    import math

    cx, cy = 827.0, 1169.5
    a = math.radians(degrees)
    level = [  # text, x0, x1, top, bottom, block, line
        ("Behandlungen", 300, 520, 400, 430, 1, 1), ("aufgrund", 535, 680, 400, 436, 1, 1),
        ("von", 695, 750, 408, 430, 1, 1), ("Verordnung", 765, 960, 400, 436, 1, 1),
        ("Frau", 975, 1050, 400, 430, 1, 1), ("Dr.", 1065, 1110, 400, 430, 1, 1),
        ("Gesamtbetrag", 150, 380, 600, 630, 2, 1), ("119,00", 1400, 1500, 602, 630, 3, 1),
    ]  # fmt: skip
    data: dict[str, list[Any]] = {
        k: [] for k in ("text", "conf", "left", "top", "width", "height", "block_num", "par_num", "line_num")
    }
    for text, x0, x1, top, bottom, block, line in level:
        x, y = (x0 + x1) / 2 - cx, (top + bottom) / 2 - cy
        xc, yc = cx + x * math.cos(a) + y * math.sin(a), cy - x * math.sin(a) + y * math.cos(a)
        w, h = x1 - x0, bottom - top
        for key, value in (("text", text), ("conf", 90), ("left", round(xc - w / 2)), ("top", round(yc - h / 2)),
                           ("width", w), ("height", h), ("block_num", block), ("par_num", 1), ("line_num", line)):  # fmt: skip
            data[key].append(value)
    return data


@pytest.mark.parametrize("degrees", [1.2, -1.2, 0.0])
def test_tesseract_words_are_levelled_and_get_their_lines_height(degrees: float) -> None:
    words = tesseract._level_words(_tesseract_data(degrees), 827.0, 1169.5)
    by_text = {text: (x0, x1, top, bottom) for text, x0, x1, top, bottom in words}
    label, amount = by_text["Gesamtbetrag"], by_text["119,00"]
    # the amount at the far right is on its label's line again (a 1.2-degree tilt moves it by ~25 px)
    assert abs((label[2] + label[3]) / 2 - (amount[2] + amount[3]) / 2) < 3
    sentence = [by_text[t] for t in ("Behandlungen", "aufgrund", "von", "Verordnung", "Frau", "Dr.")]
    assert len({(round(top, 3), round(bottom, 3)) for _x0, _x1, top, bottom in sentence}) == 1
    top, bottom = sentence[0][2], sentence[0][3]
    assert bottom - top > 36  # font-sized: more than the tallest glyph box, let alone "von" (22 px)
    # words keep their order and widths along the line
    assert [round(x1 - x0) for x0, x1, _t, _b in sentence] == [220, 145, 55, 195, 75, 45]
    assert all(a[1] < b[0] for a, b in pairwise(sentence))


def test_tesseract_page_groups_a_tilted_label_and_amount_into_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pytesseract

    monkeypatch.setattr(pytesseract, "image_to_data", lambda *_a, **_k: _tesseract_data(1.2))
    page = tesseract.ocr_image(Image.new("L", (1654, 2339), 255), 1, "deu")
    texts = [line.text for line in page.lines]
    assert "Gesamtbetrag 119,00" in texts
    assert "Behandlungen aufgrund von Verordnung Frau Dr." in texts
    assert all(0 <= w.x0 < w.x1 <= page.width for line in page.lines for w in line.words)


def test_tesseract_drops_unsure_one_or_two_letter_words() -> None:
    """Specks and table rules come back as a letter or two read with little confidence; real short words
    (a quantity "1", "de") are read with confidence and stay."""
    data = _tesseract_data(0.0)
    for text, conf, left in (("R", 21, 1200), ("1", 93, 1250), ("ee", 35, 1300), ("de", 88, 1350)):
        for key, value in (("text", text), ("conf", conf), ("left", left), ("top", 600), ("width", 20),
                           ("height", 28), ("block_num", 4), ("par_num", 1), ("line_num", 1)):  # fmt: skip
            data[key].append(value)
    texts = [text for text, *_box in tesseract._level_words(data, 827.0, 1169.5)]
    assert "1" in texts and "de" in texts
    assert "R" not in texts and "ee" not in texts
    assert "Gesamtbetrag" in texts
