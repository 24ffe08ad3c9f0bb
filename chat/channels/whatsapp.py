"""The WhatsApp Cloud API channel: Meta's webhooks in (GET verification, POST notifications
signed with X-Hub-Signature-256), replies out through POST {graph}/{phone-number-id}/messages
(a file's bytes first through POST {graph}/{phone-number-id}/media, the message then naming its id).

Payload shapes follow Meta's documentation (entry[].changes[].value with messages[],
statuses[], contacts[]; message_echoes[] for the smb_message_echoes field of a number also used
from the WhatsApp Business app); tests/fixtures/whatsapp/ keeps one sample per kind of event.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Mapping
from urllib.parse import quote

import requests

from ..models import WHATSAPP
from . import (Fetched, FetchError, Inbound, MediaRef, Outgoing, SendError, StatusReport, http_failure,
               network_failure)
from .webhook import USER_AGENT, capped_download, remaining_or_fail, too_large, too_slow

SIGNATURE_HEADER = "X-Hub-Signature-256"
DEFAULT_GRAPH_URL = "https://graph.facebook.com/v23.0"
# Message types that carry one file (an object of the type's name with the media id), and which
# of them may have a caption; a document also has its filename.
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
CAPTIONED = ("image", "video", "document")
GONE = "WhatsApp no longer has this file (media expire after 30 days)"

# Meta's error codes in words an agent can act on (the rest show Meta's own title).
ERROR_WORDS = {
    131026: "The customer's number cannot receive this message (not on WhatsApp, or an old app version)",
    131047: "More than 24 hours have passed since the customer last wrote: only a template message can be sent",
    131049: "WhatsApp chose not to deliver it, to keep the customer's experience healthy; try again later",
    131050: "The customer has stopped receiving marketing messages from this business",
    131051: "WhatsApp does not support this kind of message",
    131021: "The recipient is this business's own number",
    131030: "The customer's number is not in the test number's list of allowed recipients",
    131031: "The business account is locked",
    131042: "The business account has a payment problem",
    131045: "The business phone number is not registered correctly",
    131048: "Too many messages marked as spam recently: sending is limited for now",
    131056: "Too many messages to this customer in a short time",
    130429: "WhatsApp's rate limit was reached",
    131000: "WhatsApp had an internal problem",
    131016: "WhatsApp is temporarily unavailable",
    131005: "The access token may not send messages for this number",
    131008: "A required part of the message is missing",
    131009: "A part of the message has a value WhatsApp does not accept",
    131053: "WhatsApp could not take the file (a type or size it does not accept)",
    100: "WhatsApp refused a parameter of the message",
    190: "The channel's access token has expired or is invalid",
    10: "The channel's access token lacks a permission",
    4: "Too many API calls: the app's rate limit was reached",
    80007: "The business account's rate limit was reached",
}
# Codes worth trying again later whatever the HTTP status: throttling and Meta's own outages.
TEMPORARY_CODES = {1, 2, 4, 17, 341, 80007, 130429, 131000, 131016, 131048, 131056, 133004}


def sign(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def error_reason(code: object, title: object = None, details: object = None) -> str:
    """Meta's error in plain words, with its code and title for whoever reads the logs."""
    try:
        code = int(code)
    except (TypeError, ValueError):
        code = None
    words = ERROR_WORDS.get(code) or (str(details or title or "WhatsApp refused the message"))
    meta = f"WhatsApp error {code}" if code is not None else "WhatsApp error"
    if title:
        meta += f": {title}"
    return f"{words} ({meta})"[:500]


def phone_of(wa_id: str) -> str:
    """A WhatsApp id (digits, country code first) as the inbox stores phones: +<digits>."""
    digits = "".join(ch for ch in str(wa_id) if ch.isdigit())
    return "+" + digits


def phone_number_ids(payload: dict) -> set[str]:
    """The business phone numbers a notification's changes are about (metadata.phone_number_id)."""
    ids = {_dict(_dict(_dict(change).get("value")).get("metadata")).get("phone_number_id")
           for entry in _list(payload.get("entry")) for change in _list(_dict(entry).get("changes"))}
    return {str(found) for found in ids if found}


