"""Line-item tables from positioned words: header band, column zones, rows anchored on the amount column.

General rules only (no vendor templates):

* The header may span several lines ("Positions- / betrag / ohne USt."): a line with at least two known
  column titles is the core; adjacent digit-free lines close above and below join it, and titles that
  overlap horizontally form one column.  A table needs a description column and a numeric column.
* Words (not phrases) are assigned to columns by horizontal overlap with column zones, so a code in an
  article-number column and a description next to it on the same line are told apart.
* A row is anchored on a line with an amount in the line-total column.  Its description is the text in the
  description column on that line plus wrapped continuation lines below it; when the amount line carries
  no description (the total printed on a line of its own, or codes/amounts under the description), the
  lines since the previous row are used.  A line with quantity and price but no total starts a row that
  the next amount line completes.  A discount line ("abzgl. 10% Rabatt -2,00") under a row reduces that
  row's total (line-level allowance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .textlayer import Line, PageText, Word
from .values import find_amounts, parse_amount, parse_number

NUMERIC = ("quantity", "unit_price", "line_total")

# Whole-title phrases first; then single words; then compound-word suffixes (German, Dutch).
_PHRASES: dict[str, str] = {
    "unit price": "unit_price", "unit cost": "unit_price", "price per unit": "unit_price",
    "prix unitaire": "unit_price", "prix u.": "unit_price", "p.u.": "unit_price", "p.u. ht": "unit_price",
    "precio unitario": "unit_price", "prezzo unitario": "unit_price", "preis/einheit": "unit_price",
    "line total": "line_total", "net amount": "line_total", "total ht": "line_total", "montant ht": "line_total",
    "total price": "line_total", "amount (net)": "line_total", "prix total": "line_total",
}  # fmt: skip
_WORDS: dict[str, str] = {}
for _kind, _words in {
    "line_total": (
        "amount",
        "total",
        "gesamt",
        "gesamtpreis",
        "betrag",
        "summe",
        "montant",
        "bedrag",
        "importe",
        "importo",
        "totaal",
        "totale",
        "entgelt",
        "nettowert",
        "subtotal",
        "net",
        "netto",
        "sum",
        "value",
        "extension",
        "ext.",
        "line",
        "valor",
    ),
    "unit_price": (
        "price",
        "rate",
        "einzelpreis",
        "preis",
        "e-preis",
        "stückpreis",
        "nettopreis",
        "prix",
        "prijs",
        "ep",
        "precio",
        "prezzo",
        "stuksprijs",
        "tarif",
        "unitaire",
        "unitario",
        "einheitspreis",
        "cost",
    ),
    "quantity": (
        "qty",
        "qty.",
        "quantity",
        "menge",
        "anzahl",
        "qté",
        "qte",
        "quantité",
        "aantal",
        "hours",
        "units",
        "stk",
        "cantidad",
        "cant.",
        "quantità",
        "qtà",
        "q.tà",
        "uds",
        "hrs",
        "pcs",
        "stück",
    ),
    "description": (
        "description",
        "item",
        "items",
        "article",
        "product",
        "service",
        "services",
        "details",
        "beschreibung",
        "bezeichnung",
        "artikel",
        "artikelbezeichnung",
        "leistung",
        "leistungen",
        "désignation",
        "designation",
        "omschrijving",
        "produkt",
        "descripción",
        "descripcion",
        "concepto",
        "artículo",
        "descrizione",
        "articolo",
        "prodotto",
        "libellé",
        "produit",
        "positionen",
        "text",
        "leistungsbeschreibung",
        "artikelbeschreibung",
        "particulars",
        "omschr.",
        "beschrijving",
    ),
}.items():
    for _w in _words:
        _WORDS[_w] = _kind
_SUFFIXES = (
    ("line_total", ("gesamtpreis", "betrag", "summe", "nettowert", "bedrag", "entgelt")),
    ("unit_price", ("preis", "prijs")),
    ("quantity", ("menge",)),
    ("description", ("beschreibung", "bezeichnung", "omschrijving")),
)
# Known non-item columns: position numbers, article codes, units, tax rates, discounts.
_OTHER_RE = re.compile(
    r"^(pos\.?|#|nr\.?|no\.?|n°|art[-.]?nr.*|gtin|ean|sku|code|ref\.?|mwst.*|ust\.?.*|vat|tax|tva|btw|iva|%|"
    r"rem\.?|disc\.?|rabatt|unit|einheit|unité|eenheid|unidad|unità|me|vke.*|steuer.*|(\(art\))|kategorie)$"
)
_PRIORITY = ("line_total", "unit_price", "quantity", "description")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def _word_kind(word: str) -> str | None:
    """Kind of one title word; 'other' for known non-item columns; None if unknown."""
    kind = _word_kind_exact(word)
    stripped = word.rstrip(".,;'")  # stray punctuation from OCR ("Nettobetrag."); "Qty." alike
    if kind in (None, "other") and stripped and stripped != word:
        return _word_kind_exact(stripped) or kind
    return kind


def _word_kind_exact(word: str) -> str | None:
    w = word.strip(":").lower()
    if not w:
        return None
    if w in _WORDS:
        return _WORDS[w]
    for kind, suffixes in _SUFFIXES:
        if w.endswith(suffixes):
            return kind
    if _OTHER_RE.match(w):
        return "other"
    for part in re.split(r"[/\-]", w):
        if part in _WORDS:
            return _WORDS[part]
    return None


def title_kind(text: str) -> str:
    """Column kind for a (possibly multi-line) title; the strongest known word wins."""
    low = norm(text).strip(" :")
    if low in _PHRASES:
        return _PHRASES[low]
    kinds = {_word_kind(w) for w in low.split()}
    for kind in _PRIORITY:
        if kind in kinds:
            return kind
    return "other"


@dataclass
class Column:
    kind: str
    x0: float
    x1: float
    texts: list[str] = field(default_factory=list)

    @property
    def xc(self) -> float:
        return (self.x0 + self.x1) / 2


@dataclass
class _Cell:
    x0: float
    x1: float
    text: str


def _title_cells(line: Line) -> list[_Cell]:
    """A header line's titles: segments, split into words where the words name different columns."""
    cells: list[_Cell] = []
    for seg in line.segments:
        text = seg.text
        if norm(text).strip(" :") in _PHRASES or len(seg.words) == 1:
            cells.append(_Cell(seg.x0, seg.x1, text))
            continue
        kinds = [_word_kind(w.text) for w in seg.words]
        known = {k for k in kinds if k is not None}
        if len(known) < 2:
            cells.append(_Cell(seg.x0, seg.x1, text))
            continue
        group: list[Word] = []
        group_kind: str | None = None
        for word, kind in zip(seg.words, kinds, strict=True):
            if group and kind is not None and group_kind is not None and kind != group_kind:
                cells.append(_Cell(group[0].x0, group[-1].x1, " ".join(w.text for w in group)))
                group, group_kind = [], None
            group.append(word)
            group_kind = group_kind or kind
        if group:
            cells.append(_Cell(group[0].x0, group[-1].x1, " ".join(w.text for w in group)))
    return cells


