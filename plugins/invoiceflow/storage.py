"""The inbox: list files in any object store Airflow knows (local folder, ``s3://``, ...), hash and type them.

All access goes through :class:`airflow.sdk.ObjectStoragePath`, so a local folder and a bucket use the same code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from airflow.sdk import ObjectStoragePath

from invoiceflow.warehouse import SeenFile

log = logging.getLogger(__name__)


def inbox_path(url: str) -> ObjectStoragePath:
    return ObjectStoragePath(url)


def iter_files(root: ObjectStoragePath) -> Iterator[ObjectStoragePath]:
    """Every regular file under ``root``, recursively, skipping hidden files and folders (``.partial`` uploads)."""
    _forget_listings(root, everything=True)
    if not root.exists():
        raise FileNotFoundError(f"inbox {root} does not exist")
    for path in sorted(root.rglob("*"), key=str):
        relative = str(path)[len(str(root)) :]
        if any(part.startswith(".") for part in relative.split("/") if part):
            continue
        if path.is_file():
            yield path


def read_bytes(path: str | ObjectStoragePath) -> bytes:
    """Read a file by path or by the ``str(path)`` stored for it (``s3://conn_id@bucket/key`` keeps its connection)."""
    path = ObjectStoragePath(path) if isinstance(path, str) else path
    _forget_listings(path)
    return path.read_bytes()


def _forget_listings(path: ObjectStoragePath, everything: bool = False) -> None:
    """Drop cached listings so a changed inbox is seen as it is now.

    Airflow keeps one filesystem per scheme and connection for the life of the process, and s3fs caches every
    listing in it, with each object's size and ETag: a key overwritten since (a re-sent invoice) would be read
    with the old ETag and fail with ``FileExpired``, and new keys could be missed. Local folders cache nothing.
    """
    if everything:
        path.fs.invalidate_cache()
    else:
        path.fs.invalidate_cache(path.path)


def modified_at(path: ObjectStoragePath) -> str | None:
    """Modification time as ISO text, when the store reports one (used to skip unchanged files)."""
    try:
        info = path.stat()
    except OSError:
        return None
    mtime = getattr(info, "st_mtime", None)
    if mtime is None:
        raw = info.get("mtime") or info.get("LastModified") if isinstance(info, dict) else None
        return str(raw) if raw is not None else None
    return datetime.fromtimestamp(float(mtime), UTC).isoformat()


def inspect_file(path: ObjectStoragePath, detect_type: Callable[[bytes, str], str]) -> SeenFile:
    """Hash and type one file. A file that cannot be read or is not a supported invoice becomes a rejection."""
    name = path.name
    rejection = content_type = None
    try:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
    except OSError as exc:
        data = b""
        digest = _path_digest(path)
        rejection = f"unreadable: {exc}"
    if rejection is None:
        try:
            content_type = detect_type(data, name)
        except ValueError as exc:  # UnsupportedDocument is a ValueError with a specific reason
            rejection = str(exc)
    return SeenFile(
        path=str(path),
        file_name=name,
        size_bytes=len(data),
        modified_at=modified_at(path),
        sha256=digest,
        content_type=content_type,
        rejection=rejection,
    )


def _path_digest(path: ObjectStoragePath) -> str:
    """An unreadable file has no content to hash: key it by its path so it is still recorded exactly once."""
    return hashlib.sha256(f"unreadable:{path}".encode()).hexdigest()
