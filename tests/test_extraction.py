"""Extraction engine: type sniffing, exact e-invoice reading, text-layer fallback, images without OCR."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from invoiceflow.extraction import ExtractionResult, UnsupportedDocument, detect_type, extract_pages
from invoiceflow.extraction.fields import collect_candidates, extract_header_document
from invoiceflow.extraction.tables import detect_header, extract_line_items, title_kind
from invoiceflow.extraction.textlayer import Line, PageText, Word
from invoiceflow.extraction.values import parse_amount, parse_date

CORPUS = Path(os.environ.get("INVOICEFLOW_EINVOICE_CORPUS", "/work/shared/corpus/einvoice-dev"))
SAMPLES = Path(__file__).resolve().parents[1] / "include" / "samples"
SCORED = [
    "invoice_number", "vendor_name", "invoice_date", "due_date", "currency", "subtotal", "tax_amount",
    "total_amount", "purchase_order_number",
]  # fmt: skip


def _corpus_pdfs() -> list[Path]:
    pdfs = sorted(CORPUS.glob("*.pdf"))
    if not pdfs:
        # Deliberately a failure, not a skip: a missing corpus must not look like a green run.
        raise AssertionError(f"e-invoice corpus missing or empty: {CORPUS} (set INVOICEFLOW_EINVOICE_CORPUS)")
    return pdfs


def _same(a: object, b: object) -> bool:
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 0.005  # type: ignore[arg-type]
    return a == b


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="PNG")
    return buf.getvalue()


def test_corpus_is_present() -> None:
    assert len(_corpus_pdfs()) >= 10


@pytest.mark.parametrize("pdf", _corpus_pdfs() if CORPUS.is_dir() else [CORPUS / "MISSING.pdf"], ids=str)
def test_cii_einvoice_matches_ground_truth(pdf: Path) -> None:
    truth = json.loads(pdf.with_suffix(".json").read_text(encoding="utf-8"))
    result = extract_pages(pdf.read_bytes(), pdf.name)
    assert result.source == "einvoice-cii"
    assert len(result.pages) == truth["_pages"]
    assert all(not p.result["line_items"] and p.result["invoice_number"] is None for p in result.pages[1:])
    merged = result.merged()
    unscored = set(truth["_unscored"])
    for field in SCORED:
        if field not in unscored:
            assert _same(merged[field], truth[field]), (
                f"{pdf.name}: {field} {merged[field]!r} != {truth[field]!r}"
            )
    if "line_items" not in unscored:
        got, want = merged["line_items"], truth["line_items"]
        assert len(got) == len(want), pdf.name
        for g, w in zip(got, want, strict=True):
            for key in ("description", "quantity", "unit_price", "line_total"):
                assert _same(g[key], w[key]), f"{pdf.name}: line {w} key {key}: {g[key]!r}"


def test_einvoice_disabled_reads_the_text_layer() -> None:
    pdf = CORPUS / "zugferd-2p0-en16931-elektron.pdf"
    assert pdf.is_file(), f"corpus file missing: {pdf}"
    result = extract_pages(pdf.read_bytes(), pdf.name, use_einvoice=False)
    assert result.source == "text-layer"
    assert len(result.pages) == 2
    assert 0.0 < result.pages[0].confidence < 1.0
    assert result.merged()["total_amount"] == 300.0


def test_standalone_cii_and_ubl_xml() -> None:
    from facturx import get_xml_from_pdf

    _name, xml = get_xml_from_pdf((CORPUS / "avoir-fr-type381-basic.pdf").read_bytes(), check_xsd=False)
    assert detect_type(xml, "invoice.xml") == "xml"
    cii = extract_pages(xml, "invoice.xml")
    assert cii.source == "einvoice-cii" and len(cii.pages) == 1
    assert cii.pages[0].result["total_amount"] == 233.47

    ubl = b"""<?xml version="1.0" encoding="UTF-8"?>