def _known_kinds(line: Line) -> list[str]:
    return [k for k in (title_kind(c.text) for c in _title_cells(line)) if k != "other"]


def _other_table_header(line: Line) -> bool:
    """Titles of a different table inside or under the item table ("Art | Grund | % Grundbetrag Betrag")."""
    if len(line.segments) < 2 or not _is_title_line(line):
        return False
    kinds = [_word_kind(w.text) for w in line.words]
    known = [k for k in kinds if k is not None]
    return len(known) >= 2 and any(k in NUMERIC for k in known)


def _is_title_line(line: Line) -> bool:
    text = line.text
    return not any(ch.isdigit() for ch in text) and all(len(s.words) <= 5 for s in line.segments)


def detect_header(lines: list[Line], index: int) -> tuple[list[Column], int] | None:
    """Columns if a table header band has its core on ``lines[index]``, and the index of its last line."""
    core = lines[index]
    if not _is_title_line(core):
        return None
    kinds = _known_kinds(core)
    if len(set(kinds)) < 2 or not set(kinds) & set(NUMERIC):
        return None
    height = max(core.bottom - core.top, 1.0)
    band = [core]
    last = index
    j = index - 1
    while j >= 0 and len(band) < 5:  # titles wrapped above the core line
        above = lines[j]
        if band[0].top - above.top > 1.7 * height or not _is_title_line(above):
            break
        band.insert(0, above)
        j -= 1
    j = index + 1
    while j < len(lines) and len(band) < 7:  # and below it
        below = lines[j]
        if below.top - lines[j - 1].top > 1.7 * height or not _is_title_line(below):
            break
        band.append(below)
        last = j
        j += 1
    cells = [c for line in band for c in _title_cells(line)]
    groups: list[Column] = []
    for cell in sorted(cells, key=lambda c: c.x0):
        for col in groups:
            if min(cell.x1, col.x1) - max(cell.x0, col.x0) > 0:
                col.x0, col.x1 = min(col.x0, cell.x0), max(col.x1, cell.x1)
                col.texts.append(cell.text)
                break
        else:
            groups.append(Column("other", cell.x0, cell.x1, [cell.text]))
    # Titles are gathered top to bottom per column for reading ("Positions betrag ohne USt.").
    for col in groups:
        col.kind = title_kind(" ".join(col.texts))
    groups.sort(key=lambda c: c.x0)
    kinds_all = [c.kind for c in groups]
    if "description" not in kinds_all or not set(kinds_all) & set(NUMERIC) or len(groups) < 3:
        return None
    if "line_total" not in kinds_all:  # the amount column is the rightmost numeric one whatever its title
        numeric = [c for c in groups if c.kind in NUMERIC]
        numeric[-1].kind = "line_total"
    else:  # several "total"-like titles: only the rightmost is the line total
        totals = [c for c in groups if c.kind == "line_total"]
        for col in totals[:-1]:
            if col.x1 < totals[-1].x0:
                col.kind = "other"
    return groups, last


