"""Contract tests: the unmodified leapocr 2.0.1 SDK against the offline LeapOCR server.

They guard the promise that DAGs written for the hosted LeapOCR API run unchanged against localhost, so the
SDK is used as a black box; raw httpx calls cover the error shapes the SDK hides.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import itertools
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fpdf import FPDF
from leapocr import (
    APIError,
    ClientConfig,
    Format,
    JobError,
    JobFailedError,
    JobStatusType,
    LeapOCR,
    Model,
    PollOptions,
    ProcessOptions,
)
from PIL import Image, ImageDraw

from invoiceflow.leapocr import server
from invoiceflow.leapocr.server import ServerSettings, create_app, running_server, schema_dir

API_KEY = "test-key"
PART_SIZE = 512
FAST_POLL = PollOptions(poll_interval=0.05, max_wait=30.0)
SCHEMA: dict[str, Any] = json.loads((schema_dir() / "invoice.json").read_text())
SCHEMA_KEYS = set(SCHEMA["properties"])


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_server(api_key=API_KEY, host="127.0.0.1", port=0, part_size=PART_SIZE) as url:
        yield url


@pytest_asyncio.fixture
async def client(base_url: str) -> AsyncIterator[LeapOCR]:
    async with LeapOCR(API_KEY, ClientConfig(base_url=base_url, max_retries=0)) as sdk:
        yield sdk


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"X-API-KEY": API_KEY}, timeout=10) as http:
        yield http


def make_invoice_pdf(path: Path, pages: int = 1) -> Path:
    """A text-layer invoice; each page repeats the header so every page has extractable fields."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for number in range(1, pages + 1):
        pdf.add_page()
        lines = [
            "ACME Office Supplies GmbH",
            "Invoice Number: INV-2024-0042",
            "Invoice Date: 2024-03-15",
            "Due Date: 2024-04-14",
            "PO Number: PO-7781",
            f"Page {number} of {pages}",
            "Description  Qty  Unit Price  Total",
            "Stapler  2  10.00  20.00",
            "Subtotal: 20.00 EUR",
            "VAT 19%: 3.80 EUR",
            "Total: 23.80 EUR",
        ]
        for line in lines:
            pdf.cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
    path.write_bytes(bytes(pdf.output()))
    return path


