"""The hook's resilience against the offline server with injected faults, and the ``leapocr`` connection type."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from conftest import REPO
from leapocr import Format, ProcessOptions

from invoiceflow.leapocr.hooks import (
    LeapOcrApi,
    LeapOcrAuthError,
    LeapOcrCreditsExhausted,
    LeapOcrHook,
    LeapOcrUnavailable,
    RetryPolicy,
)
from invoiceflow.leapocr.server import running_server

KEY = "hook-test-key"
PDF = (REPO / "include" / "samples" / "synthetic-compact-en.pdf").read_bytes()
OPTIONS = ProcessOptions(format=Format.MARKDOWN)


def stats(base_url: str) -> dict[str, Any]:
    root = base_url.removesuffix("/api/v1")
    return httpx.get(f"{root}/_admin/stats", headers={"X-API-KEY": KEY}).json()


def api(base_url: str, key: str = KEY, **kwargs: Any) -> tuple[LeapOcrApi, mock.AsyncMock]:
    sleep = mock.AsyncMock()
    policy = kwargs.pop("policy", RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.05))
    return LeapOcrApi(key, base_url, policy=policy, sleep=sleep, rng=random.Random(7), **kwargs), sleep


@pytest.fixture
def flaky_429() -> Iterator[str]:
    with running_server(api_key=KEY, rate_429=0.5, retry_after=3, seed=11) as base_url:
        yield base_url


@pytest.mark.asyncio
async def test_429_is_retried_and_retry_after_is_honoured(flaky_429: str) -> None:
    client, sleep = api(flaky_429)
    async with client:
        job_ids = [await client.submit_file(PDF, f"doc{n}.pdf", OPTIONS) for n in range(4)]
        for job_id in job_ids:
            await client.job_status(job_id)
    faults = stats(flaky_429)["faults"]
    assert faults["429"] > 0
    assert sleep.await_count == faults["429"]
    assert all(call.args[0] >= 3 for call in sleep.await_args_list), "never sooner than Retry-After"
    assert stats(flaky_429)["jobs_submitted"] == 4


@pytest.mark.asyncio
async def test_5xx_and_dropped_connections_are_retried() -> None:
    with running_server(api_key=KEY, rate_5xx=0.3, drop_rate=0.2, seed=5) as base_url:
        client, sleep = api(base_url)
        async with client:
            job_id = await client.submit_file(PDF, "doc.pdf", OPTIONS)
            for _ in range(6):
                await client.job_status(job_id)
        faults = stats(base_url)["faults"]
    # 5xx come back to our retry loop; a dropped connection is retried by the SDK itself, step by step (so a lost
    # answer to completing an upload repeats that idempotent step instead of uploading a twin)
    assert sleep.await_count == faults["5xx"] > 0
    assert faults["dropped"] > 0
    assert all(0 <= call.args[0] <= 0.05 for call in sleep.await_args_list)


def test_backoff_is_exponential_with_full_jitter_and_never_below_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0)
    rng = random.Random(3)
    for attempt in range(8):
        delays = {policy.delay(attempt, None, rng) for _ in range(50)}
        assert len(delays) > 40, "jitter"
        assert max(delays) <= min(8.0, 0.5 * 2**attempt)
    assert all(policy.delay(0, 3.0, rng) >= 3.0 for _ in range(20))


@pytest.mark.asyncio
async def test_persistent_failure_ends_in_a_typed_error() -> None:
    with running_server(api_key=KEY, rate_5xx=1.0, seed=1) as base_url:
        client, sleep = api(base_url, policy=RetryPolicy(max_attempts=3, base_delay=0.01))
        async with client:
            with pytest.raises(LeapOcrUnavailable, match="after 3 attempts"):
                await client.submit_file(PDF, "doc.pdf", OPTIONS)
    assert sleep.await_count == 2


@pytest.mark.asyncio
async def test_401_fails_fast_without_retry(leapocr_base_url: str) -> None:
    client, sleep = api(leapocr_base_url, key="wrong-key")
    async with client:
        with pytest.raises(LeapOcrAuthError, match="HTTP 401"):
            await client.submit_file(PDF, "doc.pdf", OPTIONS)
    sleep.assert_not_awaited()


@pytest.mark.asyncio
async def test_402_out_of_credits_is_typed_and_not_retried() -> None:
    with running_server(api_key=KEY, credits=0) as base_url:
        client, sleep = api(base_url)
        async with client:
            with pytest.raises(LeapOcrCreditsExhausted, match="402"):
                await client.submit_file(PDF, "doc.pdf", OPTIONS)
        assert stats(base_url)["jobs_submitted"] == 0
    sleep.assert_not_awaited()


@pytest.mark.asyncio
async def test_all_result_pages_are_fetched(
    leapocr_base_url: str, leapocr_api_key: str, tmp_path: Path
) -> None:
    """More pages than one result page holds: the API pages results by 100, we fetch them all."""
    from fpdf import FPDF

    pdf = FPDF()
    for n in range(1, 106):
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.cell(text=f"Invoice page {n}")
    client = LeapOcrApi(leapocr_api_key, leapocr_base_url)
    async with client:
        job_id = await client.submit_file(bytes(pdf.output()), "long.pdf", OPTIONS)
        await client.client.ocr.wait_until_done(job_id)
        pages, facts = await client.fetch_results(job_id)
    assert [p["page_number"] for p in pages] == list(range(1, 106))
    assert facts["total_pages"] == 105


def test_connection_fields_and_defaults() -> None:
    from airflow.sdk import Connection

    hook = LeapOcrHook("leapocr_x")
    conn = Connection(
        conn_id="leapocr_x",
        conn_type="leapocr",
        host="http://127.0.0.1:9/api/v1/",
        password="k",
        extra=json.dumps({"max_jobs_in_flight": 3, "extra__leapocr__max_attempts": "4"}),
    )
    built = hook.api_from_connection(conn)
    assert (built.base_url, built.max_jobs_in_flight, built.policy.max_attempts) == (
        "http://127.0.0.1:9/api/v1",
        3,
        4,
    )
    assert (
        LeapOcrHook.base_url(Connection(conn_id="c", conn_type="leapocr")) == "https://api.leapocr.com/api/v1"
    )
    with pytest.raises(LeapOcrAuthError, match="no API key"):
        hook.api_from_connection(Connection(conn_id="leapocr_x", conn_type="leapocr", host="h"))


def test_leapocr_connection_type_is_registered_with_airflow() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.hooks["leapocr"].hook_class_name == "invoiceflow.leapocr.hooks.LeapOcrHook"
    behaviour = manager.field_behaviours["leapocr"]
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    assert "login" in behaviour["hidden_fields"]
    assert {"extra__leapocr__max_jobs_in_flight", "extra__leapocr__max_attempts"} <= set(
        manager.connection_form_widgets
    )
