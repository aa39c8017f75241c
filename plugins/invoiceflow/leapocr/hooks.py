"""Build the official ``leapocr`` SDK client from an Airflow connection, and add what the SDK lacks.

Connection ``leapocr_default`` (type ``leapocr``): the API key in the password field, the base URL in host (default:
the LeapOCR cloud), and in extra optionally ``max_jobs_in_flight`` (default 8), ``max_attempts`` (default 6) and
``timeout`` (seconds, default 60).

The SDK retries only transport errors and turns 429 and 5xx into a plain ``APIError`` without the ``Retry-After``
header. :class:`LeapOcrApi` adds retries with exponential backoff and full jitter on 429, 5xx, timeouts and dropped
connections, honouring ``Retry-After``; and typed errors: 401 fails fast (:class:`LeapOcrAuthError`), 402 means the
account is out of credits (:class:`LeapOcrCreditsExhausted`), other 4xx are the document's fault
(:class:`LeapOcrRejected`). The triggerer must use :meth:`LeapOcrHook.aget_api`: a synchronous connection lookup
inside its event loop fails in Airflow 3.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import io
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import httpx
from airflow.sdk import BaseHook
from leapocr import APIError, ClientConfig, JobStatus, LeapOCR, LeapOCRError, NetworkError, ProcessOptions
from leapocr import __version__ as sdk_version

from invoiceflow.leapocr.connection import (
    CONN_TYPE,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_JOBS_IN_FLIGHT,
    HOOK_NAME,
    UI_FIELD_BEHAVIOUR,
)
from invoiceflow.tls import shared_ssl_context

#: Page size asked of the results endpoint (its maximum is 1000; 100 is the SDK default).
RESULT_PAGE_LIMIT = 100

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``Retry-After`` of the last response seen by the current task (set by an httpx response hook).
_retry_after: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "leapocr_retry_after", default=None
)
#: Path of the last API request the current task sent (set by an httpx request hook).
_last_request: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "leapocr_last_request", default=None
)
#: Awaited with the job id right before the SDK asks LeapOCR to start an uploaded job (see ``submit_file``).
_before_complete: contextvars.ContextVar[Callable[[str], Awaitable[None]] | None] = contextvars.ContextVar(
    "leapocr_before_complete", default=None
)


class LeapOcrError(Exception):
    """Base of the typed errors raised by :class:`LeapOcrApi`."""


class LeapOcrAuthError(LeapOcrError):
    """HTTP 401: the API key is wrong. Never retried: every further call would fail the same way."""


class LeapOcrCreditsExhausted(LeapOcrError):
    """HTTP 402: out of credits. Stop submitting; documents wait for credits instead of failing."""


class LeapOcrRejected(LeapOcrError):
    """Another 4xx: the API refused this document or request; fails only that document."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def not_found(self) -> bool:
        """HTTP 404: the job does not exist (never started, deleted, or another key's)."""
        return self.status_code == 404


class LeapOcrUnavailable(LeapOcrError):
    """429, 5xx or transport errors persisted through every retry."""


class LeapOcrSubmissionUnknown(LeapOcrError):
    """The connection broke while completing an upload: the job may exist. Never retried blindly."""


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for retriable failures: ``min(cap, base * 2**n)`` with full jitter, at least ``Retry-After``."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        backoff = rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after or 0.0)


async def _remember_request(request: httpx.Request) -> None:
    path = request.url.path
    _last_request.set(path)
    if request.method == "POST" and path.endswith("/complete") and (hook := _before_complete.get()):
        await hook(path.rstrip("/").split("/")[-2])  # POST /ocr/uploads/{job_id}/complete


async def _remember_retry_after(response: httpx.Response) -> None:
    """httpx response hook: it runs in the calling task, so the retry loop sees the value right after the call."""
    value = response.headers.get("Retry-After")
    try:
        _retry_after.set(max(0.0, float(value)) if value else None)
    except ValueError:
        _retry_after.set(None)


