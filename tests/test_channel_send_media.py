"""The channels' side of outbound files: an agent's reply carrying one file, handed to each
adapter directly.

WhatsApp uploads the bytes (POST /media, multipart) and then sends a message of the file's kind
naming the media id; the generic webhook posts a signed JSON with a link to the file, never its
bytes. The provider is tests/provider.py, a real HTTP server on a loopback port that checks
what Graph checks (token, form fields, media ids, captions).
"""
from __future__ import annotations

import json
import time

import pytest
import requests

from chat.channels import MediaRef, OutFile, Outgoing, SendError
from chat.channels.webhook import SIGNATURE_HEADER, WebhookChannel, sign
from chat.channels.whatsapp import WhatsAppChannel
from tests.provider import MESSAGES_PATH, PHONE_NUMBER_ID, UPLOAD_PATH, WHATSAPP_TOKEN, FakeProvider, Upload

SECRET = "webhook-secret"
KEY = "round-41-1"
WA_ID = "16505551234"
# Every byte value, CR and LF among them, and a line that looks like a multipart boundary.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40 + b"\r\n--boundary\r\n\xff\xd9"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\n%%EOF\n"
OGG = b"OggS\x00\x02" + bytes(200)
LINK = "https://inbox.example.com/files/41/photo.jpg?expires=1767225600&signature=abc"

FILES = {
    "image": OutFile(41, "image", "image/jpeg", "photo.jpg", len(JPEG), JPEG, LINK),
    "video": OutFile(42, "video", "video/mp4", "clip.mp4", 12, b"\x00\x00\x00\x18ftypmp42", LINK),
    "document": OutFile(43, "document", "application/pdf", "invoice 4471.pdf", len(PDF), PDF, LINK),
    "audio": OutFile(44, "audio", "audio/ogg", "voice.ogg", len(OGG), OGG, LINK),
    "sticker": OutFile(45, "sticker", "image/webp", "sticker.webp", 16, b"RIFF\x08\x00\x00\x00WEBPVP8 ", LINK),
}


def reply(file: OutFile | None, body: str = "") -> Outgoing:
    return Outgoing(message_id=41, idempotency_key=KEY, to="+" + WA_ID, body=body, conversation_id=7, file=file)


def send_error(channel, outgoing: Outgoing) -> SendError:
    with pytest.raises(SendError) as caught:
        channel.send(outgoing)
    return caught.value


@pytest.fixture
def provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture
def whatsapp(provider):
    return WhatsAppChannel({"phone_number_id": PHONE_NUMBER_ID, "access_token": WHATSAPP_TOKEN,
                            "graph_url": provider.graph_url}, timeout=5.0)


@pytest.fixture
def webhook(provider):
    return WebhookChannel({"url": provider.webhook_url, "secret": SECRET}, timeout=5.0)


def posted(provider, path: str):
    return [r for r in provider.requests if r.path == path]


# -- WhatsApp --------------------------------------------------------------------------------
def test_a_photo_is_uploaded_then_sent_as_an_image_with_its_caption(whatsapp, provider):
    wamid = whatsapp.send(reply(FILES["image"], "The green one, as promised"))

    upload, message = provider.requests
    assert (upload.path, message.path) == (UPLOAD_PATH, MESSAGES_PATH)
    assert upload.headers["authorization"] == message.headers["authorization"] == f"Bearer {WHATSAPP_TOKEN}"
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    (taken,) = provider.uploads
    assert taken == Upload(taken.media_id, JPEG, "image/jpeg", "photo.jpg", "image/jpeg")
    assert message.json == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID, "type": "image",
        "image": {"id": taken.media_id, "caption": "The green one, as promised"},
        "biz_opaque_callback_data": KEY}
    assert wamid == provider.id_for(KEY)
    assert provider.delivered_keys() == [KEY] and provider.accepted() == [message]  # the upload is no send


def test_a_document_keeps_its_filename_and_caption(whatsapp, provider):
    whatsapp.send(reply(FILES["document"], "The invoice you asked for"))
    (taken,) = provider.uploads
    assert (taken.data, taken.filename, taken.type) == (PDF, "invoice 4471.pdf", "application/pdf")
    (message,) = posted(provider, MESSAGES_PATH)
    assert message.json["type"] == "document"
    assert message.json["document"] == {"id": taken.media_id, "caption": "The invoice you asked for",
                                        "filename": "invoice 4471.pdf"}


