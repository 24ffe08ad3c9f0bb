"""Attachments' bytes, for the agents who may see their conversation.

GET /attachments/<id> (the file) and /attachments/<id>/thumbnail (an image's small WebP, made
once by the worker): signed out, the sign-in page (401 for htmx); another agent's conversation,
404, by the same visibility rule as everything else. GET /files/<signed token>: an agent's file
for the customer's system, which the generic webhook sends that link (chat/attachments.py). A file never runs as a page of ours: only
images, audio and video are shown inline, everything else downloads (Content-Disposition:
attachment), its type is the one sniffed from its bytes, and nosniff plus a sandboxing CSP
keep a browser from guessing otherwise. An attachment's bytes never change, so browsers keep
them (private, immutable): a thread seen before shows its images offline.
"""
from __future__ import annotations

from io import BytesIO

from flask import Blueprint, send_file
from flask_login import current_user, login_required

from . import attachments
from .storage import StorageError, storage

bp = Blueprint("files", __name__)

INLINE = ("image/", "audio/", "video/")
YEAR = 365 * 24 * 3600


@bp.get("/attachments/<int:attachment_id>")
@login_required
def attachment(attachment_id: int):
    row = attachments.visible(current_user, attachment_id)
    return _send(row.storage_key, row.content_type, row.filename, row.content_type.startswith(INLINE))


@bp.get("/attachments/<int:attachment_id>/thumbnail")
@login_required
def thumbnail(attachment_id: int):
    row = attachments.visible(current_user, attachment_id)
    if not row.thumb_key:
        return attachment(attachment_id)  # no thumbnail (not an image Pillow reads): the file
    return _send(row.thumb_key, "image/webp", row.filename.rsplit(".", 1)[0] + "-thumbnail.webp", True)


@bp.get("/files/<token>")
def link(token: str):
    """An agent's file for the customer's system (the generic webhook sent it this signed,
    expiring link): no session, always a download."""
    row = attachments.from_link(token)
    return _send(row.storage_key, row.content_type, row.filename, False)


def _send(key: str, content_type: str, filename: str, inline: bool):
    try:
        data = storage().get(key)
    except KeyError:
        return {"error": "the file is missing from storage"}, 404
    except StorageError:
        return {"error": "the file storage is unavailable; try again shortly"}, 503
    response = send_file(BytesIO(data), mimetype=content_type, as_attachment=not inline, download_name=filename,
                         conditional=True, etag=key, max_age=YEAR)
    response.cache_control.public = False
    response.cache_control.private = True
    response.cache_control.immutable = True
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