<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
 xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
 xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
 <cbc:ID>UBL-7</cbc:ID><cbc:IssueDate>2024-03-05</cbc:IssueDate><cbc:DueDate>2024-04-04</cbc:DueDate>
 <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
 <cac:OrderReference><cbc:ID>PO-1</cbc:ID></cac:OrderReference>
 <cac:AccountingSupplierParty><cac:Party><cac:PartyLegalEntity>
  <cbc:RegistrationName>Seller AG</cbc:RegistrationName></cac:PartyLegalEntity></cac:Party>
 </cac:AccountingSupplierParty>
 <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">19.00</cbc:TaxAmount></cac:TaxTotal>
 <cac:LegalMonetaryTotal><cbc:TaxExclusiveAmount currencyID="EUR">100.00</cbc:TaxExclusiveAmount>
  <cbc:TaxInclusiveAmount currencyID="EUR">119.00</cbc:TaxInclusiveAmount></cac:LegalMonetaryTotal>
 <cac:InvoiceLine><cbc:InvoicedQuantity unitCode="C62">4</cbc:InvoicedQuantity>
  <cbc:LineExtensionAmount currencyID="EUR">100.00</cbc:LineExtensionAmount>
  <cac:Item><cbc:Name>Widget</cbc:Name></cac:Item><cac:Price><cbc:PriceAmount currencyID="EUR">25.00</cbc:PriceAmount></cac:Price>
 </cac:InvoiceLine>
</Invoice>"""
    result = extract_pages(ubl, "ubl.xml")
    assert result.source == "einvoice-ubl"
    page = result.pages[0].result
    assert page == {
        "document_type": "invoice", "invoice_number": "UBL-7", "vendor_name": "Seller AG", "invoice_date": "2024-03-05",
        "due_date": "2024-04-04", "currency": "EUR", "subtotal": 100.0, "tax_amount": 19.0,
        "total_amount": 119.0, "purchase_order_number": "PO-1",
        "line_items": [{"description": "Widget", "quantity": 4.0, "unit_price": 25.0, "line_total": 100.0}],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- credit notes

_UBL_CREDIT_NOTE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CreditNote xmlns="urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
 xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
 xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
 <cbc:ID>CN-7</cbc:ID><cbc:IssueDate>2024-03-05</cbc:IssueDate>
 <cbc:CreditNoteTypeCode>381</cbc:CreditNoteTypeCode><cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
 <cac:AccountingSupplierParty><cac:Party><cac:PartyLegalEntity>
  <cbc:RegistrationName>Seller AG</cbc:RegistrationName></cac:PartyLegalEntity></cac:Party>
 </cac:AccountingSupplierParty>
 <cac:TaxTotal><cbc:TaxAmount currencyID="EUR">9.50</cbc:TaxAmount></cac:TaxTotal>
 <cac:LegalMonetaryTotal><cbc:TaxExclusiveAmount currencyID="EUR">50.00</cbc:TaxExclusiveAmount>
  <cbc:TaxInclusiveAmount currencyID="EUR">59.50</cbc:TaxInclusiveAmount></cac:LegalMonetaryTotal>
 <cac:CreditNoteLine><cbc:CreditedQuantity unitCode="C62">2</cbc:CreditedQuantity>
  <cbc:LineExtensionAmount currencyID="EUR">50.00</cbc:LineExtensionAmount>
  <cac:Item><cbc:Name>Widget returned</cbc:Name></cac:Item>
  <cac:Price><cbc:PriceAmount currencyID="EUR">25.00</cbc:PriceAmount></cac:Price>
 </cac:CreditNoteLine>
</CreditNote>"""


def _cii_of(pdf: Path) -> bytes:
    from facturx import get_xml_from_pdf

    return get_xml_from_pdf(pdf.read_bytes(), check_xsd=False)[1]