def _zones(columns: list[Column], page_width: float) -> list[tuple[float, float]]:
    """Horizontal zone per column: from the gap midpoint to its left neighbour to the one on its right."""
    zones: list[tuple[float, float]] = []
    for i, col in enumerate(columns):
        left = 0.0 if i == 0 else (columns[i - 1].x1 + col.x0) / 2
        right = page_width + 50 if i == len(columns) - 1 else (col.x1 + columns[i + 1].x0) / 2
        if col.kind == "description" and i > 0 and columns[i - 1].kind in NUMERIC:
            left = columns[i - 1].x1 + 2
        zones.append((left, right))
    return zones


def _assign_words(line: Line, columns: list[Column], zones: list[tuple[float, float]]) -> list[str]:
    """Column kind per word of the line (max overlap with the zones; ties to the nearest column)."""
    kinds: list[str] = []
    for word in line.words:
        best, best_overlap = -1, 0.0
        for k, (z0, z1) in enumerate(zones):
            overlap = min(word.x1, z1) - max(word.x0, z0)
            if overlap > best_overlap:
                best, best_overlap = k, overlap
        if best < 0:
            best = min(range(len(columns)), key=lambda k: abs(columns[k].xc - word.xc))
        # Text that starts in the gap left of the description column and runs into it is description
        # ("TGA" under a wide article-number column), not a code sticking out of its column.
        nxt = best + 1
        if (
            nxt < len(columns)
            and columns[best].kind == "other"
            and columns[nxt].kind == "description"
            and word.x1 > zones[nxt][0] + 2
            and word.x1 > columns[best].x1 + 2
        ):
            best = nxt
        kinds.append(columns[best].kind)
    # A word without digits that continues description text (normal word spacing) is description,
    # even where it runs into a numeric column's zone ("Kunstrasen grün 3m breit").
    # The same for a number that sits clear of its column's title ("Typkl. 18"): numbers are printed under
    # their titles, description text runs on from the left.
    by_kind = {c.kind: c for c in columns}
    for i in range(1, len(kinds)):
        word, prev = line.words[i], line.words[i - 1]
        if kinds[i] not in NUMERIC or kinds[i - 1] != "description":
            continue
        if word.x0 - prev.x1 >= 0.6 * max(word.height, 1.0):
            continue
        col = by_kind[kinds[i]]
        if not any(ch.isdigit() for ch in word.text) or word.x1 < col.x0 - 2:
            kinds[i] = "description"
    return kinds


