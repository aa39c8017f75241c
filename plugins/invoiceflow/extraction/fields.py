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
from .values import detect_currency, find_amounts, parse_date

# field -> labels (lower case, single spaces). The longest matching label wins, so "due date" beats "date"
# and "order date" (ignored, field None) beats "order".
LABELS: dict[str | None, list[str]] = {
    "invoice_number": [
        "invoice no", "invoice number", "invoice #", "invoice nr", "invoice id", "inv no", "inv #",
        "rechnungsnummer", "rechnung nr", "rechnungs-nr", "rechnungsnr", "rechnung-nr", "rechnungs nr",
        "belegnummer", "beleg-nr", "facture n°", "numéro de facture", "factuurnummer", "invoice",
        "n° de facture", "facture no", "factuur nr", "factuurnr", "número de factura", "nº factura", "factura nº",
        "factura n°", "num. factura", "numero fattura", "fattura n", "fattura n.", "n. fattura", "rechnung nr.",
    ],
    "invoice_date": [
        "invoice date", "date", "date of issue", "issue date", "issued", "rechnungsdatum", "datum",
        "belegdatum", "beleg-datum", "ausstellungsdatum", "date de facture", "factuurdatum", "date d'émission",
        "fecha", "fecha de factura", "fecha de emisión", "data", "data fattura", "data documento", "datum factuur",
    ],
    "due_date": [
        "due date", "payment due", "due", "due on", "pay by", "fällig", "fällig am", "fälligkeit",
        "fälligkeitsdatum", "zahlbar bis", "zahlungsziel", "échéance", "date d'échéance", "vervaldatum",
        "vervaldag", "fecha de vencimiento", "vencimiento", "scadenza", "data scadenza", "bitte überweisen sie bis zum",
        "zahlbar bis zum", "payable by", "à payer avant le",
    ],
    "subtotal": [
        "subtotal", "sub-total", "sub total", "net", "net amount", "net total", "total net", "total excl. vat",
        "total excl vat", "nettobetrag", "netto", "zwischensumme", "summe netto", "gesamt netto",
        "gesamtbetrag netto", "warenwert netto", "rechnungssumme ohne ust", "total ht", "montant ht",
        "summe ohne ust", "rechnungssumme ohne ust.", "base imponible", "subtotaal", "totaal excl. btw",
        "totaal excl btw", "rechnungssumme netto", "summe netto", "nettosumme", "imponibile", "totale imponibile", "total hors taxes", "netto bedrag", "nettobedrag",
    ],
    "tax_amount": [
        "tax", "vat", "sales tax", "total tax", "total taxes", "total vat", "tax amount", "vat amount", "tax total", "mwst", "mwst.",
        "ust", "ust.", "umsatzsteuer", "mehrwertsteuer", "steuerbetrag", "zzgl. mwst", "zzgl. ust",
        "plus vat", "tva", "btw", "montant tva", "total taxes", "total tva", "zuzügl. ust", "zuzügl. mwst",
        "steuerbetrag in", "iva", "total iva", "cuota iva", "importe iva", "imposta", "totale iva", "iva totale",
        "btw bedrag", "summe umsatzsteuer", "summe mwst", "summe ust", "totaal btw", "mwst-betrag", "ust.-betrag", "ust-betrag", "steuer",
    ],
    "total_amount": [
        "total", "total due", "amount due", "grand total", "total amount", "invoice total", "balance due",
        "total payable", "amount payable", "gesamtbetrag", "bruttobetrag", "gesamtsumme", "rechnungsbetrag",
        "endbetrag", "rechnungssumme brutto", "zahlbetrag", "bruttosumme", "summe brutto", "gesamt brutto", "gesamtbetrag brutto",
        "total ttc", "totaal", "te betalen", "bruttosumme", "summe inkl. ust", "summe inkl. mwst",
        "total factura", "importe total", "totale fattura", "totale documento", "totale", "totaal incl. btw",
        "totaal incl btw", "net à payer", "montant ttc", "total a pagar", "da pagare", "endsumme",
    ],
    "purchase_order_number": [
        "po", "po number", "po no", "po #", "p.o.", "p.o. number", "p.o. no", "purchase order",
        "purchase order no", "purchase order number", "order", "order no", "order number", "order #",
        "your order", "customer order", "bestellnummer", "bestell-nr", "bestellnr", "bestellung",
        "ihre bestellung", "ihre bestellnummer", "auftragsnummer", "auftrags-nr", "bon de commande",
        "votre référence", "n° de commande", "numéro de commande", "commande", "bestelnummer", "inkoopordernummer",
        "uw referentie", "your reference", "your ref", "your ref.", "ihre referenz", "su referencia",
        "vostro riferimento", "buyer reference", "customer reference", "pedido", "nº pedido", "número de pedido", "orden de compra", "ordine", "ordine n",
        "numero ordine", "rif. ordine", "bestell-nr.", "bestellung nr", "order ref", "order reference",
    ],
    "vendor_name": [
        "from", "seller", "vendor", "supplier", "lieferant", "verkäufer", "rechnungssteller", "rechnungsersteller", "vendeur",
        "fournisseur", "émetteur", "verkoper", "leverancier", "fornitore", "cedente", "proveedor", "vendedor", "emisor",
    ],
    None: [
        "order date", "delivery date", "date of delivery", "lieferdatum", "bestelldatum", "leistungsdatum",
        "liefer- und leistungsdatum", "tax id", "tax no", "tax number", "vat id", "vat no", "vat number",
        "vat reg no", "vat registration", "ust-id", "ust-idnr", "ust-id-nr", "ust.-id", "ustid",
        "steuernummer", "steuer-nr", "st.-nr", "customer no", "customer number", "kundennummer", "kunden-nr",
        "page", "seite", "total quantity", "invoice to", "invoice address", "due in", "net 30",
        "tax rate", "vat rate", "steuersatz", "order reference date", "bill to", "ship to", "sold to",
        "rechnungsempfänger", "rechnungsadresse", "lieferadresse", "lieferanschrift", "kunde", "customer",
        "bestell-datum", "lieferschein-datum", "leistungs-datum", "auftrag-datum", "positionssumme", "gesamtbetrag der zuschläge", "gesamtbetrag der abschläge",
        "n° tva", "n° tva client", "tva intracommunautaire", "btw-nummer", "btw nr", "partita iva", "p. iva",
        "cif", "nif", "steuersatz", "datum levering", "date de livraison", "fecha de entrega", "data consegna",
        "facture liée", "ursprungsbeleg-nr", "kunden-nr", "kunden-nr.", "lieferschein-nr", "réf. marché",
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


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def match_label(text: str) -> tuple[str | None, str, str] | None:
    """(field, label, remainder) if ``text`` starts with a known label, else None (bullets are skipped)."""
    text = text.lstrip("*•·–- \t")
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
    page: int = 0
    score: float = 1.0


_DATE_TOKEN = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01])"
)


