"""The inbox on S3: the same storage and ingest code lists, registers and reads back objects from a real S3 API.

moto's server runs on loopback in a thread. Airflow reaches it through connection ``aws_default``, whose extra
carries ``endpoint_url``, which the Amazon provider's ``s3`` filesystem reads. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# tests/conftest.py sets an isolated Airflow home; keep Airflow out of ~/airflow if this module runs without it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="invoiceflow-s3-airflow-"))

import boto3
import sqlalchemy as sa
from fpdf import FPDF
from moto.server import ThreadedMotoServer
from sqlalchemy.engine import Engine

from invoiceflow import ingest, storage, warehouse

KEY_ID = "testing"
SECRET = "testing"  # moto accepts any credentials; the point is that they come from the connection


def _pdf(text: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=14)
    pdf.cell(text=text)
    return bytes(pdf.output())


INVOICE_A = _pdf("Invoice INV-A-001 from ACME GmbH, total 119.00 EUR")
INVOICE_B = _pdf("Invoice INV-B-002 from Globex Ltd, total 240.00 GBP")
#: The inbox as uploaded. Only keys under ``inbox/`` that are not hidden are files of the inbox.
OBJECTS = {
    "inbox/a.pdf": INVOICE_A,
    "inbox/b.pdf": INVOICE_B,
    "inbox/sub/copy-of-a.pdf": INVOICE_A,  # listed after inbox/a.pdf, so a.pdf is the document's first path
    "inbox/empty.pdf": b"",
    "inbox/notes.txt": b"Please pay by Friday.\n",
    "inbox/.partial/upload.pdf": INVOICE_B,  # an upload in progress: hidden, skipped
    "inbox-old/c.pdf": INVOICE_B,  # a sibling prefix, not the inbox
}
INBOX_KEYS = {"inbox/a.pdf", "inbox/b.pdf", "inbox/sub/copy-of-a.pdf", "inbox/empty.pdf", "inbox/notes.txt"}


@dataclass(frozen=True)
class S3Inbox:
    client: Any  # a boto3 S3 client talking to moto
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://aws_default@{self.bucket}/inbox/"

    def path_of(self, key: str) -> str:
        """What ``str(path)`` of a listed object is, and so what the warehouse stores."""
        return f"s3://aws_default@{self.bucket}/{key}"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 API on a free loopback port, for this module.

    One server for the module on purpose: Airflow caches one filesystem per scheme and connection for the life
    of the process, bound to the endpoint it first saw.
    """
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_inbox(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Inbox:
    """Connection ``aws_default`` pointing at moto, and a fresh bucket holding :data:`OBJECTS`."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": KEY_ID,
                "password": SECRET,
                "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
            }
        ),
    )
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    bucket = f"invoices-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    for key, body in OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return S3Inbox(client=client, bucket=bucket)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = warehouse.engine_for(f"sqlite:///{tmp_path}/wh.db")
    warehouse.upgrade(engine)
    yield engine
    engine.dispose()


def _documents(engine: Engine) -> dict[str, tuple[str, str, str | None]]:
    """``first_path -> (sha256, status, status_reason)``."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sha256, first_path, status, status_reason FROM documents"))
        return {r.first_path: (r.sha256, r.status, r.status_reason) for r in rows}


def _paths(engine: Engine) -> dict[str, str]:
    """``path -> sha256`` of every path seen."""
    with engine.connect() as conn:
        return {r.path: r.sha256 for r in conn.execute(sa.text("SELECT path, sha256 FROM document_paths"))}


def test_iter_files_lists_exactly_the_visible_inbox_objects(s3_inbox: S3Inbox) -> None:
    root = storage.inbox_path(s3_inbox.url)

    listed = [str(p) for p in storage.iter_files(root)]

    assert listed == sorted(s3_inbox.path_of(k) for k in INBOX_KEYS)


