"""Label-based field extraction from text-layer lines: header fields and a line-item table.

Deliberately simple and general (no vendor templates): find a known label (EN/DE, a little FR/NL) at the
start of a line segment and take the value from the rest of that segment, the next segment to the right or,
for identifiers and dates, the segment just below.  Anything not found stays None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .textlayer import Line, PageText, Segment
from .values import detect_currency, find_amounts, parse_amount, parse_date, parse_number

# field -> labels (lower case, single spaces). The longest matching label wins, so "due date" beats "date"
# and "order date" (ignored, field None) beats "order".
LABELS: dict[str | None, list[str]] = {
    "invoice_number": [
        "invoice no", "invoice number", "invoice #", "invoice nr", "invoice id", "inv no", "inv #",
        "rechnungsnummer", "rechnung nr", "rechnungs-nr", "rechnungsnr", "rechnung-nr", "rechnungs nr",
        "belegnummer", "beleg-nr", "facture n°", "numéro de facture", "factuurnummer", "invoice",
    ],
    "invoice_date": [
        "invoice date", "date", "date of issue", "issue date", "issued", "rechnungsdatum", "datum",
        "belegdatum", "ausstellungsdatum", "date de facture", "factuurdatum",
    ],
    "due_date": [
        "due date", "payment due", "due", "due on", "pay by", "fällig", "fällig am", "fälligkeit",
        "fälligkeitsdatum", "zahlbar bis", "zahlungsziel", "échéance", "date d'échéance", "vervaldatum",
    ],
    "subtotal": [
        "subtotal", "sub-total", "sub total", "net", "net amount", "net total", "total net", "total excl. vat",
        "total excl vat", "nettobetrag", "netto", "zwischensumme", "summe netto", "gesamt netto",
        "gesamtbetrag netto", "warenwert netto", "rechnungssumme ohne ust", "total ht", "montant ht",
    ],
    "tax_amount": [
        "tax", "vat", "sales tax", "total tax", "total taxes", "total vat", "tax amount", "vat amount", "tax total", "mwst", "mwst.",
        "ust", "ust.", "umsatzsteuer", "mehrwertsteuer", "steuerbetrag", "zzgl. mwst", "zzgl. ust",
        "plus vat", "tva", "btw", "montant tva",
    ],
    "total_amount": [
        "total", "total due", "amount due", "grand total", "total amount", "invoice total", "balance due",
        "total payable", "amount payable", "gesamtbetrag", "bruttobetrag", "gesamtsumme", "rechnungsbetrag",
        "endbetrag", "zahlbetrag", "bruttosumme", "summe brutto", "gesamt brutto", "gesamtbetrag brutto",
        "total ttc", "totaal", "te betalen",
    ],
    "purchase_order_number": [
        "po", "po number", "po no", "po #", "p.o.", "p.o. number", "p.o. no", "purchase order",
        "purchase order no", "purchase order number", "order", "order no", "order number", "order #",
        "your order", "customer order", "bestellnummer", "bestell-nr", "bestellnr", "bestellung",
        "ihre bestellung", "ihre bestellnummer", "auftragsnummer", "auftrags-nr", "bon de commande",
    ],
    "vendor_name": ["from", "seller", "vendor", "supplier", "lieferant", "verkäufer", "rechnungssteller"],
    None: [
        "order date", "delivery date", "date of delivery", "lieferdatum", "bestelldatum", "leistungsdatum",
        "liefer- und leistungsdatum", "tax id", "tax no", "tax number", "vat id", "vat no", "vat number",
        "vat reg no", "vat registration", "ust-id", "ust-idnr", "ust-id-nr", "ust.-id", "ustid",
        "steuernummer", "steuer-nr", "st.-nr", "customer no", "customer number", "kundennummer", "kunden-nr",
        "page", "seite", "total quantity", "invoice to", "invoice address", "due in", "net 30",
        "tax rate", "vat rate", "steuersatz", "order reference date", "bill to", "ship to", "sold to",
        "rechnungsempfänger", "rechnungsadresse", "lieferadresse", "lieferanschrift", "kunde", "customer",
    ],
}  # fmt: skip

# Totals with these labels beat a bare "Total" (which is sometimes a column or a running sum).
STRONG_TOTAL = {
    "total due",
    "amount due",
    "grand total",
    "total amount",
    "invoice total",
    "balance due",
    "total payable",
    "amount payable",
    "gesamtbetrag",
    "bruttobetrag",
    "rechnungsbetrag",
    "endbetrag",
    "zahlbetrag",
    "gesamtbetrag brutto",
    "total ttc",
    "te betalen",
}
MONEY_FIELDS = ("subtotal", "tax_amount", "total_amount")
ID_FIELDS = ("invoice_number", "purchase_order_number")
DATE_FIELDS = ("invoice_date", "due_date")
TOTAL_LABEL_FIELDS = set(MONEY_FIELDS)

TITLE_WORDS = {
    "invoice", "tax invoice", "rechnung", "facture", "factuur", "credit note", "gutschrift", "receipt",
    "quittung", "bill", "rechnungskorrektur", "commercial invoice", "proforma invoice", "avoir",
}  # fmt: skip

_LABEL_INDEX: list[tuple[str, str | None]] = sorted(
    ((label, fld) for fld, labels in LABELS.items() for label in labels), key=lambda x: -len(x[0])
)
_CURRENCY_LABELS = ("currency", "währung", "devise", "valuta")
_MONEY_RE = re.compile(r"\d[.,]\d{2}(?!\d)")

# Column header words for line-item tables.
ITEM_COLUMNS: dict[str, set[str]] = {
    "description": {
        "description", "item", "items", "article", "product", "service", "services", "details",
        "beschreibung", "bezeichnung", "artikel", "artikelbezeichnung", "leistung", "leistungen",
        "désignation", "omschrijving", "produkt",
    },
    "quantity": {"qty", "qty.", "quantity", "menge", "anzahl", "qté", "quantité", "aantal", "hours", "units", "stk"},
    "unit_price": {
        "price", "rate", "unit price", "unit cost", "einzelpreis", "preis", "e-preis", "stückpreis",
        "nettopreis", "prix", "prix unitaire", "p.u.", "prijs", "ep",
    },
    "line_total": {
        "amount", "total", "line total", "gesamt", "gesamtpreis", "betrag", "nettobetrag", "summe", "montant",
        "total ht", "bedrag", "gesamtbetrag", "net amount",
    },
}  # fmt: skip


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def match_label(text: str) -> tuple[str | None, str, str] | None:
    """(field, label, remainder) if ``text`` starts with a known label, else None."""
    low = norm(text)
    for label, fld in _LABEL_INDEX:
        if not low.startswith(label):
            continue
        rest = low[len(label) :]
        if rest and not (rest[0] in " :#(/" or (rest[0] == "." and (len(rest) == 1 or rest[1] in " :"))):
            continue
        original_rest = " ".join(text.split())[len(label) :]
        return fld, label, original_rest.lstrip(" .:#").strip()
    return None


@dataclass
class Candidate:
    value: Any
    label: str
    order: int


def _id_value(text: str, *, reject_dates: bool) -> str | None:
    for token in text.split():
        token = token.strip(",;:()")
        if token.startswith("#"):
            token = token[1:]
        if not token or not any(ch.isdigit() for ch in token):
            continue
        if reject_dates and parse_date(token):
            return None
        return token
    return None


def _money_value(text: str) -> float | None:
    if not _MONEY_RE.search(text or ""):
        return None
    if sum(any(ch.isalpha() for ch in word) for word in text.split()) > 3:
        return None  # a sentence ("... capital de 120 000,00 €"), not a label's value
    amounts = find_amounts(text)
    return amounts[-1] if amounts else None


def _value_for(fld: str, text: str, prefer_dmy: bool) -> Any:
    if not text:
        return None
    if fld in MONEY_FIELDS:
        return _money_value(text)
    if fld in DATE_FIELDS:
        return parse_date(text, prefer_dmy=prefer_dmy)
    if fld in ID_FIELDS:
        return _id_value(text, reject_dates=True)
    if fld == "vendor_name":
        cleaned = text.strip(" :")
        return cleaned if any(ch.isalpha() for ch in cleaned) else None
    return None


def _segment_below(lines: list[Line], index: int, seg: Segment) -> Segment | None:
    line = lines[index]
    height = max(line.bottom - line.top, 1.0)
    for nxt in lines[index + 1 : index + 3]:
        if nxt.top - line.bottom > 2.0 * height:
            return None
        for cand in nxt.segments:
            overlap = min(cand.x1, seg.x1) - max(cand.x0, seg.x0)
            if overlap > 0 or abs(cand.x0 - seg.x0) < 6:
                return cand
    return None


_DMY_HINTS = re.compile(
    r"\b(rechnung\w*|\w*datum|mwst|ust|\w*betrag|fällig\w*|menge|summe|netto|brutto|facture|tva|échéance|"
    r"montant|factuur\w*|btw|totaal)\b",
    re.IGNORECASE,
)


def _prefers_dmy(text: str) -> bool:
    """German/French/Dutch documents write slash dates day first."""
    return _DMY_HINTS.search(text) is not None


def _vendor_from_top(lines: list[Line]) -> str | None:
    for line in lines[:6]:
        for seg in line.segments:
            text = seg.text.strip()
            low = norm(text).strip(" :")
            if not any(ch.isalpha() for ch in text) or low in TITLE_WORDS:
                continue
            if match_label(text) is not None:
                continue
            return text
    return None


def extract_header(page: PageText, *, first_page: bool) -> dict[str, Any]:
    """Header fields found on one page (missing ones absent)."""
    lines = page.lines
    full_text = "\n".join(line.text for line in lines)
    prefer_dmy = _prefers_dmy(full_text)
    found: dict[str, list[Candidate]] = {}
    order = 0
    for li, line in enumerate(lines):
        segments = line.segments
        for si, seg in enumerate(segments):
            hit = match_label(seg.text)
            if hit is None:
                continue
            fld, label, rest = hit
            if fld is None:
                continue
            value = _value_for(fld, rest, prefer_dmy)
            if value is None and si + 1 < len(segments):
                nxt = segments[si + 1].text
                if match_label(nxt) is None and not nxt.rstrip().endswith(":"):
                    value = _value_for(fld, nxt, prefer_dmy)
            if value is None and not rest and fld not in MONEY_FIELDS and label != "invoice":
                below = _segment_below(lines, li, seg)
                if below is not None and match_label(below.text) is None and not below.text.endswith(":"):
                    value = _value_for(fld, below.text, prefer_dmy)
            if value is not None:
                order += 1
                found.setdefault(fld, []).append(Candidate(value, label, order))

    out: dict[str, Any] = {}
    for fld, cands in found.items():
        if fld == "total_amount":
            strong = [c for c in cands if c.label in STRONG_TOTAL]
            out[fld] = (strong or cands)[-1].value
        elif fld in MONEY_FIELDS:
            out[fld] = cands[-1].value
        else:
            out[fld] = cands[0].value
    if "vendor_name" not in out and first_page:
        vendor = _vendor_from_top(lines)
        if vendor:
            out["vendor_name"] = vendor
    currency = None
    for line in lines:
        segs = line.segments
        if segs and norm(segs[0].text).strip(" :").startswith(_CURRENCY_LABELS):
            currency = detect_currency(line.text)
            if currency:
                break
    currency = currency or detect_currency(full_text)
    if currency:
        out["currency"] = currency
    return out


# ---------------------------------------------------------------- line items


@dataclass
class Column:
    kind: str  # description / quantity / unit_price / line_total / other
    x0: float
    x1: float

    @property
    def xc(self) -> float:
        return (self.x0 + self.x1) / 2


def _column_kind(text: str) -> str:
    low = norm(text).strip(" :")
    for kind, words in ITEM_COLUMNS.items():
        if low in words:
            return kind
    tokens = low.replace("/", " ").split()
    for kind in ("quantity", "unit_price", "line_total", "description"):
        if any(tok in ITEM_COLUMNS[kind] for tok in tokens):
            return kind
    return "other"


def _header_columns(line: Line) -> list[Column] | None:
    cols = [Column(_column_kind(seg.text), seg.x0, seg.x1) for seg in line.segments]
    kinds = {c.kind for c in cols}
    if "description" in kinds and "line_total" in kinds and ({"quantity", "unit_price"} & kinds):
        return cols
    return None


def _assign(seg: Segment, columns: list[Column]) -> Column:
    best, best_overlap = None, 0.0
    for col in columns:
        overlap = min(seg.x1, col.x1) - max(seg.x0, col.x0)
        if overlap > best_overlap:
            best, best_overlap = col, overlap
    if best is not None:
        return best
    return min(columns, key=lambda c: abs(c.xc - seg.xc))


def _parse_quantity(text: str) -> float | None:
    m = re.search(r"[-−]?\d[\d.,]*", text or "")
    return parse_number(m.group(0)) if m else None


def _is_totals_line(line: Line) -> bool:
    for seg in line.segments:
        hit = match_label(seg.text)
        if hit is not None and hit[0] in TOTAL_LABEL_FIELDS:
            return True
    return False


def _parse_row(line: Line, columns: list[Column]) -> dict[str, Any]:
    cells: dict[str, list[str]] = {}
    for seg in line.segments:
        cells.setdefault(_assign(seg, columns).kind, []).append(seg.text)
    desc = " ".join(cells.get("description", [])).strip() or None
    return {
        "description": desc,
        "quantity": _parse_quantity(" ".join(cells.get("quantity", []))),
        "unit_price": parse_amount(" ".join(cells.get("unit_price", []))),
        "line_total": parse_amount(" ".join(cells.get("line_total", []))),
    }


def extract_line_items(
    page: PageText, carried_columns: list[Column] | None = None
) -> tuple[list[dict[str, Any]], list[Column] | None]:
    """Rows of the line-item table on this page, and the columns to carry to the next page.

    Columns are carried when the table runs off the bottom of the page without reaching the totals, so a
    continuation page without a repeated header still yields its rows.
    """
    items: list[dict[str, Any]] = []
    columns = carried_columns
    in_table = carried_columns is not None
    for line in page.lines:
        header = _header_columns(line)
        if header is not None:
            columns, in_table = header, True
            continue
        if not in_table or columns is None:
            continue
        row = _parse_row(line, columns)
        if _is_totals_line(line) and row["quantity"] is None and row["unit_price"] is None:
            return items, None
        if row["line_total"] is not None and row["description"]:
            items.append(row)
    return items, (columns if in_table else None)