def test_factur_x_type_381_is_a_credit_note_with_positive_amounts() -> None:
    """The committed sample (CII TypeCode 381): document_type credit_note, amounts as printed (positive), from the
    embedded XML, the standalone XML and the PDF's text layer alike; a 380 invoice stays an invoice."""
    pdf = SAMPLES / "avoir-fr-type381-basic.pdf"
    embedded = extract_pages(pdf.read_bytes(), pdf.name)
    assert embedded.source == "einvoice-cii"
    merged = embedded.merged()
    assert merged["document_type"] == "credit_note"
    assert merged["total_amount"] == 233.47 and all(li["line_total"] > 0 for li in merged["line_items"])
    standalone = extract_pages(_cii_of(pdf), "avoir.xml").merged()
    assert standalone["document_type"] == "credit_note"
    text_layer = extract_pages(pdf.read_bytes(), pdf.name, use_einvoice=False)
    assert text_layer.source == "text-layer" and text_layer.merged()["document_type"] == "credit_note"
    assert text_layer.merged()["total_amount"] == 233.47

    invoice = SAMPLES / "en16931-einfach-duedate.pdf"
    for use_einvoice in (True, False):
        merged = extract_pages(invoice.read_bytes(), invoice.name, use_einvoice=use_einvoice).merged()
        assert merged["document_type"] == "invoice"


@pytest.mark.parametrize(
    ("code", "expected"),
    [("381", "credit_note"), ("396", "credit_note"), ("261", "credit_note"), ("262", "credit_note"),
     ("380", "invoice"), ("384", "invoice"), ("389", "invoice")],
)  # fmt: skip
def test_cii_type_code_decides_the_document_type(code: str, expected: str) -> None:
    xml = _cii_of(SAMPLES / "avoir-fr-type381-basic.pdf")
    xml = xml.replace(b">381</ram:TypeCode>", f">{code}</ram:TypeCode>".encode(), 1)
    assert f">{code}</ram:TypeCode>".encode() in xml
    assert extract_pages(xml, "cii.xml").pages[0].result["document_type"] == expected


def test_ubl_credit_note_root_or_type_code_is_a_credit_note() -> None:
    result = extract_pages(_UBL_CREDIT_NOTE, "cn.xml")
    assert result.source == "einvoice-ubl"
    page = result.pages[0].result
    assert page["document_type"] == "credit_note" and page["invoice_number"] == "CN-7"
    assert page["total_amount"] == 59.5 and page["line_items"] == [
        {"description": "Widget returned", "quantity": 2.0, "unit_price": 25.0, "line_total": 50.0}
    ]
    # An Invoice root that carries a credit-note type code (seen in the wild) is a credit note too.
    as_invoice = (
        _UBL_CREDIT_NOTE.replace(b"CreditNote-2", b"Invoice-2")
        .replace(b"<CreditNote ", b"<Invoice ")
        .replace(b"</CreditNote>", b"</Invoice>")
        .replace(b"CreditNoteTypeCode", b"InvoiceTypeCode")
    )
    assert extract_pages(as_invoice, "inv.xml").pages[0].result["document_type"] == "credit_note"
    plain = as_invoice.replace(b">381<", b">380<")
    assert extract_pages(plain, "inv.xml").pages[0].result["document_type"] == "invoice"


@pytest.mark.parametrize(
    ("title", "expected"),
    [("Credit note CN-2024-7", "credit_note"), ("GUTSCHRIFT Nr. G-17", "credit_note"), ("Avoir n° AV-12", "credit_note"),
     ("Nota di credito 2024/7", "credit_note"), ("Credit memo", "credit_note"), ("Rechnung Nr. 4711", "invoice"),
     ("Invoice INV-9", "invoice")],
)  # fmt: skip
def test_text_layer_title_gives_the_document_type(title: str, expected: str) -> None:
    from invoiceflow.extraction.fields import extract_document

    rows = [
        [(50.0, "Muster GmbH, Musterweg 5, 12345 Musterstadt")],
        [(50.0, title)],
        [(50.0, "Total"), (400.0, "-119,00 EUR")],
    ]
    per_page, _confidence = extract_document([_page(*rows), _page([(50.0, "Seite 2 von 2 Muster GmbH")])])
    (first, _items), (second, _items2) = per_page
    assert first["document_type"] == expected and "document_type" not in second
    assert first["total_amount"] == (119.0 if expected == "credit_note" else -119.0)


def test_merged_result_keeps_a_credit_note_from_any_page() -> None:
    from invoiceflow.extraction import PageExtraction

    def page(n: int, doc_type: str | None) -> PageExtraction:
        return PageExtraction(n, {"document_type": doc_type, "invoice_number": "CN-1" if n == 1 else None})

    merged = ExtractionResult(pages=[page(1, "invoice"), page(2, "credit_note"), page(3, None)]).merged()
    assert merged == {"document_type": "credit_note", "invoice_number": "CN-1"}
    assert ExtractionResult(pages=[page(1, None), page(2, "invoice")]).merged()["document_type"] == "invoice"


