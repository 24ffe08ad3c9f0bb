"""File storage for attachments: their bytes live here, their rows in the database.

Two backends behind one small face (put, get, stream, size, delete), chosen by configuration
as Django's storage API is:

- disk (the default, for the embedded single-machine setup): files under instance/attachments,
  each written to a temp file beside it, fsynced and renamed over the old one, so a reader sees
  the old bytes or the new ones, never half a file.
- s3 (several machines sharing attachments): any S3-compatible server (AWS, MinIO, ...), with
  short timeouts so an unreachable server fails a request in seconds instead of hanging it.

A backend failure is a StorageError with a message fit for an agent or a log; a missing key is
a KeyError, so callers can answer 404. This module knows nothing of the database, the cache or
HTTP: callers pick keys (e.g. "attachments/12/abc.jpg") and keep them in their rows.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from flask import current_app

CHUNK_SIZE = 256 * 1024
BACKENDS = ("disk", "s3")


class StorageError(Exception):
    """A backend failed (disk full, S3 unreachable); message readable by an agent/log."""


class Storage(Protocol):
    """What callers code against. put is atomic and overwrites; get, stream and size raise
    KeyError for a missing key (stream at the call, before a response starts); delete of a
    missing key is no error; describe names the place, never a secret."""

    name: str  # "disk" or "s3"

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def describe(self) -> str: ...


class DiskStorage:
    """Files under root; a key's '/'-separated parts are its directories and file name."""

    name = "disk"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        """Refuse any key that could name a file outside root (or differently on Windows)."""
        parts = key.split("/") if isinstance(key, str) else [""]
        if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            raise ValueError(f"storage key {key!r}: use non-empty '/'-separated parts, "
                             "without '..', '.', backslashes or a leading '/'")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path, tmp = self._path(key), None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"disk: cannot write {key!r} under {self.root}: {exc}") from exc
        finally:
            if tmp:  # gone after os.replace; left over only when the write failed
                Path(tmp).unlink(missing_ok=True)

    def _open(self, key: str):
        try:
            return open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None
        except OSError as exc:
            raise StorageError(f"disk: cannot read {key!r} under {self.root}: {exc}") from exc

    def get(self, key: str) -> bytes:
        with self._open(key) as f:
            return f.read()

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        f = self._open(key)  # here, not in the generator: a missing key raises before a response starts

        def chunks():
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk
        return chunks()

    def size(self, key: str) -> int:
        with self._open(key) as f:
            return os.fstat(f.fileno()).st_size

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"disk: cannot delete {key!r} under {self.root}: {exc}") from exc

    def describe(self) -> str:
        return f"disk: {self.root}"


class S3Storage:
    """Objects in one bucket of an S3-compatible server, optionally under a 'prefix/'."""

    name = "s3"

    def __init__(self, bucket: str, endpoint_url: str | None = None, region: str | None = None,
                 prefix: str = "", client=None):
        if client is None:
            import boto3
            from botocore.config import Config
            # Credentials from boto3's usual chain; timeouts short enough that an unreachable
            # server costs a request seconds, and one retry rides out a dropped connection.
            config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2})
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def _call(self, op: str, key: str, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self.prefix + key, **kwargs)
        except (ClientError, BotoCoreError) as exc:  # BotoCoreError: unreachable, timed out, no credentials
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(key) from None  # HEAD has no body: its missing key is a bare "404"
            raise StorageError(f"s3: {op} {key!r} in bucket {self.bucket!r} failed: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call("put_object", key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return b"".join(self.stream(key))

    def stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        body = self._call("get_object", key)["Body"]  # raises KeyError before the first chunk

        def chunks():
            from botocore.exceptions import BotoCoreError
            try:
                yield from body.iter_chunks(chunk_size)
            except BotoCoreError as exc:  # the connection broke halfway through
                raise StorageError(f"s3: reading {key!r} from bucket {self.bucket!r} failed: {exc}") from exc
            finally:
                body.close()
        return chunks()

    def size(self, key: str) -> int:
        return self._call("head_object", key)["ContentLength"]

    def delete(self, key: str) -> None:
        self._call("delete_object", key)  # S3 answers 204 for a missing key too

    def describe(self) -> str:
        url = urlsplit(self.client.meta.endpoint_url)  # host and port only: never userinfo
        where = f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "")
        return f"s3: {self.bucket}/{self.prefix} at {where}"


def from_config(config: Mapping) -> Storage:
    """The backend ATTACHMENT_STORAGE names, or a ValueError that says what is missing."""
    kind = (config.get("ATTACHMENT_STORAGE") or "disk").strip().lower()
    if kind == "disk":
        if not config.get("ATTACHMENT_DIR"):
            raise ValueError("ATTACHMENT_DIR is required when ATTACHMENT_STORAGE=disk "
                             "(init_app defaults it to <instance_path>/attachments)")
        return DiskStorage(config["ATTACHMENT_DIR"])
    if kind == "s3":
        if not config.get("ATTACHMENT_S3_BUCKET"):
            raise ValueError("ATTACHMENT_S3_BUCKET is required when ATTACHMENT_STORAGE=s3")
        return S3Storage(config["ATTACHMENT_S3_BUCKET"],
                         endpoint_url=config.get("ATTACHMENT_S3_ENDPOINT_URL") or None,
                         region=config.get("ATTACHMENT_S3_REGION") or None,
                         prefix=config.get("ATTACHMENT_S3_PREFIX") or "")
    raise ValueError(f"ATTACHMENT_STORAGE={kind!r}: use one of {', '.join(BACKENDS)}")


def init_app(app) -> None:
    if not app.config.get("ATTACHMENT_DIR"):  # missing, or None as chat/config.py leaves it unset
        app.config["ATTACHMENT_DIR"] = os.path.join(app.instance_path, "attachments")
    app.extensions["chat.storage"] = from_config(app.config)


def storage() -> Storage:
    """The current app's backend."""
    return current_app.extensions["chat.storage"]
