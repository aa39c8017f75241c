"""Synthetic supplier invoices with exact ground truth, for tests, demos and extractor regression checks.

Each invoice is drawn with fpdf2 core fonts (real text layer, cp1252 so umlauts and € encode) in one of
several layouts and languages; the returned ground truth is what is printed, in the schema's shape.

    python -m invoiceflow.samples include/samples     # regenerate the committed synthetic samples
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fpdf import FPDF

LAYOUTS = ("classic", "modern", "compact")
# Further layouts with real-world patterns the three above lack: descriptions wrapped over two lines, an
# article code printed on its own line under the description, totals in a summary table whose rows carry
# no labels (titles above the amounts), and credit notes printing negative amounts.
EXTRA_LAYOUTS = ("ledger",)
ALL_LAYOUTS = LAYOUTS + EXTRA_LAYOUTS
CREDIT_TITLES = {"en": "CREDIT NOTE", "de": "GUTSCHRIFT", "fr": "AVOIR", "es": "NOTA DE ABONO",
                 "nl": "CREDITNOTA", "it": "NOTA DI CREDITO"}  # fmt: skip
LANGS = ("en", "de", "fr", "es", "nl", "it")
DAY_FIRST = {"de", "fr", "es", "nl", "it"}  # languages printing 1.234,56 and day-first dates

VENDORS = {
    "en": [
        ("Northwind Traders Ltd", "12 Harbour Road", "Bristol BS1 4DJ, United Kingdom"),
        ("Acme Office Supply Inc.", "500 Market Street", "San Francisco, CA 94105, USA"),
        ("Bluebird Logistics LLC", "88 Lakeshore Drive", "Chicago, IL 60611, USA"),
        ("Greenfield Catering Co.", "4 Mill Lane", "Leeds LS1 5AB, United Kingdom"),
        ("Summit IT Services Corp.", "1200 Pine Avenue", "Seattle, WA 98101, USA"),
    ],
    "de": [
        ("Müller & Söhne Bürobedarf GmbH", "Königstraße 12", "70173 Stuttgart"),
        ("Weißbach Elektrotechnik KG", "Am Großmarkt 7", "20457 Hamburg"),
        ("Schröder Logistik AG", "Hafenstraße 3", "28217 Bremen"),
        ("Bäckerei Köhler e.K.", "Lindenallee 45", "50668 Köln"),
        ("Grün & Partner IT-Dienste GmbH", "Prinzregentenstraße 88", "81675 München"),
    ],
}
VENDORS.update(
    {
        "fr": [("Papeterie Dupont SARL", "14 rue de la Paix", "75002 Paris"),
               ("Boulangerie Léger SAS", "3 place du Marché", "69002 Lyon")],
        "es": [("Suministros Ibéricos S.L.", "Calle Mayor 21", "28013 Madrid"),
               ("Distribuciones Peña S.A.", "Avenida del Puerto 8", "46021 Valencia")],
        "nl": [("Van der Berg Kantoorartikelen B.V.", "Keizersgracht 101", "1015 CJ Amsterdam"),
               ("De Vries Logistiek B.V.", "Havenstraat 12", "3011 AB Rotterdam")],
        "it": [("Forniture Rossi S.r.l.", "Via Roma 45", "20121 Milano"),
               ("Bianchi Servizi S.p.A.", "Corso Italia 7", "50123 Firenze")],
    }
)  # fmt: skip
CUSTOMERS = {
    "en": [("Contoso Manufacturing", "77 Industrial Way", "Austin, TX 78701")],
    "de": [("Beispiel Handels GmbH", "Musterweg 5", "60311 Frankfurt am Main")],
    "fr": [("Client Exemple SA", "8 avenue Foch", "33000 Bordeaux")],
    "es": [("Cliente Ejemplo S.A.", "Calle Luna 3", "41001 Sevilla")],
    "nl": [("Voorbeeld Klant B.V.", "Dorpsstraat 1", "3511 AA Utrecht")],
    "it": [("Cliente Esempio S.r.l.", "Via Dante 2", "10121 Torino")],
}
ITEMS = {
    "en": [
        "Ergonomic office chair", "Printer paper A4, box of 5", "USB-C docking station", "Consulting hours",
        "Wireless keyboard and mouse", "Standing desk frame", "Toner cartridge, black", "Monitor arm, dual",
        "Cable management kit", "On-site installation", "Laptop sleeve 14 inch", "Whiteboard markers (12)",
        "Conference phone", "Software support, monthly", "Packing tape, 6 rolls", "Coffee beans 1 kg",
    ],
    "de": [
        "Bürostuhl ergonomisch", "Druckerpapier A4, Karton", "Schreibtischlampe LED, weiß", "Beratungsstunden",
        "Größenverstellbarer Monitorarm", "Aktenvernichter Stufe P-4", "Tonerkartusche schwarz",
        "Kabelkanal 2 m", "Montage vor Ort", "Whiteboard-Marker (12 Stück)", "Konferenztelefon",
        "Wartungsvertrag, monatlich", "Packband, 6 Rollen", "Kaffeebohnen 1 kg", "Fußstütze verstellbar",
        "Ordner breit, blau",
    ],
}  # fmt: skip
ITEMS.update(
    {
        "fr": ["Chaise de bureau ergonomique", "Papier A4, carton de 5", "Station d'accueil USB-C", "Heures de conseil",
               "Cartouche de toner noire", "Bras de moniteur double", "Installation sur site", "Café en grains 1 kg"],
        "es": ["Silla de oficina ergonómica", "Papel A4, caja de 5", "Estación de acoplamiento USB-C",
               "Horas de consultoría", "Cartucho de tóner negro", "Instalación in situ", "Café en grano 1 kg",
               "Teclado y ratón inalámbricos"],
        "nl": ["Ergonomische bureaustoel", "Printpapier A4, doos van 5", "USB-C dockingstation", "Adviesuren",
               "Tonercartridge zwart", "Monitorarm dubbel", "Installatie op locatie", "Koffiebonen 1 kg"],
        "it": ["Sedia da ufficio ergonomica", "Carta A4, scatola da 5", "Docking station USB-C", "Ore di consulenza",
               "Cartuccia toner nero", "Braccio monitor doppio", "Installazione in sede", "Caffè in grani 1 kg"],
    }
)  # fmt: skip

TEXT = {
    "en": {
        "title": "INVOICE", "number": "Invoice No.", "number_long": "Invoice Number", "date": "Invoice Date",
        "date_short": "Date", "due": "Due Date", "po": "PO Number", "po_short": "PO", "from": "From:",
        "bill_to": "Bill to:", "desc": "Description", "item": "Item", "qty": "Qty", "unit": "Unit",
        "price": "Unit Price", "price_short": "Price", "amount": "Amount", "total_col": "Total",
        "subtotal": "Subtotal", "net": "Net", "tax": "Tax", "vat": "VAT", "total": "Total Due",
        "total_short": "Total", "page": "Page {n} of {m}", "terms": "Payment terms: 30 days net.",
        "thanks": "Thank you for your business.", "unit_pcs": "pcs", "unit_h": "h",
    },
    "de": {
        "title": "RECHNUNG", "number": "Rechnungsnummer", "number_long": "Rechnungsnummer",
        "date": "Rechnungsdatum", "date_short": "Datum", "due": "Fällig am", "po": "Bestellnummer",
        "po_short": "Bestellnummer", "from": "Lieferant:", "bill_to": "Rechnungsempfänger:",
        "desc": "Bezeichnung", "item": "Artikel", "qty": "Menge", "unit": "Einheit", "price": "Einzelpreis",
        "price_short": "Preis", "amount": "Gesamt", "total_col": "Betrag", "subtotal": "Nettobetrag",
        "net": "Netto", "tax": "MwSt.", "vat": "USt.", "total": "Gesamtbetrag", "total_short": "Gesamtbetrag",
        "page": "Seite {n} von {m}", "terms": "Zahlbar innerhalb von 30 Tagen ohne Abzug.",
        "thanks": "Vielen Dank für Ihren Auftrag.", "unit_pcs": "Stk", "unit_h": "Std",
    },
}  # fmt: skip

TEXT["fr"] = {
    **TEXT["en"],
    **{
        "title": "FACTURE",
        "number": "N° de facture",
        "number_long": "Numéro de facture",
        "date": "Date de facture",
        "date_short": "Date",
        "due": "Date d'échéance",
        "po": "Bon de commande",
        "po_short": "Commande",
        "from": "Fournisseur :",
        "bill_to": "Client :",
        "desc": "Désignation",
        "item": "Article",
        "qty": "Quantité",
        "unit": "Unité",
        "price": "Prix unitaire",
        "price_short": "Prix",
        "amount": "Montant",
        "total_col": "Montant",
        "subtotal": "Total HT",
        "net": "Total HT",
        "tax": "TVA",
        "vat": "TVA",
        "total": "Total TTC",
        "total_short": "Total TTC",
        "page": "Page {n} sur {m}",
        "terms": "Paiement à 30 jours.",
        "thanks": "Merci de votre confiance.",
        "unit_pcs": "pce",
        "unit_h": "h",
    },
}
TEXT["es"] = {
    **TEXT["en"],
    **{
        "title": "FACTURA",
        "number": "Nº factura",
        "number_long": "Número de factura",
        "date": "Fecha de factura",
        "date_short": "Fecha",
        "due": "Vencimiento",
        "po": "Nº pedido",
        "po_short": "Pedido",
        "from": "Proveedor:",
        "bill_to": "Cliente:",
        "desc": "Descripción",
        "item": "Artículo",
        "qty": "Cantidad",
        "unit": "Unidad",
        "price": "Precio unitario",
        "price_short": "Precio",
        "amount": "Importe",
        "total_col": "Importe",
        "subtotal": "Base imponible",
        "net": "Base imponible",
        "tax": "IVA",
        "vat": "IVA",
        "total": "Total factura",
        "total_short": "Total factura",
        "page": "Página {n} de {m}",
        "terms": "Pago a 30 días.",
        "thanks": "Gracias por su confianza.",
        "unit_pcs": "ud",
        "unit_h": "h",
    },
}
TEXT["nl"] = {
    **TEXT["en"],
    **{
        "title": "FACTUUR",
        "number": "Factuurnummer",
        "number_long": "Factuurnummer",
        "date": "Factuurdatum",
        "date_short": "Datum",
        "due": "Vervaldatum",
        "po": "Bestelnummer",
        "po_short": "Bestelnummer",
        "from": "Leverancier:",
        "bill_to": "Klant:",
        "desc": "Omschrijving",
        "item": "Artikel",
        "qty": "Aantal",
        "unit": "Eenheid",
        "price": "Prijs",
        "price_short": "Prijs",
        "amount": "Bedrag",
        "total_col": "Bedrag",
        "subtotal": "Subtotaal",
        "net": "Subtotaal",
        "tax": "BTW",
        "vat": "BTW",
        "total": "Totaal",
        "total_short": "Totaal",
        "page": "Pagina {n} van {m}",
        "terms": "Betaling binnen 30 dagen.",
        "thanks": "Bedankt voor uw bestelling.",
        "unit_pcs": "st",
        "unit_h": "u",
    },
}
TEXT["it"] = {**TEXT["en"], **{
    "title": "FATTURA", "number": "Fattura n.", "number_long": "Numero fattura", "date": "Data fattura",
    "date_short": "Data", "due": "Scadenza", "po": "Numero ordine", "po_short": "Ordine", "from": "Fornitore:",
    "bill_to": "Cliente:", "desc": "Descrizione", "item": "Articolo", "qty": "Quantità", "unit": "Unità",
    "price": "Prezzo unitario", "price_short": "Prezzo", "amount": "Importo", "total_col": "Importo",
    "subtotal": "Imponibile", "net": "Imponibile", "tax": "IVA", "vat": "IVA", "total": "Totale fattura",
    "total_short": "Totale fattura", "page": "Pagina {n} di {m}", "terms": "Pagamento a 30 giorni.",
    "thanks": "Grazie per la fiducia.", "unit_pcs": "pz", "unit_h": "h"}}  # fmt: skip

MONTHS_EN = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip

_FIXED_CREATION = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class _Invoice:
    """Everything printed on one invoice (amounts already rounded to cents)."""

    lang: str
    layout: str
    number: str
    vendor: tuple[str, str, str]
    customer: tuple[str, str, str]
    issued: date
    due: date
    currency: str
    symbol: str
    po: str | None
    items: list[dict[str, Any]]
    tax_rate: float
    subtotal: float
    tax: float
    total: float


def _money(value: float, lang: str) -> str:
    text = f"{value:,.2f}"
    if lang == "fr":
        return text.replace(",", " ").replace(".", ",")
    if lang in DAY_FIRST:
        text = text.replace(",", "_").replace(".", ",").replace("_", ".")
    return text


def _qty(value: float, lang: str) -> str:
    text = f"{value:g}"
    return text.replace(".", ",") if lang in DAY_FIRST else text


def _date(value: date, lang: str, layout: str) -> str:
    if lang == "de":
        return value.isoformat() if layout == "compact" else value.strftime("%d.%m.%Y")
    if lang in DAY_FIRST:
        return value.strftime("%d/%m/%Y") if layout != "compact" else value.strftime("%d-%m-%Y")
    if layout == "classic":
        return f"{MONTHS_EN[value.month - 1]} {value.day}, {value.year}"
    if layout == "modern":
        return value.strftime("%m/%d/%Y")
    return value.isoformat()


def _build(seed: int, layout: str, lang: str, n_items: int | None, mismatch: bool) -> _Invoice:
    rng = random.Random(f"{seed}:{layout}:{lang}")
    count = n_items if n_items is not None else rng.randint(3, 7)
    names = ITEMS[lang]
    items: list[dict[str, Any]] = []
    for i in range(count):
        name = names[i % len(names)] if count > len(names) else rng.choice(names)
        if count > len(names) and i >= len(names):
            name = f"{name} ({i // len(names) + 1})"
        hourly = "hour" in name.lower() or "stunden" in name.lower() or "Montage" in name
        quantity = rng.choice([0.5, 1.5, 2.5, 4, 8]) if hourly else float(rng.randint(1, 25))
        unit_price = round(rng.uniform(2, 450), 2)
        items.append(
            {
                "description": name,
                "quantity": float(quantity),
                "unit_price": unit_price,
                "line_total": round(quantity * unit_price, 2),
                "_unit": TEXT[lang]["unit_h"] if hourly else TEXT[lang]["unit_pcs"],
            }
        )
    if count <= len(names):  # no duplicate descriptions within one invoice
        seen: set[str] = set()
        for item in items:
            while item["description"] in seen:
                item["description"] = rng.choice(names)
            seen.add(item["description"])
    subtotal = round(sum(item["line_total"] for item in items), 2)
    if mismatch:  # printed subtotal disagrees with the printed lines: validation must flag it
        subtotal = round(subtotal + rng.choice([10.0, 25.5, 100.0]), 2)
    if lang == "de":
        currency, symbol, tax_rate = "EUR", "€", rng.choice([0.19, 0.07])
    elif lang in DAY_FIRST:
        currency, symbol = "EUR", "€"
        tax_rate = {"fr": 0.2, "es": 0.21, "nl": 0.21, "it": 0.22}[lang]
    else:
        currency, symbol = rng.choice([("USD", "$"), ("GBP", "£")])
        tax_rate = 0.2 if currency == "GBP" else rng.choice([0.0725, 0.0825, 0.06])
    tax = round(subtotal * tax_rate, 2)
    issued = date(2024, 1, 1) + timedelta(days=rng.randint(0, 365))
    prefix = {"classic": "INV", "modern": "IN", "compact": "RE" if lang == "de" else "CI", "ledger": "LG"}[
        layout
    ]
    po = rng.choice([None, f"PO-{rng.randint(10000, 99999)}", f"45000{rng.randint(10000, 99999)}"])
    return _Invoice(
        lang=lang,
        layout=layout,
        number=f"{prefix}-{issued.year}-{rng.randint(1, 9999):04d}",
        vendor=rng.choice(VENDORS[lang]),
        customer=CUSTOMERS[lang][0],
        issued=issued,
        due=issued + timedelta(days=rng.choice([14, 30, 45])),
        currency=currency,
        symbol=symbol,
        po=po,
        items=items,
        tax_rate=tax_rate,
        subtotal=subtotal,
        tax=tax,
        total=round(subtotal + tax, 2),
    )


class _Doc(FPDF):
    def __init__(self) -> None:
        super().__init__(format="A4", unit="mm")
        self.core_fonts_encoding = "windows-1252"  # latin-1 plus €, still a core font
        self.set_auto_page_break(False)
        self.set_creation_date(_FIXED_CREATION)
        self.set_margins(15, 15, 15)

    def text_at(
        self,
        x: float,
        y: float,
        w: float,
        text: str,
        *,
        size: float = 10,
        bold: bool = False,
        align: str = "L",
    ) -> None:
        self.set_font("helvetica", "B" if bold else "", size)
        self.set_xy(x, y)
        self.cell(w, size * 0.45, text, align=align)


def _tax_label(inv: _Invoice, short: bool = False) -> str:
    t = TEXT[inv.lang]
    rate = f"{inv.tax_rate * 100:g}".replace(".", "," if inv.lang in DAY_FIRST else ".")
    label = t["vat"] if (short or inv.currency == "GBP") else t["tax"]
    return f"{label} {rate}%"


def _draw_table(
    pdf: _Doc,
    inv: _Invoice,
    y: float,
    cols: list[tuple[str, float, float, str]],
    size: float,
    row_h: float,
    bottom: float,
) -> float:
    """Draw header + rows; start a new page with a repeated header when the page is full."""

    def header(y0: float) -> float:
        for title, x, w, align in cols:
            pdf.text_at(x, y0, w, title, size=size, bold=True, align=align)
        pdf.line(15, y0 + row_h - 0.5, 195, y0 + row_h - 0.5)
        return y0 + row_h + 1

    y = header(y)
    for pos, item in enumerate(inv.items, start=1):
        if y + row_h > bottom:
            pdf.add_page()
            y = header(25)
        values = {
            "pos": str(pos),
            "desc": item["description"],
            "qty": _qty(item["quantity"], inv.lang),
            "unit": item["_unit"],
            "price": _money(item["unit_price"], inv.lang),
            "amount": _money(item["line_total"], inv.lang),
        }
        for (_title, x, w, align), key in zip(cols, _table_keys(inv.layout), strict=True):
            pdf.text_at(x, y, w, values[key], size=size, align=align)
        y += row_h
    return y


def _table_keys(layout: str) -> list[str]:
    if layout == "compact":
        return ["pos", "desc", "qty", "unit", "price", "amount"]
    return ["desc", "qty", "price", "amount"]


def _totals(
    pdf: _Doc, inv: _Invoice, y: float, labels: list[str], size: float, x_label: float, with_symbol: bool
) -> float:
    values = [inv.subtotal, inv.tax, inv.total]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        text = _money(value, inv.lang)
        if with_symbol:
            text = f"{inv.symbol}{text}" if inv.lang == "en" else f"{text} {inv.symbol}"
        else:
            text = f"{text} {inv.currency}"
        bold = i == 2
        pdf.text_at(x_label, y, 40, label, size=size, bold=bold)
        pdf.text_at(150, y, 45, text, size=size, bold=bold, align="R")
        y += size * 0.6
    return y


def _render_classic(pdf: _Doc, inv: _Invoice) -> None:
    t = TEXT[inv.lang]
    pdf.add_page()
    pdf.text_at(15, 15, 110, inv.vendor[0], size=15, bold=True)
    pdf.text_at(15, 23, 100, inv.vendor[1], size=9)
    pdf.text_at(15, 28, 100, inv.vendor[2], size=9)
    pdf.text_at(130, 15, 65, t["title"], size=18, bold=True, align="R")
    meta = [
        (t["number"] + ":", inv.number),
        (t["date"] + ":", _date(inv.issued, inv.lang, "classic")),
        (t["due"] + ":", _date(inv.due, inv.lang, "classic")),
    ]
    if inv.po:
        meta.append((t["po"] + ":", inv.po))
    y = 40
    for label, value in meta:
        pdf.text_at(115, y, 38, label, size=9, bold=True)
        pdf.text_at(155, y, 40, value, size=9, align="R")
        y += 5.5
    pdf.text_at(15, 40, 80, t["bill_to"], size=9, bold=True)
    for i, line in enumerate(inv.customer):
        pdf.text_at(15, 45.5 + 5 * i, 80, line, size=9)
    cols = [
        (t["desc"], 15, 95, "L"),
        (t["qty"], 110, 20, "R"),
        (t["price"], 130, 30, "R"),
        (t["amount"], 160, 35, "R"),
    ]
    y = _draw_table(pdf, inv, 75, cols, 9.5, 6.5, 262)
    if y + 30 > 275:
        pdf.add_page()
        y = 25
    y = _totals(pdf, inv, y + 6, [t["subtotal"], _tax_label(inv), t["total"]], 10, 120, with_symbol=True)
    pdf.text_at(15, y + 8, 180, t["terms"], size=8)
    pdf.text_at(15, y + 12, 180, t["thanks"], size=8)


def _render_modern(pdf: _Doc, inv: _Invoice) -> None:
    t = TEXT[inv.lang]
    pdf.add_page()
    pdf.text_at(15, 15, 100, t["title"].title(), size=24, bold=True)
    pdf.text_at(15, 32, 80, t["from"], size=8, bold=True)
    pdf.text_at(110, 32, 80, t["bill_to"], size=8, bold=True)
    for i, line in enumerate(inv.vendor):
        pdf.text_at(15, 37 + 5 * i, 90, line, size=10 if i == 0 else 9, bold=i == 0)
    for i, line in enumerate(inv.customer):
        pdf.text_at(110, 37 + 5 * i, 85, line, size=10 if i == 0 else 9, bold=i == 0)
    labels = [t["number_long"], t["date"], t["due"]] + ([t["po"]] if inv.po else [])
    values = [inv.number, _date(inv.issued, inv.lang, "modern"), _date(inv.due, inv.lang, "modern")]
    values += [inv.po] if inv.po else []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        pdf.text_at(15 + 45 * i, 60, 43, label, size=8, bold=True)
        pdf.text_at(15 + 45 * i, 65, 43, value, size=10)
    cols = [
        (t["desc"], 15, 100, "L"),
        (t["qty"], 115, 20, "R"),
        (t["price"], 135, 28, "R"),
        (t["amount"], 163, 32, "R"),
    ]
    y = _draw_table(pdf, inv, 80, cols, 9.5, 7, 262)
    if y + 30 > 275:
        pdf.add_page()
        y = 25
    labels = [t["subtotal"], _tax_label(inv), t["total_short"]]
    y = _totals(pdf, inv, y + 6, labels, 10, 125, with_symbol=inv.lang == "en")
    pdf.text_at(15, y + 8, 180, t["terms"], size=8)


def _render_compact(pdf: _Doc, inv: _Invoice) -> None:
    t = TEXT[inv.lang]
    pdf.add_page()
    pdf.text_at(15, 12, 90, inv.vendor[0], size=11, bold=True)
    pdf.text_at(110, 12, 85, f"{inv.vendor[1]}, {inv.vendor[2]}", size=7, align="R")
    pdf.text_at(15, 20, 60, t["title"], size=12, bold=True)
    pairs = [
        f"{t['number']} {inv.number}",
        f"{t['date_short']} {_date(inv.issued, inv.lang, 'compact')}",
        f"{t['due']} {_date(inv.due, inv.lang, 'compact')}",
    ]
    if inv.po:
        pairs.append(f"{t['po_short']} {inv.po}")
    x = 15.0
    for text in pairs:
        pdf.text_at(x, 28, 60, text, size=8)
        pdf.set_font("helvetica", "", 8)
        x += pdf.get_string_width(text) + 10
    pdf.text_at(15, 34, 180, f"{t['bill_to']} {', '.join(inv.customer)}", size=7)
    cols = [
        ("#", 15, 8, "R"),
        (t["item"], 26, 84, "L"),
        (t["qty"], 110, 16, "R"),
        (t["unit"], 128, 14, "L"),
        (t["price_short"], 142, 25, "R"),
        (t["total_col"], 167, 28, "R"),
    ]
    y = _draw_table(pdf, inv, 42, cols, 8, 4.8, 270)
    if y + 20 > 280:
        pdf.add_page()
        y = 25
    labels = [t["net"], _tax_label(inv, short=True), t["total_short"]]
    _totals(pdf, inv, y + 4, labels, 8.5, 130, with_symbol=False)


def _render_ledger(pdf: _Doc, inv: _Invoice, credit: bool) -> None:
    t = TEXT[inv.lang]
    sign = -1.0 if credit else 1.0
    pdf.add_page()
    pdf.text_at(15, 15, 120, inv.vendor[0], size=13, bold=True)
    pdf.text_at(15, 21, 120, f"{inv.vendor[1]} - {inv.vendor[2]}", size=8)
    pdf.text_at(15, 32, 120, CREDIT_TITLES[inv.lang] if credit else t["title"], size=14, bold=True)
    meta = [(t["number_long"], inv.number), (t["date"], _date(inv.issued, inv.lang, "ledger")),
            (t["due"], _date(inv.due, inv.lang, "ledger"))] + ([(t["po"], inv.po)] if inv.po else [])  # fmt: skip
    for i, (label, value) in enumerate(meta):
        pdf.text_at(120, 32 + 5 * i, 40, label, size=8, bold=True)
        pdf.text_at(160, 32 + 5 * i, 35, value, size=8, align="R")
    pdf.text_at(15, 42, 80, t["bill_to"], size=8, bold=True)
    for i, line in enumerate(inv.customer):
        pdf.text_at(15, 47 + 4.5 * i, 80, line, size=8)
    cols = [("#", 15, 8, "R"), (t["desc"], 26, 90, "L"), (t["qty"], 118, 18, "R"),
            (t["price"], 136, 30, "R"), (t["amount"], 166, 29, "R")]  # fmt: skip
    y = 72.0
    for title, x, w, align in cols:
        pdf.text_at(x, y, w, title, size=8.5, bold=True, align=align)
    pdf.line(15, y + 4.5, 195, y + 4.5)
    y += 7
    for pos, item in enumerate(inv.items, start=1):
        words = item["description"].split()
        first, rest = item["description"], ""
        if len(item["description"]) > 18 and len(words) > 2:  # wrap long descriptions onto a second line
            half = len(words) // 2
            first, rest = " ".join(words[:half]), " ".join(words[half:])
        pdf.text_at(15, y, 8, str(pos), size=8.5, align="R")
        pdf.text_at(26, y, 90, first, size=8.5)
        pdf.text_at(118, y, 18, f"{_qty(item['quantity'], inv.lang)} {item['_unit']}", size=8.5, align="R")
        pdf.text_at(136, y, 30, _money(item["unit_price"], inv.lang), size=8.5, align="R")
        pdf.text_at(166, y, 29, _money(sign * item["line_total"], inv.lang), size=8.5, align="R")
        y += 4.2
        if rest:
            pdf.text_at(26, y, 90, rest, size=8.5)
            y += 4.2
        pdf.text_at(26, y, 90, f"EAN: {4000000000000 + 7919 * pos + len(first)}", size=7)
        y += 6
    y += 6
    titles = [t["subtotal"], t["tax"], t["total_short"]]
    values = [inv.subtotal, inv.tax, inv.total]
    for i, (title, value) in enumerate(zip(titles, values, strict=True)):
        pdf.text_at(105 + 30 * i, y, 30, title, size=8.5, bold=True, align="R")
        pdf.text_at(
            105 + 30 * i, y + 5, 30, f"{_money(sign * value, inv.lang)} {inv.currency}", size=8.5, align="R"
        )
    pdf.text_at(15, y + 16, 180, t["terms"], size=8)


def _footer_pages(pdf: _Doc, inv: _Invoice) -> None:
    total = pdf.page_no()
    if total < 2:
        return
    for n in range(1, total + 1):
        pdf.page = n
        pdf.text_at(15, 285, 180, TEXT[inv.lang]["page"].format(n=n, m=total), size=7, align="C")
    pdf.page = total


def generate_invoice(
    seed: int,
    layout: str,
    lang: str,
    *,
    n_items: int | None = None,
    mismatch: bool = False,
    credit_note: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """Render one invoice and return (PDF bytes, ground truth in the schema's shape).

    Deterministic for (seed, layout, lang).  ``n_items`` above ~30 makes the table continue on page 2;
    ``mismatch`` prints a subtotal that differs from the sum of the lines (a document to flag for review).
    ``credit_note`` (layout "ledger" only) titles the document as a credit note and prints its amounts
    negative; the ground truth keeps them positive, as EN 16931 credit notes (type 381) do.
    """
    if layout not in ALL_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {ALL_LAYOUTS}")
    if credit_note and layout != "ledger":
        raise ValueError("credit_note is drawn by the 'ledger' layout only")
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; choose from {LANGS}")
    inv = _build(seed, layout, lang, n_items, mismatch)
    pdf = _Doc()
    pdf.set_title(f"{TEXT[lang]['title'].title()} {inv.number}")
    pdf.set_author(inv.vendor[0])
    if layout == "ledger":
        _render_ledger(pdf, inv, credit_note)
    else:
        {"classic": _render_classic, "modern": _render_modern, "compact": _render_compact}[layout](pdf, inv)
    _footer_pages(pdf, inv)
    data = bytes(pdf.output())
    truth: dict[str, Any] = {
        "invoice_number": inv.number,
        "vendor_name": inv.vendor[0],
        "invoice_date": inv.issued.isoformat(),
        "due_date": inv.due.isoformat(),
        "currency": inv.currency,
        "subtotal": inv.subtotal,
        "tax_amount": inv.tax,
        "total_amount": inv.total,
        "purchase_order_number": inv.po,
        "line_items": [{k: v for k, v in item.items() if not k.startswith("_")} for item in inv.items],
        "_source": f"invoiceflow.samples.generate_invoice(seed={seed}, layout={layout!r}, lang={lang!r}"
        + (f", n_items={n_items}" if n_items is not None else "")
        + (", mismatch=True" if mismatch else "")
        + (", credit_note=True" if credit_note else "")
        + ")",
        "_lang": lang,
        "_layout": layout,
        "_pages": pdf.page_no(),
    }
    if mismatch:
        truth["_expect_review"] = True
    return data, truth


# name, layout, lang, extra options: the committed demo set; main() adds one invoice to be flagged for review.
SAMPLE_PLAN: list[tuple[str, str, str, dict[str, Any]]] = [
    ("synthetic-classic-en", "classic", "en", {}),
    ("synthetic-modern-de", "modern", "de", {}),
    ("synthetic-compact-en", "compact", "en", {}),
    ("synthetic-compact-de", "compact", "de", {}),
    ("synthetic-classic-de-2pages", "classic", "de", {"n_items": 38}),
    ("synthetic-modern-en", "modern", "en", {}),
]


def write_samples(out_dir: Path, count: int = 6, seed: int = 0) -> list[Path]:
    """Write ``count`` <name>.pdf + <name>.json pairs (cycling layouts/languages) and return the PDF paths.

    The first ``count`` entries of SAMPLE_PLAN are used (it includes the two-page invoice); beyond that,
    further layout/language combinations are generated with increasing seeds.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = list(SAMPLE_PLAN[:count])
    i = 0
    while len(plan) < count:
        layout, lang = LAYOUTS[i % len(LAYOUTS)], LANGS[(i // len(LAYOUTS)) % len(LANGS)]
        plan.append((f"synthetic-{layout}-{lang}-{i}", layout, lang, {}))
        i += 1
    written: list[Path] = []
    for index, (name, layout, lang, options) in enumerate(plan):
        data, truth = generate_invoice(seed + index, layout, lang, **options)
        pdf_path = out_dir / f"{name}.pdf"
        pdf_path.write_bytes(data)
        (out_dir / f"{name}.json").write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n", "utf-8")
        written.append(pdf_path)
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: regenerate the synthetic samples (5 clean + 1 for review) into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("include/samples"))
    parser.add_argument("--count", type=int, default=5, help="clean samples to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_samples(args.out_dir, count=args.count, seed=args.seed)
    data, truth = generate_invoice(args.seed + 100, "classic", "en", mismatch=True)
    review = args.out_dir / "synthetic-review-subtotal-mismatch"
    review.with_suffix(".pdf").write_bytes(data)
    review.with_suffix(".json").write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n", "utf-8")
    for path in [*paths, review.with_suffix(".pdf")]:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