@pytest.mark.parametrize("kind", ["image", "video", "document", "audio", "sticker"])
def test_a_file_without_text_is_sent_with_no_caption(whatsapp, provider, kind):
    whatsapp.send(reply(FILES[kind], ""))
    (taken,) = provider.uploads
    assert (taken.data, taken.content_type) == (FILES[kind].data, FILES[kind].content_type)
    (message,) = provider.accepted()
    expected = {"id": taken.media_id, **({"filename": FILES[kind].filename} if kind == "document" else {})}
    assert (message.json["type"], message.json[kind]) == (kind, expected)


@pytest.mark.parametrize("kind", ["audio", "sticker"])
def test_text_on_a_kind_without_a_caption_is_refused_before_anything_is_sent(whatsapp, provider, kind):
    error = send_error(whatsapp, reply(FILES[kind], "Listen to this"))
    assert error.temporary is False
    assert f"cannot put a caption on a{'n' if kind == 'audio' else ''} {kind}" in error.reason
    assert "message of its own" in error.reason
    assert provider.requests == [] and provider.uploads == []


def test_an_upload_that_fails_on_graphs_side_is_temporary_and_sends_no_message(whatsapp, provider):
    provider.script("500")
    error = send_error(whatsapp, reply(FILES["image"], "caption"))
    assert error.temporary is True and "500" in error.reason
    assert [r.path for r in provider.requests] == [UPLOAD_PATH]
    assert provider.uploads == [] and provider.accepted() == []


def test_a_throttled_upload_is_temporary_after_retry_after(whatsapp, provider):
    provider.retry_after = "7"
    provider.script("429")
    error = send_error(whatsapp, reply(FILES["image"]))
    assert (error.temporary, error.retry_after) == (True, 7.0)
    assert posted(provider, MESSAGES_PATH) == []


def test_an_upload_graph_refuses_is_permanent_in_words(whatsapp, provider):
    provider.script("400")
    error = send_error(whatsapp, reply(FILES["document"]))
    assert error.temporary is False
    assert error.reason.startswith("WhatsApp could not take the file")
    assert "WhatsApp error 131053" in error.reason
    assert posted(provider, MESSAGES_PATH) == []


def test_an_upload_answered_without_a_media_id_is_permanent(whatsapp, provider):
    provider.script("no-id")
    error = send_error(whatsapp, reply(FILES["image"]))
    assert (error.temporary, error.reason) == (False, "WhatsApp took the file but answered no media id")
    assert posted(provider, MESSAGES_PATH) == []


def test_a_bad_token_is_permanent_and_names_the_token(provider):
    channel = WhatsAppChannel({"phone_number_id": PHONE_NUMBER_ID, "access_token": "expired-token",
                               "graph_url": provider.graph_url})
    error = send_error(channel, reply(FILES["image"], "caption"))
    assert error.temporary is False and "access token" in error.reason and "190" in error.reason
    assert [r.path for r in provider.requests] == [UPLOAD_PATH] and provider.uploads == []


def test_graph_down_during_the_upload_is_temporary(whatsapp, provider):
    provider.stop()
    error = send_error(whatsapp, reply(FILES["image"]))
    assert (error.temporary, error.reason) == (True, "could not connect to the provider")


def test_a_message_that_fails_after_its_upload_is_temporary(whatsapp, provider):
    provider.script("ok", "503")
    error = send_error(whatsapp, reply(FILES["image"], "caption"))
    assert error.temporary is True
    assert len(provider.uploads) == 1 and provider.accepted() == []


def test_the_uploaded_file_is_what_graph_then_serves_for_its_id(whatsapp, provider):
    whatsapp.send(reply(FILES["document"]))
    (taken,) = provider.uploads
    fetched = whatsapp.fetch_media(MediaRef(taken.media_id, "document"), 1024 * 1024, time.monotonic() + 5)
    assert (fetched.data, fetched.content_type) == (PDF, "application/pdf")


def test_a_text_reply_uploads_nothing(whatsapp, provider):
    whatsapp.send(reply(None, "It ships today"))
    (message,) = provider.requests
    assert message.path == MESSAGES_PATH and message.json["type"] == "text" and provider.uploads == []