def _is_date_token(token: str) -> bool:
    """The whole token is a date ("05.06.2018", "20140519"), not an id that contains one ("RE-20140519/499")."""
    return _DATE_TOKEN.fullmatch(token.strip(".,;:()")) is not None


def _id_value(text: str, *, reject_dates: bool) -> str | None:
    for token in text.split():
        token = token.strip(",;:()")
        if token.startswith("#"):
            token = token[1:]
        if not token or not any(ch.isdigit() for ch in token):
            continue
        if reject_dates and _is_date_token(token):
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
    r"montant|factuur\w*|btw|totaal|factura|fattura|iva|fecha|importe|totale|scadenza|vencimiento|datum|"
    r"bedrag|vervaldatum)\b",
    re.IGNORECASE,
)


def _prefers_dmy(text: str) -> bool:
    """German/French/Dutch documents write slash dates day first."""
    return _DMY_HINTS.search(text) is not None


_LEGAL_FORM = re.compile(
    r"\b(gmbh|ag|kg|ohg|ug|e\.k\.|gbr|mbh|ltd|limited|llc|inc|corp|plc|llp|co\.|sarl|sas|sa|s\.a\.|eurl|sasu|"
    r"bv|b\.v\.|nv|n\.v\.|vof|srl|s\.r\.l\.|spa|s\.p\.a\.|snc|sl|s\.l\.|slu|s\.a\.u\.|a\.g\.|e\.v\.|kgaa)(?=\W|$)",
    re.IGNORECASE,
)
_BUYER_HEADINGS = (
    "bill to", "billed to", "invoice to", "sold to", "ship to", "customer", "buyer", "käufer", "kunde",
    "rechnungsempfänger", "warenempfänger", "leistungsempfänger", "client", "destinataire", "facturé à",
    "klant", "afnemer", "cliente", "destinatario", "facturar a", "adresse de livraison",
)  # fmt: skip
_LABEL_LINE = re.compile(r"^[^:]{1,40}:")
_NAME_LABELS = ("name", "firma", "company", "raison sociale", "nom", "naam", "nombre", "ragione sociale")
_GLUED_DATE = r"(?:vom|du|dated|del|van|from)\s*(?P<glued_date>\d{1,4}[./-]\d{1,2}[./-]\d{2,4})"
_GLUED_AHEAD = r"(?:vom|du|dated|del|van|from)\s*\d{1,4}[./-]\d{1,2}[./-]\d{2,4}"
_TITLE_RE = re.compile(
    r"(?:^|\s)(?:\w*rechnung\w*|\w*invoice|facture|avoir|factuur|fattura|factura|gutschrift|credit note|nota di credito)"
    r"(?:(?:\s+(?!(?:nr|no|n[°º]|number|nummer)\b)[^\s\d#:]+){1,4}(?:\s*\(\d+\))?\s*(?=(?:nr\.?|no\.?|n[°º]\.?|#|number|nummer)\s))?"
    r"(?:\s*\(\d+\))?\s*(?:nr\.?|no\.?|n[°º]\.?|#|number|nummer|num\.?|número|numero|n\.)?\s*:?\s*"
    # OCR glues short words ("471102vom05.06.2018"): a connector stuck to the id still ends it when a
    # numeric date follows.
    r"(?P<id>[A-Za-z]{0,8}[-/]?[0-9](?:[\w\-/.]*?(?=" + _GLUED_AHEAD + r")|[\w\-/.]*))"
    r"(?:\s+(?:vom|du|dated|of|del|van|dd\.?|from)\s+(?P<date>.+)|\s*" + _GLUED_DATE + r")?",
    re.IGNORECASE,
)