class WhatsAppChannel:
    kind = WHATSAPP
    SECRETS = ("access_token", "app_secret", "verify_token")

    def __init__(self, settings: dict, timeout: float = 10.0):
        self.phone_number_id = str(settings.get("phone_number_id") or "")
        self.access_token = settings.get("access_token") or ""
        self.app_secret = settings.get("app_secret") or ""
        self.verify_token = settings.get("verify_token") or ""
        self.graph_url = (settings.get("graph_url") or DEFAULT_GRAPH_URL).rstrip("/")
        self.timeout = timeout

    def describe(self) -> dict:
        return {"phone_number_id": self.phone_number_id, "graph_url": self.graph_url,
                **{name: "set" if getattr(self, name) else "not set" for name in self.SECRETS}}

    def verify(self, raw_body: bytes, headers: Mapping[str, str]) -> bool:
        given = headers.get(SIGNATURE_HEADER, "")
        return bool(self.app_secret) and hmac.compare_digest(given.encode(), sign(self.app_secret, raw_body).encode())

    def verifies_subscription(self, mode: str | None, token: str | None) -> bool:
        """Meta's GET handshake: hub.mode=subscribe and our verify token."""
        return (mode == "subscribe" and bool(self.verify_token) and token is not None
                and hmac.compare_digest(token.encode(), self.verify_token.encode()))

    def owns(self, payload: dict) -> bool:
        """Whether every change about a phone number in a notification is about this channel's.
        (Changes of other fields, template or account updates, name none: nothing to store.)"""
        return phone_number_ids(payload) == {self.phone_number_id}

    def parse(self, payload: dict) -> list[Inbound | StatusReport]:
        """Text and media messages, their echoes, and statuses of a notification; other kinds
        (reactions, locations, ...) and malformed ones are skipped."""
        found: list[Inbound | StatusReport] = []
        for entry in _list(payload.get("entry")):
            for change in _list(_dict(entry).get("changes")):
                value = _dict(_dict(change).get("value"))
                names = {str(c.get("wa_id")): _dict(c.get("profile")).get("name")
                         for c in _list(value.get("contacts")) if isinstance(c, dict)}
                for message in _list(value.get("messages")):
                    content = _content_of(message)
                    if content is not None and message.get("from"):
                        found.append(Inbound(phone=phone_of(message["from"]), body=content[0],
                                             external_id=message.get("id"), name=names.get(str(message["from"])),
                                             attachments=content[1]))
                for echo in _list(value.get("message_echoes")):
                    content = _content_of(echo)
                    if content is not None and echo.get("to"):
                        found.append(Inbound(phone=phone_of(echo["to"]), body=content[0], external_id=echo.get("id"),
                                             from_me=True, attachments=content[1]))
                for status in _list(value.get("statuses")):
                    if not isinstance(status, dict) or not status.get("id") or not status.get("status"):
                        continue
                    reason = None
                    errors = _list(status.get("errors"))
                    if status.get("status") == "failed" and errors and isinstance(errors[0], dict):
                        error = errors[0]
                        reason = error_reason(error.get("code"), error.get("title"),
                                              _dict(error.get("error_data")).get("details"))
                    elif status.get("status") == "failed":
                        reason = "WhatsApp could not deliver the message"
                    found.append(StatusReport(str(status["id"]), str(status["status"]), reason))
        return found

    def send(self, outgoing: Outgoing) -> str:
        """A text, or one file: its bytes uploaded first (POST /media), then a message of its kind
        pointing at the media id, with the body as caption where the kind takes one."""
        if not (self.phone_number_id and self.access_token):
            raise SendError("the WhatsApp channel has no phone number id or access token", temporary=False)
        payload = {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": outgoing.to.lstrip("+"),
            # Echoed back in this message's status webhooks: which reply of ours it is.
            "biz_opaque_callback_data": outgoing.idempotency_key,
        }
        if outgoing.file is None:
            payload.update(type="text", text={"preview_url": False, "body": outgoing.body})
        else:
            payload.update(self._media_message(outgoing))
        data = self._post_to_graph("messages", json=payload)
        messages = _list(data.get("messages"))
        if not messages or not isinstance(messages[0], dict) or not messages[0].get("id"):
            raise SendError("WhatsApp accepted the message but answered no id", temporary=False)
        return str(messages[0]["id"])

    def _media_message(self, outgoing: Outgoing) -> dict:
        """The type and media object of a file's message, once its bytes are uploaded."""
        file = outgoing.file
        if file.kind not in MEDIA_KINDS:
            raise SendError(f"WhatsApp cannot send a file of kind {file.kind!r}", temporary=False)
        if outgoing.body and file.kind not in CAPTIONED:
            # Refused before the upload: Graph would refuse the caption only after the bytes went up.
            raise SendError(f"WhatsApp cannot put a caption on {'an' if file.kind == 'audio' else 'a'} "
                            f"{file.kind}: send the text as a message of its own", temporary=False)
        uploaded = self._post_to_graph("media", files={"file": (file.filename, file.data, file.content_type)},
                                       data={"messaging_product": "whatsapp", "type": file.content_type})
        media_id = uploaded.get("id")
        if isinstance(media_id, bool) or not isinstance(media_id, (str, int)) or not str(media_id).strip():
            raise SendError("WhatsApp took the file but answered no media id", temporary=False)
        media = {"id": str(media_id).strip()}
        if outgoing.body:
            media["caption"] = outgoing.body
        if file.kind == "document":
            media["filename"] = file.filename
        return {"type": file.kind, file.kind: media}

    def _post_to_graph(self, endpoint: str, **request) -> dict:
        """POST {graph}/{phone number id}/{endpoint} with the token: Graph's JSON answer, or the
        SendError its error, its status or the network deserves (the one mapping of send)."""
        try:
            response = requests.post(f"{self.graph_url}/{self.phone_number_id}/{endpoint}",
                                     headers={"Authorization": f"Bearer {self.access_token}"}, timeout=self.timeout,
                                     **request)
        except requests.RequestException as exc:
            raise network_failure(exc) from None
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 300 or not isinstance(data, dict) or "error" in data:
            error = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}
            code = error.get("code")
            reason = error_reason(code, error.get("message") or error.get("error_user_title"),
                                  _dict(error.get("error_data")).get("details")) if error else \
                f"WhatsApp answered {response.status_code}"
            failure = http_failure(response.status_code if response.status_code >= 300 else 502, reason,
                                   response.headers.get("Retry-After"))
            if code in TEMPORARY_CODES:
                failure.temporary = True
            raise failure
        return data

    def fetch_media(self, media: MediaRef, max_bytes: int, deadline: float) -> Fetched:
        """A media id's file: its URL and size from GET {graph}/{media id}, then its bytes from
        that URL, both with the access token; refused before downloading when Meta says it is
        larger than max_bytes."""
        started = time.monotonic()
        if not self.access_token:
            raise FetchError("could not download: the WhatsApp channel has no access token", temporary=False)
        auth = {"Authorization": f"Bearer {self.access_token}"}
        try:
            response = requests.get(f"{self.graph_url}/{quote(media.ref, safe='')}",
                                    headers={"User-Agent": USER_AGENT, **auth},
                                    timeout=min(remaining_or_fail(deadline, started), self.timeout))
        except requests.Timeout:
            raise (too_slow(deadline, started) if time.monotonic() >= deadline - 0.05 else
                   FetchError("could not download: WhatsApp did not answer in time", temporary=True)) from None
        except requests.RequestException:
            raise FetchError("could not download: could not connect to WhatsApp", temporary=True) from None
        try:
            info = response.json()
        except ValueError:
            info = None
        if response.status_code >= 300 or not isinstance(info, dict) or "error" in info:
            raise media_refusal(response)
        url = info.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise FetchError("could not download: WhatsApp answered no URL for the file", temporary=True)
        size = _size(info.get("file_size"))
        if size is not None and size > max_bytes:
            raise too_large(size, max_bytes)
        data, served_type = capped_download(url, auth, max_bytes, deadline, started=started, refusal=media_refusal)
        declared = info.get("mime_type") if isinstance(info.get("mime_type"), str) else None
        if served_type and served_type.startswith("text/html") and not (declared or "").startswith("text/html"):
            # What Meta's media host serves a client it does not take for an API client.
            raise FetchError("could not download: WhatsApp answered a web page instead of the file", temporary=False)
        return Fetched(data, content_type=declared or media.content_type or served_type, filename=media.filename)


