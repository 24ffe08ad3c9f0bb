"""Channels: how messages come in from and go out to a messaging provider, behind one small face.

An adapter is built from a channel row's settings and does four things:

- `verify(raw_body, headers)`: is this webhook really from the provider (HMAC of the raw bytes)?
- `parse(payload)`: the provider's webhook -> `Inbound` messages and `StatusReport`s;
- `send(outgoing)`: give one reply to the provider -> its message id, or a `SendError` that
  says whether trying again later can help (`temporary`) and why, in words an agent can read;
- `fetch_media(media, max_bytes, deadline)`: the bytes of a file an inbound message points at,
  or a `FetchError` (too large, refused, too slow: `deadline` is the whole download's time);
- `describe()`: what the admin page may show of its settings (never a secret).

The domain and the worker know channels only through this module; the adapters know nothing
of the database, the cache or sockets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

from ..models import WEBHOOK, WHATSAPP


@dataclass(frozen=True)
class OutFile:
    """A file an agent sent, as the adapter hands it on: its bytes (WhatsApp uploads them) and
    a link the customer's system can GET without signing in (the generic webhook sends it)."""

    attachment_id: int
    kind: str  # image | audio | video | document | sticker
    content_type: str  # sniffed from the bytes when the agent attached it
    filename: str
    size: int
    data: bytes = b""
    url: str | None = None  # absolute, signed, expiring; None when PUBLIC_URL is not set


@dataclass(frozen=True)
class Outgoing:
    """A reply to hand to the provider: a text, or one file with the text as its caption
    (body may then be empty)."""

    message_id: int
    idempotency_key: str  # the same for every attempt of one round; a Retry starts a new round
    to: str  # the contact's phone, as stored (+5511...)
    body: str
    conversation_id: int
    file: OutFile | None = None


@dataclass(frozen=True)
class MediaRef:
    """A file a provider's message points at, fetched later by a worker (never in the webhook
    request): the generic webhook's `url`, or WhatsApp's media id (`ref`). content_type and
    filename are what the sender declared; the stored type is sniffed from the bytes."""

    ref: str  # a URL (webhook) or a media id (WhatsApp)
    kind: str | None = None  # image | audio | video | document | sticker, when the provider says
    content_type: str | None = None
    filename: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Fetched:
    """A file as a provider served it."""

    data: bytes
    content_type: str | None  # what the provider said (Content-Type, mime_type): a hint only
    filename: str | None = None


class FetchError(Exception):
    """A file could not be fetched: `reason` in words an agent can read ("attachment too
    large", "could not download: ..."); temporary: worth trying again later."""

    def __init__(self, reason: str, temporary: bool):
        super().__init__(reason)
        self.reason, self.temporary = reason, temporary


@dataclass(frozen=True)
class Inbound:
    """A message the provider reports: the contact's (from_me False) or an echo of one the
    business sent, from this inbox or from its phone (from_me True)."""

    phone: str
    body: str
    external_id: str | None
    name: str | None = None
    from_me: bool = False
    attachments: tuple[MediaRef, ...] = ()


@dataclass(frozen=True)
class StatusReport:
    provider_message_id: str
    status: str  # sent | delivered | read | failed
    reason: str | None = None


class SendError(Exception):
    """The provider did not take the message. temporary: worth trying again (5xx, timeouts,
    connection refused, rate limits), after retry_after seconds when the provider said so."""

    def __init__(self, reason: str, temporary: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.temporary, self.retry_after = reason, temporary, retry_after


class Adapter(Protocol):
    kind: str

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> bool: ...

    def parse(self, payload: dict) -> list[Inbound | StatusReport]: ...

    def send(self, outgoing: Outgoing) -> str: ...

    def fetch_media(self, media: MediaRef, max_bytes: int, deadline: float) -> Fetched: ...

    def describe(self) -> dict: ...


def adapter_for(kind: str, settings: dict, timeout: float = 10.0) -> Adapter:
    """The adapter of a channel kind, built from its settings (channels.settings)."""
    from .webhook import WebhookChannel
    from .whatsapp import WhatsAppChannel

    adapters = {WEBHOOK: WebhookChannel, WHATSAPP: WhatsAppChannel}
    if kind not in adapters:
        raise ValueError(f"unknown channel kind {kind!r}")
    return adapters[kind](settings, timeout)


def retry_after_seconds(value: str | None) -> float | None:
    """An HTTP Retry-After header in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def http_failure(status: int, reason: str, retry_after: str | None = None) -> SendError:
    """The one rule for an HTTP answer that is not a success: 429 and 5xx are temporary
    (after Retry-After when given), any other 4xx is permanent."""
    temporary = status == 429 or status >= 500
    return SendError(reason, temporary=temporary, retry_after=retry_after_seconds(retry_after) if temporary else None)


def network_failure(exc: Exception) -> SendError:
    """A timeout or a refused or dropped connection: temporary, the provider may be back soon."""
    import requests

    if isinstance(exc, requests.Timeout):
        return SendError("the provider did not answer in time", temporary=True)
    if isinstance(exc, requests.ConnectionError):
        return SendError("could not connect to the provider", temporary=True)
    return SendError(f"could not reach the provider ({type(exc).__name__})", temporary=True)