# -- the fake Graph refuses what Graph refuses (else the tests above would prove little) -------
def graph_post(provider, path: str, **request) -> requests.Response:
    return requests.post(provider.url + path, headers={"Authorization": f"Bearer {WHATSAPP_TOKEN}"}, timeout=5,
                         **request)


def media_message(kind: str, media: dict) -> dict:
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID, "type": kind, kind: media}


@pytest.mark.parametrize("data, files, missing", [
    ({"type": "image/jpeg"}, {"file": ("a.jpg", JPEG, "image/jpeg")}, "messaging_product"),
    ({"messaging_product": "whatsapp"}, {"file": ("a.jpg", JPEG, "image/jpeg")}, "type"),
    ({"messaging_product": "whatsapp", "type": "image/jpeg"}, {"other": ("a.jpg", JPEG, "image/jpeg")}, "file"),
])
def test_the_fake_refuses_an_upload_missing_a_field(provider, data, files, missing):
    answer = graph_post(provider, UPLOAD_PATH, data=data, files=files)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 100
    assert f"The parameter {missing} is required" in answer.json()["error"]["message"]
    assert provider.uploads == []


def test_the_fake_refuses_an_upload_with_a_bad_token(provider):
    answer = requests.post(provider.url + UPLOAD_PATH, headers={"Authorization": "Bearer nope"}, timeout=5,
                           data={"messaging_product": "whatsapp", "type": "image/jpeg"},
                           files={"file": ("a.jpg", JPEG, "image/jpeg")})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == 190


def test_the_fake_refuses_a_media_id_it_never_gave_out(provider):
    answer = graph_post(provider, MESSAGES_PATH, json=media_message("image", {"id": "1003383421387256"}))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 131053
    assert provider.accepted() == []


def test_the_fake_refuses_a_caption_on_audio(provider):
    uploaded = graph_post(provider, UPLOAD_PATH, data={"messaging_product": "whatsapp", "type": "audio/ogg"},
                          files={"file": ("v.ogg", OGG, "audio/ogg")}).json()["id"]
    answer = graph_post(provider, MESSAGES_PATH, json=media_message("audio", {"id": uploaded, "caption": "hi"}))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 100
    assert "caption" in answer.json()["error"]["error_data"]["details"]
    assert graph_post(provider, MESSAGES_PATH, json=media_message("audio", {"id": uploaded})).status_code == 200


# -- the generic webhook ---------------------------------------------------------------------
def test_a_file_goes_to_the_webhook_as_a_signed_link_not_its_bytes(webhook, provider):
    provider_id = webhook.send(reply(FILES["image"], "The green one"))

    (received,) = provider.requests
    assert received.signature_ok is True
    assert received.headers[SIGNATURE_HEADER.lower()] == sign(SECRET, received.body)
    assert received.headers["idempotency-key"] == KEY
    assert json.loads(received.body) == {
        "id": "41", "conversation_id": 7, "to": "+" + WA_ID, "body": "The green one", "type": "image",
        "attachments": [{"url": LINK, "content_type": "image/jpeg", "filename": "photo.jpg", "size": len(JPEG)}]}
    assert JPEG[:16] not in received.body and len(received.body) < 1024
    assert provider_id == provider.id_for(KEY)


def test_a_file_without_text_keeps_an_empty_body(webhook, provider):
    webhook.send(reply(FILES["document"], ""))
    (received,) = provider.accepted()
    assert (received.json["type"], received.json["body"]) == ("document", "")
    assert received.json["attachments"][0]["filename"] == "invoice 4471.pdf"


def test_a_file_without_a_public_link_is_refused_naming_public_url(webhook, provider):
    unlinked = OutFile(41, "image", "image/jpeg", "photo.jpg", len(JPEG), JPEG, url=None)
    error = send_error(webhook, reply(unlinked, "caption"))
    assert (error.temporary, error.reason) == (
        False, "set PUBLIC_URL: the customer's system needs a link to fetch the file from")
    assert provider.requests == []


def test_a_text_reply_to_the_webhook_is_as_before(webhook, provider):
    webhook.send(reply(None, "It ships today"))
    (received,) = provider.accepted()
    assert received.json["type"] == "text" and "attachments" not in received.json


def test_a_webhook_that_refuses_a_file_is_permanent(webhook, provider):
    provider.script("400")
    error = send_error(webhook, reply(FILES["image"]))
    assert error.temporary is False and "422" in error.reason