def test_schema_declares_the_document_type() -> None:
    from invoiceflow.extraction import default_schema

    spec = default_schema()["properties"]["document_type"]
    assert {"invoice", "credit_note"} <= set(spec["enum"]) and spec["description"]


def test_schema_drives_the_fields() -> None:
    schema = {"properties": {"invoice_number": {"type": "string"}, "iban": {"type": "string"}}}
    pdf = CORPUS / "avoir-fr-type381-basic.pdf"
    result = extract_pages(pdf.read_bytes(), pdf.name, schema)
    assert result.pages[0].result == {"invoice_number": "AV-2017-0005", "iban": None}


@pytest.mark.parametrize(
    ("data", "filename", "reason"),
    [
        (b"", "empty.pdf", "empty file"),
        (bytes(range(256)) * 4, "blob.bin", "unknown file type"),
        (b"Hello, this is a plain text note.\nNot an invoice.\n", "note.pdf", "contains plain text"),
        (b"<?xml version='1.0'?><order><id>1</id></order>", "order.xml", "not a CII or UBL invoice"),
        (b"<?xml version='1.0'?><broken>", "broken.xml", "not well-formed"),
        (b"PK\x03\x04" + b"\x00" * 40, "invoice.docx", "ZIP archive"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "scan.png", "corrupt PNG"),
    ],
)
def test_detect_type_refuses_with_specific_reason(data: bytes, filename: str, reason: str) -> None:
    with pytest.raises(UnsupportedDocument) as info:
        detect_type(data, filename)
    assert reason in info.value.reason


def test_truncated_pdf_is_corrupt() -> None:
    data = (CORPUS / "avoir-fr-type381-basic.pdf").read_bytes()
    with pytest.raises(UnsupportedDocument, match="corrupt PDF"):
        detect_type(data[: len(data) // 2], "cut.pdf")
    with pytest.raises(UnsupportedDocument, match="corrupt PDF"):
        extract_pages(data[:300], "cut.pdf")


def test_detect_type_by_magic_not_name() -> None:
    png = _png_bytes()
    assert detect_type(png, "scan.png") == "png"
    assert detect_type(png, "actually-a-png.pdf") == "png"
    pdf = (CORPUS / "avoir-fr-type381-basic.pdf").read_bytes()
    assert detect_type(pdf, "no-extension") == "pdf"
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    assert detect_type(jpeg.getvalue(), "x.jpg") == "jpeg"


def test_blank_images_return_empty_pages_after_ocr() -> None:
    buf = io.BytesIO()
    frames = [Image.new("L", (16, 16), v) for v in (0, 128, 255)]
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    result = extract_pages(buf.getvalue(), "scan.tiff")
    assert result.source == "none"
    assert [p.page_number for p in result.pages] == [1, 2, 3]
    assert all(p.confidence == 0.0 for p in result.pages)
    assert all(v in (None, []) for p in result.pages for v in p.result.values())
    png = extract_pages(_png_bytes(), "one.png")
    assert isinstance(png, ExtractionResult) and len(png.pages) == 1


def test_blank_image_only_pdf_gives_none_source() -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 50, 30, style="F")
    pdf.add_page()
    result = extract_pages(bytes(pdf.output()), "scan.pdf")
    assert result.source == "none"
    assert len(result.pages) == 2
    assert result.pages[0].result["total_amount"] is None and result.pages[0].confidence == 0.0


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,234.56", 1234.56),
        ("1.234,56 €", 1234.56),
        ("$99.00", 99.0),
        ("EUR -7,67", -7.67),
        ("12", 12.0),
        # OCR took the decimal comma for a dot (or the other way round): thousands groups, then two decimals
        ("6.668.85", 6668.85),
        ("1,234,56 EUR", 1234.56),
        ("-1.234.567.89", -1234567.89),
    ],
)
def test_parse_amount(text: str, value: float) -> None:
    assert parse_amount(text) == value


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2024-03-05", "2024-03-05"),
        ("05.03.2024", "2024-03-05"),
        ("03/05/2024", "2024-03-05"),
        ("March 5, 2024", "2024-03-05"),
        ("31/12/2024", "2024-12-31"),
        ("no date", None),
    ],
)
def test_parse_date(text: str, iso: str | None) -> None:
    assert parse_date(text) == iso