def _is_label_text(text: str) -> bool:
    return bool(_LABEL_LINE.match(text.strip())) or match_label(text) is not None


def _clean_name(text: str) -> str | None:
    text = text.strip(" :|,;-")
    letters = sum(ch.isalpha() for ch in text)
    if letters < 2 or letters < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def _followed_by_colon(line: Line, cell: Segment) -> bool:
    """The next cell on the line starts with ':' (a label and its value printed as two cells)."""
    for seg in line.segments:
        if seg.x0 > cell.x1:
            return seg.text.startswith(":")
    return False


def _vendor_below(lines: list[Line], index: int, seg: Segment) -> str | None:
    """The seller's name in the block under a "Seller:"-style heading (skips ids, takes a "Name:" field)."""
    pending: list[str] = []
    for nxt in lines[index + 1 : index + 6]:
        cands = [c for c in nxt.segments if c.x1 > seg.x0 - 4 and c.x0 < max(seg.x1, seg.x0 + 150)]
        if not cands:
            continue
        cell = cands[0]
        text = cell.text.strip()
        low = norm(text)
        if low.startswith(_BUYER_HEADINGS):
            break
        if (
            _LABEL_LINE.match(text) or low.rstrip(":") in _NAME_LABELS or _followed_by_colon(nxt, cell)
        ):  # "Name: ...", or a "Nummer | : 549910" pair printed as two cells
            label = low.split(":", 1)[0].strip()
            if label in _NAME_LABELS:
                rest = text.split(":", 1)[1].strip() if ":" in text else ""
                value = rest or (
                    nxt.segments[nxt.segments.index(cell) + 1].text if cell is not nxt.segments[-1] else ""
                )
                name = _clean_name(value)
                if name:
                    return " ".join([*pending, name])
            continue
        if low.startswith(("gln", "lief-nr", "tel", "fax")) or sum(ch.isdigit() for ch in text) > 4:
            continue
        name = _clean_name(text)
        if name is None:
            continue
        if pending or _LEGAL_FORM.search(name):
            return " ".join([*pending, name])
        # A name without a legal form may wrap onto a "Name:" field just below; wait one line for it.
        pending.append(name)
        if len(pending) > 1:
            return pending[0]
    return pending[0] if pending else None


