"""OCR path: rapidocr with its bundled models reads a rendered invoice with the network blocked."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import pytest

from invoiceflow.evaluation import images_to_tiff, match_line_items, scan_pdf_pages
from invoiceflow.samples import generate_invoice


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise OSError("network access blocked by test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.timeout(300)
def test_scan_is_extracted_offline(no_network: None) -> None:
    from invoiceflow.extraction import extract_pages

    data, truth = generate_invoice(4, "classic", "en", n_items=3)
    tiff = images_to_tiff(scan_pdf_pages(data, seed=1))
    result = extract_pages(tiff, "scan.tiff")
    assert result.source == "ocr"
    merged = result.merged()
    for key in ("invoice_number", "total_amount", "subtotal", "invoice_date"):
        assert merged[key] == truth[key], key
    assert 0.0 < result.pages[0].confidence <= 1.0
    got = [(i["quantity"], i["line_total"]) for i in merged["line_items"]]
    want = [(i["quantity"], i["line_total"]) for i in truth["line_items"]]
    assert got == want
    assert match_line_items(merged["line_items"], truth["line_items"]) == len(want)  # descriptions too


def test_engine_is_a_singleton() -> None:
    from invoiceflow.extraction.ocr import get_engine

    assert get_engine() is get_engine()


# ---------------------------------------------------------------- skew correction
#
# A scan tilted by ~1 degree moves the right end of an A4 line by more than a line height: without the
# deskew in ``ocr_image`` an item's description and its amount at the far right land on different lines.


def _level_boxes() -> list[list[tuple[float, float]]]:
    """Detector-like boxes on a level 1654x2339 px page (A4 at 200 dpi), corners clockwise from top-left."""

    def rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    lines = [rect(120, 300 + 60 * i, 1500, 330 + 60 * i) for i in range(4)]  # wide text lines
    numbers = [rect(1300 + 70 * i, 700, 1340 + 70 * i, 730) for i in range(5)]  # short numbers, ~square
    return lines + numbers


def _rotate(boxes: object, degrees: float, cx: float, cy: float) -> object:
    """Corners turned like ``PIL.Image.rotate(degrees)`` turns the page (counter-clockwise on screen)."""
    import numpy as np

    arr = np.asarray(boxes, dtype=np.float64)
    a = np.radians(degrees)
    x, y = arr[..., 0] - cx, arr[..., 1] - cy
    out = np.empty_like(arr)
    out[..., 0] = cx + x * np.cos(a) + y * np.sin(a)
    out[..., 1] = cy - x * np.sin(a) + y * np.cos(a)
    return out.astype(np.float32)


@pytest.mark.parametrize("degrees", [1.0, -1.0, 0.4, -2.5])
def test_deskew_rotates_tilted_boxes_back_to_level(degrees: float) -> None:
    import numpy as np

    from invoiceflow.extraction.ocr import _deskew

    cx, cy = 827.0, 1169.5
    level = np.asarray(_level_boxes(), dtype=np.float32)
    tilted = _rotate(level, degrees, cx, cy)
    # the tilt is real: the right end of a 1380 px line moves by ~24 px per degree, about a line height
    assert abs(float(tilted[0, 1, 1] - tilted[0, 0, 1])) > 5 * abs(degrees)
    fixed = _deskew(tilted, cx, cy)
    assert fixed.shape == level.shape
    np.testing.assert_allclose(fixed, level, atol=0.05)
    # every text line is horizontal again: its top corners share a y
    np.testing.assert_allclose(fixed[:4, 1, 1], fixed[:4, 0, 1], atol=0.05)


def test_deskew_measures_the_tilt_on_wide_boxes_only() -> None:
    """Short, near-square boxes (numbers) have unreliable slopes; a median of wide boxes is the skew."""
    import numpy as np

    from invoiceflow.extraction.ocr import _deskew

    cx, cy = 827.0, 1169.5
    level = np.asarray(_level_boxes(), dtype=np.float32)
    tilted = np.asarray(_rotate(level, 1.0, cx, cy))
    # the five number boxes (the majority) lean 7 degrees: if they counted, the median would follow them
    tilted[4:] = np.asarray(_rotate(level[4:], 7.0, cx, cy))
    # and one wide line is an outlier (a stamp at 5 degrees): the median ignores it
    tilted[3] = np.asarray(_rotate(level[3:4], 5.0, cx, cy))[0]
    fixed = _deskew(tilted, cx, cy)
    np.testing.assert_allclose(fixed[:3], level[:3], atol=0.05)


def test_deskew_leaves_level_pages_and_large_angles_alone() -> None:
    import numpy as np

    from invoiceflow.extraction.ocr import _deskew

    cx, cy = 827.0, 1169.5
    level = np.asarray(_level_boxes(), dtype=np.float32)
    assert _deskew(level, cx, cy) is level  # nothing to correct
    sideways = np.asarray(_rotate(level, 20.0, cx, cy))  # not a scan tilt: no guessing
    assert _deskew(sideways, cx, cy) is sideways
    empty = np.zeros((0, 4, 2), dtype=np.float32)
    assert _deskew(empty, cx, cy).shape == (0, 4, 2)
    only_numbers = np.asarray(_rotate(level[4:], 1.0, cx, cy))  # no wide box: no estimate
    assert _deskew(only_numbers, cx, cy) is only_numbers


TILTS = (1.0, -1.0)


@dataclass
class TiltedScan:
    truth: dict[str, Any]
    pages: dict[float, tuple[Any, Any]]  # degrees -> (rotated image, raw detector/recogniser output)


@pytest.fixture(scope="module")
def tilted_scan() -> TiltedScan:
    """One synthetic invoice page rendered at the OCR resolution and rotated by +-1 degree.

    The models run once per image here; the tests replay the raw output through ``ocr_image``.
    """
    from PIL import Image

    from invoiceflow.extraction import ocr
    from invoiceflow.extraction.pdf import render_pages

    data, truth = generate_invoice(4, "classic", "en", n_items=3)
    page = render_pages(data, dpi=ocr.OCR_DPI)[0].convert("L")
    pages = {}
    for degrees in TILTS:
        img = page.rotate(degrees, resample=Image.BILINEAR, expand=False, fillcolor=255)
        pages[degrees] = (img, ocr._detect_and_read(img))
    return TiltedScan(truth, pages)


def _replay(monkeypatch: pytest.MonkeyPatch, image: Any, raw: Any, *, deskew: bool = True) -> None:
    """Serve ``raw`` instead of running the models again (the same image, so the same output)."""
    from invoiceflow.extraction import ocr

    def detect_and_read(got: Any) -> Any:
        assert got.size == image.size
        return raw

    monkeypatch.setattr(ocr, "_detect_and_read", detect_and_read)
    if not deskew:
        monkeypatch.setattr(ocr, "_deskew", lambda boxes, cx, cy: boxes)


def _item_rows_on_one_line(page: Any, items: list[dict[str, Any]]) -> list[bool]:
    """Per ground-truth item: is there an OCR line with its description and, at its right end, its amount?"""
    from invoiceflow.extraction.values import parse_amount

    found = []
    for item in items:
        lines = [ln for ln in page.lines if item["description"] in ln.text]
        found.append(any(parse_amount(ln.words[-1].text) == item["line_total"] for ln in lines))
    return found


@pytest.mark.parametrize("degrees", TILTS)
def test_tilted_scan_keeps_description_and_far_right_amount_on_one_line(
    tilted_scan: TiltedScan, degrees: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invoiceflow.extraction.ocr import ocr_image

    image, raw = tilted_scan.pages[degrees]
    items = tilted_scan.truth["line_items"]
    _replay(monkeypatch, image, raw)
    page = ocr_image(image)
    assert _item_rows_on_one_line(page, items) == [True] * len(items), [ln.text for ln in page.lines]

    # guard: this page really needs the correction (without it the rows break apart)
    _replay(monkeypatch, image, raw, deskew=False)
    uncorrected = ocr_image(image)
    assert not all(_item_rows_on_one_line(uncorrected, items))


def test_tilted_scan_extracts_items_and_total(
    tilted_scan: TiltedScan, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invoiceflow.extraction import extract_pages

    image, raw = tilted_scan.pages[1.0]
    truth = tilted_scan.truth
    _replay(monkeypatch, image, raw)
    result = extract_pages(images_to_tiff([image]), "tilted.tiff")
    assert result.source == "ocr"
    merged = result.merged()
    for key in ("invoice_number", "invoice_date", "subtotal", "tax_amount", "total_amount"):
        assert merged[key] == truth[key], key
    got = [(i["description"], i["quantity"], i["unit_price"], i["line_total"]) for i in merged["line_items"]]
    want = [(i["description"], i["quantity"], i["unit_price"], i["line_total"]) for i in truth["line_items"]]
    assert got == want


def _digit_table_pdf(digits: str) -> bytes:
    """A table whose quantity column holds one-digit cells, 8 pt, like most invoices' "Menge" column."""
    from fpdf import FPDF

    pdf = FPDF(format="A4", unit="pt")
    pdf.add_page()
    pdf.set_font("helvetica", "", 8)
    for x, title in ((60, "Pos"), (150, "Beschreibung"), (420, "Menge"), (500, "Betrag")):
        pdf.text(x, 80, title)
    for k, digit in enumerate(digits):
        y = 110 + 40 * k
        pdf.text(150, y, f"Artikel Nummer {k + 10}")
        pdf.text(430, y, digit)
        pdf.text(500, y, f"{(k + 1) * 3},00")
    return bytes(pdf.output())


def test_one_digit_cells_are_found_on_a_scan(no_network: None) -> None:
    """Detection runs on a scaled-down page; a lone digit is faint there and needs the lower box threshold
    (rapidocr's default 0.5 finds 2-4 of these eight per scan, the 0.3 used here 6-8)."""
    from invoiceflow.extraction.ocr import ocr_image

    digits = "23456789"
    pdf = _digit_table_pdf(digits)
    found = []
    for seed in (2, 3):
        page = ocr_image(scan_pdf_pages(pdf, seed=seed)[0])
        cells = [w.text for line in page.lines for w in line.words if 400 < w.x0 < 450 and w.text != "Menge"]
        found.append(sum(digit in cells for digit in digits))
    assert sum(found) >= 13, found
