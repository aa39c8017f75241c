"""One TLS context per process, shared by every HTTP client we build (LeapOCR, ERP connectors, webhooks)."""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: loading the CA bundle costs ~30 ms of CPU, too much per client when
    every operator run, trigger, retry and relay task builds one."""
    return httpx.create_ssl_context()