def make_invoice_image(path: Path, fmt: str) -> Path:
    image = Image.new("RGB", (800, 400), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(["ACME GmbH", "Invoice Number: INV-9", "Total: 23.80 EUR"]):
        draw.text((40, 40 + 40 * row), line, fill="black")
    extra = {"compression": "tiff_deflate"} if fmt == "TIFF" else {}  # raw TIFF would be ~2000 upload parts
    image.save(path, format=fmt, **extra)
    return path


async def run_to_completion(client: LeapOCR, file: Path, options: ProcessOptions) -> tuple[str, Any]:
    job = await client.ocr.process_file(file, options)
    return job.job_id, await client.ocr.wait_until_done(job.job_id, FAST_POLL)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A plain static HTTP server, standing in for the remote host of a URL job."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------------------------- SDK contract


@pytest.mark.asyncio
async def test_structured_multipart_roundtrip_with_pagination(
    client: LeapOCR, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf = make_invoice_pdf(tmp_path / "invoice.pdf", pages=3)
    assert pdf.stat().st_size > 2 * PART_SIZE
    seen_parts: list[int] = []
    original = client.ocr._uploader.upload_multipart

    async def spy(file: Any, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen_parts.append(len(parts))
        return await original(file, parts)

    monkeypatch.setattr(client.ocr._uploader, "upload_multipart", spy)
    options = ProcessOptions(format=Format.STRUCTURED, schema=SCHEMA)
    job_id, result = await run_to_completion(client, pdf, options)

    assert seen_parts and seen_parts[0] >= 3
    assert result.status == JobStatusType.COMPLETED
    assert result.file_name == "invoice.pdf"
    assert result.total_pages == result.processed_pages == 3
    assert result.credits_used == 3 * 2  # standard-v2 (1/page) + structured output (1/page)
    assert result.model == "standard-v2" and result.result_format == "structured"
    assert [p.page_number for p in result.pages] == [1, 2, 3]
    assert all(isinstance(p.result, dict) and set(p.result) >= SCHEMA_KEYS for p in result.pages)
    assert all(0.0 <= p.confidence <= 1.0 and p.id for p in result.pages)

    page2 = await client.ocr.get_results(job_id, page=2, limit=1)
    assert [p.page_number for p in page2.pages] == [2]
    assert page2.pages[0].result == result.pages[1].result
    assert page2.pagination is not None
    assert (page2.pagination.page, page2.pagination.limit) == (2, 1)
    assert page2.pagination.total == page2.pagination.total_pages == 3

    status = await client.ocr.get_job_status(job_id)
    assert status.job_id == job_id and status.status == JobStatusType.COMPLETED
    assert status.processed_pages == status.total_pages == 3 and status.progress == 100.0
    assert status.error_message is None
    assert status.created_at.year >= 2024 and status.updated_at >= status.created_at
    assert datetime.now(UTC) >= status.created_at


@pytest.mark.asyncio
async def test_markdown_with_pro_model_returns_page_text(client: LeapOCR, tmp_path: Path) -> None:
    pdf = make_invoice_pdf(tmp_path / "two.pdf", pages=2)
    _, result = await run_to_completion(
        client, pdf, ProcessOptions(format=Format.MARKDOWN, model=Model.PRO_V2)
    )
    assert result.credits_used == 2 * 3  # pro-v2, no structured surcharge
    assert result.model == "pro-v2" and result.result_format == "markdown"
    assert all(isinstance(p.result, str) for p in result.pages)
    assert "INV-2024-0042" in result.pages[0].result and "Page 2 of 2" in result.pages[1].result


@pytest.mark.asyncio
async def test_process_url_fetches_remote_document(client: LeapOCR, tmp_path: Path, file_server: str) -> None:
    make_invoice_pdf(tmp_path / "remote.pdf")
    job = await client.ocr.process_url(
        f"{file_server}/remote.pdf", ProcessOptions(format=Format.STRUCTURED, schema=SCHEMA)
    )
    assert job.status in (JobStatusType.PENDING, JobStatusType.PROCESSING)
    result = await client.ocr.wait_until_done(job.job_id, FAST_POLL)
    assert result.file_name == "remote.pdf" and result.total_pages == 1
    assert set(result.pages[0].result) >= SCHEMA_KEYS


@pytest.mark.asyncio
async def test_process_url_unreachable_fails_job(client: LeapOCR, file_server: str) -> None:
    job = await client.ocr.process_url(f"{file_server}/missing.pdf", ProcessOptions(format=Format.MARKDOWN))
    with pytest.raises(JobFailedError, match="HTTP 404"):
        await client.ocr.wait_until_done(job.job_id, FAST_POLL)


@pytest.mark.asyncio
async def test_template_slug_uses_invoice_schema(client: LeapOCR, tmp_path: Path) -> None:
    pdf = make_invoice_pdf(tmp_path / "tpl.pdf")
    _, result = await run_to_completion(client, pdf, ProcessOptions(template_slug="invoice"))
    assert result.result_format == "structured" and result.model == "standard-v2"
    assert result.credits_used == 2
    assert set(result.pages[0].result) >= SCHEMA_KEYS


@pytest.mark.asyncio
async def test_unknown_template_slug_is_404(client: LeapOCR, tmp_path: Path) -> None:
    with pytest.raises(APIError) as err:
        await client.ocr.process_file(
            make_invoice_pdf(tmp_path / "x.pdf"), ProcessOptions(template_slug="nope")
        )
    assert err.value.status_code == 404 and "nope" in err.value.message


@pytest.mark.asyncio
async def test_delete_then_every_route_is_404(client: LeapOCR, tmp_path: Path) -> None:
    job_id, _ = await run_to_completion(
        client, make_invoice_pdf(tmp_path / "d.pdf"), ProcessOptions(format=Format.MARKDOWN)
    )
    assert await client.ocr.delete_job(job_id) == {"message": "Job deleted successfully"}
    for call in (
        client.ocr.get_job_status(job_id),
        client.ocr.get_results(job_id),
        client.ocr.delete_job(job_id),
    ):
        with pytest.raises(APIError) as err:
            await call
        assert err.value.status_code == 404


@pytest.mark.asyncio
async def test_wrong_api_key_is_401(base_url: str, tmp_path: Path) -> None:
    async with LeapOCR("wrong-key", ClientConfig(base_url=base_url, max_retries=0)) as sdk:
        with pytest.raises(APIError) as err:
            await sdk.ocr.process_file(
                make_invoice_pdf(tmp_path / "a.pdf"), ProcessOptions(format=Format.MARKDOWN)
            )
        assert err.value.status_code == 401 and err.value.message == "invalid API key"
        with pytest.raises(APIError) as err:
            await sdk.ocr.get_job_status(str(uuid.uuid4()))
        assert err.value.status_code == 401
        assert await sdk.health() is True  # health stays unauthenticated


@pytest.mark.asyncio
async def test_result_while_processing_is_202(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    with running_server(API_KEY, latency_per_page=0.4, data_dir=blobs, part_size=PART_SIZE) as slow_url:
        async with LeapOCR(API_KEY, ClientConfig(base_url=slow_url, max_retries=0)) as sdk:
            pdf = make_invoice_pdf(tmp_path / "slow.pdf", pages=3)
            job = await sdk.ocr.process_file(pdf, ProcessOptions(format=Format.MARKDOWN))
            with pytest.raises(JobError):
                await sdk.ocr.get_results(job.job_id)
            status = await sdk.ocr.get_job_status(job.job_id)
            assert status.status in (JobStatusType.PENDING, JobStatusType.PROCESSING)
            assert status.processed_pages < 3
            assert len(list((blobs / job.job_id).iterdir())) >= 2  # multipart parts land in data_dir
            seen: list[int] = []
            poll = PollOptions(
                poll_interval=0.1, max_wait=20, on_progress=lambda s: seen.append(s.processed_pages)
            )
            result = await sdk.ocr.wait_until_done(job.job_id, poll)
            assert result.processed_pages == 3 and seen[-1] == 3
            assert not (blobs / job.job_id).exists()  # uploaded bytes are freed once the job ends
            assert any(0 < n < 3 for n in seen)  # progress is reported page by page


@pytest.mark.asyncio
async def test_corrupt_pdf_fails_without_credits(client: LeapOCR, tmp_path: Path) -> None:
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 200)
    job = await client.ocr.process_file(bad, ProcessOptions(format=Format.STRUCTURED, schema=SCHEMA))
    with pytest.raises(JobFailedError) as err:
        await client.ocr.wait_until_done(job.job_id, FAST_POLL)
    assert err.value.message and err.value.message != "Job processing failed"
    status = await client.ocr.get_job_status(job.job_id)
    assert status.status == JobStatusType.FAILED and status.error_message == err.value.message
    result = await client.ocr.get_results(job.job_id)
    assert result.status == JobStatusType.FAILED and result.credits_used == 0 and result.pages == []


@pytest.mark.asyncio
@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG"), (".tiff", "TIFF")])
async def test_images_are_accepted(client: LeapOCR, tmp_path: Path, suffix: str, fmt: str) -> None:
    image = make_invoice_image(tmp_path / f"scan{suffix}", fmt)
    _, result = await run_to_completion(
        client, image, ProcessOptions(format=Format.STRUCTURED, schema=SCHEMA)
    )
    assert result.status == JobStatusType.COMPLETED
    assert result.file_name == image.name and result.total_pages == 1
    assert isinstance(result.pages[0].result, dict)


# ------------------------------------------------------------------------------------- raw HTTP error shapes


def test_missing_api_key_error_body(base_url: str) -> None:
    response = httpx.get(f"{base_url}/ocr/status/{uuid.uuid4()}")
    assert response.status_code == 401
    assert response.json() == {
        "code": "AUTHENTICATION_ERROR",
        "error": {"message": "invalid API key"},
        "details": None,
    }
    assert httpx.get(f"{base_url}/health").status_code == 200


BASE_UPLOAD = {"file_name": "a.pdf", "file_size": 5, "content_type": "application/pdf", "format": "markdown"}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"format": None}, "format"),
        ({"file_size": 0}, "file_size"),
        ({"file_name": ""}, "file_name"),
        ({"file_name": "a.gif", "content_type": "image/gif"}, "content_type"),
        ({"format": "structured"}, "schema"),
        ({"schema": {"type": "object"}}, "structured"),
        ({"model": "gpt-9"}, "model"),
        ({"format": "structured", "schema": {"type": "object"}, "instructions": "x" * 101}, "instructions"),
        ({"template_slug": "invoice"}, "template_slug"),
    ],
)
def test_direct_upload_validation(raw: httpx.Client, overrides: dict[str, Any], fragment: str) -> None:
    body = {k: v for k, v in {**BASE_UPLOAD, **overrides}.items() if v is not None}
    response = raw.post("/ocr/uploads/direct", json=body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "VALIDATION_ERROR" and payload["details"] is None
    assert fragment in payload["error"]["message"]


def test_direct_upload_parts_complete_and_repeat(raw: httpx.Client, tmp_path: Path) -> None:
    data = make_invoice_pdf(tmp_path / "x.pdf").read_bytes()
    init = raw.post(
        "/ocr/uploads/direct", json={**BASE_UPLOAD, "file_name": "/dir/x.pdf", "file_size": len(data)}
    )
    assert init.status_code == 200
    job_id, parts = init.json()["job_id"], init.json()["parts"]
    assert str(uuid.UUID(job_id)) == job_id
    assert parts[0]["start_byte"] == 0 and parts[-1]["end_byte"] == len(data) - 1
    assert all(b["start_byte"] == a["end_byte"] + 1 for a, b in itertools.pairwise(parts))
    assert all(p["upload_url"].startswith("http://127.0.0.1:") for p in parts)

    tampered = httpx.put(parts[0]["upload_url"].split("?")[0] + "?signature=bad", content=b"x")
    assert tampered.status_code == 403

    etags = []
    for part in parts:
        chunk = data[part["start_byte"] : part["end_byte"] + 1]
        put = httpx.put(part["upload_url"], content=chunk)
        assert put.status_code == 200 and put.headers["ETag"].startswith('"')
        etags.append({"part_number": part["part_number"], "etag": put.headers["ETag"].strip('"')})

    wrong = [dict(etags[0], etag="0" * 32), *etags[1:]]
    assert raw.post(f"/ocr/uploads/{job_id}/complete", json={"parts": wrong}).status_code == 400
    assert raw.post(f"/ocr/uploads/{job_id}/complete", json={"parts": etags[:-1]}).status_code == 400

    first = raw.post(f"/ocr/uploads/{job_id}/complete", json={"parts": etags})
    again = raw.post(f"/ocr/uploads/{job_id}/complete", json={"parts": etags})
    assert first.status_code == again.status_code == 200
    assert first.json()["created_at"] == again.json()["created_at"]
    assert first.json()["created_at"].endswith("Z") and len(first.json()["created_at"]) == 20
    assert raw.get(f"/ocr/status/{job_id}").json()["file_name"] == "x.pdf"
    assert raw.delete(f"/ocr/delete/{job_id}").status_code == 200


def test_url_upload_rejects_file_scheme(raw: httpx.Client) -> None:
    response = raw.post("/ocr/uploads/url", json={"url": "file:///etc/passwd", "format": "markdown"})
    assert response.status_code == 400 and "http" in response.json()["error"]["message"]


def test_result_query_and_unknown_job(raw: httpx.Client) -> None:
    missing = raw.get(f"/ocr/result/{uuid.uuid4()}")
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    assert raw.get(f"/ocr/result/{uuid.uuid4()}", params={"limit": 1001}).status_code == 400
    assert raw.get(f"/ocr/result/{uuid.uuid4()}", params={"page": 0}).status_code == 400


def test_settings_and_app_validate_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="api_key"):
        ServerSettings(api_key=" ", public_url="")
    with pytest.raises(ValueError, match="workers"):
        ServerSettings(api_key="k", public_url="", workers=0)
    app = create_app(
        ServerSettings(api_key="k", public_url="http://example.test", data_dir=tmp_path / "blobs")
    )
    paths = {getattr(route, "path", "") for route in app.routes}
    assert {"/api/v1/ocr/uploads/direct", "/api/v1/ocr/result/{job_id}", "/_storage/{job_id}/{part}"} <= paths
    assert (tmp_path / "blobs").is_dir()