def _vendor_from_top(lines: list[Line]) -> str | None:
    """No seller heading: the first company-like line at the top, else the first plain text line."""
    buyer_until = -1
    fallback = None
    for li, line in enumerate(lines[:15]):
        for seg in line.segments:
            text = seg.text.strip()
            low = norm(text).strip(" :")
            if low.startswith(_BUYER_HEADINGS):
                buyer_until = li + 4
                continue
            if li <= buyer_until or not any(ch.isalpha() for ch in text) or low in TITLE_WORDS:
                continue
            if _is_label_text(text) or "@" in text or "http" in low or "(c)" in low:
                continue
            name = _clean_name(text.split(" - ")[0])
            if name is None:
                continue
            if _LEGAL_FORM.search(name):
                return name
            if fallback is None and li < 6:
                fallback = name
    return fallback


def _title_candidates(line: Line, prefer_dmy: bool) -> dict[str, Any]:
    """ "Rechnung Nr. 471102 vom 05.06.2018" / "Invoice # A-1 dated ..." / "Facture FA-2017-9"."""
    m = _TITLE_RE.search(line.text)
    if not m:
        return {}
    ident = m.group("id").rstrip(".,;:")
    if _is_date_token(ident) or not any(ch.isdigit() for ch in ident) or len(ident) < 3:
        return {}
    out: dict[str, Any] = {"invoice_number": ident}
    stated = m.group("date") or m.group("glued_date")
    if stated:
        issued = parse_date(stated, prefer_dmy=prefer_dmy)
        if issued:
            out["invoice_date"] = issued
    return out


_PO_SENTENCE = re.compile(
    r"(?:\b|(?-i:(?<=[a-zäöüßéèàç])(?=[A-ZÄÖÜ])))"  # a word boundary, or OCR-glued words ("gemäßBestellung")
    r"(?:bestellung|bestellnummer|purchase order|order|commande|pedido|ordine|bestelling)\s*"
    r"(?:nr\.?|no\.?|number|nummer|n[°º]\.?|#)\s*:?\s*(?P<id>[A-Za-z0-9][\w\-/.]*)",
    re.IGNORECASE,
)
_DUE_SENTENCE = re.compile(
    r"\b(?:zahlbar|payable|payment due|due|fällig|à payer|betaalbaar|pagadero|pagabile)\b[^.:;]{0,50}?"
    r"\b(?:bis zum|bis|by|until|before|on|am|avant le|le|voor|antes del|entro il)\s+(?P<date>.{6,20})",
    re.IGNORECASE,
)


def _sentence_candidates(text: str, prefer_dmy: bool) -> dict[str, Any]:
    """Values stated in running text: "gemäß Bestellung Nr. 2013-471331", "Zahlbar ... bis 04.07.2013"."""
    out: dict[str, Any] = {}
    m = _PO_SENTENCE.search(text)
    if m:
        ident = m.group("id").rstrip(".,;:")
        if any(ch.isdigit() for ch in ident) and not _is_date_token(ident) and len(ident) >= 3:
            out["purchase_order_number"] = ident
    m = _DUE_SENTENCE.search(text)
    if m:
        due = parse_date(m.group("date"), prefer_dmy=prefer_dmy)
        if due:
            out["due_date"] = due
    return out


def _summary_table(lines: list[Line], index: int) -> list[tuple[str, float, float]]:
    """A totals table whose column titles are money labels ("Nettobetrag | MwSt-Betrag | Endbetrag").

    Returns (field, amount, order bonus) for every row under the titles; the last row (the sum row)
    gets the largest bonus.
    """
    line = lines[index]
    titled: list[tuple[str, Segment]] = []
    for seg in line.segments:
        hit = match_label(seg.text)
        if hit is not None and hit[0] in TOTAL_LABEL_FIELDS and not hit[2]:
            titled.append((hit[0], seg))
    if len({fld for fld, _ in titled}) < 2 or _MONEY_RE.search(line.text):  # titles, not a row of amounts
        return []
    out: list[tuple[str, float, float]] = []
    for row_no, row in enumerate(lines[index + 1 : index + 8]):
        found = False
        for fld, title in titled:
            for seg in row.segments:
                if min(seg.x1, title.x1 + 4) - max(seg.x0, title.x0 - 4) <= 0:
                    continue
                amounts = find_amounts(seg.text) if _MONEY_RE.search(seg.text) else []
                if amounts:
                    out.append((fld, amounts[-1], 0.05 * row_no))
                    found = True
                    break
        if not found:
            break
    return out


