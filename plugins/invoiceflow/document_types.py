"""Invoice or credit note: one reading of a document type, whoever printed or sent it.

The e-invoice parsers (UNTDID 1001 type codes), validation (the type an extractor or LeapOCR reported) and the ERP
connectors (the type in an outbox payload) all read it here, so a spelling one of them knows is known to all.
"""

from __future__ import annotations

from typing import Any

INVOICE = "invoice"
CREDIT_NOTE = "credit_note"
DOCUMENT_TYPES = (INVOICE, CREDIT_NOTE)

#: UNTDID 1001 document type codes that EN 16931 (and Factur-X/ZUGFeRD, XRechnung, Peppol) use for credit notes:
#: 81/83 credit note for goods or services / financial adjustments, 261 self-billed, 262 consolidated,
#: 296 price variation, 308 delcredere, 381 credit note, 396 factored, 420 OCR payment, 458 reversal of debit,
#: 532 forwarder's credit note. Everything else (380 commercial invoice, 384 corrected invoice, 389 self-billed
#: invoice, 751, ...) is an invoice.
CREDIT_NOTE_TYPE_CODES = frozenset(
    {"81", "83", "261", "262", "296", "308", "381", "396", "420", "458", "532"}
)
# Spellings of the two types once case, spaces, "-" and "_" are dropped (ERP names of credit documents included).
_CREDIT_NOTE_NAMES = CREDIT_NOTE_TYPE_CODES | {
    "creditnote",
    "credit",
    "creditmemo",
    "vendorcredit",
    "accpaycredit",
}
_INVOICE_NAMES = frozenset({"invoice", "bill", "accpay", "380"})


def printed_document_type(raw: Any) -> str | None:
    """``INVOICE`` or ``CREDIT_NOTE`` for a printed or sent type ("Credit Note", "credit_note", "381", "CreditNote",
    "bill", ...); ``None`` when it is empty or names neither (each caller decides what that means)."""
    if raw is None:
        return None
    key = "".join(str(raw).split()).replace("_", "").replace("-", "").casefold()
    if key in _CREDIT_NOTE_NAMES:
        return CREDIT_NOTE
    if key in _INVOICE_NAMES:
        return INVOICE
    return None


def type_for_code(code: str | None) -> str:
    """``CREDIT_NOTE`` for an EN 16931 credit-note type code, else ``INVOICE`` (also when the code is missing)."""
    return CREDIT_NOTE if (code or "").strip() in CREDIT_NOTE_TYPE_CODES else INVOICE