@pytest.mark.asyncio
async def test_markdown_for_image_renders_extracted_fields(client: LeapOCR, tmp_path: Path) -> None:
    image = make_invoice_image(tmp_path / "scan.png", "PNG")
    _, result = await run_to_completion(client, image, ProcessOptions(format=Format.MARKDOWN))
    assert result.result_format == "markdown" and result.credits_used == 1
    assert isinstance(result.pages[0].result, str) and "**invoice_number**" in result.pages[0].result


# ------------------------------------------------------------------------------------------ fault injection


def admin_stats(url: str, api_key: str = API_KEY) -> dict[str, Any]:
    root = url.removesuffix("/api/v1")
    response = httpx.get(f"{root}/_admin/stats", headers={"X-API-KEY": api_key}, timeout=5)
    response.raise_for_status()
    return response.json()


def fast_sdk(url: str, retries: int = 0) -> LeapOCR:
    """SDK client whose own transport retries (1, 2, 4 s by default) cost almost nothing."""
    return LeapOCR(API_KEY, ClientConfig(base_url=url, max_retries=retries, retry_delay=0.01))


def request_fault_trace(seed: int, requests: int = 40) -> tuple[list[str], dict[str, Any]]:
    """Outcome of each of ``requests`` status polls for unknown jobs (404 unless a fault hits)."""
    trace: list[str] = []
    with (
        running_server(API_KEY, seed=seed, rate_429=0.3, rate_5xx=0.2, drop_rate=0.1, retry_after=2.5) as url,
        httpx.Client(base_url=url, headers={"X-API-KEY": API_KEY}, timeout=5) as http,
    ):
        for _ in range(requests):
            try:
                response = http.get(f"/ocr/status/{uuid.uuid4()}")
            except httpx.TransportError as exc:
                trace.append(type(exc).__name__)
                continue
            code = response.json()["code"]
            if response.status_code == 429:
                assert response.headers["Retry-After"] == "2.5" and code == "TOO_MANY_REQUESTS"
            elif response.status_code >= 500:
                assert response.status_code in (500, 502, 503) and code == "SYSTEM_ERROR"
            else:
                assert response.status_code == 404
            trace.append(str(response.status_code))
        assert all(http.get("/health").status_code == 200 for _ in range(10))  # health is never faulted
        return trace, admin_stats(url)