def test_iter_files_refuses_a_missing_inbox(s3_inbox: S3Inbox) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(storage.iter_files(storage.inbox_path(f"s3://aws_default@{s3_inbox.bucket}/nowhere/")))


def test_register_inbox_registers_dedupes_and_rejects(s3_inbox: S3Inbox, engine: Engine) -> None:
    counts = ingest.register_inbox(engine, s3_inbox.url, run_id="run-1")

    assert counts == {"listed_new_paths": 5, "new_documents": 2, "rejected": 2, "already_known_content": 0}
    docs = _documents(engine)
    assert set(docs) == {s3_inbox.path_of(k) for k in INBOX_KEYS - {"inbox/sub/copy-of-a.pdf"}}
    sha_a, status_a, _ = docs[s3_inbox.path_of("inbox/a.pdf")]
    assert status_a == warehouse.REGISTERED
    assert docs[s3_inbox.path_of("inbox/b.pdf")][1] == warehouse.REGISTERED
    _, status_empty, reason_empty = docs[s3_inbox.path_of("inbox/empty.pdf")]
    assert status_empty == warehouse.REJECTED
    assert reason_empty is not None and "empty" in reason_empty
    _, status_text, reason_text = docs[s3_inbox.path_of("inbox/notes.txt")]
    assert status_text == warehouse.REJECTED
    assert reason_text
    # the copy is not a new document, but its path is recorded against the original's content
    assert _paths(engine) == {
        **{path: sha for path, (sha, _, _) in docs.items()},
        s3_inbox.path_of("inbox/sub/copy-of-a.pdf"): sha_a,
    }

    again = ingest.register_inbox(engine, s3_inbox.url, run_id="run-2")

    # size and mtime read from S3 match what was stored, so nothing is even re-read
    assert again == {"listed_new_paths": 0, "new_documents": 0, "rejected": 0, "already_known_content": 0}
    assert _documents(engine) == docs


def test_stored_first_path_reads_back_the_uploaded_bytes(s3_inbox: S3Inbox, engine: Engine) -> None:
    ingest.register_inbox(engine, s3_inbox.url)
    docs = _documents(engine)
    shas = {docs[s3_inbox.path_of(k)][0]: OBJECTS[k] for k in ("inbox/a.pdf", "inbox/b.pdf")}

    # what the extraction operator does: warehouse.document_paths, then storage.read_bytes of the stored string
    for sha, (first_path, _name, content_type) in warehouse.document_paths(engine, list(shas)).items():
        assert first_path.startswith(f"s3://aws_default@{s3_inbox.bucket}/inbox/")
        assert content_type == "pdf"
        assert storage.read_bytes(first_path) == shas[sha]


def test_an_object_replaced_under_the_same_key_is_seen_and_read_fresh(
    s3_inbox: S3Inbox, engine: Engine
) -> None:
    """A supplier re-sends a corrected invoice under the same name while the process (and its cache) lives on."""
    ingest.register_inbox(engine, s3_inbox.url)
    key = "inbox/b.pdf"
    corrected = _pdf("Invoice INV-B-002 from Globex Ltd, total 250.00 GBP (corrected, with a longer note)")
    assert len(corrected) != len(INVOICE_B)  # a changed size is what marks the path as changed
    s3_inbox.client.put_object(Bucket=s3_inbox.bucket, Key=key, Body=corrected)

    # read by its stored path (as the extraction operator does) while the old listing is still cached
    assert storage.read_bytes(s3_inbox.path_of(key)) == corrected

    counts = ingest.register_inbox(engine, s3_inbox.url)

    assert counts == {"listed_new_paths": 1, "new_documents": 1, "rejected": 0, "already_known_content": 0}
    new_sha = hashlib.sha256(corrected).hexdigest()
    assert _paths(engine)[s3_inbox.path_of(key)] == new_sha
    assert warehouse.document_paths(engine, [new_sha]) == {new_sha: (s3_inbox.path_of(key), "b.pdf", "pdf")}
