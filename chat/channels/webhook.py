"""The generic webhook channel: replies are POSTed as JSON to a URL the customer's system
serves, signed with HMAC-SHA256 of the raw body (a file goes as a link it can GET); messages come
in through POST /api/inbound and statuses through POST /api/status (the inbound bearer token,
chat/api.py). A message may point at files (`attachments`: their URLs), fetched later by a worker
through `capped_download`, which the WhatsApp channel shares."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Callable, Mapping
from urllib.parse import urlsplit

import requests
import urllib3

from ..media_types import human_size
from ..models import WEBHOOK
from . import (Fetched, FetchError, Inbound, MediaRef, Outgoing, SendError, StatusReport, http_failure,
               network_failure)

SIGNATURE_HEADER = "X-Signature-256"
USER_AGENT = "inbox-attachments/1"
MAX_ATTACHMENTS = 10  # per message, as chat/attachments.MAX_PER_MESSAGE keeps
MAX_FIELD_CHARS = 1000
ATTACHMENT_FIELDS = ("url", "content_type", "filename", "caption")
CHUNK_BYTES = 64 * 1024
MAX_WAIT_SECONDS = 10.0  # the longest one read may wait for bytes, whatever the deadline


def sign(secret: str, body: bytes) -> str:
    """The X-Signature-256 value of a body: sha256=<hex HMAC-SHA256 with the channel's secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookChannel:
    kind = WEBHOOK
    SECRETS = ("secret",)

    def __init__(self, settings: dict, timeout: float = 10.0):
        self.url = settings.get("url") or ""
        self.secret = settings.get("secret") or ""
        self.timeout = timeout

    def describe(self) -> dict:
        return {"url": self.url, "secret": "set" if self.secret else "not set"}

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> bool:
        given = headers.get(SIGNATURE_HEADER, "")
        return bool(self.secret) and hmac.compare_digest(given.encode(), sign(self.secret, raw_body).encode())

    def parse(self, payload: dict) -> list[Inbound | StatusReport]:
        """The generic channel's own inbound shape (see api.inbound): one message per request.
        Raises ValueError, naming the field, for attachments of a wrong shape."""
        files = attachments_of(payload.get("attachments"))
        body = payload.get("body")
        if files and body is None:
            body = ""  # a message may be only files
        return [Inbound(phone=payload.get("phone"), body=body, external_id=payload.get("external_id"),
                        name=payload.get("name"), from_me=bool(payload.get("from_me")), attachments=files)]

    def fetch_media(self, media: MediaRef, max_bytes: int, deadline: float) -> Fetched:
        """A plain GET of the attachment's URL (the sender's system serves it), capped and deadlined."""
        data, served_type = capped_download(media.ref, {}, max_bytes, deadline)
        return Fetched(data, content_type=media.content_type or served_type, filename=media.filename)

    def send(self, outgoing: Outgoing) -> str:
        """POST the reply as signed JSON: a text, or one file as a link (never its bytes) in
        `attachments`, the body its caption."""
        if not self.url:
            raise SendError("the webhook channel has no URL configured", temporary=False)
        reply = {"id": str(outgoing.message_id), "conversation_id": outgoing.conversation_id,
                 "to": outgoing.to, "body": outgoing.body, "type": "text"}
        if outgoing.file is not None:
            file = outgoing.file
            if not file.url:
                raise SendError("set PUBLIC_URL: the customer's system needs a link to fetch the file from",
                                temporary=False)
            reply["type"] = file.kind
            reply["attachments"] = [{"url": file.url, "content_type": file.content_type, "filename": file.filename,
                                     "size": file.size}]
        body = json.dumps(reply, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": outgoing.idempotency_key}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        try:
            response = requests.post(self.url, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise network_failure(exc) from None
        if response.status_code >= 300:
            raise http_failure(response.status_code, _reason(response), response.headers.get("Retry-After"))
        try:
            provider_id = response.json().get("id")
        except (ValueError, AttributeError):
            provider_id = None
        if not isinstance(provider_id, (str, int)) or provider_id in ("", None):
            # It answered 2xx, so it has the message; without its id no status can be matched.
            raise SendError("the provider accepted the message but answered no id", temporary=False)
        return str(provider_id)


def _reason(response: requests.Response) -> str:
    """What the provider said, for the agent: its JSON error message if any, else the status."""
    detail = None
    try:
        data = response.json()
        if isinstance(data, dict):
            detail = data.get("error") or data.get("message")
            if isinstance(detail, dict):
                detail = detail.get("message")
    except ValueError:
        pass
    text = f"the provider answered {response.status_code}"
    return f"{text}: {str(detail)[:200]}" if detail else text


def attachments_of(value) -> tuple[MediaRef, ...]:
    """The `attachments` of an inbound payload as MediaRefs; a ValueError names what is wrong."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("attachments must be a list")
    if len(value) > MAX_ATTACHMENTS:
        raise ValueError(f"attachments may have at most {MAX_ATTACHMENTS} items, not {len(value)}")
    found = []
    for index, item in enumerate(value):
        where = f"attachments[{index}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object with a url")
        for name in ATTACHMENT_FIELDS:
            field = item.get(name)
            if field is not None and not isinstance(field, str):
                raise ValueError(f"{where}.{name} must be a string")
            if field is not None and len(field) > MAX_FIELD_CHARS:
                raise ValueError(f"{where}.{name} must be at most {MAX_FIELD_CHARS} characters")
        url = (item.get("url") or "").strip()
        if not _is_http_url(url):
            raise ValueError(f"{where}.url must be an http(s) URL")
        found.append(MediaRef(ref=url, kind=None, content_type=item.get("content_type") or None,
                              filename=item.get("filename") or None, caption=item.get("caption") or None))
    return tuple(found)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(ch.isspace() for ch in url)


def capped_download(url: str, headers: Mapping[str, str], max_bytes: int, deadline: float, *,
                    started: float | None = None,
                    refusal: Callable[[requests.Response], FetchError] | None = None) -> tuple[bytes, str | None]:
    """GET a file, streamed: (its bytes, its Content-Type). A FetchError as soon as more than
    max_bytes arrived, or when time.monotonic() passes `deadline`, even from a server that sends
    headers and then trickles bytes or nothing. `refusal` words a non-2xx answer."""
    started = time.monotonic() if started is None else started
    try:
        response = requests.get(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers},
                                stream=True, timeout=_wait(deadline, started))
    except requests.Timeout:
        raise _timed_out(deadline, started) from None
    except requests.RequestException as exc:
        raise FetchError(f"could not download: {_network_words(exc)}", temporary=True) from None
    with response:
        if response.status_code >= 300:
            raise (refusal or http_refusal)(response)
        declared = (response.headers.get("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large(int(declared), max_bytes)
        chunks, size = [], 0
        while True:
            _limit_wait(response, _wait(deadline, started))
            try:
                # read1: whatever one read brings, so a trickle cannot hold us inside a read
                chunk = response.raw.read1(CHUNK_BYTES)
            except urllib3.exceptions.ReadTimeoutError:
                raise _timed_out(deadline, started) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise FetchError(f"could not download: the connection broke ({type(exc).__name__})",
                                 temporary=True) from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise too_large(None, max_bytes)
            chunks.append(chunk)
        return b"".join(chunks), response.headers.get("Content-Type")


def http_refusal(response: requests.Response) -> FetchError:
    """A server that would not give the file: 404/410 gone, 429 and 5xx worth trying later."""
    status = response.status_code
    if status in (404, 410):
        return FetchError(f"could not download: the file is no longer there (HTTP {status})", temporary=False)
    if status in (401, 403):
        return FetchError(f"could not download: the server refused access to the file (HTTP {status})",
                          temporary=False)
    temporary = status == 429 or status >= 500
    return FetchError(f"could not download: the server answered {status}", temporary=temporary)


def too_large(size: int | None, max_bytes: int) -> FetchError:
    told = f"{human_size(size)}, the limit is" if size is not None else "over the limit of"
    return FetchError(f"attachment too large ({told} {human_size(max_bytes)})", temporary=False)


def too_slow(deadline: float, started: float) -> FetchError:
    allowed = f"{max(0.0, deadline - started):.1f}".removesuffix(".0")
    return FetchError(f"could not download: it took longer than {allowed} s", temporary=True)


def remaining_or_fail(deadline: float, started: float) -> float:
    """The seconds left before `deadline`, or too_slow when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise too_slow(deadline, started)
    return left


def _timed_out(deadline: float, started: float) -> FetchError:
    """One wait ran out: the whole deadline, or the longest a single read may wait."""
    if time.monotonic() >= deadline - 0.05:
        return too_slow(deadline, started)
    return FetchError(f"could not download: the server sent nothing for {MAX_WAIT_SECONDS:g} s", temporary=True)


def _wait(deadline: float, started: float) -> float:
    return min(remaining_or_fail(deadline, started), MAX_WAIT_SECONDS)


def _limit_wait(response: requests.Response, seconds: float) -> None:
    """The next read waits at most `seconds` (requests sets its read timeout once, per request)."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


def _network_words(exc: Exception) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "could not connect to the server"
    return f"the request failed ({type(exc).__name__})"
