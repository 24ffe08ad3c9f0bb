"""The generic webhook channel: replies are POSTed as JSON to a URL the customer's system
serves, signed with HMAC-SHA256 of the raw body; messages come in through POST /api/inbound and
statuses through POST /api/status (the inbound bearer token, chat/api.py)."""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Mapping

import requests

from ..models import WEBHOOK
from . import Inbound, Outgoing, SendError, StatusReport, http_failure, network_failure

SIGNATURE_HEADER = "X-Signature-256"


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
        """The generic channel's own inbound shape (see api.inbound): one message per request."""
        return [Inbound(phone=payload.get("phone"), body=payload.get("body"), external_id=payload.get("external_id"),
                        name=payload.get("name"), from_me=bool(payload.get("from_me")))]

    def send(self, outgoing: Outgoing) -> str:
        if not self.url:
            raise SendError("the webhook channel has no URL configured", temporary=False)
        body = json.dumps({
            "id": str(outgoing.message_id), "conversation_id": outgoing.conversation_id,
            "to": outgoing.to, "body": outgoing.body, "type": "text",
        }, separators=(",", ":")).encode()
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
