"""A messaging provider played by the tests: a real HTTP server on a free loopback port.

It stands for what is outside the product (a customer's webhook endpoint, Meta's Graph API):
it records every request, checks signatures and tokens as the real one would, answers with the
real one's shapes (an id; Meta's {"messages": [{"id"}]} or {"error": {...}}), and does what
real providers do to a client: fail with 500, throttle with 429 and Retry-After, refuse with a
4xx, hang past the timeout. It is a test fixture, never a product part.

    with FakeProvider(secret="s") as provider:
        provider.script("500", "500")          # the next two requests fail, then the default ("ok")
        provider.default = "hang"              # every later request hangs
        provider.requests                      # what it received, in order
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import free_port

WHATSAPP_TOKEN = "test-whatsapp-access-token"
PHONE_NUMBER_ID = "106540352242922"


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    json: dict | None
    signature_ok: bool | None  # None: no signature expected (WhatsApp uses a bearer token)
    at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


class FakeProvider:
    """default / script(...) modes: "ok", "500", "503", "429" (Retry-After: retry_after),
    "400" (a 4xx with an error body; Meta's shape on the WhatsApp path, with `meta_code`),
    "hang" (answers after hang_seconds), "no-id" (2xx without an id)."""

    def __init__(self, secret: str | None = None, retry_after: str = "1", hang_seconds: float = 5.0):
        self.secret, self.retry_after, self.hang_seconds = secret, retry_after, hang_seconds
        self.default = "ok"
        self.meta_code = 131026
        self._script: list[str] = []
        self.requests: list[Received] = []
        self._ids: dict[str, str] = {}  # idempotency key -> the id answered (a retry gets the same)
        self._lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = f"{self.url}/messages"
        self.graph_url = f"{self.url}/v23.0"
        self._server: ThreadingHTTPServer | None = None

    # -- control ---------------------------------------------------------------------------
    def script(self, *modes: str) -> None:
        with self._lock:
            self._script.extend(modes)

    def start(self) -> "FakeProvider":
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                provider._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: connections are refused until start() again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeProvider":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what it saw ------------------------------------------------------------------------
    def accepted(self) -> list[Received]:
        """Requests it answered with success: what the customer would get (once per key)."""
        with self._lock:
            return [r for r in self.requests if getattr(r, "answered", None) == "ok"]

    def delivered_keys(self) -> list[str]:
        """Idempotency keys it took, first time each (a provider sends a keyed message once)."""
        seen, keys = set(), []
        for r in self.accepted():
            key = r.key or (r.json or {}).get("biz_opaque_callback_data")
            if key not in seen:
                seen.add(key)
                keys.append(key)
        return keys

    def wait_for(self, count: int, timeout: float = 10.0, accepted: bool = True) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.accepted() if accepted else list(self.requests)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"the provider got {len(self.accepted() if accepted else self.requests)} "
                             f"requests, expected {count}: {[r.json for r in self.requests]}")

    def id_for(self, message_id: int) -> str:
        """The provider id it answered for one of our message ids (its first round)."""
        with self._lock:
            return self._ids[str(message_id)]

    # -- serving ----------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        whatsapp = handler.path.startswith("/v23.0/")
        signature_ok = None
        if not whatsapp and self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            signature_ok = hmac.compare_digest(headers.get("x-signature-256", ""), expected)
        received = Received(handler.path, headers, body, data, signature_ok)
        with self._lock:
            self.requests.append(received)
            mode = self._script.pop(0) if self._script else self.default
        if whatsapp and headers.get("authorization") != f"Bearer {WHATSAPP_TOKEN}":
            return self._answer(handler, received, 401, {"error": {"message": "Invalid OAuth access token.",
                                                                  "type": "OAuthException", "code": 190}})
        if whatsapp and handler.path != f"/v23.0/{PHONE_NUMBER_ID}/messages":
            return self._answer(handler, received, 400, {"error": {"message": "Unsupported post request",
                                                                  "type": "GraphMethodException", "code": 100}})
        if signature_ok is False:
            return self._answer(handler, received, 401, {"error": "bad signature"})
        if mode == "hang":
            time.sleep(self.hang_seconds)
            mode = "ok"
        if mode in ("500", "503"):
            return self._answer(handler, received, int(mode), {"error": "provider is having a bad day"})
        if mode == "429":
            return self._answer(handler, received, 429, {"error": {"message": "Too many requests", "code": 130429}}
                                if whatsapp else {"error": "slow down"}, {"Retry-After": self.retry_after})
        if mode == "400":
            if whatsapp:
                return self._answer(handler, received, 400, {"error": {
                    "message": "(#131026) Message undeliverable", "type": "OAuthException", "code": self.meta_code,
                    "error_data": {"messaging_product": "whatsapp", "details": "Message undeliverable"},
                    "fbtrace_id": "AbCdEf"}})
            return self._answer(handler, received, 422, {"error": "unknown recipient"})
        if mode == "no-id":
            return self._answer(handler, received, 200, {})
        key = headers.get("idempotency-key") or (data or {}).get("biz_opaque_callback_data") or str(len(self.requests))
        with self._lock:
            provider_id = self._ids.setdefault(key, f"wamid.{key}.{len(self._ids)}" if whatsapp else f"prov-{key}")
        received.answered = "ok"
        if whatsapp:
            to = (data or {}).get("to")
            return self._answer(handler, received, 200, {"messaging_product": "whatsapp",
                                                         "contacts": [{"input": to, "wa_id": to}],
                                                         "messages": [{"id": provider_id}]})
        return self._answer(handler, received, 200, {"id": provider_id})

    def _answer(self, handler, received, status: int, payload: dict, headers: dict | None = None) -> None:
        if status >= 300:
            received.answered = str(status)
        body = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout): as with a real provider, it may have been sent


def whatsapp_signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def whatsapp_notification(*, messages=(), statuses=(), echoes=(), contacts=(), phone_number_id=PHONE_NUMBER_ID) -> dict:
    """A notification in Meta's shape (entry[].changes[].value)."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id}}
    if contacts:
        value["contacts"] = list(contacts)
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    field_name = "messages"
    if echoes:
        value["message_echoes"] = list(echoes)
        field_name = "smb_message_echoes"
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": field_name}]}]}


def whatsapp_status(provider_id: str, status: str, code: int | None = None, title: str | None = None,
                    recipient: str = "5511955554444") -> dict:
    found = {"id": provider_id, "status": status, "timestamp": str(int(time.time())), "recipient_id": recipient}
    if status == "failed":
        found["errors"] = [{"code": code or 131026, "title": title or "Message undeliverable",
                            "message": title or "Message undeliverable",
                            "error_data": {"details": "Message Undeliverable."}}]
    return found