def test_request_faults_repeat_with_the_seed() -> None:
    first, stats = request_fault_trace(seed=7)
    again, _ = request_fault_trace(seed=7)
    other, _ = request_fault_trace(seed=8)
    assert first == again and first != other
    assert {"404", "429", "ReadError"} <= set(first) and set(first) & {"500", "502", "503"}
    faults = stats["faults"]
    assert faults["429"] == first.count("429") and faults["dropped"] == first.count("ReadError")
    assert faults["5xx"] == sum(first.count(code) for code in ("500", "502", "503"))


def test_faulted_submissions_never_create_jobs() -> None:
    with running_server(API_KEY, seed=1, rate_429=0.5, rate_5xx=0.3, drop_rate=0.2) as url:
        with httpx.Client(base_url=url, headers={"X-API-KEY": API_KEY}, timeout=5) as http:
            for _ in range(10):
                for path, body in (
                    ("/ocr/uploads/url", {"url": "http://127.0.0.1:9/a.pdf", "format": "markdown"}),
                    ("/ocr/uploads/direct", BASE_UPLOAD),
                ):
                    with contextlib.suppress(httpx.TransportError):
                        assert http.post(path, json=body).status_code in (429, 500, 502, 503)
        stats = admin_stats(url)
    assert stats["jobs_created"] == stats["jobs_submitted"] == stats["active_jobs"] == 0
    assert sum(stats["faults"][k] for k in ("429", "5xx", "dropped")) == 20


