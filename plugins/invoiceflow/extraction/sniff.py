"""Decide what a file is from its magic bytes, and refuse files we cannot extract with a specific reason."""

from __future__ import annotations

import io

from .model import UnsupportedDocument

PDF_MAGIC = b"%PDF-"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")

# Recognised but unsupported formats, so the reviewer learns what the file actually is.
_OTHER_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"BM", "BMP image"),
    (b"PK\x03\x04", "ZIP archive (or an Office document such as .docx/.xlsx)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document (.doc/.xls/.msg)"),
    (b"\x1f\x8b", "gzip archive"),
    (b"Rar!", "RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"{\\rtf", "RTF document"),
    (b"%!PS", "PostScript document"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
)

CII_ROOTS = {"CrossIndustryInvoice", "CrossIndustryDocument"}
UBL_ROOTS = {"Invoice", "CreditNote"}


def _ext(filename: str) -> str:
    name = (filename or "").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable / len(text) > 0.95


def _strip_xml_prefix(data: bytes) -> bytes:
    head = data[:4096]
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip()


def xml_root_kind(data: bytes) -> tuple[str, str]:
    """Parse XML safely and classify the root as ("cii"|"ubl"|"other", root local name).

    Raises UnsupportedDocument for XML that does not parse.
    """
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise UnsupportedDocument(f"XML file is not well-formed: {exc}") from exc
    local = etree.QName(root).localname
    ns = etree.QName(root).namespace or ""
    if local in CII_ROOTS:
        return "cii", local
    if local in UBL_ROOTS and "ubl" in ns.lower():
        return "ubl", local
    if local == "Invoice" and "CBFBUY" in ns:  # early ZUGFeRD/Mustang drafts: CII-style content, old root
        return "cii", local
    return "other", local


def _check_pdf(data: bytes) -> None:
    import pypdfium2 as pdfium

    from invoiceflow.extraction.pdf import open_pdf

    try:
        with open_pdf(data) as pdf:
            pages = len(pdf)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise UnsupportedDocument("PDF is password-protected and cannot be read") from exc
        raise UnsupportedDocument(f"corrupt PDF: pdfium cannot open it ({exc})") from exc
    if pages == 0:
        raise UnsupportedDocument("corrupt PDF: it contains no pages")


def _check_image(data: bytes, kind: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(
            io.BytesIO(data)
        ) as img:  # verify() does not decode pixels; load() catches truncation
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnsupportedDocument(f"corrupt {kind.upper()} image: Pillow cannot read it ({exc})") from exc


def detect_type(data: bytes, filename: str) -> str:
    """Return "pdf", "png", "jpeg", "tiff" or "xml" from the content (the name is only a hint for XML).

    Content wins over the extension because uploads are often misnamed; every refusal carries a reason a
    human can act on.
    """
    if not data:
        raise UnsupportedDocument("empty file (0 bytes)")
    head = data[:1024]
    if head.startswith(PDF_MAGIC) or (PDF_MAGIC in head and not head.lstrip().startswith(b"<")):
        _check_pdf(data)
        return "pdf"
    if head.startswith(PNG_MAGIC):
        _check_image(data, "png")
        return "png"
    if head.startswith(JPEG_MAGIC):
        _check_image(data, "jpeg")
        return "jpeg"
    if head.startswith(TIFF_MAGICS):
        _check_image(data, "tiff")
        return "tiff"
    if head.startswith(b"RIFF") and data[8:12] == b"WEBP":
        raise UnsupportedDocument("unsupported file type: WebP image (supported: PDF, PNG, JPEG, TIFF, XML)")
    for magic, label in _OTHER_MAGICS:
        if head.startswith(magic):
            raise UnsupportedDocument(
                f"unsupported file type: {label} (supported: PDF, PNG, JPEG, TIFF, XML)"
            )

    ext = _ext(filename)
    stripped = _strip_xml_prefix(data)
    if stripped.startswith(b"<?xml") or (stripped.startswith(b"<") and ext == "xml"):
        kind, root = xml_root_kind(data)
        if kind == "other":
            raise UnsupportedDocument(
                f"XML is not a CII or UBL invoice (root element <{root}>); only e-invoices are supported"
            )
        return "xml"
    if stripped.startswith(b"<"):
        raise UnsupportedDocument(
            "unsupported file type: HTML/markup text (supported: PDF, PNG, JPEG, TIFF, XML)"
        )

    if _looks_like_text(head):
        if ext in {"pdf", "png", "jpg", "jpeg", "tif", "tiff", "xml"}:
            raise UnsupportedDocument(
                f"file is named .{ext} but contains plain text, not a {ext.upper()} file"
            )
        raise UnsupportedDocument("unsupported file type: plain text (supported: PDF, PNG, JPEG, TIFF, XML)")
    if ext == "pdf":
        raise UnsupportedDocument("file is named .pdf but has no PDF header (%PDF-); it is not a PDF")
    if ext in {"png", "jpg", "jpeg", "tif", "tiff"}:
        raise UnsupportedDocument(
            f"file is named .{ext} but is not a valid {ext.upper()} image (unknown bytes)"
        )
    raise UnsupportedDocument("unknown file type: content matches none of PDF, PNG, JPEG, TIFF or XML")
