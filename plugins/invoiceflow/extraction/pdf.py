"""The one way to open a PDF with pypdfium2.

PDFium is not thread-safe: two threads inside it at once can crash the process (seen as a segfault while the
offline server's worker threads extracted documents next to the ingest task sniffing files). Every use of
pypdfium2 in the project goes through :func:`open_pdf`, which holds one process-wide lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PDFIUM_LOCK = threading.RLock()


@contextmanager
def open_pdf(data: bytes) -> Iterator[Any]:
    """An open ``pypdfium2.PdfDocument`` for the duration of the block, under the PDFium lock.

    Raises ``pypdfium2.PdfiumError`` when the bytes are not a readable PDF.
    """
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(data)
        try:
            yield pdf
        finally:
            pdf.close()


def pdf_page_count(data: bytes) -> int:
    with open_pdf(data) as pdf:
        return len(pdf)


def render_pages(data: bytes, dpi: int = 200, pages: list[int] | None = None) -> list[Any]:
    """PIL images of the PDF's pages (all, or the given 0-based indexes), rendered under the PDFium lock."""
    images: list[Any] = []
    with open_pdf(data) as pdf:
        for index in pages if pages is not None else range(len(pdf)):
            page = pdf[index]
            try:
                bitmap = page.render(scale=dpi / 72.0, grayscale=True)
                images.append(bitmap.to_pil().copy())
                bitmap.close()
            finally:
                page.close()
    return images