@pytest.mark.asyncio
async def test_drop_is_a_transport_error_the_sdk_retries() -> None:
    with running_server(API_KEY, drop_rate=1.0) as url:
        async with fast_sdk(url, retries=2) as sdk:
            with pytest.raises(httpx.ReadError):
                await sdk.ocr.process_url("http://127.0.0.1:9/a.pdf", ProcessOptions(format=Format.MARKDOWN))
        stats = admin_stats(url)
    assert stats["faults"]["dropped"] == 3  # first attempt + 2 SDK retries, all before the server acted
    assert stats["jobs_created"] == 0


@pytest.mark.asyncio
async def test_drop_after_commit_loses_the_answer_and_sdk_retries_duplicate_the_job() -> None:
    """The trap our client must survive: the job exists, the SDK never learns its id, and retries again."""
    source = "http://127.0.0.1:9/lost.pdf"
    with running_server(API_KEY, drop_after_commit_rate=1.0) as url:
        async with fast_sdk(url, retries=1) as sdk:
            with pytest.raises(httpx.ReadError):
                await sdk.ocr.process_url(source, ProcessOptions(format=Format.MARKDOWN))
            with pytest.raises(APIError) as err:  # reads are never dropped after commit
                await sdk.ocr.get_job_status(str(uuid.uuid4()))
            assert err.value.status_code == 404
        stats = admin_stats(url)
    assert stats["jobs_created"] == stats["jobs_submitted"] == 2
    assert stats["jobs_by_source_url"] == {source: 2}
    assert stats["faults"]["dropped_after_commit"] == 2 and stats["faults"]["dropped"] == 0