# Gross-total labels beat "amount due" (which is net of prepayments) unless the arithmetic says otherwise.
_PAYABLE = {"zahlbetrag", "amount due", "balance due", "te betalen", "total due", "net à payer", "amount payable",
            "total payable", "da pagare", "total a pagar"}  # fmt: skip


def _label_score(fld: str, label: str) -> float:
    if fld == "total_amount":
        if label in _PAYABLE:
            return 1.0
        if label in STRONG_TOTAL or len(label) > 6:
            return 2.0
        return 1.2
    if fld == "tax_amount" and label in ("steuer", "tax", "iva"):
        return 0.8
    return 1.5 if len(label) > 4 else 1.0


def collect_candidates(page: PageText, page_index: int, prefer_dmy: bool) -> dict[str, list[Candidate]]:
    """Every (field, value) a label rule finds on one page, in reading order."""
    lines = page.lines
    found: dict[str, list[Candidate]] = {}
    order = 0

    def add(fld: str, value: Any, label: str, score: float) -> None:
        nonlocal order
        order += 1
        found.setdefault(fld, []).append(Candidate(value, label, order, page_index, score))

    for li, line in enumerate(lines):
        for fld, value in _title_candidates(line, prefer_dmy).items():
            add(fld, value, "title", 2.5 if li < 12 else 1.0)
        for fld, value in _sentence_candidates(line.text, prefer_dmy).items():
            add(fld, value, "sentence", 0.6)
        for fld, value, order_bonus in _summary_table(lines, li):
            add(fld, value, "summary", 1.5 + order_bonus)
        segments = line.segments
        for si, seg in enumerate(segments):
            hit = match_label(seg.text)
            if hit is None:
                continue
            fld, label, rest = hit
            if fld is None:
                continue
            if fld == "vendor_name":
                if rest and seg.text.split()[0].rstrip().endswith(":"):
                    name = _clean_name(rest)
                elif not rest:
                    name = _vendor_below(lines, li, seg)
                else:
                    name = None
                if name:
                    add(fld, name, label, 2.0)
                continue
            value = _value_for(fld, rest, prefer_dmy)
            if value is None and si + 1 < len(segments):
                right = []
                for nxt in segments[si + 1 :]:
                    if match_label(nxt.text) is not None and fld not in MONEY_FIELDS:
                        break
                    if _is_label_text(nxt.text) and nxt.text.strip() not in (":",) and fld in MONEY_FIELDS:
                        break
                    right.append(nxt.text)
                    if fld not in MONEY_FIELDS:
                        break
                joined = " ".join(right)
                if joined and not joined.rstrip().endswith(":"):
                    value = _value_for(fld, joined, prefer_dmy)
            if value is None and not rest and fld not in MONEY_FIELDS and label != "invoice":
                below = _segment_below(lines, li, seg)
                if below is not None and match_label(below.text) is None and not below.text.endswith(":"):
                    value = _value_for(fld, below.text, prefer_dmy)
            if value is not None:
                add(fld, value, label, _label_score(fld, label))
    return found


def _doc_prefers_dmy(pages: list[PageText]) -> bool:
    """Slash-date order from the document itself (a part > 12 decides), else from its language."""
    text = "\n".join(line.text for page in pages for line in page.lines)
    dmy = mdy = 0
    for a, b in re.findall(r"(?<!\d)(\d{1,2})/(\d{1,2})/\d{2,4}(?!\d)", text):
        dmy += int(a) > 12
        mdy += int(b) > 12
    if dmy != mdy:
        return dmy > mdy
    return _prefers_dmy(text)


def _near(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) < 0.005