def media_refusal(response: requests.Response) -> FetchError:
    """Meta would not give a media file (its URL or its bytes), in words an agent can act on."""
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) and isinstance(data.get("error"), dict) else {}
    status = response.status_code if response.status_code >= 300 else 502
    try:
        code = int(error.get("code"))
    except (TypeError, ValueError):
        code = None
    title = error.get("message") if isinstance(error.get("message"), str) else None
    meta = f" (WhatsApp error {code}: {title})" if code is not None and title else \
        f" (WhatsApp error {code})" if code is not None else f" (HTTP {status})"
    if code in TEMPORARY_CODES or status == 429 or status >= 500:
        words = ERROR_WORDS.get(code) or f"WhatsApp answered {status}"
        return FetchError(f"could not download: {words}{meta}"[:500], temporary=True)
    if code in (190, 10) or status in (401, 403):
        words = error_reason(code, title) if code is not None else f"WhatsApp refused the access token{meta}"
        return FetchError(f"could not download: {words}", temporary=False)
    if status in (400, 404, 410):
        return FetchError(f"could not download: {GONE}{meta}"[:500], temporary=False)
    return FetchError(f"could not download: WhatsApp answered {status}{meta}"[:500], temporary=False)


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _dict(value) -> dict:
    """Meta's shapes are signed, not guaranteed: an object where one is expected, else {}."""
    return value if isinstance(value, dict) else {}


def _content_of(message) -> tuple[str, tuple[MediaRef, ...]] | None:
    """A message's body and files: a text, or one media object with its caption as the body;
    None for the kinds we skip and for malformed ones (a media object without an id)."""
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    if kind == "text":
        body = _dict(message.get("text")).get("body")
        return (body, ()) if isinstance(body, str) else None
    if kind not in MEDIA_KINDS or not isinstance(message.get(kind), dict):
        return None
    media = message[kind]
    media_id = media.get("id")
    if not isinstance(media_id, str) or not media_id.strip():
        return None
    caption = _str(media.get("caption")) if kind in CAPTIONED else None
    return caption or "", (MediaRef(ref=media_id.strip(), kind=kind, content_type=_str(media.get("mime_type")),
                                    filename=_str(media.get("filename")) if kind == "document" else None,
                                    caption=caption),)


def _str(value) -> str | None:
    """An optional text field: a string that says something, else None (a wrong type is ignored)."""
    return value if isinstance(value, str) and value.strip() else None


def _size(value) -> int | None:
    """Meta's file_size: a number, or a string of digits in some answers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
