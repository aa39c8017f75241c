"""Offline, LeapOCR-compatible HTTP server.

Serves the LeapOCR API under ``/api/v1`` so that the unmodified ``leapocr`` 2.0.1 SDK works against localhost
(``ClientConfig(base_url="http://HOST:PORT/api/v1")``). The contract follows the team's LeapOCR API notes
(``leapocr-api.md``): presigned multipart uploads that point back at ``/_storage``, ETag
checks on completion, 202 results while a job runs, 200 + JSON on delete, and error bodies of the form
``{"code": ..., "error": {"message": ...}, "details": null}``.

Extraction is delegated to :mod:`invoiceflow.extraction` (imported lazily inside the job) so the server stays
a thin transport layer and a broken engine fails jobs instead of the whole server.

Fault injection (``ServerSettings`` fields, ``--help`` flags) lets clients be tested against the failures the
hosted API produces: random 429s with ``Retry-After``, 5xx, failed jobs, a concurrent-job limit, a credit
balance (402 ``LESS_CREDITS``) and dropped connections, all drawn from one ``random.Random(seed)``. Faults hit
the API routes only and are decided before a route acts, so a faulted submit never creates a job; the one
deliberate exception is ``drop_after_commit_rate`` (the job exists, the answer is lost). ``GET /_admin/stats``
exposes counters so tests can prove that nothing was submitted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import random
import shutil
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from invoiceflow.extraction.pdf import open_pdf, pdf_page_count

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
STORAGE_PREFIX = "/_storage"
DEFAULT_PART_SIZE = 5 * 1024 * 1024
MAX_FILE_SIZE = 1024 * 1024 * 1024  # spec: file_size 1..1073741824
MAX_FILE_NAME = 255
MAX_INSTRUCTIONS = 100
MAX_URL_LENGTH = 2000
MAX_RESULT_LIMIT = 1000
DEFAULT_MODEL = "standard-v2"
MODEL_CREDITS = {"standard-v2": 1, "pro-v2": 3}
FORMATS = ("markdown", "structured")
CONTENT_TYPES = {
    "application/pdf": ".pdf",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tiff",
}
SUFFIXES = {
    "application/pdf": (".pdf",),
    "image/png": (".png",),
    "image/jpeg": (".jpg", ".jpeg"),
    "image/tiff": (".tiff", ".tif"),
}
TEMPLATES = {"invoice": "invoice.json", "invoice-extraction": "invoice.json"}

PENDING, PROCESSING, COMPLETED, FAILED = "pending", "processing", "completed", "failed"
DEFAULT_UPLOAD_TTL = 900.0  # the docs' example presigned URLs expire 15 minutes after creation
SERVER_ERRORS = (500, 502, 503)
MUTATING_METHODS = frozenset({"POST", "DELETE"})
TRANSPORT_SCOPE_KEY = "invoiceflow.transport"
FAULT_KEYS = (
    "429",
    "5xx",
    "dropped",
    "dropped_after_commit",
    "failed_jobs",
    "concurrency_429",
    "credits_402",
    "expired_uploads",
)


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """Runtime knobs of the offline server.

    ``public_url`` is the server root that clients can reach (e.g. ``http://127.0.0.1:8000``); presigned
    upload URLs must be absolute, so they are built from it. An empty string means "use the URL the request
    came in on". ``part_size`` sets the presigned part size (small values force multipart in tests).

    The keyword-only fields inject faults; their defaults mean "no faults", so existing callers are unchanged.
    Rates are shares of API requests (``drop_rate + rate_429 + rate_5xx <= 1``, one draw decides which) or,
    for ``fail_rate``, of submitted jobs. ``credits=None`` is an unlimited balance, ``max_concurrent_jobs=None``
    no limit. ``upload_ttl`` expires direct uploads that are never completed, so an abandoned upload (e.g.
    after a lost answer) does not hold a concurrency slot forever.
    """

    api_key: str
    public_url: str
    workers: int = 2
    latency_per_page: float = 0.0
    data_dir: Path | None = None
    part_size: int = DEFAULT_PART_SIZE
    _: KW_ONLY
    rate_429: float = 0.0
    retry_after: float = 1.0
    rate_5xx: float = 0.0
    fail_rate: float = 0.0
    max_concurrent_jobs: int | None = None
    credits: int | None = None
    drop_rate: float = 0.0
    drop_after_commit_rate: float = 0.0
    seed: int | None = None
    upload_ttl: float = DEFAULT_UPLOAD_TTL

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise ValueError("api_key must not be empty")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.latency_per_page < 0:
            raise ValueError("latency_per_page must be >= 0")
        if self.part_size < 1:
            raise ValueError("part_size must be >= 1")
        for name in ("rate_429", "rate_5xx", "fail_rate", "drop_rate", "drop_after_commit_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.drop_rate + self.rate_429 + self.rate_5xx > 1.0 + 1e-9:
            raise ValueError("drop_rate + rate_429 + rate_5xx must not exceed 1")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if self.max_concurrent_jobs is not None and self.max_concurrent_jobs < 1:
            raise ValueError("max_concurrent_jobs must be >= 1 (or None for no limit)")
        if self.credits is not None and self.credits < 0:
            raise ValueError("credits must be >= 0 (or None for unlimited)")
        if self.upload_ttl <= 0:
            raise ValueError("upload_ttl must be > 0")

    @property
    def request_fault_rate(self) -> float:
        """Share of API requests answered with a fault before the route acts."""
        return self.drop_rate + self.rate_429 + self.rate_5xx


# ----------------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error that becomes a LeapOCR-shaped JSON error response (the SDK reads ``error.message``)."""

    def __init__(
        self, status_code: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


class ConnectionDropped(Exception):
    """Raised after an injected drop reset the socket; its handler answers into the void without logging."""


class JobFailure(Exception):
    """A job-level failure whose message is shown to clients as ``error_message``."""


def _error_response(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"code": code, "error": {"message": message}, "details": None}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _code_for_status(status_code: int) -> str:
    codes = {401: "AUTHENTICATION_ERROR", 403: "FORBIDDEN", 404: "NOT_FOUND", 409: "CONFLICT"}
    if status_code >= 500:
        return "SYSTEM_ERROR"
    return codes.get(status_code, "TOO_MANY_REQUESTS" if status_code == 429 else "BAD_REQUEST")


def _invalid(message: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", message)


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", f"job {job_id} not found")


# ------------------------------------------------------------------------------------------------------ model


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _ts(value: datetime | None) -> str | None:
    """Format as ``YYYY-MM-DDTHH:MM:SSZ``, the one form every Python version's SDK parses."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


@dataclass(frozen=True)
class PartSpec:
    """One presigned upload part; ``end`` is inclusive as in the LeapOCR API."""

    number: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass(frozen=True)
class Options:
    """Validated processing options of a job."""

    result_format: str
    model: str
    schema: dict[str, Any] | None
    instructions: str | None
    template_slug: str | None

    @property
    def credits_per_page(self) -> int:
        """Pricing from the docs: model rate plus 1 per page for structured output."""
        return MODEL_CREDITS[self.model] + (self.result_format == "structured")


@dataclass(frozen=True)
class Fault:
    """What one API request suffers, drawn before the route acts (``kind``: drop, 429, 5xx or None)."""

    kind: str | None = None
    status: int = 0
    drop_after_commit: bool = False


@dataclass
class Job:
    """Mutable job state; only ever touched under ``OcrService._lock``."""

    id: str
    file_name: str
    file_size: int
    content_type: str
    options: Options
    created_at: datetime
    source_url: str | None = None
    parts: tuple[PartSpec, ...] = ()
    status: str = PENDING
    submitted: bool = False
    updated_at: datetime = field(default_factory=_now)
    completed_at: datetime | None = None
    total_pages: int = 0
    processed_pages: int = 0
    pages: list[dict[str, Any]] = field(default_factory=list)
    error_message: str | None = None
    credits_used: int = 0
    created_mono: float = field(default_factory=time.monotonic)
    file_sha256: str | None = None
    reserved_credits: int = 0
    inject_failure: bool = False


# ----------------------------------------------------------------------------------------------- blob storage


class BlobStore:
    """Uploaded part bytes, in memory or below ``data_dir`` (for large files or inspection after a run)."""

    def __init__(self, data_dir: Path | None) -> None:
        self._dir = data_dir
        self._memory: dict[str, dict[int, bytes]] = {}
        self._lock = threading.Lock()
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)

    def put(self, job_id: str, part: int, data: bytes) -> None:
        if self._dir is None:
            with self._lock:
                self._memory.setdefault(job_id, {})[part] = data
            return
        job_dir = self._dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / f"part-{part:05d}").write_bytes(data)

    def get(self, job_id: str, part: int) -> bytes | None:
        if self._dir is None:
            with self._lock:
                return self._memory.get(job_id, {}).get(part)
        path = self._dir / job_id / f"part-{part:05d}"
        return path.read_bytes() if path.exists() else None

    def assemble(self, job_id: str, parts: tuple[PartSpec, ...]) -> bytes:
        chunks = [self.get(job_id, p.number) for p in parts]
        if any(chunk is None for chunk in chunks):
            raise JobFailure("uploaded data is missing")
        return b"".join(chunk for chunk in chunks if chunk is not None)

    def delete(self, job_id: str) -> None:
        if self._dir is None:
            with self._lock:
                self._memory.pop(job_id, None)
            return
        shutil.rmtree(self._dir / job_id, ignore_errors=True)


# -------------------------------------------------------------------------------------------- request parsing


def schema_dir() -> Path:
    """Where template schemas live; ``INVOICEFLOW_SCHEMA_DIR`` overrides the repository's include/schemas."""
    override = os.environ.get("INVOICEFLOW_SCHEMA_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "include" / "schemas"


def _template_options(slug: Any) -> Options:
    if not isinstance(slug, str) or not slug.strip():
        raise _invalid("template_slug must be a non-empty string")
    if slug not in TEMPLATES:
        raise ApiError(404, "NOT_FOUND", f"template {slug!r} not found")
    path = schema_dir() / TEMPLATES[slug]
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ApiError(500, "SYSTEM_ERROR", f"template {slug!r} schema unavailable: {exc}") from exc
    return Options("structured", DEFAULT_MODEL, schema, None, slug)


def parse_options(body: dict[str, Any]) -> Options:
    """Validate the processing fields shared by direct and URL uploads (spec §4, §15)."""
    if body.get("template_slug") is not None:
        clashing = [k for k in ("format", "model", "schema", "instructions") if body.get(k) is not None]
        if clashing:
            raise _invalid(f"template_slug cannot be combined with {', '.join(clashing)}")
        return _template_options(body["template_slug"])
    fmt = body.get("format")
    if fmt not in FORMATS:
        raise _invalid("format is required and must be one of: markdown, structured")
    model = body.get("model") or DEFAULT_MODEL
    if model not in MODEL_CREDITS:
        raise _invalid(f"unsupported model {model!r}; use one of: {', '.join(MODEL_CREDITS)}")
    schema, instructions = body.get("schema"), body.get("instructions")
    if instructions is not None and (
        not isinstance(instructions, str) or len(instructions) > MAX_INSTRUCTIONS
    ):
        raise _invalid(f"instructions must be a string of at most {MAX_INSTRUCTIONS} characters")
    if fmt == "structured":
        if not isinstance(schema, dict) or not schema:
            raise _invalid("schema is required for structured format and must be a non-empty object")
    elif schema is not None or instructions:
        raise _invalid("schema and instructions are only supported with structured format")
    return Options(fmt, model, schema, instructions or None, None)


def _parse_file_fields(body: dict[str, Any]) -> tuple[str, int, str]:
    name, size, content_type = body.get("file_name"), body.get("file_size"), body.get("content_type")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_FILE_NAME:
        raise _invalid(f"file_name must be a string of 1..{MAX_FILE_NAME} characters")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_FILE_SIZE:
        raise _invalid(f"file_size must be an integer between 1 and {MAX_FILE_SIZE}")
    if content_type not in CONTENT_TYPES:
        raise _invalid(f"unsupported content_type {content_type!r}; supported: {', '.join(CONTENT_TYPES)}")
    base_name = name.replace("\\", "/").rsplit("/", 1)[-1] or name
    return base_name, size, content_type


def _parse_url(body: dict[str, Any]) -> str:
    url = body.get("url")
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_LENGTH:
        raise _invalid(f"url must be a string of 1..{MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _invalid("url must be an absolute http(s) URL")
    return url


def _split_parts(file_size: int, part_size: int) -> tuple[PartSpec, ...]:
    count = max(1, math.ceil(file_size / part_size))
    return tuple(
        PartSpec(n + 1, n * part_size, min(file_size, (n + 1) * part_size) - 1) for n in range(count)
    )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, "BAD_REQUEST", "request body must be valid JSON") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "BAD_REQUEST", "request body must be a JSON object")
    return body


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError as exc:
        raise _invalid(f"{name} must be an integer") from exc
    if not low <= value <= high:
        raise _invalid(f"{name} must be between {low} and {high}")
    return value


# ------------------------------------------------------------------------------------------- document helpers


def sniff_content_type(data: bytes) -> str | None:
    """Content type from magic bytes, so mislabelled uploads (e.g. BytesIO named document.pdf) still work."""
    if data.startswith(b"%PDF"):
        return "application/pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def _extraction_name(file_name: str, content_type: str) -> str:
    """File name whose extension matches the actual content, because the extractor dispatches on it."""
    if Path(file_name).suffix.lower() in SUFFIXES[content_type]:
        return file_name
    return f"{Path(file_name).stem or 'document'}{CONTENT_TYPES[content_type]}"


def count_pages(data: bytes, content_type: str) -> int:
    """Best-effort page count for progress reporting; 0 when unknown (the extractor has the final word)."""
    try:
        if content_type == "application/pdf":
            return pdf_page_count(data)
        if content_type == "image/tiff":
            from io import BytesIO

            from PIL import Image

            with Image.open(BytesIO(data)) as image:
                return int(getattr(image, "n_frames", 1))
        return 1
    except Exception:
        return 0


def pdf_page_texts(data: bytes) -> list[str]:
    """Text layer per page via pypdfium2; raises JobFailure for unreadable PDFs."""
    import pypdfium2 as pdfium

    try:
        with open_pdf(data) as pdf:
            texts = []
            for index in range(len(pdf)):
                page = pdf[index]
                textpage = page.get_textpage()
                texts.append(textpage.get_text_bounded().replace("\r\n", "\n").strip())
                textpage.close()
                page.close()
            return texts
    except pdfium.PdfiumError as exc:
        raise JobFailure(f"could not open PDF: {exc}") from exc


def fields_to_markdown(fields: dict[str, Any]) -> str:
    """Render extracted fields as markdown for pages without a text layer (scans and images)."""
    lines: list[str] = []
    for key, value in fields.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            lines += ["", f"**{key}**", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in value]
            lines.append("")
        else:
            lines.append(f"- **{key}**: {_cell(value)}")
    return "\n".join(lines).strip()


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _run_extractor(data: bytes, name: str, schema: dict[str, Any] | None) -> list[Any]:
    try:
        from invoiceflow.extraction import UnsupportedDocument, extract_pages
    except ImportError as exc:
        raise JobFailure(f"extraction engine unavailable: {exc}") from exc
    try:
        return list(extract_pages(data, name, schema, use_einvoice=True).pages)
    except UnsupportedDocument as exc:
        raise JobFailure(str(getattr(exc, "reason", None) or exc) or "unsupported document") from exc


def extract_document(data: bytes, name: str, content_type: str, options: Options) -> list[dict[str, Any]]:
    """Pages as ``{page_number, result, confidence}``: dicts for structured output, text for markdown."""
    if options.result_format == "structured":
        return [
            {
                "page_number": int(p.page_number),
                "result": jsonable_encoder(p.result),
                "confidence": float(p.confidence),
            }
            for p in _run_extractor(data, name, options.schema)
        ]
    texts = pdf_page_texts(data) if content_type == "application/pdf" else []
    if texts and all(texts):
        return [{"page_number": i, "result": t, "confidence": 1.0} for i, t in enumerate(texts, start=1)]
    extracted = {int(p.page_number): p for p in _run_extractor(data, name, None)}
    numbers = range(1, len(texts) + 1) if texts else sorted(extracted)
    pages = []
    for number in numbers:
        text = texts[number - 1] if texts else ""
        page = extracted.get(number)
        if text or page is None:
            pages.append({"page_number": number, "result": text, "confidence": 1.0 if text else 0.0})
        else:
            result = page.result if isinstance(page.result, dict) else {"text": page.result}
            pages.append(
                {"page_number": number, "result": fields_to_markdown(result), "confidence": page.confidence}
            )
    return pages


def fetch_url(url: str, timeout: float = 30.0) -> tuple[bytes, str | None]:
    """Download a URL job's document with a size cap; returns bytes and the declared content type."""
    try:
        with (
            httpx.Client(follow_redirects=True, timeout=timeout) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise JobFailure(f"could not fetch {url}: HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_FILE_SIZE:
                    raise JobFailure(f"document at {url} exceeds {MAX_FILE_SIZE} bytes")
                chunks.append(chunk)
            declared = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
            return b"".join(chunks), declared
    except httpx.HTTPError as exc:
        raise JobFailure(f"could not fetch {url}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------- service


class OcrService:
    """In-memory job registry plus a bounded worker pool; the HTTP layer only translates to and from JSON."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._blobs = BlobStore(settings.data_dir)
        self._stopping = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="leapocr-job")
        # Fault and accounting state; all of it is guarded by ``_lock``, the RNG included, so a seed and a
        # request sequence fix the fault sequence.
        self._rng = random.Random(settings.seed)
        self._balance = settings.credits
        self._reserved = 0
        self._charged = 0
        self._created = 0
        self._submitted = 0
        self._by_sha: Counter[str] = Counter()
        self._by_url: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._active: set[str] = set()
        self._awaiting_upload: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting work; running jobs end at their next page boundary."""
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    # -- uploads ---------------------------------------------------------------------------------------------

    def create_direct(self, file_name: str, file_size: int, content_type: str, options: Options) -> Job:
        job = Job(str(uuid.uuid4()), file_name, file_size, content_type, options, _now())
        job.parts = _split_parts(file_size, self.settings.part_size)
        with self._lock:
            self._admit(options)
            self._register(job)
            self._awaiting_upload.add(job.id)
        return job

    def create_from_url(self, url: str, options: Options) -> Job:
        """Queue a URL job; credits for one page are reserved now and topped up once the document is fetched."""
        name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "document"
        job = Job(str(uuid.uuid4()), name[:MAX_FILE_NAME], 0, "", options, _now(), source_url=url)
        with self._lock:
            self._admit(options)
            self._reserve(job, 1)
            self._register(job)
            self._by_url[url] += 1
            self._submit(job)
        return job

    def _register(self, job: Job) -> None:
        """Caller holds the lock."""
        self._jobs[job.id] = job
        self._active.add(job.id)
        self._created += 1

    def _admit(self, options: Options) -> None:
        """Refuse a new job when no credit is left for one page (402) or the concurrency limit is hit (429)."""
        self._expire_uploads()
        if self._balance is not None and self._available() < options.credits_per_page:
            self._faults["credits_402"] += 1
            raise ApiError(402, "LESS_CREDITS", f"insufficient credits: {self._available()} available")
        limit = self.settings.max_concurrent_jobs
        if limit is not None and len(self._active) >= limit:
            self._faults["concurrency_429"] += 1
            raise ApiError(
                429,
                "TOO_MANY_REQUESTS",
                f"too many concurrent jobs: at most {limit} may be pending or processing",
                headers=self.retry_headers(),
            )

    def _available(self) -> int:
        return (self._balance or 0) - self._reserved

    def _reserve(self, job: Job, pages: int) -> None:
        """Reserve credits for ``pages`` (at least one); raises 402 LESS_CREDITS if the balance cannot cover it.

        Caller holds the lock. Like the hosted API, credits are reserved at submission, charged on success and
        refunded on failure (``_release``).
        """
        needed = max(pages, 1) * job.options.credits_per_page
        extra = needed - job.reserved_credits
        if extra <= 0:
            return
        if self._balance is not None and extra > self._available():
            self._faults["credits_402"] += 1
            raise ApiError(
                402,
                "LESS_CREDITS",
                f"insufficient credits: the job needs {needed}, "
                f"{self._available() + job.reserved_credits} available",
            )
        self._reserved += extra
        job.reserved_credits = needed

    def _release(self, job: Job, charge: int) -> None:
        """End a job's claim on credits and the concurrency limit; caller holds the lock."""
        self._reserved -= job.reserved_credits
        job.reserved_credits = 0
        self._charged += charge
        if self._balance is not None:
            self._balance -= charge
        self._active.discard(job.id)
        self._awaiting_upload.discard(job.id)

    def _expire_uploads(self) -> None:
        """Fail direct uploads never completed within ``upload_ttl``; caller holds the lock."""
        cutoff = time.monotonic() - self.settings.upload_ttl
        for job_id in [j for j in self._awaiting_upload if self._jobs[j].created_mono < cutoff]:
            job = self._jobs[job_id]
            job.status, job.error_message = FAILED, "upload was not completed before its URLs expired"
            job.completed_at = job.updated_at = _now()
            self._release(job, 0)
            self._outcomes[FAILED] += 1
            self._faults["expired_uploads"] += 1
            self._blobs.delete(job_id)

    # -- faults and introspection ----------------------------------------------------------------------------

    def retry_headers(self) -> dict[str, str]:
        return {"Retry-After": f"{self.settings.retry_after:g}"}

    def draw_fault(self, mutating: bool) -> Fault:
        """Decide one API request's fate with a single draw, so the sequence depends only on seed and order."""
        s = self.settings
        with self._lock:
            if s.request_fault_rate:
                r = self._rng.random()
                if r < s.drop_rate:
                    self._faults["dropped"] += 1
                    return Fault("drop")
                if r < s.drop_rate + s.rate_429:
                    self._faults["429"] += 1
                    return Fault("429", 429)
                if r < s.request_fault_rate:
                    self._faults["5xx"] += 1
                    return Fault("5xx", self._rng.choice(SERVER_ERRORS))
            if mutating and s.drop_after_commit_rate:
                return Fault(drop_after_commit=self._rng.random() < s.drop_after_commit_rate)
            return Fault()

    def count_fault(self, name: str) -> None:
        with self._lock:
            self._faults[name] += 1

    def stats(self) -> dict[str, Any]:
        """Counters for tests and operators; ``jobs_submitted`` counts jobs queued for processing (billable)."""
        with self._lock:
            self._expire_uploads()
            return {
                "jobs_created": self._created,
                "jobs_submitted": self._submitted,
                "jobs_by_file_sha256": dict(self._by_sha),
                "jobs_by_source_url": dict(self._by_url),
                "active_jobs": len(self._active),
                "jobs_completed": self._outcomes[COMPLETED],
                "jobs_failed": self._outcomes[FAILED],
                "credits_remaining": None if self._balance is None else self._available(),
                "credits_reserved": self._reserved,
                "credits_charged": self._charged,
                "faults": {key: self._faults[key] for key in FAULT_KEYS},
                "seed": self.settings.seed,
            }

    def upload_signature(self, job_id: str, part: int) -> str:
        """HMAC over job and part so storage URLs act like presigned URLs without an API key."""
        key = self.settings.api_key.encode()
        return hmac.new(key, f"{job_id}/{part}".encode(), hashlib.sha256).hexdigest()[:32]

    def put_part(self, job_id: str, part: int, signature: str, data: bytes) -> str:
        if not hmac.compare_digest(signature, self.upload_signature(job_id, part)):
            raise ApiError(403, "FORBIDDEN", "invalid upload signature")
        with self._lock:
            job = self._get(job_id)
            spec = next((p for p in job.parts if p.number == part), None)
            if spec is None:
                raise ApiError(404, "NOT_FOUND", f"part {part} does not exist for job {job_id}")
            if job.submitted:
                raise ApiError(409, "CONFLICT", "upload already completed")
            if job.status == FAILED:
                raise ApiError(403, "FORBIDDEN", "presigned URL expired")
        if len(data) != spec.size:
            raise _invalid(f"part {part} must be {spec.size} bytes, got {len(data)}")
        self._blobs.put(job_id, part, data)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def complete(self, job_id: str, parts: Any) -> Job:
        """Check ETags and size, reserve credits for the page count, then queue the job.

        Repeats of a completed upload are answered as is. A 402 leaves the upload un-submitted, so the client may
        complete it later or delete it.
        """
        with self._lock:
            job = self._get(job_id)
            if job.submitted:
                return job
            if job.status == FAILED:
                raise ApiError(409, "CONFLICT", job.error_message or "upload can no longer be completed")
            expected = job.parts
        data = self._verify_parts(job_id, expected, job.file_size, parts)
        sha256 = hashlib.sha256(data).hexdigest()
        pages = count_pages(data, sniff_content_type(data) or job.content_type)
        with self._lock:
            job = self._get(job_id)
            if not job.submitted:
                self._reserve(job, pages)
                job.file_sha256 = sha256
                job.total_pages = pages
                self._by_sha[sha256] += 1
                self._awaiting_upload.discard(job.id)
                self._submit(job)
            return job

    def _verify_parts(self, job_id: str, expected: tuple[PartSpec, ...], file_size: int, parts: Any) -> bytes:
        """Like S3's CompleteMultipartUpload: every part once, matching ETags, and the declared total size.

        Returns the assembled document.
        """
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise _invalid("parts must be a list of {part_number, etag} objects")
        etags = {p.get("part_number"): str(p.get("etag", "")).strip().strip('"') for p in parts}
        numbers = sorted(k for k in etags if isinstance(k, int))
        if len(parts) != len(expected) or numbers != [p.number for p in expected]:
            raise _invalid(f"expected parts 1..{len(expected)}, each exactly once")
        chunks = []
        for spec in expected:
            data = self._blobs.get(job_id, spec.number)
            if data is None:
                raise _invalid(f"part {spec.number} was not uploaded")
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != etags[spec.number]:
                raise _invalid(f"etag mismatch for part {spec.number}")
            chunks.append(data)
        document = b"".join(chunks)
        if len(document) != file_size:
            raise _invalid(f"uploaded {len(document)} bytes but file_size is {file_size}")
        return document

    def _submit(self, job: Job) -> None:
        """Queue a job and decide now (not in a worker) whether it fails, so the seed fixes the outcome."""
        job.submitted = True
        job.updated_at = _now()
        self._submitted += 1
        if self.settings.fail_rate:
            job.inject_failure = self._rng.random() < self.settings.fail_rate
        self._executor.submit(self._run_job, job.id)

    def delete(self, job_id: str) -> None:
        """Remove a job; a job deleted while running gets its credit reservation back."""
        with self._lock:
            job = self._get(job_id)
            self._release(job, 0)
            del self._jobs[job_id]
        self._blobs.delete(job_id)

    # -- processing ------------------------------------------------------------------------------------------

    def _update(self, job_id: str, **changes: Any) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            for name, value in changes.items():
                setattr(job, name, value)
            job.updated_at = _now()
            return job

    def _run_job(self, job_id: str) -> None:
        started = time.monotonic()  # the latency per page counts from here: extraction runs within it
        job = self._update(job_id, status=PROCESSING)
        if job is None:
            return
        try:
            data, content_type = self._load_input(job)
            if self._update(job_id, total_pages=count_pages(data, content_type)) is None:
                return
            name = _extraction_name(job.file_name, content_type)
            pages = extract_document(data, name, content_type, job.options)
            if not pages:
                raise JobFailure("document has no pages")
        except JobFailure as exc:
            self._finish(job_id, FAILED, error_message=str(exc))
            return
        except Exception as exc:
            log.exception("job %s crashed", job_id)
            self._finish(job_id, FAILED, error_message=f"internal error: {type(exc).__name__}: {exc}")
            return
        self._publish(job_id, pages, started)

    def _load_input(self, job: Job) -> tuple[bytes, str]:
        if job.source_url is not None:
            data, declared = fetch_url(job.source_url)
            content_type = sniff_content_type(data) or declared or ""
            if content_type not in CONTENT_TYPES:
                raise JobFailure(
                    f"unsupported content type {content_type or 'unknown'!r} at {job.source_url}"
                )
            self._fetched(job.id, data, content_type)
            return data, content_type
        data = self._blobs.assemble(job.id, job.parts)
        return data, sniff_content_type(data) or job.content_type

    def _fetched(self, job_id: str, data: bytes, content_type: str) -> None:
        """Record a URL job's content and top up its one-page credit reservation to the real page count."""
        sha256, pages = hashlib.sha256(data).hexdigest(), count_pages(data, content_type)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobFailure("job was deleted")
            job.file_size, job.content_type, job.file_sha256 = len(data), content_type, sha256
            self._by_sha[sha256] += 1
            try:
                self._reserve(job, pages)
            except ApiError as exc:
                raise JobFailure(exc.message) from exc

    def _publish(self, job_id: str, pages: list[dict[str, Any]], started: float) -> None:
        """Release pages one by one so status polls see progress (and latency emulates a remote service).

        Page k is released ``k x latency_per_page`` after the job started processing (or as soon as it is
        extracted, when extraction took longer), so a job takes the latency a remote service would, not the
        latency plus our own extraction time. A job picked by ``fail_rate`` fails half-way, after spending the
        latency of the pages it got through.
        """
        job = self._update(job_id, total_pages=len(pages), processed_pages=0)
        if job is None:
            return
        fail_at = math.ceil(len(pages) / 2) if job.inject_failure else 0
        for number, page in enumerate(sorted(pages, key=lambda p: p["page_number"]), start=1):
            release_at = started + number * self.settings.latency_per_page
            if self.settings.latency_per_page and self._stopping.wait(
                max(0.0, release_at - time.monotonic())
            ):
                return
            if number == fail_at:
                self.count_fault("failed_jobs")
                message = f"Failed to process page {page['page_number']} (simulated by fail_rate)"
                self._finish(job_id, FAILED, error_message=message)
                return
            with self._lock:
                job = self._jobs.get(job_id)
                if job is None:
                    return
                job.pages.append({**page, "id": str(uuid.uuid4())})
                job.processed_pages = len(job.pages)
                job.updated_at = _now()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            credits = len(job.pages) * job.options.credits_per_page
        self._finish(job_id, COMPLETED, credits_used=credits)

    def _finish(self, job_id: str, status: str, **changes: Any) -> None:
        """Terminal transition: charge on success, refund the reservation on failure, free the slot."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return  # deleted meanwhile; delete() already released it
            if status == FAILED:
                job.pages, job.credits_used = [], 0
            for name, value in changes.items():
                setattr(job, name, value)
            job.status = status
            job.completed_at = job.updated_at = _now()
            self._release(job, job.credits_used if status == COMPLETED else 0)
            self._outcomes[status] += 1
        self._blobs.delete(job_id)

    # -- views -----------------------------------------------------------------------------------------------

    def status_body(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self._get(job_id)
            body: dict[str, Any] = {
                "id": job.id,
                "job_id": job.id,
                "status": job.status,
                "file_name": job.file_name,
                "result_format": job.options.result_format,
                "model": job.options.model,
                "created_at": _ts(job.created_at),
                "updated_at": _ts(job.updated_at),
                "processed_pages": job.processed_pages,
                "total_pages": job.total_pages,
            }
            if job.options.template_slug:
                body["template_name"] = job.options.template_slug
            if job.status == FAILED:
                body["error_message"] = job.error_message
            return body

    def result_body(self, job_id: str, page: int, limit: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            job = self._get(job_id)
            if job.status not in (COMPLETED, FAILED):
                return 202, {
                    "job_id": job.id,
                    "status": job.status,
                    "processed_pages": job.processed_pages,
                    "total_pages": job.total_pages,
                }
            total = len(job.pages)
            body = {
                "job_id": job.id,
                "status": job.status,
                "file_name": job.file_name,
                "total_pages": job.total_pages,
                "processed_pages": job.processed_pages,
                "credits_used": job.credits_used,
                "model": job.options.model,
                "result_format": job.options.result_format,
                "completed_at": _ts(job.completed_at),
                "pages": [dict(p) for p in job.pages[(page - 1) * limit : page * limit]],
                "pagination": {
                    "page": page,
                    "limit": limit,
                    "total": total,
                    "total_pages": math.ceil(total / limit),
                },
            }
            if job.status == FAILED:
                body["error_message"] = job.error_message
            return 200, body


# -------------------------------------------------------------------------------------------------------- app


def _storage_url(
    request: Request, settings: ServerSettings, service: OcrService, job_id: str, part: int
) -> str:
    root = settings.public_url.rstrip("/").removesuffix(API_PREFIX) or str(request.base_url).rstrip("/")
    return f"{root}{STORAGE_PREFIX}/{job_id}/{part}?signature={service.upload_signature(job_id, part)}"


def _drop_connection(request: Request) -> NoReturn:
    """Reset the client's TCP connection without an answer, as a crashing load balancer would.

    SO_LINGER 0 turns the close into an RST, which httpx reports as ``ReadError`` (a transport error the SDK
    retries). Needs the uvicorn transport that ``_OfflineApp`` puts into the scope.
    """
    transport = request.scope.get(TRANSPORT_SCOPE_KEY)
    if transport is None:
        raise RuntimeError("connection drops need the uvicorn HTTP/1.1 server (running_server or serve)")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    raise ConnectionDropped


def _require_api_key(settings: ServerSettings) -> Any:
    def require_api_key(request: Request) -> None:
        supplied = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
            raise ApiError(401, "AUTHENTICATION_ERROR", "invalid API key")

    return require_api_key


def _api_router(settings: ServerSettings, service: OcrService) -> APIRouter:
    async def inject_faults(request: Request) -> None:
        """Runs after auth and before the route reads its body, so a faulted request changes nothing."""
        fault = service.draw_fault(request.method in MUTATING_METHODS)
        request.state.fault = fault
        if fault.kind == "drop":
            _drop_connection(request)
        if fault.kind == "429":
            raise ApiError(
                429,
                "TOO_MANY_REQUESTS",
                "rate limit exceeded (simulated by rate_429)",
                headers=service.retry_headers(),
            )
        if fault.kind == "5xx":
            raise ApiError(fault.status, "SYSTEM_ERROR", "internal server error (simulated by rate_5xx)")

    def after_commit(request: Request) -> None:
        """The real-world trap: the server acted, but the client never hears about it."""
        fault: Fault | None = getattr(request.state, "fault", None)
        if fault is not None and fault.drop_after_commit:
            service.count_fault("dropped_after_commit")
            _drop_connection(request)

    router = APIRouter(
        prefix=API_PREFIX, dependencies=[Depends(_require_api_key(settings)), Depends(inject_faults)]
    )

    @router.post("/ocr/uploads/direct")
    async def upload_direct(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        file_name, file_size, content_type = _parse_file_fields(body)
        job = service.create_direct(file_name, file_size, content_type, parse_options(body))
        after_commit(request)
        parts = [
            {
                "part_number": p.number,
                "start_byte": p.start,
                "end_byte": p.end,
                "upload_url": _storage_url(request, settings, service, job.id, p.number),
            }
            for p in job.parts
        ]
        return {
            "job_id": job.id,
            "upload_id": job.id,
            "upload_type": "multipart",
            "chunk_size": settings.part_size,
            "total_chunks": len(parts),
            "parts": parts,
            "complete_url": f"{API_PREFIX}/ocr/uploads/{job.id}/complete",
            "expires_at": _ts(job.created_at + timedelta(seconds=settings.upload_ttl)),
        }

    @router.post("/ocr/uploads/{job_id}/complete")
    async def upload_complete(job_id: str, request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        job = await run_in_threadpool(service.complete, job_id, body.get("parts"))
        after_commit(request)
        status = service.status_body(job.id)
        return {
            "job_id": job.id,
            "status": status["status"],
            "created_at": status["created_at"],
            "message": "Upload completed successfully, processing started",
        }

    @router.post("/ocr/uploads/url")
    async def upload_url(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        url = _parse_url(body)
        job = service.create_from_url(url, parse_options(body))
        after_commit(request)
        status = service.status_body(job.id)
        return {
            "job_id": job.id,
            "status": status["status"],
            "created_at": status["created_at"],
            "source_url": url,
        }

    @router.get("/ocr/status/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        return service.status_body(job_id)

    @router.get("/ocr/result/{job_id}")
    async def job_result(job_id: str, request: Request) -> JSONResponse:
        page = _int_query(request, "page", 1, 1, 1_000_000)
        limit = _int_query(request, "limit", 100, 1, MAX_RESULT_LIMIT)
        status_code, body = service.result_body(job_id, page, limit)
        return JSONResponse(body, status_code=status_code)

    @router.delete("/ocr/delete/{job_id}")
    async def delete_job(job_id: str, request: Request) -> dict[str, Any]:
        await run_in_threadpool(service.delete, job_id)
        after_commit(request)
        return {"message": "Job deleted successfully"}

    return router


def _storage_router(service: OcrService) -> APIRouter:
    router = APIRouter(prefix=STORAGE_PREFIX)

    @router.put("/{job_id}/{part}")
    async def put_part(job_id: str, part: int, request: Request, signature: str = "") -> Response:
        data = await request.body()
        etag = await run_in_threadpool(service.put_part, job_id, part, signature, data)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})

    return router


def _admin_router(settings: ServerSettings, service: OcrService) -> APIRouter:
    """Introspection outside the LeapOCR contract; never faulted, but it needs the API key like the API."""
    router = APIRouter(prefix="/_admin", dependencies=[Depends(_require_api_key(settings))])

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return service.stats()

    return router


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(ConnectionDropped)
    async def dropped(request: Request, _: ConnectionDropped) -> Response:
        log.info("dropped the connection of %s %s (fault injection)", request.method, request.url.path)
        # Let uvicorn notice the lost connection first, so it discards this response instead of logging it.
        for _tick in range(3):
            await asyncio.sleep(0)
        return Response(status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(exc.status_code, _code_for_status(exc.status_code), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error_response(400, "VALIDATION_ERROR", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def crash(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error_response(500, "SYSTEM_ERROR", "internal server error")


class _OfflineApp(FastAPI):
    """FastAPI that keeps uvicorn's transport in the scope, so an injected drop can reset the socket.

    uvicorn's ``send`` is a bound method of its request cycle, which holds the transport; Starlette's middleware
    wraps ``send`` later, so this is the one place where it is still reachable.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None:
                scope[TRANSPORT_SCOPE_KEY] = transport
        await super().__call__(scope, receive, send)


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the offline LeapOCR app; its worker pool is shut down with the app's lifespan."""
    service = OcrService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        try:
            yield
        finally:
            service.shutdown()

    app = _OfflineApp(title="invoiceflow offline LeapOCR", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app)

    @app.get("/health")
    @app.get(f"{API_PREFIX}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(_api_router(settings, service))
    app.include_router(_storage_router(service))
    app.include_router(_admin_router(settings, service))
    return app


def _default_public_url(host: str, port: int) -> str:
    """Wildcard binds and ephemeral ports cannot name themselves; fall back to the request's own URL."""
    if port == 0 or host in ("", "0.0.0.0", "::"):
        return ""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    host: str,
    port: int,
    api_key: str,
    *,
    workers: int = 2,
    latency_per_page: float = 0.0,
    public_url: str | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    data_dir: Path | None = None,
    rate_429: float = 0.0,
    retry_after: float = 1.0,
    rate_5xx: float = 0.0,
    fail_rate: float = 0.0,
    max_concurrent_jobs: int | None = None,
    credits: int | None = None,
    drop_rate: float = 0.0,
    drop_after_commit_rate: float = 0.0,
    seed: int | None = None,
    upload_ttl: float = DEFAULT_UPLOAD_TTL,
) -> None:
    """Run the server in the foreground (blocking) with uvicorn's one-line-per-request access log."""
    settings = ServerSettings(
        api_key=api_key,
        public_url=_default_public_url(host, port) if public_url is None else public_url,
        workers=workers,
        latency_per_page=latency_per_page,
        data_dir=data_dir,
        part_size=part_size,
        rate_429=rate_429,
        retry_after=retry_after,
        rate_5xx=rate_5xx,
        fail_rate=fail_rate,
        max_concurrent_jobs=max_concurrent_jobs,
        credits=credits,
        drop_rate=drop_rate,
        drop_after_commit_rate=drop_after_commit_rate,
        seed=seed,
        upload_ttl=upload_ttl,
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=True)


@contextlib.contextmanager
def running_server(
    api_key: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    workers: int = 2,
    latency_per_page: float = 0.0,
    part_size: int = DEFAULT_PART_SIZE,
    data_dir: Path | None = None,
    startup_timeout: float = 10.0,
    rate_429: float = 0.0,
    retry_after: float = 1.0,
    rate_5xx: float = 0.0,
    fail_rate: float = 0.0,
    max_concurrent_jobs: int | None = None,
    credits: int | None = None,
    drop_rate: float = 0.0,
    drop_after_commit_rate: float = 0.0,
    seed: int | None = None,
    upload_ttl: float = DEFAULT_UPLOAD_TTL,
) -> Iterator[str]:
    """Run the server in a background thread and yield its SDK base URL (``http://host:port/api/v1``).

    The socket is bound before the app is built so that ``port=0`` still yields absolute upload URLs. The
    fault keywords are those of ``ServerSettings``; ``GET <root>/_admin/stats`` reports what happened.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    root = _default_public_url(host, bound_port) or f"http://127.0.0.1:{bound_port}"
    settings = ServerSettings(
        api_key,
        root,
        workers,
        latency_per_page,
        data_dir,
        part_size,
        rate_429=rate_429,
        retry_after=retry_after,
        rate_5xx=rate_5xx,
        fail_rate=fail_rate,
        max_concurrent_jobs=max_concurrent_jobs,
        credits=credits,
        drop_rate=drop_rate,
        drop_after_commit_rate=drop_after_commit_rate,
        seed=seed,
        upload_ttl=upload_ttl,
    )
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)  # signal handlers are skipped automatically off the main thread
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="leapocr-server"
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("offline LeapOCR server failed to start")
            time.sleep(0.01)
        yield f"{root}{API_PREFIX}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _share(value: str) -> float:
    """argparse type for a rate between 0 and 1."""
    try:
        share = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from exc
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return share


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``invoiceflow leapocr-server`` options (the main CLI delegates here, so flags live with the server)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8484)
    parser.add_argument("--api-key", help="the only X-API-KEY served (default: $LEAPOCR_API_KEY)")
    parser.add_argument("--workers", type=int, default=2, help="jobs processed at once")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds of processing per page, extraction included (emulates a remote service)",
    )
    faults = parser.add_argument_group(
        "fault injection",
        "Faults hit the /api/v1 routes (not /health, the storage PUTs or /_admin/stats) and are decided before "
        "a route acts, so a faulted submit creates no job. One draw per request picks drop, 429 or 5xx, so "
        "--drop-rate + --rate-429 + --rate-5xx must not exceed 1. GET /_admin/stats (with the API key) "
        "counts jobs per content hash and faults.",
    )
    faults.add_argument(
        "--rate-429",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of API requests answered 429 TOO_MANY_REQUESTS with a Retry-After header",
    )
    faults.add_argument(
        "--retry-after",
        type=float,
        default=1.0,
        metavar="S",
        help="Retry-After seconds on every 429 (default: 1; fractions are sent as e.g. 0.5)",
    )
    faults.add_argument(
        "--rate-5xx",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of API requests answered 500/502/503 SYSTEM_ERROR",
    )
    faults.add_argument(
        "--fail-rate",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of submitted jobs that end 'failed' half-way with an error_message (credits refunded)",
    )
    faults.add_argument(
        "--max-concurrent-jobs",
        type=int,
        default=None,
        metavar="N",
        help="at most N jobs pending or processing (from upload start until completed/failed/deleted); "
        "more submissions get 429 with Retry-After (default: no limit)",
    )
    faults.add_argument(
        "--credits",
        type=int,
        default=None,
        metavar="N",
        help="credit balance: reserved per page at submission, charged on success, refunded on failure; "
        "a job that does not fit gets 402 LESS_CREDITS (default: unlimited)",
    )
    faults.add_argument(
        "--drop-rate",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of API requests whose connection is reset without an answer, before the server acts",
    )
    faults.add_argument(
        "--drop-after-commit-rate",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of POST/DELETE requests that take effect (e.g. the job IS created) but whose answer "
        "is lost to a reset connection",
    )
    faults.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the one random generator behind every fault, so the same request sequence "
        "meets the same faults (default: unseeded)",
    )
    faults.add_argument(
        "--upload-ttl",
        type=float,
        default=DEFAULT_UPLOAD_TTL,
        metavar="S",
        help="seconds after which an uncompleted direct upload expires and frees its concurrency slot "
        f"(default: {DEFAULT_UPLOAD_TTL:g})",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Start the server from ``add_arguments`` options; the key defaults to ``$LEAPOCR_API_KEY``."""
    api_key = args.api_key or os.environ.get("LEAPOCR_API_KEY")
    if not api_key:
        print(
            "error: give --api-key or set LEAPOCR_API_KEY (requests must carry it as X-API-KEY)",
            file=sys.stderr,
        )
        return 2
    try:
        serve(
            args.host,
            args.port,
            api_key,
            workers=args.workers,
            latency_per_page=args.latency,
            rate_429=args.rate_429,
            retry_after=args.retry_after,
            rate_5xx=args.rate_5xx,
            fail_rate=args.fail_rate,
            max_concurrent_jobs=args.max_concurrent_jobs,
            credits=args.credits,
            drop_rate=args.drop_rate,
            drop_after_commit_rate=args.drop_after_commit_rate,
            seed=args.seed,
            upload_ttl=args.upload_ttl,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
