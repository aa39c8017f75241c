"""Offline, LeapOCR-compatible HTTP server.

Serves the LeapOCR API under ``/api/v1`` so that the unmodified ``leapocr`` 2.0.1 SDK works against localhost
(``ClientConfig(base_url="http://HOST:PORT/api/v1")``). The contract follows the team's LeapOCR API notes
(``leapocr-api.md``): presigned multipart uploads that point back at ``/_storage``, ETag
checks on completion, 202 results while a job runs, 200 + JSON on delete, and error bodies of the form
``{"code": ..., "error": {"message": ...}, "details": null}``.

Extraction is delegated to :mod:`invoiceflow.extraction` (imported lazily inside the job) so the server stays
a thin transport layer and a broken engine fails jobs instead of the whole server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

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


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """Runtime knobs of the offline server.

    ``public_url`` is the server root that clients can reach (e.g. ``http://127.0.0.1:8000``); presigned
    upload URLs must be absolute, so they are built from it. An empty string means "use the URL the request
    came in on". ``part_size`` sets the presigned part size (small values force multipart in tests).
    """

    api_key: str
    public_url: str
    workers: int = 2
    latency_per_page: float = 0.0
    data_dir: Path | None = None
    part_size: int = DEFAULT_PART_SIZE

    def __post_init__(self) -> None:
        if not self.api_key or not self.api_key.strip():
            raise ValueError("api_key must not be empty")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.latency_per_page < 0:
            raise ValueError("latency_per_page must be >= 0")
        if self.part_size < 1:
            raise ValueError("part_size must be >= 1")


# ----------------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error that becomes a LeapOCR-shaped JSON error response (the SDK reads ``error.message``)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


class JobFailure(Exception):
    """A job-level failure whose message is shown to clients as ``error_message``."""


def _error_response(status_code: int, code: str, message: str) -> JSONResponse:
    body = {"code": code, "error": {"message": message}, "details": None}
    return JSONResponse(body, status_code=status_code)


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
            self._jobs[job.id] = job
        return job

    def create_from_url(self, url: str, options: Options) -> Job:
        name = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1] or "document"
        job = Job(str(uuid.uuid4()), name[:MAX_FILE_NAME], 0, "", options, _now(), source_url=url)
        with self._lock:
            self._jobs[job.id] = job
            self._submit(job)
        return job

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
        if len(data) != spec.size:
            raise _invalid(f"part {part} must be {spec.size} bytes, got {len(data)}")
        self._blobs.put(job_id, part, data)
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def complete(self, job_id: str, parts: Any) -> Job:
        """Check ETags and size, then queue the job; repeats of a completed upload are answered as is."""
        with self._lock:
            job = self._get(job_id)
            if job.submitted:
                return job
            expected = job.parts
        self._verify_parts(job_id, expected, job.file_size, parts)
        with self._lock:
            job = self._get(job_id)
            if not job.submitted:
                self._submit(job)
            return job

    def _verify_parts(self, job_id: str, expected: tuple[PartSpec, ...], file_size: int, parts: Any) -> None:
        """Like S3's CompleteMultipartUpload: every part once, matching ETags, and the declared total size."""
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise _invalid("parts must be a list of {part_number, etag} objects")
        etags = {p.get("part_number"): str(p.get("etag", "")).strip().strip('"') for p in parts}
        numbers = sorted(k for k in etags if isinstance(k, int))
        if len(parts) != len(expected) or numbers != [p.number for p in expected]:
            raise _invalid(f"expected parts 1..{len(expected)}, each exactly once")
        size = 0
        for spec in expected:
            data = self._blobs.get(job_id, spec.number)
            if data is None:
                raise _invalid(f"part {spec.number} was not uploaded")
            if hashlib.md5(data, usedforsecurity=False).hexdigest() != etags[spec.number]:
                raise _invalid(f"etag mismatch for part {spec.number}")
            size += len(data)
        if size != file_size:
            raise _invalid(f"uploaded {size} bytes but file_size is {file_size}")

    def _submit(self, job: Job) -> None:
        """Queue a job; caller holds the lock."""
        job.submitted = True
        job.updated_at = _now()
        self._executor.submit(self._run_job, job.id)

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._get(job_id)
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
        self._publish(job_id, pages)

    def _load_input(self, job: Job) -> tuple[bytes, str]:
        if job.source_url is not None:
            data, declared = fetch_url(job.source_url)
            content_type = sniff_content_type(data) or declared or ""
            if content_type not in CONTENT_TYPES:
                raise JobFailure(
                    f"unsupported content type {content_type or 'unknown'!r} at {job.source_url}"
                )
            self._update(job.id, file_size=len(data), content_type=content_type)
            return data, content_type
        data = self._blobs.assemble(job.id, job.parts)
        return data, sniff_content_type(data) or job.content_type

    def _publish(self, job_id: str, pages: list[dict[str, Any]]) -> None:
        """Release pages one by one so status polls see progress (and latency emulates a remote service)."""
        if self._update(job_id, total_pages=len(pages), processed_pages=0) is None:
            return
        for page in sorted(pages, key=lambda p: p["page_number"]):
            if self.settings.latency_per_page and self._stopping.wait(self.settings.latency_per_page):
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
            rate = MODEL_CREDITS[job.options.model] + (job.options.result_format == "structured")
            credits = len(job.pages) * rate
        self._finish(job_id, COMPLETED, credits_used=credits)

    def _finish(self, job_id: str, status: str, **changes: Any) -> None:
        now = _now()
        self._update(job_id, status=status, completed_at=now, **changes)
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


def _api_router(settings: ServerSettings, service: OcrService) -> APIRouter:
    def require_api_key(request: Request) -> None:
        supplied = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(supplied.encode(), settings.api_key.encode()):
            raise ApiError(401, "AUTHENTICATION_ERROR", "invalid API key")

    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_api_key)])

    @router.post("/ocr/uploads/direct")
    async def upload_direct(request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        file_name, file_size, content_type = _parse_file_fields(body)
        job = service.create_direct(file_name, file_size, content_type, parse_options(body))
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
        }

    @router.post("/ocr/uploads/{job_id}/complete")
    async def upload_complete(job_id: str, request: Request) -> dict[str, Any]:
        body = await _json_object(request)
        job = await run_in_threadpool(service.complete, job_id, body.get("parts"))
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
    async def delete_job(job_id: str) -> dict[str, Any]:
        await run_in_threadpool(service.delete, job_id)
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status_code, exc.code, exc.message)

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


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the offline LeapOCR app; its worker pool is shut down with the app's lifespan."""
    service = OcrService(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        try:
            yield
        finally:
            service.shutdown()

    app = FastAPI(title="invoiceflow offline LeapOCR", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    _install_error_handlers(app)

    @app.get("/health")
    @app.get(f"{API_PREFIX}/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(_api_router(settings, service))
    app.include_router(_storage_router(service))
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
) -> None:
    """Run the server in the foreground (blocking) with uvicorn's one-line-per-request access log."""
    settings = ServerSettings(
        api_key=api_key,
        public_url=_default_public_url(host, port) if public_url is None else public_url,
        workers=workers,
        latency_per_page=latency_per_page,
        data_dir=data_dir,
        part_size=part_size,
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
) -> Iterator[str]:
    """Run the server in a background thread and yield its SDK base URL (``http://host:port/api/v1``).

    The socket is bound before the app is built so that ``port=0`` still yields absolute upload URLs.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    root = _default_public_url(host, bound_port) or f"http://127.0.0.1:{bound_port}"
    settings = ServerSettings(api_key, root, workers, latency_per_page, data_dir, part_size)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``invoiceflow leapocr-server`` options (the main CLI delegates here, so flags live with the server)."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8484)
    parser.add_argument("--api-key", help="the only X-API-KEY served (default: $LEAPOCR_API_KEY)")
    parser.add_argument("--workers", type=int, default=2, help="jobs processed at once")
    parser.add_argument("--latency", type=float, default=0.0, help="extra seconds of processing per page")


def run_from_args(args: argparse.Namespace) -> int:
    """Start the server from ``add_arguments`` options; the key defaults to ``$LEAPOCR_API_KEY``."""
    api_key = args.api_key or os.environ.get("LEAPOCR_API_KEY")
    if not api_key:
        print(
            "error: give --api-key or set LEAPOCR_API_KEY (requests must carry it as X-API-KEY)",
            file=sys.stderr,
        )
        return 2
    serve(args.host, args.port, api_key, workers=args.workers, latency_per_page=args.latency)
    return 0