_MONEY_RE = re.compile(r"\d[.,]\d{2}(?!\d)")
_DISCOUNT_RE = re.compile(
    r"\b(rabatt|nachlass|abzgl|abzüglich|discount|remise|réduction|rebate|korting|sconto|descuento|bonus)",
    re.IGNORECASE,
)
_DETAIL_RE = re.compile(r":\s*-?\d[\d.,]*\s*(?:€|EUR|%)?\s*$")
_CODE_RE = re.compile(r"^[\d\W]+$|^[A-Z0-9\-./]{2,14}$")


@dataclass
class _RowLine:
    line: Line
    desc: str
    cells: dict[str, str]
    total: float | None
    other_text: str

    @property
    def has_desc(self) -> bool:
        return sum(ch.isalpha() for ch in self.desc) >= 2

    @property
    def numeric_content(self) -> bool:
        return bool(self.cells.get("quantity") or self.cells.get("unit_price"))


def _read_line(line: Line, columns: list[Column], zones: list[tuple[float, float]]) -> _RowLine:
    kinds = _assign_words(line, columns, zones)
    cells: dict[str, list[str]] = {}
    for word, kind in zip(line.words, kinds, strict=True):
        cells.setdefault(kind, []).append(word.text)
    joined = {k: " ".join(v) for k, v in cells.items()}
    total_text = joined.get("line_total", "")
    total = None
    if _MONEY_RE.search(total_text):
        total = _price(total_text)
    return _RowLine(line, joined.get("description", "").strip(), joined, total, joined.get("other", ""))


def _quantity(text: str) -> float | None:
    m = re.search(r"[-−]?\d[\d.,]*", text or "")
    return parse_number(m.group(0)) if m else None


def _price(text: str) -> float | None:
    """The unit price: the last token that parses as an amount (units and codes may precede it)."""
    amounts = find_amounts(text or "")
    if amounts:
        return amounts[-1]
    for token in reversed((text or "").split()):  # prices with 3-4 decimals ("67,2244")
        value = parse_amount(token)
        if value is not None:
            return value
    return None


def _is_row_start(rl: _RowLine) -> bool:
    """Quantity and price printed but the total is not (it follows on the next line)."""
    if rl.total is not None or ":" in rl.desc:
        return False
    qty = _quantity(rl.cells.get("quantity", ""))
    price = _price(rl.cells.get("unit_price", ""))
    return qty is not None and price is not None


def _is_detail(rl: _RowLine) -> bool:
    """A sub-line of a row (gross price, packaging, discounts), not part of the description."""
    return rl.numeric_content or bool(_DETAIL_RE.search(rl.desc))


@dataclass
class _Row:
    lines: list[_RowLine]
    total: float
    desc_parts: list[str]
    open: bool = True  # still collecting wrapped description lines

    def item(self) -> dict[str, Any]:
        qty = price = None
        for rl in self.lines:
            if qty is None:
                qty = _quantity(rl.cells.get("quantity", ""))
            if price is None:
                price = _price(rl.cells.get("unit_price", ""))
        text = ""
        for part in (p.strip() for p in self.desc_parts):
            if part:  # a hyphen at the end of a line joins the word it split ("Beamer-" + "Deckenhalterung")
                text = f"{text}{part}" if text.endswith("-") and not text.endswith(" -") else f"{text} {part}"
        return {
            "description": text.strip() or None,
            "quantity": qty,
            "unit_price": price,
            "line_total": self.total,
        }


def _ends_table(line: Line, rl: _RowLine, match_label: Any, money_fields: set[str]) -> bool:
    """Totals or a summary block: a money label with no quantity/price on the line, or a section title."""
    if _TABLE_END.search(line.text) and rl.total is None:
        return True
    for seg in line.segments:
        hit = match_label(seg.text)
        if hit is not None and hit[0] in money_fields and not rl.numeric_content:
            return True
    return False


_TABLE_END = re.compile(
    r"aufschlüsselung|breakdown|récapitulatif|belegsummen|summary|riepilogo|resumen|zahlungsbedingungen|"
    r"payment terms|conditions de paiement|betalingsvoorwaarden|zahlungsinformationen|payment details",
    re.IGNORECASE,
)


