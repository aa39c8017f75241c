"""Read structured e-invoices exactly: Factur-X/ZUGFeRD XML embedded in PDFs, standalone CII and UBL XML.

Element lookup is by local name, so CII D16B (ZUGFeRD 2.x / Factur-X), ZUGFeRD 1.0
(CrossIndustryDocument) and UBL 2.1 Invoice/CreditNote all go through the same small helpers.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from invoiceflow.document_types import CREDIT_NOTE, INVOICE, type_for_code

from .sniff import xml_root_kind
from .values import parse_date

log = logging.getLogger(__name__)


def embedded_xml(pdf_bytes: bytes) -> bytes | None:
    """The CII/ZUGFeRD XML attached to a PDF, or None (no attachment, or the PDF is odd for pypdf)."""
    try:
        from facturx import get_xml_from_pdf
    except ImportError:  # pragma: no cover - factur-x is a declared dependency
        return None
    facturx_log = logging.getLogger("facturx")
    previous = facturx_log.level
    facturx_log.setLevel(logging.ERROR)  # "no XML found" is the normal case for supplier PDFs
    try:
        _name, xml = get_xml_from_pdf(pdf_bytes, check_xsd=False)
    except Exception as exc:  # pypdf raises many kinds of errors on unusual PDFs
        log.debug("embedded XML lookup failed: %s", exc)
        return None
    finally:
        facturx_log.setLevel(previous)
    return xml or None


def _children(el: etree._Element, name: str) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and etree.QName(c).localname == name]


def _path(el: etree._Element | None, path: str) -> list[etree._Element]:
    """All elements matching a '/'-separated local-name path below ``el`` ('*' matches any element)."""
    if el is None:
        return []
    nodes = [el]
    for step in path.split("/"):
        options = step.split("|")
        nxt: list[etree._Element] = []
        for node in nodes:
            for child in node:
                if not isinstance(child.tag, str):
                    continue
                if "*" in options or etree.QName(child).localname in options:
                    nxt.append(child)
        nodes = nxt
    return nodes


def _first(el: etree._Element | None, path: str) -> etree._Element | None:
    found = _path(el, path)
    return found[0] if found else None


def _text(el: etree._Element | None, path: str) -> str | None:
    node = _first(el, path)
    if node is None:
        return None
    value = " ".join((node.text or "").split())
    return value or None


def _num(el: etree._Element | None, path: str) -> float | None:
    raw = _text(el, path)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _date(el: etree._Element | None, path: str) -> str | None:
    node = _first(el, path)
    if node is None:
        return None
    inner = _first(node, "DateTimeString")  # CII D16B wraps the value, ZUGFeRD 1.0 does not
    raw = " ".join(((inner if inner is not None else node).text or "").split())
    return parse_date(raw) if raw else None


def _amount_in_currency(nodes: list[etree._Element], currency: str | None) -> float | None:
    """Pick the amount whose currencyID is the invoice currency (foreign-currency invoices carry two)."""
    fallback: float | None = None
    for node in nodes:
        try:
            value = float((node.text or "").strip())
        except ValueError:
            continue
        cur = node.get("currencyID")
        if currency and cur == currency:
            return value
        if fallback is None and (cur is None or not currency):
            fallback = value
    if fallback is None and nodes:
        try:
            return float((nodes[0].text or "").strip())
        except ValueError:
            return None
    return fallback


def parse_cii(root: etree._Element) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Map a CII (D16B or ZUGFeRD 1.0) invoice to schema field names."""
    doc = _first(root, "ExchangedDocument|HeaderExchangedDocument")
    tx = _first(root, "SupplyChainTradeTransaction|SpecifiedSupplyChainTradeTransaction")
    agreement = _first(tx, "ApplicableHeaderTradeAgreement|ApplicableSupplyChainTradeAgreement")
    settlement = _first(tx, "ApplicableHeaderTradeSettlement|ApplicableSupplyChainTradeSettlement")
    summation = _first(
        settlement,
        "SpecifiedTradeSettlementHeaderMonetarySummation|SpecifiedTradeSettlementMonetarySummation",
    )
    currency = _text(settlement, "InvoiceCurrencyCode")
    due = None
    for terms in _path(settlement, "SpecifiedTradePaymentTerms"):
        due = _date(terms, "DueDateDateTime")
        if due:
            break
    po = _text(agreement, "BuyerOrderReferencedDocument/IssuerAssignedID") or _text(
        agreement, "BuyerOrderReferencedDocument/ID"
    )
    values = {
        # The type code carries the sign: a credit note (381, ...) prints positive amounts, as it is reported here.
        "document_type": type_for_code(_text(doc, "TypeCode")),
        "invoice_number": _text(doc, "ID"),
        "vendor_name": _text(agreement, "SellerTradeParty/Name"),
        "invoice_date": _date(doc, "IssueDateTime"),
        "due_date": due,
        "currency": currency,
        "subtotal": _amount_in_currency(_path(summation, "TaxBasisTotalAmount"), currency),
        "tax_amount": _amount_in_currency(_path(summation, "TaxTotalAmount"), currency),
        "total_amount": _amount_in_currency(_path(summation, "GrandTotalAmount"), currency),
        "purchase_order_number": po,
    }
    items: list[dict[str, Any]] = []
    for line in _path(tx, "IncludedSupplyChainTradeLineItem"):
        if _first(line, "SpecifiedTradeProduct") is None:
            continue  # free-text note lines (ZUGFeRD 1.0 IncludedNote) are not billable items
        line_agreement = _first(line, "SpecifiedLineTradeAgreement|SpecifiedSupplyChainTradeAgreement")
        if values["purchase_order_number"] is None:
            # EXTENDED profile may carry the order reference only per line
            values["purchase_order_number"] = _text(
                line_agreement, "BuyerOrderReferencedDocument/IssuerAssignedID"
            )
        delivery = _first(line, "SpecifiedLineTradeDelivery|SpecifiedSupplyChainTradeDelivery")
        line_settlement = _first(line, "SpecifiedLineTradeSettlement|SpecifiedSupplyChainTradeSettlement")
        items.append(
            {
                "description": _text(line, "SpecifiedTradeProduct/Name"),
                "quantity": _num(delivery, "BilledQuantity"),
                "unit_price": _num(line_agreement, "NetPriceProductTradePrice/ChargeAmount"),
                "line_total": _num(
                    line_settlement,
                    "SpecifiedTradeSettlementLineMonetarySummation|SpecifiedTradeSettlementMonetarySummation"
                    "/LineTotalAmount",
                ),
            }
        )
    return values, items