def _choose_money(
    found: dict[str, list[Candidate]], line_sum: float | None, printed: list[set[float]]
) -> dict[str, Candidate]:
    """Pick subtotal, tax and total jointly: label strength, then subtotal + tax = total, Σ lines = subtotal."""
    subs: list[Candidate | None] = [*found.get("subtotal", []), None]
    taxes: list[Candidate | None] = [*found.get("tax_amount", []), None]
    totals: list[Candidate | None] = [*found.get("total_amount", []), None]
    best: tuple[float, tuple[Candidate | None, ...]] | None = None
    for s in subs[-6:] if len(subs) > 6 else subs:
        for t in taxes[-8:] if len(taxes) > 8 else taxes:
            for g in totals[-6:] if len(totals) > 6 else totals:
                score = sum(
                    c.score + 0.01 * c.order / 1000 + 0.001 * c.page for c in (s, t, g) if c is not None
                )
                if s and t and g and _near(round(s.value + t.value, 2), g.value):
                    score += 4.0
                elif s and g and t is None and _near(s.value, g.value):
                    score += 0.5
                if s and line_sum is not None and _near(s.value, line_sum):
                    score += 1.0
                if best is None or score > best[0]:
                    best = (score, (s, t, g))
    chosen: dict[str, Candidate] = {}
    if best is None:
        return chosen
    s, t, g = best[1]
    for fld, cand in (("subtotal", s), ("tax_amount", t), ("total_amount", g)):
        if cand is not None:
            chosen[fld] = cand
    if s is not None and g is not None and (t is None or not _near(round(s.value + t.value, 2), g.value)):
        # The tax printed without a recognised label (e.g. a tax breakdown table): take it if it is printed.
        diff = round(g.value - s.value, 2)
        for index, amounts in enumerate(printed):
            if any(_near(diff, a) for a in amounts) and diff >= 0:
                chosen["tax_amount"] = Candidate(diff, "arithmetic", 0, index, 1.0)
                break
    return chosen


def _page_amounts(page: PageText) -> set[float]:
    out: set[float] = set()
    for line in page.lines:
        for seg in line.segments:
            out.update(find_amounts(seg.text))
    return out


