"""Parse printed amounts, quantities, dates and currencies; return None rather than guess."""

from __future__ import annotations

import re
from datetime import date

CURRENCY_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP", "¥": "JPY", "₹": "INR", "CHF": "CHF", "Fr.": "CHF"}
ISO_CURRENCIES = {
    "EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "INR", "CNY",
    "NZD", "SGD", "HKD", "ZAR", "RON", "BGN", "TRY", "MXN", "BRL",
}  # fmt: skip

MONTHS = {
    "january": 1, "jan": 1, "januar": 1, "jänner": 1, "janvier": 1,
    "february": 2, "feb": 2, "februar": 2, "février": 2,
    "march": 3, "mar": 3, "märz": 3, "maerz": 3, "mars": 3,
    "april": 4, "apr": 4, "avril": 4,
    "may": 5, "mai": 5,
    "june": 6, "jun": 6, "juni": 6, "juin": 6,
    "july": 7, "jul": 7, "juli": 7, "juillet": 7,
    "august": 8, "aug": 8, "août": 8,
    "september": 9, "sep": 9, "sept": 9, "septembre": 9,
    "october": 10, "oct": 10, "oktober": 10, "okt": 10, "octobre": 10,
    "november": 11, "nov": 11, "novembre": 11,
    "december": 12, "dec": 12, "dezember": 12, "dez": 12, "décembre": 12,
}  # fmt: skip

_NUMBER_RE = re.compile(r"[-−–]?\(?\s*\d[\d.,'  ]*\d\)?-?|[-−–]?\d")
_AMOUNT_TOKEN_RE = re.compile(
    r"(?<![\w.,])(?:[-−–]\s?)?(?:[€$£¥₹]\s?)?(?:[-−–]\s?)?\d{1,3}(?:[.,'  ]\d{3})*(?:[.,]\d{1,2})?(?:\s?[€$£])?-?"
    r"(?![\w]|[.,]\d)|(?<![\w.,])(?:[-−–]\s?)?(?:[€$£¥₹]\s?)?\d+(?:[.,]\d{1,2})?(?![\w]|[.,]\d)"
)
_PERCENT_RE = re.compile(r"\d+(?:[.,]\d+)?\s?%")


def parse_number(text: str) -> float | None:
    """Parse one number written as 1,234.56 / 1.234,56 / 1 234,56 / 1234.5 / -12.00 (no currency)."""
    if text is None:
        return None
    s = text.strip().replace(" ", "").replace(" ", "").replace(" ", "").replace("'", "")
    s = s.replace("−", "-").replace("–", "-")
    negative = False
    if s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1]
    if s.endswith("-") and len(s) > 1:
        negative, s = True, s[:-1]
    if s.startswith("-"):
        negative, s = True, s[1:]
    if s.startswith("+"):
        s = s[1:]
    if not s or not re.fullmatch(r"[\d.,]+", s) or not s[0].isdigit() or not s[-1].isdigit():
        return None
    last_dot, last_comma = s.rfind("."), s.rfind(",")
    if last_dot >= 0 and last_comma >= 0:
        dec = "." if last_dot > last_comma else ","
    elif last_dot >= 0 or last_comma >= 0:
        sep = "." if last_dot >= 0 else ","
        parts = s.split(sep)
        if (
            len(parts) > 2
            and len(parts[-1]) == 2
            and len(parts[0]) <= 3
            and all(len(p) == 3 for p in parts[1:-1])
        ):
            # "6.668.85": thousands groups, then two decimals; OCR took the decimal comma for a dot (or the
            # other way round), the digits are still right.
            digits = "".join(parts[:-1]) + "." + parts[-1]
            try:
                value = float(digits)
            except ValueError:
                return None
            return -value if negative else value
        # A single separator followed by exactly three digits is a thousands separator ("1.234", "12,500").
        if len(parts) > 2 or (len(parts[-1]) == 3 and len(parts[0]) <= 3 and parts[0] != "0"):
            if not all(len(p) == 3 for p in parts[1:]):
                return None
            dec = None
        else:
            dec = sep
    else:
        dec = None
    if dec is None:
        digits = s.replace(".", "").replace(",", "")
    else:
        thousands = "," if dec == "." else "."
        int_part, _, frac = s.rpartition(dec)
        groups = int_part.split(thousands)
        if len(groups) > 1 and not all(len(g) == 3 for g in groups[1:]):
            return None
        if thousands in frac:
            return None
        digits = "".join(groups) + "." + frac
    try:
        value = float(digits)
    except ValueError:
        return None
    return -value if negative else value


