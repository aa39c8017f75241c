"""OCR path: rapidocr with its bundled models reads a rendered invoice with the network blocked."""

from __future__ import annotations

import socket

import pytest

from invoiceflow.evaluation import images_to_tiff, scan_pdf_pages
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
    totals = {item["line_total"] for item in merged["line_items"]}
    assert totals >= {item["line_total"] for item in truth["line_items"]}


def test_engine_is_a_singleton() -> None:
    from invoiceflow.extraction.ocr import get_engine

    assert get_engine() is get_engine()
