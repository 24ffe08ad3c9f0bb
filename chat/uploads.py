"""An agent's files, from the reply box or the API, checked and put in storage before the reply's
transaction (so the transaction only adds rows), and taken out again when that transaction
does not keep them: refused, a conflict, or a retry that stored nothing new.

The same checks as inbound files (chat/media_types.py: the type from the bytes, HTML never,
WhatsApp's size per kind); a refusal names the file. It knows nothing of the database.
"""
from __future__ import annotations

import logging
import secrets
from contextlib import contextmanager
from typing import Iterator

from flask import current_app, request
from werkzeug.datastructures import FileStorage

from . import media_types
from .attachments import MAX_PER_MESSAGE, StoredFile
from .errors import InvalidInput
from .storage import StorageError, storage

log = logging.getLogger(__name__)


# The views that take files (the reply box, the API's reply), and what one request may carry:
# the largest file allowed (a document, 100 MB) and 16 MB more, for several smaller ones.
UPLOAD_ENDPOINTS = ("inbox.reply", "api.reply")
MARGIN = 16 * 1024 * 1024


def max_request_bytes() -> int:
    return media_types.max_limit(current_app.config) + MARGIN


def init_app(app) -> None:
    """Raise the app's request size limit (MAX_CONTENT_LENGTH, small) for the views that take
    files, when files can come (multipart; JSON and plain forms keep the small limit). Registered
    before CSRF protection, which reads the form before any view runs."""

    @app.before_request
    def allow_files():
        if request.endpoint in UPLOAD_ENDPOINTS and request.mimetype == "multipart/form-data":
            request.max_content_length = max_request_bytes()


class Batch:
    """Files put in storage for one reply; kept (`keep_if`) once the reply naming them committed."""

    def __init__(self) -> None:
        self.files: list[StoredFile] = []
        self.kept = False

    def keep_if(self, created: bool) -> None:
        """Keep the files when the reply naming them was stored now (a retry's were not needed)."""
        self.kept = self.kept or created

    def forget(self) -> None:
        for file in self.files:
            for key in (file.storage_key, file.thumb_key):
                if key:
                    try:
                        storage().delete(key)
                    except StorageError:
                        log.warning("could not delete %s from storage", key)


@contextmanager
def stored(uploads: list[FileStorage]) -> Iterator[Batch]:
    """Check and store `uploads` (the form's `file` fields; empty ones are skipped); the block
    then stores the reply and calls batch.keep_if(created). Otherwise, or on any error,
    they are deleted again: nothing half stored."""
    batch = Batch()
    try:
        for upload in [u for u in uploads if u and u.filename][:MAX_PER_MESSAGE + 1]:
            if len(batch.files) == MAX_PER_MESSAGE:
                raise InvalidInput(f"a reply may carry at most {MAX_PER_MESSAGE} files")
            batch.files.append(_store(upload))
        yield batch
    finally:
        if not batch.kept:
            batch.forget()


def _store(upload: FileStorage) -> StoredFile:
    data = upload.read()
    try:
        content_type, kind = media_types.check(data, None, current_app.config)
    except media_types.Refused as refused:
        raise InvalidInput(f"{upload.filename}: {refused.reason}") from None
    filename = media_types.safe_filename(upload.filename, content_type)
    key = f"uploads/{secrets.token_hex(12)}"
    thumb = media_types.thumbnail(data) if kind in (media_types.IMAGE, media_types.STICKER) else None
    try:
        storage().put(key, data, content_type)
        if thumb is not None:
            storage().put(key + "-thumb.webp", thumb, "image/webp")
    except StorageError as error:
        for written in (key, key + "-thumb.webp"):
            try:
                storage().delete(written)
            except StorageError:
                pass
        raise InvalidInput(f"{upload.filename}: could not be stored ({error}); try again") from None
    return StoredFile(key, key + "-thumb.webp" if thumb is not None else None, content_type, kind, len(data), filename)