def key_fingerprint(api_key: str) -> str:
    """A stable, non-secret name for an API key (for logs and the in-flight cap)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class LeapOcrApi:
    """The calls the pipeline makes, each with retries and typed errors, on one SDK client."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 60.0,
        policy: RetryPolicy | None = None,
        max_jobs_in_flight: int = DEFAULT_MAX_JOBS_IN_FLIGHT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key or not api_key.strip():
            raise LeapOcrAuthError("no LeapOCR API key configured (password field of the connection)")
        self.fingerprint = key_fingerprint(api_key)
        self.base_url = base_url
        self.policy = policy or RetryPolicy()
        self.max_jobs_in_flight = max_jobs_in_flight
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Our own httpx client, so a response hook can read Retry-After; the SDK then uses it as is, which means
        # we set the base URL and headers it would otherwise set. The SDK retries transport errors per
        # step (so a lost answer to completing an upload repeats that idempotent step, not the whole upload).
        http_client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            verify=shared_ssl_context(),
            headers={
                "X-API-KEY": api_key,
                "User-Agent": f"invoiceflow leapocr-python/{sdk_version}",
                "Content-Type": "application/json",
            },
            event_hooks={"request": [_remember_request], "response": [_remember_retry_after]},
        )
        self.client = LeapOCR(
            api_key, ClientConfig(base_url=base_url, max_retries=3, retry_delay=0.5, http_client=http_client)
        )

    async def __aenter__(self) -> LeapOcrApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def call(self, what: str, make_call: Callable[[], Awaitable[T]]) -> T:
        """Run one API call with the retry policy; ``what`` names it in logs and errors."""
        for attempt in range(self.policy.max_attempts):
            _retry_after.set(None)
            try:
                return await make_call()
            except APIError as exc:
                status = exc.status_code or 0
                if status == 401:
                    raise LeapOcrAuthError(f"LeapOCR rejected the API key (HTTP 401) during {what}") from exc
                if status == 402:
                    raise LeapOcrCreditsExhausted(
                        f"LeapOCR account is out of credits (HTTP 402): {exc}"
                    ) from exc
                if status != 429 and status < 500:
                    raise LeapOcrRejected(f"{what} refused (HTTP {status}): {exc}", status) from exc
                failure: Exception = exc
            except (httpx.TimeoutException, httpx.TransportError, NetworkError) as exc:
                # NetworkError: the SDK's storage upload of a part failed (before any job could start).
                if isinstance(exc, httpx.HTTPError) and (_last_request.get() or "").endswith("/complete"):
                    # The SDK already retried completing the upload; the server may have started the job, and
                    # uploading again could pay twice. Stop here and say so.
                    raise LeapOcrSubmissionUnknown(
                        f"{what}: connection lost while completing the upload ({_describe(exc)}); LeapOCR may "
                        "have started the job: check it before submitting this document again"
                    ) from exc
                failure = exc
            if attempt + 1 == self.policy.max_attempts:
                raise LeapOcrUnavailable(
                    f"{what} failed after {attempt + 1} attempts: {failure}"
                ) from failure
            delay = self.policy.delay(attempt, _retry_after.get(), self._rng)
            log.info("LeapOCR %s: %s; retry %d in %.2fs", what, _describe(failure), attempt + 1, delay)
            await self._sleep(delay)
        raise AssertionError("unreachable")

    async def submit_file(
        self,
        data: bytes,
        file_name: str,
        options: ProcessOptions,
        *,
        before_complete: Callable[[str], Awaitable[None]] | None = None,
    ) -> str:
        """Upload one document and start its job; returns the job id.

        ``before_complete`` is awaited with the job id right before the request that starts (and bills) the job,
        so a caller can record which job a lost answer or a killed process may have left running.
        """

        async def submit() -> str:
            handle = io.BytesIO(data)
            handle.name = file_name
            token = _before_complete.set(before_complete)
            try:
                result = await self.client.ocr.process_file(handle, options)
            except LeapOCRError as exc:
                if isinstance(exc, (APIError, NetworkError)):
                    raise  # classified (and retried) by call()
                raise LeapOcrRejected(f"LeapOCR SDK refused {file_name}: {exc}") from exc
            finally:
                _before_complete.reset(token)
            return str(result.job_id)

        return await self.call(f"submit {file_name}", submit)

    async def job_status(self, job_id: str) -> JobStatus:
        return await self.call(f"status of {job_id}", lambda: self.client.ocr.get_job_status(job_id))

    async def fetch_results(self, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """All result pages of a finished job (``wait_until_done`` returns only the first 100), plus job facts."""
        pages: list[dict[str, Any]] = []
        page = 1
        while True:
            result = await self.call(
                f"results of {job_id} page {page}",
                lambda page=page: self.client.ocr.get_results(job_id, page=page, limit=RESULT_PAGE_LIMIT),
            )
            pages.extend(asdict(p) for p in result.pages)
            if result.pagination is None or page >= result.pagination.total_pages or not result.pages:
                break
            page += 1
        facts = {
            "model": result.model,
            "credits_used": result.credits_used,
            "total_pages": result.total_pages,
        }
        return sorted(pages, key=lambda p: p["page_number"]), facts

    async def delete_job(self, job_id: str) -> bool:
        """Delete the remote copy; a job already gone counts as deleted."""
        try:
            await self.call(f"delete {job_id}", lambda: self.client.ocr.delete_job(job_id))
        except LeapOcrRejected as exc:
            if exc.not_found:
                return True
            raise
        return True


def _describe(exc: Exception) -> str:
    if isinstance(exc, APIError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


def _extra(extra: dict[str, Any], name: str, default: Any) -> Any:
    """An extra field, stored plain or with the form's ``extra__leapocr__`` prefix."""
    value = extra.get(name, extra.get(f"extra__leapocr__{name}"))
    return default if value in (None, "") else value


class LeapOcrHook(BaseHook):
    """Interact with the LeapOCR API (or the offline ``invoiceflow leapocr-server``) through the official SDK."""

    conn_name_attr = "leapocr_conn_id"
    default_conn_name = "leapocr_default"
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(self, leapocr_conn_id: str = default_conn_name, timeout: float | None = None) -> None:
        super().__init__()
        self.leapocr_conn_id = leapocr_conn_id
        self.timeout = timeout

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return UI_FIELD_BEHAVIOUR

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        return {}  # the extra fields are declared as metadata (CONN_FIELDS), so the API server needs no FAB

    @staticmethod
    def base_url(conn: Any) -> str:
        """The API base URL of a connection: ``host`` as given when it has a scheme, else HTTPS on that host."""
        host = (conn.host or "").strip()
        if not host:
            return DEFAULT_BASE_URL
        if "://" not in host:
            port = f":{conn.port}" if conn.port else ""
            host = f"https://{host}{port}/api/v1"
        return host.rstrip("/")

    def api_from_connection(self, conn: Any, **kwargs: Any) -> LeapOcrApi:
        extra = conn.extra_dejson if conn.extra else {}
        if not conn.password:
            raise LeapOcrAuthError(
                f"connection {self.leapocr_conn_id!r} has no API key (password field is empty)"
            )
        return LeapOcrApi(
            conn.password,
            self.base_url(conn),
            timeout=float(self.timeout or _extra(extra, "timeout", 60.0)),
            policy=RetryPolicy(max_attempts=int(_extra(extra, "max_attempts", DEFAULT_MAX_ATTEMPTS))),
            max_jobs_in_flight=int(_extra(extra, "max_jobs_in_flight", DEFAULT_MAX_JOBS_IN_FLIGHT)),
            **kwargs,
        )

    def get_api(self, **kwargs: Any) -> LeapOcrApi:
        """For workers: synchronous connection lookup."""
        return self.api_from_connection(self.get_connection(self.leapocr_conn_id), **kwargs)

    async def aget_api(self, **kwargs: Any) -> LeapOcrApi:
        """For the triggerer: asynchronous connection lookup, never blocking the event loop.

        The client is built in a thread: the SDK's upload client loads the CA bundle (tens of milliseconds of
        CPU), which would stall every other trigger of the event loop.
        """
        conn = await self.aget_connection(self.leapocr_conn_id)
        return await asyncio.to_thread(self.api_from_connection, conn, **kwargs)