# ---------------------------------------------------------------- OCR-shaped text: glued words, stray dots
#
# Pages are built from positioned words (as OCR or a text layer hands them over): 5 pt per character, cells
# given by their left edge, far enough apart to be separate segments (column gutters).


def _line(cells: list[tuple[float, str]], top: float) -> Line:
    words: list[Word] = []
    for x0, text in cells:
        x = x0
        for token in text.split():
            words.append(Word(token, x, x + 5.0 * len(token), top, top + 10.0))
            x += 5.0 * (len(token) + 1)
    return Line(words)


def _page(*rows: list[tuple[float, str]]) -> PageText:
    return PageText(1, 595.28, 841.89, [_line(cells, 100.0 + 20.0 * i) for i, cells in enumerate(rows)])


def _header(*texts: str) -> dict[str, Any]:
    """Header values chosen for a one-page document with the lines ``texts`` (each starting at x=50).

    An address line goes first: a page with fewer than three words counts as having no text.
    """
    rows = [[(50.0, "Muster GmbH, Musterweg 5, 12345 Musterstadt")], *([(50.0, t)] for t in texts)]
    per_page, _conf = extract_header_document([_page(*rows)])
    return per_page[0]


@pytest.mark.parametrize(
    ("title", "number", "date"),
    [
        ("Rechnung Nr.471102vom05.06.2018", "471102", "2018-06-05"),
        ("Rechnung Nr. TX-471102vom 30.10.2018", "TX-471102", "2018-10-30"),
        ("Rechnung TX-471102vom 30.10.2018", "TX-471102", "2018-10-30"),
        ("Rechnung 471102 vom05.03.2018", "471102", "2018-03-05"),
        ("Invoice No. 8812from2019-04-12", "8812", "2019-04-12"),
        # a connector inside the number that is not followed by a date stays part of it
        ("Rechnung Nr. 12-DEL-34vom05.06.2018", "12-DEL-34", "2018-06-05"),
        ("Rechnung Nr. 471102 vom 05.06.2018", "471102", "2018-06-05"),  # spaced, as before
    ],
)
def test_title_with_glued_connector_gives_number_and_date(title: str, number: str, date: str) -> None:
    found = collect_candidates(_page([(50.0, title)]), 0, prefer_dmy=True)
    titled = {fld: [c.value for c in cands if c.label == "title"] for fld, cands in found.items()}
    assert titled.get("invoice_number") == [number]
    assert titled.get("invoice_date") == [date]
    header = _header(title)
    assert (header.get("invoice_number"), header.get("invoice_date")) == (number, date)


@pytest.mark.parametrize(
    ("title", "number"),
    [
        ("Invoice No. INV-2018-DU-77", "INV-2018-DU-77"),  # "du" then no digits
        ("Rechnung Nr. 4711vom12", "4711vom12"),  # "vom" then digits that are not a date
        ("Facture N° FA2019du3-B", "FA2019du3-B"),
        ("Rechnung Nr. 4711vom2018", "4711vom2018"),
    ],
)
def test_connector_without_a_numeric_date_does_not_cut_the_number(title: str, number: str) -> None:
    found = collect_candidates(_page([(50.0, title)]), 0, prefer_dmy=True)
    assert [c.value for c in found.get("invoice_number", []) if c.label == "title"] == [number]
    assert "invoice_date" not in found
    assert _header(title).get("invoice_number") == number


@pytest.mark.parametrize(
    "text",
    [
        "Lieferung gemäßBestellungNr.2013-471331",
        "Lieferung gemäß Bestellung Nr. 2013-471331",
        "Wir liefern IhreBestellung Nr. 2013-471331 vollständig",
    ],
)
def test_po_sentence_with_glued_words(text: str) -> None:
    found = collect_candidates(_page([(50.0, text)]), 0, prefer_dmy=True)
    assert [(c.value, c.label) for c in found.get("purchase_order_number", [])] == [
        ("2013-471331", "sentence")
    ]
    assert _header("Rechnung Nr. 4711", text).get("purchase_order_number") == "2013-471331"


