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

It also serves files as real servers do, for inbound attachments (GET requests, recorded too,
never counted as accepted sends):

        url = provider.serve_file("/files/a.pdf", data, "application/pdf")   # a customer's server
        provider.whatsapp_media("1003383421387256", data, "image/jpeg")      # Graph's media id:
        # GET /v23.0/<id> (Bearer token) -> {"url", "mime_type", "sha256", "file_size", "id"},
        # then GET that url (the token again) -> the bytes
        provider.downloads()                   # the GETs of bytes it answered (not Graph's JSON)

It takes a file an agent sends on WhatsApp as Graph does: POST /v23.0/<phone id>/media, multipart
(messaging_product=whatsapp, type=<mime type>, file=<the bytes, named and typed>) -> {"id"}; then
the message of that kind names the id (an id it never gave out, or a caption on audio or a
sticker: 400, as Graph refuses them). An upload is one request of the script: script("500")
fails it, "400" answers Graph's media upload error (131053), "no-id" a 200 without an id.

        provider.uploads                       # what it took: Upload(media_id, data, content_type,
                                               # filename, type), in order; never counted as sends

File modes: "ok", "hang" (headers, then no byte for hang_seconds), "trickle" (a byte every
0.2 s), "endless" (64 KB chunks until the client hangs up), "500", "expired" (a media id Graph
no longer knows: 400, code 100, subcode 33, as Graph answers; a plain file: 404), "gone" (the
download URL of a media id answers 404).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from bench.common import free_port

WHATSAPP_TOKEN = "test-whatsapp-access-token"
PHONE_NUMBER_ID = "106540352242922"
MEDIA_PATH = "/whatsapp_business/attachments/"  # where Graph's media URLs point, as lookaside's do
MESSAGES_PATH = f"/v23.0/{PHONE_NUMBER_ID}/messages"
UPLOAD_PATH = f"/v23.0/{PHONE_NUMBER_ID}/media"
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")
CAPTIONED = ("image", "video", "document")
_BAD_TOKEN = {"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190,
                        "fbtrace_id": "AbCdEf"}}


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    json: dict | None
    signature_ok: bool | None  # None: no signature expected (WhatsApp uses a bearer token)
    at: float = field(default_factory=time.monotonic)
    method: str = "POST"
    sent: int = 0  # bytes of a file written to the client (GETs)

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")


@dataclass(frozen=True)
class Upload:
    """A file Graph took at POST /media: the id it answered and the form's parts as received."""

    media_id: str
    data: bytes
    content_type: str | None  # the file part's Content-Type
    filename: str | None  # the file part's filename
    type: str | None  # the `type` field (the mime type the client declared)