@pytest.mark.asyncio
async def test_max_concurrent_jobs_429_until_a_job_completes(tmp_path: Path) -> None:
    pdf = make_invoice_pdf(tmp_path / "c.pdf")
    options = ProcessOptions(format=Format.MARKDOWN)
    with running_server(API_KEY, max_concurrent_jobs=1, latency_per_page=0.3) as url:
        async with fast_sdk(url) as sdk:
            first = await sdk.ocr.process_file(pdf, options)
            with pytest.raises(APIError) as err:
                await sdk.ocr.process_file(pdf, options)
            assert err.value.status_code == 429 and "at most 1" in err.value.message
            raw = httpx.post(
                f"{url}/ocr/uploads/url",
                json={"url": "http://127.0.0.1:9/a.pdf", "format": "markdown"},
                headers={"X-API-KEY": API_KEY},
            )
            assert raw.status_code == 429 and raw.headers["Retry-After"] == "1"
            assert raw.json()["code"] == "TOO_MANY_REQUESTS"
            assert admin_stats(url)["active_jobs"] == 1

            await sdk.ocr.wait_until_done(first.job_id, FAST_POLL)
            second = await sdk.ocr.process_file(pdf, options)
            await sdk.ocr.delete_job(second.job_id)  # deleting a running job frees its slot too
            assert (await sdk.ocr.process_file(pdf, options)).job_id
        stats = admin_stats(url)
    assert stats["faults"]["concurrency_429"] == 2 and stats["jobs_submitted"] == 3