def extract_header_document(
    pages: list[PageText], line_sum: float | None = None
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Header values per page (each value on the page it was read from) and a confidence per field."""
    prefer_dmy = _doc_prefers_dmy(pages)
    found: dict[str, list[Candidate]] = {}
    for index, page in enumerate(pages):
        if not page.has_text:
            continue
        for fld, cands in collect_candidates(page, index, prefer_dmy).items():
            found.setdefault(fld, []).extend(cands)
    chosen: dict[str, Candidate] = {}
    for fld, cands in found.items():
        if fld in MONEY_FIELDS:
            continue
        chosen[fld] = max(cands, key=lambda c: (c.score, -c.page, -c.order))
    if "vendor_name" not in chosen and pages and pages[0].has_text:
        vendor = _vendor_from_top(pages[0].lines)
        if vendor:
            chosen["vendor_name"] = Candidate(vendor, "top", 0, 0, 0.5)
    money = _choose_money(found, line_sum, [_page_amounts(p) for p in pages])
    chosen.update(money)
    confidence: dict[str, float] = {}
    for fld, cand in chosen.items():
        agree = (
            fld in MONEY_FIELDS
            and len(money) == 3
            and _near(
                round(money["subtotal"].value + money["tax_amount"].value, 2), money["total_amount"].value
            )
        )
        confidence[fld] = 0.95 if agree else round(min(0.9, 0.4 + 0.2 * cand.score), 2)
    currency_page, currency = _find_currency(pages)
    per_page: list[dict[str, Any]] = [{} for _ in pages]
    for fld, cand in chosen.items():
        per_page[cand.page][fld] = cand.value
    if currency:
        per_page[currency_page]["currency"] = currency
        confidence["currency"] = 0.9
    return per_page, confidence


def _find_currency(pages: list[PageText]) -> tuple[int, str | None]:
    """A labelled currency ("Währung: EUR", "Currency GBP") wins; else the first code or symbol printed."""
    for index, page in enumerate(pages):
        for line in page.lines:
            low = norm(line.text)
            for label in (*_CURRENCY_LABELS, "rechnungswährung", "moneda", "divisa", "valuta", "munt"):
                pos = low.find(label)
                if pos == 0 or (pos > 0 and low[pos - 1] == " " and pos < 20):
                    code = detect_currency(line.text[pos + len(label) :])
                    if code:
                        return index, code
    for index, page in enumerate(pages):
        code = detect_currency("\n".join(line.text for line in page.lines))
        if code:
            return index, code
    return 0, None


def extract_document(
    pages: list[PageText], schema: dict[str, Any] | None = None
) -> tuple[list[tuple[dict[str, Any], list[dict[str, Any]]]], float]:
    """Header values and line items per page, plus one document confidence.

    The confidence is the mean per-field confidence over the schema's header fields (0 for a field not
    found), so a document whose totals add up scores higher than one where they were guessed. Page 1 also gets
    ``document_type``: ``credit_note`` when its title names a credit note (amounts then reported positive, see
    :func:`_credit_note_signs`), else ``invoice``.
    """
    from .model import schema_fields
    from .tables import extract_line_items

    header_fields, _items_key, _item_fields = schema_fields(schema)
    items_per_page: list[list[dict[str, Any]]] = []
    carried = None
    for page in pages:
        if not page.has_text:
            items_per_page.append([])
            carried = None
            continue
        items, carried = extract_line_items(page, carried)
        items_per_page.append(items)
    totals = [i["line_total"] for items in items_per_page for i in items if i.get("line_total") is not None]
    line_sum = round(sum(totals), 2) if totals else None
    values, field_conf = extract_header_document(pages, line_sum)
    credit_note = is_credit_note(pages)
    if credit_note:
        _credit_note_signs(values, items_per_page)
    if values:
        # The document type is read from page 1's title (like is_credit_note); it carries the sign of the amounts.
        values[0]["document_type"] = "credit_note" if credit_note else "invoice"
    per_page = list(zip(values, items_per_page, strict=True))
    # The document type is always set (invoice by default), so it says nothing about how well the fields were read.
    scored = [f for f in header_fields if f != "document_type"]
    if not scored:
        return per_page, 0.0
    confidence = round(sum(field_conf.get(f, 0.0) for f in scored) / len(scored), 3)
    return per_page, confidence


_CREDIT_NOTE = re.compile(
    r"\b(credit\s*note|credit\s*memo|gutschrift|avoir|facture d'avoir|creditnota|credit\s*nota|"
    r"nota\s+di\s+credito|nota\s+de\s+cr[ée]dito|nota\s+de\s+abono|abono)\b",
    re.IGNORECASE,
)


def is_credit_note(pages: list[PageText]) -> bool:
    """A credit note by its title: a short line near the top of page 1 that names the document type."""
    if not pages:
        return False
    for line in pages[0].lines[:25]:
        text = line.text.strip()
        m = _CREDIT_NOTE.search(text)
        if m and (m.start() == 0 or len(text.split()) <= 6):
            return True
    return False


def _credit_note_signs(values: list[dict[str, Any]], items_per_page: list[list[dict[str, Any]]]) -> None:
    """Credit notes report positive amounts (EN 16931 / CII type 381: the document type carries the sign).

    Many credit notes print their amounts negative; when the document's total (or subtotal) is negative,
    every amount is negated, so relative signs (a charge on a credit note) are kept.
    """
    merged: dict[str, Any] = {}
    for page_values in values:
        for key, value in page_values.items():
            merged.setdefault(key, value)
    reference = merged.get("total_amount")
    if reference is None:
        reference = merged.get("subtotal")
    if reference is None:
        totals = [i.get("line_total") for items in items_per_page for i in items]
        reference = sum(t for t in totals if t is not None) if totals else None
    if reference is None or reference >= 0:
        return
    for page_values in values:
        for key in MONEY_FIELDS:
            if isinstance(page_values.get(key), int | float):
                page_values[key] = round(-page_values[key], 2) + 0.0
    for items in items_per_page:
        for item in items:
            if isinstance(item.get("line_total"), int | float):
                item["line_total"] = round(-item["line_total"], 2) + 0.0
            for key in ("quantity", "unit_price"):
                if isinstance(item.get(key), int | float) and item[key] < 0:
                    item[key] = -item[key]