def extract_line_items(
    page: PageText, carried: list[Column] | None = None
) -> tuple[list[dict[str, Any]], list[Column] | None]:
    """Rows of the line-item table(s) on this page, and the columns to carry to the next page."""
    from .fields import TOTAL_LABEL_FIELDS, match_label

    lines = page.lines
    columns = carried
    zones = _zones(columns, page.width) if columns else []
    rows: list[_Row] = []
    table_rows: list[_Row] = []
    pending: list[_RowLine] = []
    prev_line: Line | None = None
    desc_above = False  # this table prints descriptions above the amount line
    first_amount = True
    i = 0

    def close() -> None:
        nonlocal table_rows, pending
        if table_rows and not desc_above:
            _continue(table_rows[-1], pending)
        rows.extend(table_rows)
        table_rows, pending = [], []

    while i < len(lines):
        line = lines[i]
        header = detect_header(lines, i)
        if header is not None:
            close()
            columns, last = header
            zones = _zones(columns, page.width)
            desc_above, first_amount, prev_line = False, True, lines[last]
            i = last + 1
            continue
        i += 1
        if columns is None:
            continue
        rl = _read_line(line, columns, zones)
        if _ends_table(line, rl, match_label, TOTAL_LABEL_FIELDS) or (
            _other_table_header(line)
        ):  # totals, a summary block, or the header of another kind of table
            close()
            columns = None
            continue
        height = max(line.bottom - line.top, 1.0)
        gap = line.top - prev_line.bottom if prev_line is not None else 0.0
        prev_line = line
        if rl.total is None:
            if gap > 2.0 * height:  # a far-away block is not a wrapped description
                if table_rows and not desc_above:
                    _continue(table_rows[-1], pending)
                    table_rows[-1].open = False
                pending = []
            if len(pending) < 40:
                pending.append(rl)
            continue
        # An amount line.
        current = table_rows[-1] if table_rows else None
        if current is not None and rl.total < 0 and not rl.has_desc and _DISCOUNT_RE.search(line.text):
            current.total = round(current.total + rl.total, 2)
            continue
        if first_amount:
            clean = [p for p in pending if p.has_desc and not _is_detail(p) and not p.other_text.strip()]
            own = rl.desc
            desc_above = bool(clean) and (not own or bool(_CODE_RE.match(own))) and not rl.numeric_content
            first_amount = False
        starts = [k for k, p in enumerate(pending) if _is_row_start(p)]
        if starts:
            k = starts[-1]
            if current is not None:
                _continue(current, pending[:k])
            parts = [p.desc for p in pending[k:] if not (_is_detail(p) and p is not pending[k])]
            row = _Row([*pending[k:], rl], rl.total, [*parts, rl.desc])
        elif desc_above:
            parts = [p.desc for p in pending if p.has_desc and not _is_detail(p)]
            row = _Row([rl], rl.total, [*parts, rl.desc] if not _CODE_RE.match(rl.desc or "-") else parts)
            row.open = False
        elif rl.has_desc or rl.desc:
            if current is not None:
                _continue(current, pending)
            row = _Row([rl], rl.total, [rl.desc])
        else:
            parts = [p.desc for p in pending if p.has_desc and not _is_detail(p)]
            if not parts:
                pending = []
                continue
            row = _Row([rl], rl.total, parts)
        pending = []
        table_rows.append(row)
    if columns is not None:  # the table runs on: keep the columns for the next page
        if table_rows and not desc_above:
            _continue(table_rows[-1], pending)
        rows.extend(table_rows)
        carry = columns
    else:
        close()
        carry = None
    items = []
    for row in rows:
        item = row.item()
        if item["description"] and sum(ch.isalpha() for ch in item["description"]) >= 2:
            items.append(item)
    return items, carry


def _continue(row: _Row, pending: list[_RowLine]) -> None:
    """Wrapped description lines under a row, up to the first detail line."""
    for rl in pending:
        if not row.open:
            return
        if _is_detail(rl):
            row.open = False
            return
        if rl.desc:
            row.desc_parts.append(rl.desc)
        if len(row.desc_parts) > 6:
            row.open = False