@pytest.mark.parametrize(
    "text",
    [
        "Lieferung gemäß Nachbestellung Nr. 2013-471331",  # a re-order is not the buyer's PO
        "Lieferung gemäßNachbestellungNr.2013-471331",
    ],
)
def test_po_sentence_ignores_a_word_that_only_ends_in_bestellung(text: str) -> None:
    found = collect_candidates(_page([(50.0, text)]), 0, prefer_dmy=True)
    assert "purchase_order_number" not in found
    assert "purchase_order_number" not in _header("Rechnung Nr. 4711", text)


@pytest.mark.parametrize(
    ("title", "kind"),
    [
        ("Nettobetrag.", "line_total"),
        ("Nettobetrag", "line_total"),
        ("Gesamtpreis,", "line_total"),
        ("Einzelpreis.", "unit_price"),
        ("Menge;", "quantity"),
        ("Pos.", "other"),  # a known non-item column keeps its kind
    ],
)
def test_column_title_with_trailing_punctuation(title: str, kind: str) -> None:
    assert title_kind(title) == kind


def test_header_with_trailing_dot_on_amount_title_reads_the_amount_column() -> None:
    page = _page(
        [(50.0, "Bezeichnung"), (300.0, "Menge"), (380.0, "Einzelpreis"), (480.0, "Nettobetrag.")],
        [(50.0, "Beratung"), (305.0, "2"), (390.0, "150,00"), (490.0, "300,00")],
        [(50.0, "Reisekosten"), (305.0, "1"), (390.0, "80,50"), (495.0, "80,50")],
    )
    detected = detect_header(page.lines, 0)
    assert detected is not None
    columns, last = detected
    assert last == 0
    assert [c.kind for c in columns] == ["description", "quantity", "unit_price", "line_total"]
    items, _carried = extract_line_items(page)
    got = [(i["description"], i["quantity"], i["unit_price"], i["line_total"]) for i in items]
    assert got == [("Beratung", 2.0, 150.0, 300.0), ("Reisekosten", 1.0, 80.5, 80.5)]


def test_totals_under_column_titles_with_an_ocr_misread_title() -> None:
    """Totals printed under separate column titles; OCR read one title's "%" as "8" ("MwSt-8").

    A title line is one without amounts, not one without digits, so the totals are still read from the
    sum row under "Nettobetrag | MwSt-Betrag | Endbetrag".
    """
    titles = [(50.0, "Warenwert"), (170.0, "Nettobetrag"), (260.0, "MwSt-Betrag"), (340.0, "MwSt-8"),
              (420.0, "Endbetrag")]  # fmt: skip
    rows = [
        [(55.0, "326,50"), (175.0, "321,40"), (265.0, "61,07"), (345.0, "19,0"), (425.0, "382,47")],
        [(55.0, "130,70"), (175.0, "127,59"), (265.0, "8,93"), (345.0, "7,0"), (425.0, "136,52")],
        [(55.0, "457,20"), (175.0, "448,99"), (265.0, "70,00"), (345.0, "EUR"), (425.0, "518,99")],
    ]
    header = _header_page(titles, rows)
    assert (header.get("subtotal"), header.get("tax_amount"), header.get("total_amount")) == (
        448.99,
        70.0,
        518.99,
    )


def _header_page(titles: list[tuple[float, str]], rows: list[list[tuple[float, str]]]) -> dict[str, Any]:
    """Header values of a page with an address line, a line of column titles and rows of amounts."""
    page = _page([(50.0, "Muster GmbH, Musterweg 5, 12345 Musterstadt")], titles, *rows)
    per_page, _conf = extract_header_document([page])
    return per_page[0]


@pytest.mark.parametrize("text", ["05.09.2018", "12.34.56", "1.2.3", "1.234.5678"])
def test_dotted_groups_that_are_not_an_amount_stay_unparsed(text: str) -> None:
    assert parse_amount(text) is None