def test_abandoned_uploads_expire_and_free_their_slot() -> None:
    with (
        running_server(API_KEY, max_concurrent_jobs=1, upload_ttl=0.2) as url,
        httpx.Client(base_url=url, headers={"X-API-KEY": API_KEY}, timeout=5) as http,
    ):
        abandoned = http.post("/ocr/uploads/direct", json=BASE_UPLOAD).json()
        assert http.post("/ocr/uploads/direct", json=BASE_UPLOAD).status_code == 429
        time.sleep(0.3)
        assert http.post("/ocr/uploads/direct", json=BASE_UPLOAD).status_code == 200
        status = http.get(f"/ocr/status/{abandoned['job_id']}").json()
        assert status["status"] == "failed" and "expired" in status["error_message"]
        assert httpx.put(abandoned["parts"][0]["upload_url"], content=b"12345").status_code == 403
        assert admin_stats(url)["faults"]["expired_uploads"] == 1


@pytest.mark.asyncio
async def test_credits_reserved_at_submission_charged_on_success(tmp_path: Path) -> None:
    two, four = make_invoice_pdf(tmp_path / "two.pdf", 2), make_invoice_pdf(tmp_path / "four.pdf", 4)
    options = ProcessOptions(format=Format.MARKDOWN)  # standard-v2 markdown: 1 credit per page
    with running_server(API_KEY, credits=5, latency_per_page=0.1) as url:
        async with fast_sdk(url) as sdk:
            job = await sdk.ocr.process_file(two, options)
            assert admin_stats(url)["credits_remaining"] == 3  # 2 reserved
            with pytest.raises(APIError) as err:  # 4 pages do not fit into 3: refused at /complete
                await sdk.ocr.process_file(four, options)
            assert err.value.status_code == 402 and "needs 4, 3 available" in err.value.message
            assert json.loads(err.value.response)["code"] == "LESS_CREDITS"
            assert (await sdk.ocr.wait_until_done(job.job_id, FAST_POLL)).credits_used == 2
            stats = admin_stats(url)
            assert (stats["credits_remaining"], stats["credits_charged"]) == (3, 2)

            await sdk.ocr.process_file(make_invoice_pdf(tmp_path / "three.pdf", 3), options)
            with pytest.raises(APIError) as err:  # nothing left for even one page: refused at upload start
                await sdk.ocr.process_file(two, options)
            assert err.value.status_code == 402
        stats = admin_stats(url)
    assert stats["faults"]["credits_402"] == 2 and stats["jobs_submitted"] == 2


@pytest.mark.asyncio
async def test_failed_jobs_carry_a_message_and_refund_credits(tmp_path: Path) -> None:
    pdf = make_invoice_pdf(tmp_path / "f.pdf", 2)
    with running_server(API_KEY, fail_rate=1.0, credits=2, latency_per_page=0.1) as url:
        async with fast_sdk(url) as sdk:
            job = await sdk.ocr.process_file(pdf, ProcessOptions(format=Format.MARKDOWN))
            assert admin_stats(url)["credits_remaining"] == 0
            with pytest.raises(JobFailedError, match="Failed to process page 1"):
                await sdk.ocr.wait_until_done(job.job_id, FAST_POLL)
            status = await sdk.ocr.get_job_status(job.job_id)
            assert status.status == JobStatusType.FAILED and "fail_rate" in (status.error_message or "")
            result = await sdk.ocr.get_results(job.job_id)
            assert result.credits_used == 0 and result.pages == []
        stats = admin_stats(url)
    assert (stats["credits_remaining"], stats["credits_charged"], stats["credits_reserved"]) == (2, 0, 0)
    assert stats["faults"]["failed_jobs"] == stats["jobs_failed"] == 1 and stats["active_jobs"] == 0


async def job_outcomes(seed: int, pdf: Path, jobs: int = 6) -> list[str]:
    with running_server(API_KEY, seed=seed, fail_rate=0.5) as url:
        async with fast_sdk(url) as sdk:
            ids = [
                (await sdk.ocr.process_file(pdf, ProcessOptions(format=Format.MARKDOWN))).job_id
                for _ in range(jobs)
            ]
            outcomes = []
            for job_id in ids:
                try:
                    await sdk.ocr.wait_until_done(job_id, FAST_POLL)
                    outcomes.append("completed")
                except JobFailedError:
                    outcomes.append("failed")
            return outcomes


