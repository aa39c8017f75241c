"""The optional Tesseract OCR backend: language chosen per document, positioned words like every word source.

CI installs Tesseract (`make tesseract` in `.ci/run`), so there these tests fail, never skip, without it.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import REPO

from invoiceflow.extraction import tesseract

SAMPLES = REPO / "include" / "samples"


@pytest.fixture(scope="module")
def installed() -> None:
    if shutil.which("tesseract") is None:
        message = "tesseract is not installed (make tesseract)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.parametrize(
    ("text", "language"),
    [
        (
            "Handelsrechnung Nr. 471102 vom 05.03.2018\nAnschrift: Lieferantenstraße 20\nDE 80333 München",
            "deu",
        ),
        ("Facture FA-2017-0008\nTVA : FR11999999998 - SIRET : 99999999800010\nÉchéance 30 jours", "fra"),
        ("Factuur 2024-17\nBTW NL123456789B01\nVervaldatum 01-02-2024\nTotaal te betalen", "nld"),
        ("Fattura n. 12/2024 del 03/02/2024\nImponibile 100,00 IVA 22% Totale 122,00", "ita"),
        ("Factura F-19\nFecha 03/02/2024\nBase imponible 100,00 IVA 21 % Importe total", "spa"),
        ("INVOICE 4711\nInvoice date 2024-02-03\nPayment terms: 30 days\nTotal due", "eng"),
        ("DE 80333 ES 41700 IT 00100", "eng"),  # country codes are not the Spanish/Italian "de", "es"...
        ("", "eng"),
    ],
)
def test_language_is_guessed_from_invoice_words(text: str, language: str) -> None:
    assert tesseract.guess_language(text) == language


def test_guess_only_picks_installed_languages() -> None:
    assert tesseract.guess_language("Rechnung Datum Betrag", frozenset({"eng", "fra"})) == "eng"


@pytest.mark.parametrize(
    ("sample", "language"), [("synthetic-classic-de-2pages", "deu"), ("synthetic-classic-en", "eng")]
)
def test_scanned_page_is_read_in_its_own_language(installed: None, sample: str, language: str) -> None:
    from invoiceflow.extraction.pdf import render_pages

    truth = json.loads((SAMPLES / f"{sample}.json").read_text())
    (image,) = render_pages((SAMPLES / f"{sample}.pdf").read_bytes(), dpi=200, pages=[0])
    assert tesseract.choose_language(image) == language
    page = tesseract.ocr_image(image, 1, language)
    text = " ".join(line.text for line in page.lines)
    assert truth["invoice_number"] in text
    assert 590 < page.width < 600  # words in PDF points, like the text layer and rapidocr
    assert all(0 <= w.x0 < w.x1 <= page.width for line in page.lines for w in line.words)


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tesseract.installed_languages.cache_clear()
    monkeypatch.setenv("TESSERACT_CMD", "/nonexistent/tesseract")
    try:
        with pytest.raises(tesseract.TesseractUnavailable, match="apt-get install tesseract-ocr"):
            tesseract.installed_languages()
    finally:
        tesseract.installed_languages.cache_clear()