def parse_amount(text: str) -> float | None:
    """Parse a money amount, tolerating currency symbols/codes around it ("€ 1.234,56", "1,234.56 USD")."""
    if not text:
        return None
    s = _PERCENT_RE.sub(" ", text)
    for sym in CURRENCY_SYMBOLS:
        s = s.replace(sym, " ")
    s = re.sub(r"\b[A-Z]{3}\b", " ", s).strip()
    if not s:
        return None
    value = parse_number(s)
    if value is not None:
        return round(value, 2)
    return None


def find_amounts(text: str) -> list[float]:
    """All amounts in a free text fragment, left to right (percentages are skipped)."""
    s = _PERCENT_RE.sub(" ", text or "")
    out: list[float] = []
    for match in _AMOUNT_TOKEN_RE.finditer(s):
        value = parse_amount(match.group(0))
        if value is not None:
            out.append(value)
    return out


def detect_currency(text: str) -> str | None:
    """ISO code printed in the text, else the code of a currency symbol; None if neither appears."""
    if not text:
        return None
    for code in re.findall(r"(?<![A-Za-z])([A-Z]{3})(?![A-Za-z])", text):
        if code in ISO_CURRENCIES:
            return code
    for sym, code in CURRENCY_SYMBOLS.items():
        if len(sym) == 1 and sym in text:
            return code
    return None


def _mk(year: int, month: int, day: int) -> str | None:
    if year < 100:
        year += 2000
    try:
        return date(year, month, day).isoformat()
    except ValueError:
        return None


def parse_date(text: str, *, prefer_dmy: bool | None = None) -> str | None:
    """First date in the text as ISO 8601.

    Slash dates are ambiguous; mm/dd/yyyy is assumed (US) unless the day is > 12 or ``prefer_dmy`` is set
    (e.g. by a German document).  Dotted dates are always dd.mm.yyyy.
    """
    if not text:
        return None
    s = text.strip()
    m = re.search(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)", s)
    if m:
        return _mk(int(m[1]), int(m[2]), int(m[3]))
    m = re.search(r"(?<!\d)(\d{1,2})\.\s?(\d{1,2})\.\s?(\d{4}|\d{2})(?!\d)", s)
    if m:
        return _mk(int(m[3]), int(m[2]), int(m[1]))
    m = re.search(r"(?<!\d)(\d{1,2})-(\d{1,2})-(\d{4})(?!\d)", s)
    if m:  # dd-mm-yyyy (NL, FR, IT); yyyy-mm-dd was handled above
        return _mk(int(m[3]), int(m[2]), int(m[1]))
    m = re.search(r"(?<!\d)(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})(?!\d)", s)
    if m:
        a, b, y = int(m[1]), int(m[2]), int(m[3])
        if a > 12 or (prefer_dmy and b <= 12):
            return _mk(y, b, a)
        return _mk(y, a, b)
    m = re.search(r"([A-Za-zÄÖÜäöüéû]{3,9})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})", s)
    if m and m[1].lower() in MONTHS:
        return _mk(int(m[3]), MONTHS[m[1].lower()], int(m[2]))
    m = re.search(r"(\d{1,2})(?:st|nd|rd|th)?\.?\s+([A-Za-zÄÖÜäöüéû]{3,9})\.?,?\s+(\d{4})", s)
    if m and m[2].lower() in MONTHS:
        return _mk(int(m[3]), MONTHS[m[2].lower()], int(m[1]))
    m = re.search(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)", s)
    if m and 1900 < int(m[1]) < 2200:
        return _mk(int(m[1]), int(m[2]), int(m[3]))
    return None