@pytest.mark.asyncio
async def test_failed_jobs_repeat_with_the_seed(tmp_path: Path) -> None:
    pdf = make_invoice_pdf(tmp_path / "s.pdf")
    first = await job_outcomes(11, pdf)
    assert first == await job_outcomes(11, pdf)
    assert set(first) == {"completed", "failed"}


@pytest.mark.asyncio
async def test_stats_count_jobs_per_content_and_need_the_key(tmp_path: Path) -> None:
    a, b = make_invoice_pdf(tmp_path / "a.pdf", 1), make_invoice_pdf(tmp_path / "b.pdf", 2)
    with running_server(API_KEY) as url:
        async with fast_sdk(url) as sdk:
            ids = [
                (await sdk.ocr.process_file(pdf, ProcessOptions(format=Format.MARKDOWN))).job_id
                for pdf in (a, a, b)
            ]
            for job_id in ids:
                await sdk.ocr.wait_until_done(job_id, FAST_POLL)
        stats = admin_stats(url)
        with pytest.raises(httpx.HTTPStatusError) as err:
            admin_stats(url, api_key="wrong")
        assert err.value.response.status_code == 401
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    assert stats["jobs_by_file_sha256"] == {sha["a.pdf"]: 2, sha["b.pdf"]: 1}
    assert stats["jobs_created"] == stats["jobs_submitted"] == stats["jobs_completed"] == 3
    assert stats["active_jobs"] == 0 and stats["credits_remaining"] is None
    assert stats["credits_charged"] == 1 + 1 + 2  # a, a (1 page each) and b (2 pages), 1 credit per page
    assert not any(stats["faults"].values())


FAULT_FLAGS = (
    "--latency",
    "--workers",
    "--rate-429",
    "--retry-after",
    "--rate-5xx",
    "--fail-rate",
    "--max-concurrent-jobs",
    "--credits",
    "--drop-rate",
    "--drop-after-commit-rate",
    "--seed",
)


def test_cli_flags_are_documented_and_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    help_text = parser.format_help()
    assert all(flag in help_text for flag in FAULT_FLAGS) and "Retry-After" in help_text
    captured: dict[str, Any] = {}
    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: captured.update(args=args, **kwargs))
    argv = "--api-key k --rate-429 0.1 --retry-after 0.5 --rate-5xx 0.05 --fail-rate 0.05 --seed 3"
    argv += (
        " --max-concurrent-jobs 20 --credits 100 --drop-rate 0.01 --drop-after-commit-rate 0.02 --latency 2"
    )
    assert server.run_from_args(parser.parse_args(argv.split())) == 0
    assert captured["args"] == ("127.0.0.1", 8484, "k")
    expected = {
        "rate_429": 0.1,
        "retry_after": 0.5,
        "rate_5xx": 0.05,
        "fail_rate": 0.05,
        "seed": 3,
        "max_concurrent_jobs": 20,
        "credits": 100,
        "drop_rate": 0.01,
        "drop_after_commit_rate": 0.02,
        "latency_per_page": 2.0,
    }
    assert {k: captured[k] for k in expected} == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["--rate-429", "1.5"])


def test_fault_settings_validate_and_stay_backward_compatible() -> None:
    legacy = ServerSettings("k", "", 3, 0.5, None, 1024)  # positional form used before faults existed
    assert (legacy.workers, legacy.rate_429, legacy.credits, legacy.seed) == (3, 0.0, None, None)
    bad_settings: list[dict[str, Any]] = [
        {"rate_429": 1.5},
        {"rate_429": 0.6, "rate_5xx": 0.6},
        {"retry_after": -1},
        {"max_concurrent_jobs": 0},
        {"credits": -1},
        {"upload_ttl": 0},
    ]
    for bad in bad_settings:
        with pytest.raises(ValueError):
            ServerSettings("k", "", **bad)