@dataclass
class ServedFile:
    """A file the fake serves: bytes, what it says they are, and how it misbehaves."""

    data: bytes
    content_type: str
    mode: str = "ok"
    chunked: bool = False  # no Content-Length: the client learns the size only by reading
    file_size: int | str | None = None  # what Graph says (a media id's); None: not said


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
        self._files: dict[str, ServedFile] = {}  # path -> a plain file
        self._media: dict[str, ServedFile] = {}  # WhatsApp media id -> its file
        self.uploads: list[Upload] = []  # files taken at POST /media, in order
        self._stopping = threading.Event()  # ends hanging answers when the server stops

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

            def handle(self):
                try:
                    super().handle()
                except (ConnectionResetError, BrokenPipeError):
                    pass  # a client that hung up mid-file, as real clients do

            def do_POST(self):
                provider._handle(self)

            def do_GET(self):
                provider._handle_get(self)

        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: connections are refused until start() again (same port)."""
        self._stopping.set()
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

    def downloads(self) -> list[Received]:
        """The GETs of a file's bytes it received (plain files and media URLs, not Graph's JSON)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and not r.path.startswith("/v23.0/")]

    # -- files ------------------------------------------------------------------------------
    def serve_file(self, path: str, data: bytes, content_type: str = "application/octet-stream",
                   mode: str = "ok", chunked: bool = False) -> str:
        """Serve bytes at a path, as a customer's server would for the generic channel: its URL."""
        with self._lock:
            self._files[path] = ServedFile(data, content_type, mode, chunked)
        return self.url + path

    def whatsapp_media(self, media_id: str, data: bytes, mime_type: str, mode: str = "ok", chunked: bool = False,
                       file_size: int | str | None | bool = True) -> None:
        """A media id as Graph knows it. file_size: True says the real size, None says none,
        a number or a string of digits says that (Meta's documented sample has a string)."""
        size = len(data) if file_size is True else file_size
        with self._lock:
            self._media[media_id] = ServedFile(data, mime_type, mode, chunked, size)

    def media_url(self, media_id: str) -> str:
        """The short-lived download URL Graph answers for a media id."""
        digest = hashlib.sha256(media_id.encode()).hexdigest()[:16]
        return f"{self.url}{MEDIA_PATH}?mid={media_id}&ext={int(time.time())}&hash={digest}"

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
        if whatsapp and handler.path not in (MESSAGES_PATH, UPLOAD_PATH):
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
            if handler.path == UPLOAD_PATH:
                return self._answer(handler, received, 400, _graph_error(
                    131053, "Media upload error", "Unable to upload the media used in the message"))
            if whatsapp:
                return self._answer(handler, received, 400, {"error": {
                    "message": "(#131026) Message undeliverable", "type": "OAuthException", "code": self.meta_code,
                    "error_data": {"messaging_product": "whatsapp", "details": "Message undeliverable"},
                    "fbtrace_id": "AbCdEf"}})
            return self._answer(handler, received, 422, {"error": "unknown recipient"})
        if mode == "no-id":
            return self._answer(handler, received, 200, {})
        if handler.path == UPLOAD_PATH:
            return self._take_upload(handler, received)
        refusal = self._media_refusal(data) if whatsapp else None
        if refusal is not None:
            return self._answer(handler, received, 400, refusal)
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

    def _take_upload(self, handler, received: Received) -> None:
        """Graph's POST /media: the form's fields checked as Graph checks them, the file kept."""
        fields, file = form_parts(received.headers.get("content-type", ""), received.body)
        for name in ("messaging_product", "type"):
            if not fields.get(name):
                return self._answer(handler, received, 400, _graph_error(100, f"The parameter {name} is required."))
        if fields["messaging_product"] != "whatsapp":
            return self._answer(handler, received, 400, _graph_error(
                100, "Invalid parameter", "messaging_product must be whatsapp"))
        if file is None:
            return self._answer(handler, received, 400, _graph_error(100, "The parameter file is required."))
        with self._lock:
            media_id = str(4490709327384033 + len(self.uploads))
            self.uploads.append(Upload(media_id, file.get_payload(decode=True) or b"", file.get_content_type(),
                                       file.get_filename(), fields["type"]))
            # Graph serves what was uploaded to its owner, as any media id (GET /<media id>).
            self._media[media_id] = ServedFile(self.uploads[-1].data, fields["type"])
        received.answered = "uploaded"
        return self._answer(handler, received, 200, {"id": media_id})

    def _media_refusal(self, message: dict | None) -> dict | None:
        """Graph's 400 for a media message it would not take: no id of a file uploaded here, or
        a caption on a kind that has none. None for one it takes (and for texts)."""
        kind = (message or {}).get("type")
        if kind not in MEDIA_KINDS:
            return None
        media = message.get(kind)
        if not isinstance(media, dict) or not media.get("id"):
            return _graph_error(100, f"The parameter {kind}['id'] is required.")
        with self._lock:
            uploaded = {upload.media_id for upload in self.uploads}
        if str(media["id"]) not in uploaded:
            return _graph_error(131053, "Media upload error", f"Media id {media['id']} was not uploaded to this "
                                "phone number")
        if "caption" in media and kind not in CAPTIONED:
            return _graph_error(100, "Invalid parameter", f"Param {kind}['caption'] is not allowed for {kind}")
        return None

    def _handle_get(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        received = Received(handler.path, headers, b"", None, None, method="GET")
        with self._lock:
            self.requests.append(received)
        parts = urlsplit(handler.path)
        token_ok = headers.get("authorization") == f"Bearer {WHATSAPP_TOKEN}"
        if parts.path.startswith("/v23.0/"):  # Graph: a media id's URL and facts
            if not token_ok:
                return self._answer(handler, received, 401, _BAD_TOKEN)
            media_id = parts.path.removeprefix("/v23.0/")
            with self._lock:
                media = self._media.get(media_id)
            if media is None or media.mode == "expired":
                return self._answer(handler, received, 400, {"error": {
                    "message": f"Unsupported get request. Object with ID '{media_id}' does not exist, cannot be "
                               "loaded due to missing permissions, or does not support this operation.",
                    "type": "GraphMethodException", "code": 100, "error_subcode": 33, "fbtrace_id": "AbCdEf"}})
            if media.mode == "500":
                return self._answer(handler, received, 500, {"error": {
                    "message": "An unexpected error has occurred. Please retry your request later.",
                    "type": "OAuthException", "code": 2, "is_transient": True, "fbtrace_id": "AbCdEf"}})
            found = {"messaging_product": "whatsapp", "url": self.media_url(media_id), "mime_type": media.content_type,
                     "sha256": base64.b64encode(hashlib.sha256(media.data).digest()).decode(), "id": media_id}
            if media.file_size is not None:
                found["file_size"] = media.file_size
            received.answered = "served"
            return self._answer(handler, received, 200, found)
        if parts.path == MEDIA_PATH:  # the media URL Graph answered: the bytes, with the token again
            if not token_ok:
                return self._answer(handler, received, 401, _BAD_TOKEN)
            with self._lock:
                media = self._media.get((parse_qs(parts.query).get("mid") or [""])[0])
            if media is None or media.mode == "gone":
                return self._answer(handler, received, 404, {"error": {"message": "Media not found", "code": 100}})
            return self._serve_bytes(handler, received, media)
        with self._lock:
            served = self._files.get(parts.path)
        if served is None or served.mode == "expired":
            return self._answer(handler, received, 404, {"error": "no such file"})
        if served.mode == "500":
            return self._answer(handler, received, 500, {"error": "provider is having a bad day"})
        return self._serve_bytes(handler, received, served)

    def _serve_bytes(self, handler, received: Received, served: ServedFile) -> None:
        """200 and the bytes, as the file's mode says: at once, never, a trickle or without end."""
        chunked = served.chunked or served.mode == "endless"
        received.answered = "served"
        until = time.monotonic() + self.hang_seconds

        def write(piece: bytes) -> None:
            handler.wfile.write(b"%X\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            handler.wfile.flush()
            received.sent += len(piece)

        try:
            handler.send_response(200)
            handler.send_header("Content-Type", served.content_type)
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
            else:
                handler.send_header("Content-Length", str(len(served.data)))
            handler.end_headers()
            handler.wfile.flush()
            if served.mode == "hang":
                handler.close_connection = True
                self._stopping.wait(self.hang_seconds)
                return
            if served.mode == "trickle":
                handler.close_connection = True
                for i in range(len(served.data)):
                    if time.monotonic() > until or self._stopping.wait(0.2):
                        return
                    write(served.data[i:i + 1])
            elif served.mode == "endless":
                handler.close_connection = True
                piece = (served.data or b"\0") * (64 * 1024 // max(1, len(served.data)) + 1)
                while time.monotonic() < until and not self._stopping.is_set():
                    write(piece[:64 * 1024])
                return
            else:
                for start in range(0, len(served.data), 64 * 1024):
                    write(served.data[start:start + 64 * 1024])
            if chunked:
                handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the client gave up, as clients do

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


def _graph_error(code: int, message: str, details: str | None = None) -> dict:
    """Graph's error body: {"error": {message, type, code, error_data?, fbtrace_id}}."""
    error = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf"}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


def form_parts(content_type: str, body: bytes):
    """A multipart/form-data body: ({field name: text}, the `file` part or None). The stdlib
    email parser reads it once told the Content-Type, as a MIME message's headers would."""
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields, file = {}, None
    if not message.is_multipart():
        return fields, file
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "file":
            file = part
        elif name:
            fields[name] = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    return fields, file


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