def parse_ubl(root: etree._Element) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Map a UBL 2.1 Invoice or CreditNote to schema field names."""
    credit = etree.QName(root).localname == "CreditNote"
    type_code = _text(root, "CreditNoteTypeCode") or _text(root, "InvoiceTypeCode")
    is_credit_note = credit or type_for_code(type_code) == CREDIT_NOTE
    currency = _text(root, "DocumentCurrencyCode")
    totals = _first(root, "LegalMonetaryTotal")
    tax_totals = _path(root, "TaxTotal/TaxAmount")
    seller = _first(root, "AccountingSupplierParty/Party")
    vendor = _text(seller, "PartyLegalEntity/RegistrationName") or _text(seller, "PartyName/Name")
    due = _text(root, "DueDate") or _text(root, "PaymentMeans/PaymentDueDate")
    values = {
        "document_type": CREDIT_NOTE if is_credit_note else INVOICE,
        "invoice_number": _text(root, "ID"),
        "vendor_name": vendor,
        "invoice_date": parse_date(_text(root, "IssueDate") or ""),
        "due_date": parse_date(due or ""),
        "currency": currency,
        "subtotal": _amount_in_currency(_path(totals, "TaxExclusiveAmount"), currency),
        "tax_amount": _amount_in_currency(tax_totals, currency),
        "total_amount": _amount_in_currency(_path(totals, "TaxInclusiveAmount"), currency),
        "purchase_order_number": _text(root, "OrderReference/ID"),
    }
    items: list[dict[str, Any]] = []
    for line in _path(root, "CreditNoteLine" if credit else "InvoiceLine"):
        items.append(
            {
                "description": _text(line, "Item/Name"),
                "quantity": _num(line, "CreditedQuantity" if credit else "InvoicedQuantity"),
                "unit_price": _num(line, "Price/PriceAmount"),
                "line_total": _num(line, "LineExtensionAmount"),
            }
        )
    return values, items


def parse_einvoice_xml(xml: bytes) -> tuple[str, dict[str, Any], list[dict[str, Any]]] | None:
    """Return (source, header values, line items) for CII/UBL XML, or None if it is not an invoice."""
    try:
        kind, _root_name = xml_root_kind(xml)
    except ValueError:
        return None
    if kind == "other":
        return None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
    root = etree.fromstring(xml, parser=parser)
    if kind == "cii":
        values, items = parse_cii(root)
        return "einvoice-cii", values, items
    values, items = parse_ubl(root)
    return "einvoice-ubl", values, items
