"""The channels' side of inbound attachments: which files a webhook points at (parse), and
getting their bytes (fetch_media) from a real HTTP server that misbehaves as real ones do.

Meta is tests/provider.py on a loopback port: Graph's GET /{media-id} (the URL, type and size of
a file, with the access token) and the media URL it answers (the bytes, with the token again).
Its webhooks are the samples in tests/fixtures/whatsapp/, one file per kind of message.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from chat.channels import Fetched, FetchError, Inbound, MediaRef
from chat.channels.webhook import USER_AGENT, WebhookChannel
from chat.channels.whatsapp import WhatsAppChannel
from chat.media_types import human_size
from tests.provider import PHONE_NUMBER_ID, WHATSAPP_TOKEN, FakeProvider

FIXTURES = Path(__file__).parent / "fixtures" / "whatsapp"
PHONE = "+16505551234"  # the customer of the fixtures
MB = 1024 * 1024
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40 + b"\xff\xd9"


def load(kind: str) -> dict:
    return json.loads((FIXTURES / f"{kind}.json").read_text())


def first_message(event: dict, key: str = "messages") -> dict:
    return event["entry"][0]["changes"][0]["value"][key][0]


def soon(seconds: float) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def provider():
    with FakeProvider(hang_seconds=8.0) as running:
        yield running


@pytest.fixture
def whatsapp(provider):
    return WhatsAppChannel({"phone_number_id": PHONE_NUMBER_ID, "access_token": WHATSAPP_TOKEN,
                            "graph_url": provider.graph_url}, timeout=5.0)


@pytest.fixture
def webhook():
    return WebhookChannel({"url": "http://127.0.0.1:9/unused", "secret": "s"})


def fetch_error(call) -> FetchError:
    with pytest.raises(FetchError) as caught:
        call()
    return caught.value


# -- WhatsApp: parse -------------------------------------------------------------------------
@pytest.mark.parametrize("kind, media_id, content_type, filename, caption", [
    ("image", "1003383421387256", "image/jpeg", None, "The one I have"),
    ("audio", "1146519627042366", "audio/ogg; codecs=opus", None, None),
    ("video", "1076413280935451", "video/mp4", None, "It makes this noise when it starts"),
    ("document", "1370212240830947", "application/pdf", "invoice-4471.pdf", "The invoice you asked for"),
    ("sticker", "1258847795457390", "image/webp", None, None),
])
def test_every_kind_of_media_message_becomes_an_inbound_with_its_file(kind, media_id, content_type, filename,
                                                                       caption):
    event = load(kind)
    (inbound,) = WhatsAppChannel({}).parse(event)
    assert inbound == Inbound(
        phone=PHONE, body=caption or "", external_id=first_message(event)["id"], name="Sheena Nelson",
        attachments=(MediaRef(ref=media_id, kind=kind, content_type=content_type, filename=filename,
                              caption=caption),))


def test_a_text_message_has_no_attachments():
    (inbound,) = WhatsAppChannel({}).parse(load("text_message"))
    assert inbound.body == "Does it come in another color?" and inbound.attachments == ()


def test_an_echo_of_a_media_message_is_from_me_with_its_file():
    (echo,) = WhatsAppChannel({}).parse(load("message_echo_image"))
    assert echo.from_me is True and echo.phone == PHONE and echo.body == "Here is the green one"
    assert echo.attachments == (MediaRef("1432980911253094", "image", "image/jpeg", None, "Here is the green one"),)


def test_a_caption_on_a_kind_without_one_and_a_filename_outside_documents_are_ignored():
    event = load("sticker")
    first_message(event)["sticker"].update(caption="not a sticker field", filename="x.webp")
    (inbound,) = WhatsAppChannel({}).parse(event)
    assert inbound.body == "" and inbound.attachments[0].caption is None and inbound.attachments[0].filename is None


def _broken(kind: str, change) -> dict:
    event = load(kind)
    change(first_message(event))
    return event


@pytest.mark.parametrize("event", [
    _broken("image", lambda m: m["image"].pop("id")),
    _broken("image", lambda m: m["image"].update(id=1003383421387256)),
    _broken("image", lambda m: m["image"].update(id="  ")),
    _broken("document", lambda m: m.update(document="not an object")),
    _broken("audio", lambda m: m.pop("audio")),
    _broken("video", lambda m: m.update(type="location", location={"latitude": 1, "longitude": 2})),
    load("reaction"),
], ids=["no id", "id a number", "blank id", "media not an object", "media missing", "location", "reaction"])
def test_malformed_media_and_other_kinds_are_skipped_without_error(event):
    assert WhatsAppChannel({}).parse(event) == []


def test_wrong_typed_optional_fields_are_dropped_not_the_file():
    event = _broken("document", lambda m: m["document"].update(caption=12, filename=["a"], mime_type=None))
    (inbound,) = WhatsAppChannel({}).parse(event)
    assert inbound.body == ""
    assert inbound.attachments == (MediaRef("1370212240830947", "document", None, None, None),)


def test_a_media_message_next_to_a_text_keeps_both_in_order():
    event = load("text_message")
    event["entry"][0]["changes"][0]["value"]["messages"].append(first_message(load("video")))
    text, video = WhatsAppChannel({}).parse(event)
    assert (text.attachments, video.attachments[0].kind) == ((), "video")


# -- WhatsApp: fetch_media -------------------------------------------------------------------
def test_a_media_id_is_fetched_with_the_token_in_two_steps(whatsapp, provider):
    provider.whatsapp_media("1370212240830947", JPEG, "image/jpeg")
    media = MediaRef("1370212240830947", "image", "image/jpeg", "photo.jpg", None)
    assert whatsapp.fetch_media(media, 5 * MB, soon(10)) == Fetched(JPEG, "image/jpeg", "photo.jpg")
    graph, download = provider.requests
    assert (graph.method, graph.path) == ("GET", "/v23.0/1370212240830947")
    assert download.path.startswith("/whatsapp_business/attachments/?mid=1370212240830947")
    for request in (graph, download):
        assert request.headers["authorization"] == f"Bearer {WHATSAPP_TOKEN}"
        assert request.headers["user-agent"] == USER_AGENT  # lookaside refuses clients without one
    assert provider.accepted() == []  # a download is no send


def test_the_type_graph_reports_wins_over_the_webhooks(whatsapp, provider):
    provider.whatsapp_media("42", b"%PDF-1.7 ...", "application/pdf", chunked=True, file_size="12")
    fetched = whatsapp.fetch_media(MediaRef("42", "document", None, "x.pdf"), MB, soon(10))
    assert fetched == Fetched(b"%PDF-1.7 ...", "application/pdf", "x.pdf")


def test_a_wrong_token_is_permanent_and_says_so(provider):
    provider.whatsapp_media("42", JPEG, "image/jpeg")
    channel = WhatsAppChannel({"access_token": "expired-token", "graph_url": provider.graph_url})
    error = fetch_error(lambda: channel.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is False
    assert "access token" in error.reason and "190" in error.reason, error.reason
    assert provider.downloads() == []


def test_no_token_is_permanent_without_asking_meta(provider):
    channel = WhatsAppChannel({"graph_url": provider.graph_url})
    error = fetch_error(lambda: channel.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is False and "access token" in error.reason
    assert provider.requests == []


@pytest.mark.parametrize("file_size", [int(7.2 * MB), str(int(7.2 * MB))], ids=["number", "string of digits"])
def test_a_file_graph_says_is_too_large_is_refused_before_downloading(whatsapp, provider, file_size):
    provider.whatsapp_media("42", JPEG, "image/jpeg", file_size=file_size)
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), 5 * MB, soon(10)))
    assert (error.reason, error.temporary) == ("attachment too large (7.2 MB, the limit is 5 MB)", False)
    assert [r.path for r in provider.requests] == ["/v23.0/42"]  # never the bytes
    assert provider.downloads() == []


def test_a_file_larger_than_it_says_is_refused_while_streaming(whatsapp, provider):
    provider.whatsapp_media("42", b"x" * 64, "image/jpeg", mode="endless", file_size=None)
    started = time.monotonic()
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), 300 * 1024, soon(10)))
    assert (error.reason, error.temporary) == ("attachment too large (over the limit of 300 KB)", False)
    assert time.monotonic() - started < 5


def test_a_chunked_file_over_the_limit_without_a_size_is_refused(whatsapp, provider):
    provider.whatsapp_media("42", b"y" * (2 * MB), "video/mp4", chunked=True, file_size=None)
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "video"), MB, soon(10)))
    assert (error.reason, error.temporary) == ("attachment too large (over the limit of 1 MB)", False)


def test_a_file_of_exactly_the_limit_is_kept(whatsapp, provider):
    provider.whatsapp_media("42", b"z" * MB, "video/mp4", chunked=True, file_size=None)
    assert len(whatsapp.fetch_media(MediaRef("42", "video"), MB, soon(10)).data) == MB


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_download_that_stalls_fails_temporarily_by_the_deadline(whatsapp, provider, mode):
    provider.whatsapp_media("42", JPEG, "image/jpeg", mode=mode)
    started = time.monotonic()
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), 5 * MB, started + 1.5))
    elapsed = time.monotonic() - started
    assert error.temporary is True and "took longer than 1.5 s" in error.reason, error.reason
    assert 1.4 <= elapsed < 1.5 + 2, elapsed


def test_an_expired_media_id_is_permanent_in_plain_words(whatsapp, provider):
    provider.whatsapp_media("42", JPEG, "image/jpeg", mode="expired")
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is False
    assert "no longer has this file" in error.reason and "30 days" in error.reason and "100" in error.reason


def test_a_media_url_that_answers_404_is_permanent(whatsapp, provider):
    provider.whatsapp_media("42", JPEG, "image/jpeg", mode="gone")
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is False and "no longer has this file" in error.reason


def test_a_graph_500_is_temporary(whatsapp, provider):
    provider.whatsapp_media("42", JPEG, "image/jpeg", mode="500")
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is True and error.reason.startswith("could not download: "), error.reason
    assert provider.downloads() == []


def test_meta_down_is_temporary(whatsapp, provider):
    provider.stop()
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), MB, soon(10)))
    assert error.temporary is True and "connect" in error.reason


def test_a_deadline_already_past_asks_nothing(whatsapp, provider):
    provider.whatsapp_media("42", JPEG, "image/jpeg")
    error = fetch_error(lambda: whatsapp.fetch_media(MediaRef("42", "image"), MB, time.monotonic() - 1))
    assert error.temporary is True and "took longer" in error.reason
    assert provider.requests == []


# -- the generic webhook: parse --------------------------------------------------------------
def test_a_generic_message_carries_its_attachments(webhook):
    (inbound,) = webhook.parse({"phone": "+5511955554444", "external_id": "m1", "attachments": [
        {"url": "https://files.example.com/a.pdf", "content_type": "application/pdf", "filename": "a.pdf",
         "caption": "the contract"},
        {"url": "http://cdn.example.com/p.jpg"},
    ]})
    assert inbound.body == ""  # only files
    assert inbound.attachments == (
        MediaRef("https://files.example.com/a.pdf", None, "application/pdf", "a.pdf", "the contract"),
        MediaRef("http://cdn.example.com/p.jpg"),
    )


def test_a_generic_message_without_attachments_is_as_before(webhook):
    (inbound,) = webhook.parse({"phone": "+1", "body": "hi", "external_id": "m2"})
    assert (inbound.body, inbound.attachments) == ("hi", ())
    assert webhook.parse({"phone": "+1", "body": "hi", "attachments": []})[0].attachments == ()


@pytest.mark.parametrize("attachments, message", [
    ({"url": "https://x.example/a"}, "attachments must be a list"),
    ("https://x.example/a", "attachments must be a list"),
    ([{"url": f"https://x.example/{i}"} for i in range(11)], "at most 10 items"),
    (["https://x.example/a"], "attachments[0] must be an object"),
    ([{"url": "https://x.example/a"}, {}], "attachments[1].url must be an http(s) URL"),
    ([{"url": "ftp://x.example/a"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": "/relative/a.pdf"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": "javascript:alert(1)"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": "https://"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": "https://x.example:port/a"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": "https://x.example/a b"}], "attachments[0].url must be an http(s) URL"),
    ([{"url": 12}], "attachments[0].url must be a string"),
    ([{"url": "https://x.example/a", "filename": ["a"]}], "attachments[0].filename must be a string"),
    ([{"url": "https://x.example/a", "content_type": 1}], "attachments[0].content_type must be a string"),
    ([{"url": "https://x.example/a", "caption": {"t": 1}}], "attachments[0].caption must be a string"),
    ([{"url": "https://x.example/" + "a" * 1000}], "attachments[0].url must be at most 1000 characters"),
    ([{"url": "https://x.example/a", "caption": "c" * 1001}], "attachments[0].caption must be at most 1000"),
])
def test_generic_attachments_of_a_wrong_shape_are_refused_naming_the_field(webhook, attachments, message):
    with pytest.raises(ValueError) as caught:
        webhook.parse({"phone": "+1", "body": "x", "attachments": attachments})
    assert message in str(caught.value)


# -- the generic webhook: fetch_media --------------------------------------------------------
def test_a_generic_file_is_a_plain_get(webhook, provider):
    url = provider.serve_file("/files/a.pdf", b"%PDF-1.7 body", "application/pdf")
    fetched = webhook.fetch_media(MediaRef(url, None, None, "a.pdf"), MB, soon(10))
    assert fetched == Fetched(b"%PDF-1.7 body", "application/pdf", "a.pdf")
    (request,) = provider.downloads()
    assert request.headers["user-agent"] == USER_AGENT and "authorization" not in request.headers
    assert "x-signature-256" not in request.headers


def test_the_declared_type_wins_over_the_served_one(webhook, provider):
    url = provider.serve_file("/files/p", JPEG, "application/octet-stream")
    assert webhook.fetch_media(MediaRef(url, None, "image/jpeg"), MB, soon(10)).content_type == "image/jpeg"


@pytest.mark.parametrize("chunked", [False, True], ids=["Content-Length", "chunked"])
def test_a_generic_file_over_the_limit_is_refused(webhook, provider, chunked):
    url = provider.serve_file("/files/big", b"b" * (3 * MB), "video/mp4", chunked=chunked)
    error = fetch_error(lambda: webhook.fetch_media(MediaRef(url), 2 * MB, soon(10)))
    told = "3 MB, the limit is" if not chunked else "over the limit of"
    assert (error.reason, error.temporary) == (f"attachment too large ({told} 2 MB)", False)


@pytest.mark.parametrize("mode, temporary, words", [
    ("expired", False, "no longer there"), ("500", True, "answered 500")])
def test_a_generic_server_that_refuses(webhook, provider, mode, temporary, words):
    url = provider.serve_file("/files/x", JPEG, "image/jpeg", mode=mode)
    error = fetch_error(lambda: webhook.fetch_media(MediaRef(url), MB, soon(10)))
    assert error.temporary is temporary and words in error.reason, error.reason


@pytest.mark.parametrize("mode", ["hang", "trickle"])
def test_a_generic_server_that_stalls_fails_by_the_deadline(webhook, provider, mode):
    url = provider.serve_file("/files/slow", JPEG, "image/jpeg", mode=mode)
    started = time.monotonic()
    error = fetch_error(lambda: webhook.fetch_media(MediaRef(url), MB, started + 1.0))
    assert error.temporary is True and "took longer than 1 s" in error.reason, error.reason
    assert time.monotonic() - started < 1.0 + 2


def test_a_generic_server_that_is_down_is_temporary(webhook, provider):
    url = provider.serve_file("/files/x", JPEG, "image/jpeg")
    provider.stop()
    error = fetch_error(lambda: webhook.fetch_media(MediaRef(url), MB, soon(10)))
    assert error.temporary is True and "connect" in error.reason


# -- words -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, words", [
    (512, "512 B"), (1536, "1.5 KB"), (12 * 1024, "12 KB"), (int(7.2 * MB), "7.2 MB"), (100 * MB, "100 MB")])
def test_sizes_read_as_people_write_them(size, words):
    assert human_size(size) == words


def test_the_fixtures_are_meta_shaped():
    # One object named by the type, holding the media id, type and hash, as Meta documents.
    for kind in ("image", "audio", "video", "document", "sticker"):
        message = first_message(load(kind))
        assert message["type"] == kind and {"id", "mime_type", "sha256"} <= set(message[kind])
    assert first_message(load("audio"))["audio"]["voice"] is True
    assert first_message(load("sticker"))["sticker"]["animated"] is False
    echo = first_message(load("message_echo_image"), "message_echoes")
    assert echo["type"] == "image" and echo["to"] == PHONE.lstrip("+")
