"""Attachments (issue 19, part 1): files on messages, fetched after the commit, kept in storage.

  inbound files fetched by the worker ... test_webhook_files_are_fetched_after_the_commit
  WhatsApp media through the Graph API .. test_whatsapp_media_is_fetched_with_the_channel_token
  bad files: a clear state, no 500 ..... test_refused_files_say_why_and_keep_nothing
  a download that never ends ........... test_a_hanging_download_is_tried_again_then_fails
  the thread shows each kind ........... test_the_thread_shows_thumbnails_players_and_file_cards
  download URLs: who may see them ...... test_a_file_is_for_the_agents_who_may_see_its_conversation
  never inline as a page of ours ....... test_files_never_run_as_pages
  stored on S3 as on disk .............. test_s3_storage_serves_the_same_files

Every test runs on both databases and both cache backends; the provider is tests/provider.py's
real HTTP server, the S3-compatible server moto's (tests/test_storage.py).
"""
from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from chat import worker
from chat.extensions import db
from chat.models import Attachment, Conversation, Message, User
from tests.conftest import INBOUND_TOKEN, Agent, app_with_tables, make_config, make_conversation, make_user
from tests.provider import PHONE_NUMBER_ID, WHATSAPP_TOKEN, FakeProvider, whatsapp_signature
from tests.test_storage import aws_env  # noqa: F401 - a fixture: dummy S3 credentials

PROVIDER = {"Authorization": f"Bearer {INBOUND_TOKEN}"}


def png(size=(800, 600), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n" \
      b"trailer<</Root 1 0 R>>\n%%EOF\n"


APP_SECRET = "attachments-whatsapp-app-secret"


@pytest.fixture
def provider():
    with FakeProvider(hang_seconds=30) as running:
        yield running


@pytest.fixture
def app(request, database_url, cache_config, tmp_path):
    """The app, its files in this test's own directory, its worker quick to give up; with the
    WhatsApp channel pointed at the fake provider when a test names `provider`."""
    settings = dict(ATTACHMENT_DIR=str(tmp_path / "files"), ATTACHMENT_FETCH_SECONDS=1.5, ATTACHMENT_MAX_ATTEMPTS=2, DELIVERY_BACKOFF_BASE=0.05,
                    DELIVERY_BACKOFF_MAX=0.1)
    if "provider" in request.fixturenames:
        provider = request.getfixturevalue("provider")
        settings.update(WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_ACCESS_TOKEN=WHATSAPP_TOKEN,
                        WHATSAPP_APP_SECRET=APP_SECRET, WHATSAPP_VERIFY_TOKEN="attachments-verify",
                        WHATSAPP_GRAPH_URL=provider.graph_url)
    yield from app_with_tables(make_config(database_url, **cache_config, **settings))


@pytest.fixture
def people(app):
    with app.app_context():
        ana = make_user("ana@example.com", "Ana")
        make_user("bruno@example.com", "Bruno")
        make_user("admin@example.com", "Alex Admin", "admin")
        conversation = make_conversation("+5511900001111", "Carla Cliente", "active", user=ana)
        db.session.commit()
        return {"conversation": conversation.id}


def fetch_all(app, limit: int = 20) -> int:
    """Run the worker's fetch step until nothing is due (what a worker loop does)."""
    done = 0
    with app.app_context():
        while done < limit and worker.fetch_once():
            done += 1
    return done


def stored_attachment(app, conversation_id: int, data: bytes, content_type: str, kind: str, filename: str,
                      thumbnail: bytes | None = None) -> int:
    """A message with a file already in storage, as the worker leaves it."""
    from chat.storage import storage

    with app.app_context():
        message = Message(conversation_id=conversation_id, body="", from_me=False)
        db.session.add(message)
        db.session.flush()
        key = f"attachments/{conversation_id}/{message.id}-test"
        storage().put(key, data, content_type)
        if thumbnail:
            storage().put(key + "-thumb.webp", thumbnail, "image/webp")
        row = Attachment(message_id=message.id, conversation_id=conversation_id, state="stored", kind=kind,
                         content_type=content_type, filename=filename, size=len(data), storage_key=key,
                         thumb_key=key + "-thumb.webp" if thumbnail else None)
        db.session.add(row)
        db.session.commit()
        return row.id


def signed_in(app, email: str) -> Agent:
    agent = Agent(app.test_client())
    assert agent.login(email).status_code == 302
    return agent


# -- downloads --------------------------------------------------------------------------------------
def test_a_file_is_for_the_agents_who_may_see_its_conversation(app, people):
    from chat import media_types

    image = png()
    aid = stored_attachment(app, people["conversation"], image, "image/png", "image", "photo.png",
                            media_types.thumbnail(image))
    ana = signed_in(app, "ana@example.com")
    found = ana.get(f"/attachments/{aid}")
    assert found.status_code == 200 and found.data == image
    assert found.headers["Content-Type"] == "image/png"
    assert found.headers["Content-Disposition"].startswith("inline")
    assert "private" in found.headers["Cache-Control"] and "immutable" in found.headers["Cache-Control"]
    thumb = ana.get(f"/attachments/{aid}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumb.data)).size) <= media_types.THUMB_MAX
    again = ana.get(f"/attachments/{aid}", headers={"If-None-Match": found.headers["ETag"]})
    assert again.status_code == 304
    # Bruno may not see Ana's active conversation: its file does not exist for him.
    assert signed_in(app, "bruno@example.com").get(f"/attachments/{aid}").status_code == 404
    assert signed_in(app, "bruno@example.com").get(f"/attachments/{aid}/thumbnail").status_code == 404
    assert signed_in(app, "admin@example.com").get(f"/attachments/{aid}").status_code == 200
    anonymous = app.test_client()
    signed_out = anonymous.get(f"/attachments/{aid}")
    assert signed_out.status_code == 302 and "/login" in signed_out.headers["Location"]
    assert anonymous.get(f"/attachments/{aid}", headers={"HX-Request": "true"}).status_code == 401
    assert ana.get("/attachments/999999").status_code == 404


def test_files_never_run_as_pages(app, people):
    aid = stored_attachment(app, people["conversation"], PDF, "application/pdf", "document", "invoice.pdf")
    found = signed_in(app, "ana@example.com").get(f"/attachments/{aid}")
    assert found.status_code == 200 and found.data == PDF
    assert found.headers["Content-Disposition"].startswith("attachment")
    assert "invoice.pdf" in found.headers["Content-Disposition"]
    assert found.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in found.headers["Content-Security-Policy"]


OGG = b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x1eOpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00" + b"\x00" * 64


def test_the_thread_shows_thumbnails_players_and_file_cards(app, people):
    from chat import catalog, media_types

    cid = people["conversation"]
    image = png()
    photo = stored_attachment(app, cid, image, "image/png", "image", "photo.png", media_types.thumbnail(image))
    voice = stored_attachment(app, cid, OGG, "audio/ogg", "audio", "voice.ogg")
    invoice = stored_attachment(app, cid, PDF, "application/pdf", "document", "invoice.pdf")
    with app.app_context():
        message = Message(conversation_id=cid, body="and this one?", from_me=False)
        db.session.add(message)
        db.session.flush()
        db.session.add_all([
            Attachment(message_id=message.id, conversation_id=cid, state="downloading", kind="video",
                       filename="clip.mp4"),
            Attachment(message_id=message.id, conversation_id=cid, state="failed", kind="document",
                       filename="huge.zip", reason="attachment too large (120 MB; files may be at most 100 MB)"),
        ])
        db.session.commit()
        token = catalog.issue_api_token("ana@example.com")
    ana = signed_in(app, "ana@example.com")
    html = ana.get(f"/conversations/{cid}/messages", htmx=True).get_data(as_text=True)
    assert f'<img src="/attachments/{photo}/thumbnail"' in html
    assert f'href="/attachments/{photo}"' in html
    assert re.search(rf'<audio class="attachment audio" controls[^>]*src="/attachments/{voice}"', html)
    card = re.search(rf'<a class="attachment file" href="/attachments/{invoice}"[^>]*>(.*?)</a>', html, re.S)
    assert card and "invoice.pdf" in card.group(1) and media_types.human_size(len(PDF)) in card.group(1)
    assert "Receiving clip.mp4" in html
    assert "huge.zip: attachment too large (120 MB; files may be at most 100 MB)" in html
    api = app.test_client().get(f"/api/conversations/{cid}/messages", headers={"Authorization": f"Bearer {token}"})
    files = [a for m in api.get_json()["data"] for a in m["attachments"]]
    by_name = {a["filename"]: a for a in files}
    assert by_name["photo.png"] == {"id": photo, "state": "stored", "reason": None, "kind": "image",
                                    "content_type": "image/png", "filename": "photo.png", "size": len(image),
                                    "caption": None, "url": f"/attachments/{photo}",
                                    "thumbnail_url": f"/attachments/{photo}/thumbnail"}
    assert by_name["huge.zip"]["state"] == "failed" and by_name["huge.zip"]["url"] is None
    assert by_name["huge.zip"]["reason"].startswith("attachment too large")
    assert by_name["clip.mp4"]["state"] == "downloading"



# -- inbound: fetched after the commit ---------------------------------------------------------------
def inbound(client, **payload):
    response = client.post("/api/inbound", json=payload, headers=PROVIDER)
    assert response.status_code in (200, 201), response.get_data(as_text=True)
    return response.get_json()["data"]


def files_of(app, message_id: int) -> list[Attachment]:
    with app.app_context():
        return list(db.session.scalars(select(Attachment).where(Attachment.message_id == message_id)
                                       .order_by(Attachment.id)))


def test_webhook_files_are_fetched_after_the_commit(app, people, provider):
    image, cid = png(), people["conversation"]
    photo = provider.serve_file("/files/photo.jpg", image, "image/jpeg")  # the sender's type is wrong
    invoice = provider.serve_file("/files/invoice", PDF, "application/octet-stream")
    ana = signed_in(app, "ana@example.com")
    before = ana.get(f"/conversations/{cid}/messages", htmx=True).get_data(as_text=True)
    client = app.test_client()
    found = inbound(client, phone="+5511900001111", body="", external_id="att-1", attachments=[
        {"url": photo, "content_type": "image/jpeg", "filename": "photo.jpg", "caption": "the box"},
        {"url": invoice, "filename": "invoice"}])
    assert found["conversation_id"] == cid
    # Committed, not fetched: the webhook request never downloads.
    assert provider.downloads() == []
    rows = files_of(app, found["message_id"])
    assert [r.state for r in rows] == ["downloading", "downloading"]
    html = ana.get(f"/conversations/{cid}/messages", htmx=True).get_data(as_text=True)
    assert html != before and "Receiving photo.jpg" in html
    with app.app_context():
        listed = ana.get("/inbox/list?tab=mine", htmx=True).get_data(as_text=True)
    assert "Attachment: photo.jpg (+1)" in listed  # the preview of a message that is only files
    assert fetch_all(app) == 2
    rows = files_of(app, found["message_id"])
    assert [(r.state, r.content_type, r.kind, r.size) for r in rows] == [
        ("stored", "image/png", "image", len(image)), ("stored", "application/pdf", "document", len(PDF))]
    assert rows[0].filename == "photo.jpg.png" and rows[1].filename == "invoice.pdf"  # named by what they are
    assert rows[0].thumb_key and not rows[1].thumb_key
    # The same delivery again (a retried webhook) stores and fetches nothing more.
    assert inbound(client, phone="+5511900001111", body="", external_id="att-1",
                   attachments=[{"url": photo}])["message_id"] == found["message_id"]
    assert fetch_all(app) == 0 and len(provider.downloads()) == 2
    # The commit that stored them made the thread stale: it shows them now, from the cache after.
    html = ana.get(f"/conversations/{cid}/messages", htmx=True).get_data(as_text=True)
    assert f'<img src="/attachments/{rows[0].id}/thumbnail"' in html and "invoice.pdf" in html
    assert ana.get(f"/attachments/{rows[0].id}").data == image
    assert ana.get(f"/attachments/{rows[1].id}").data == PDF


@pytest.mark.parametrize("payload, error", [
    ({"attachments": "x"}, "attachments must be a list"),
    ({"attachments": [{"url": "file:///etc/passwd"}]}, "attachments[0].url must be an http(s) URL"),
    ({"attachments": [{"url": "https://example.com/a", "filename": 3}]}, "attachments[0].filename must be a string"),
    ({"attachments": []}, "message body must not be empty"),
])
def test_bad_attachments_are_a_400_that_stores_nothing(app, people, payload, error):
    response = app.test_client().post("/api/inbound", headers=PROVIDER,
                                      json={"phone": "+5511900004444", "body": "", **payload})
    assert response.status_code == 400 and response.get_json() == {"error": error}
    with app.app_context():
        assert db.session.scalar(select(Attachment.id).limit(1)) is None


def whatsapp_media_message(kind: str, media: dict, message_id: str) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": [{"profile": {"name": "Wanda"}, "wa_id": "5511988887777"}],
        "messages": [{"from": "5511988887777", "id": message_id, "timestamp": "1700000000", "type": kind,
                      kind: media}]}}]}]}


def notify(client, payload: dict) -> dict:
    raw = json.dumps(payload).encode()
    response = client.post("/webhooks/whatsapp", data=raw, content_type="application/json",
                           headers={"X-Hub-Signature-256": whatsapp_signature(APP_SECRET, raw)})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]


def test_whatsapp_media_is_fetched_with_the_channel_token(app, people, provider):
    image = png((400, 300))
    provider.whatsapp_media("MEDIA-IMG", image, "image/png")
    provider.whatsapp_media("MEDIA-VOICE", OGG, "audio/ogg; codecs=opus")
    provider.whatsapp_media("MEDIA-DOC", PDF, "application/pdf")
    client = app.test_client()
    assert notify(client, whatsapp_media_message(
        "image", {"id": "MEDIA-IMG", "mime_type": "image/png", "sha256": "x", "caption": "broken box"},
        "wamid.IMG"))["messages"] == 1
    notify(client, whatsapp_media_message("audio", {"id": "MEDIA-VOICE", "mime_type": "audio/ogg; codecs=opus",
                                                    "voice": True}, "wamid.VOICE"))
    notify(client, whatsapp_media_message("document", {"id": "MEDIA-DOC", "mime_type": "application/pdf",
                                                       "filename": "nota fiscal.pdf"}, "wamid.DOC"))
    assert provider.downloads() == []
    assert fetch_all(app) == 3
    with app.app_context():
        rows = list(db.session.scalars(select(Attachment).order_by(Attachment.id)))
        bodies = [db.session.get(Message, r.message_id).body for r in rows]
    assert [(r.state, r.kind, r.content_type) for r in rows] == [
        ("stored", "image", "image/png"), ("stored", "audio", "audio/ogg"), ("stored", "document", "application/pdf")]
    assert bodies == ["broken box", "", ""] and rows[2].filename == "nota fiscal.pdf"
    assert provider.downloads() and all(d.headers.get("authorization") == f"Bearer {WHATSAPP_TOKEN}"
                                        for d in provider.downloads())


def test_refused_files_say_why_and_keep_nothing(app, people, provider):
    from chat.storage import storage

    big = png((3000, 3000)) + b"\0" * (6 * 1024 * 1024)  # a PNG of 6 MB: over the images' 5 MB
    urls = [provider.serve_file("/files/page.html", b"<!DOCTYPE html><script>alert(1)</script>", "image/png"),
            provider.serve_file("/files/big.png", big, "image/png"),
            provider.serve_file("/files/gone", b"", "image/png", mode="expired"),
            provider.serve_file("/files/empty", b"", "text/plain")]
    provider.whatsapp_media("MEDIA-BIG", big, "image/png")
    client = app.test_client()
    found = inbound(client, phone="+5511900001111", body="four files", external_id="bad-1",
                    attachments=[{"url": u} for u in urls])
    notify(client, whatsapp_media_message("image", {"id": "MEDIA-BIG", "mime_type": "image/png"}, "wamid.BIG"))
    assert fetch_all(app) >= 5
    rows = files_of(app, found["message_id"])
    reasons = [r.reason for r in rows]
    assert [r.state for r in rows] == ["failed"] * 4
    assert reasons[0] == "file type not allowed (text/html)"
    assert reasons[1].startswith("attachment too large") and "5 MB" in reasons[1]
    assert reasons[2].startswith("could not download")
    assert reasons[3] == "empty file"
    with app.app_context():
        whatsapp = db.session.scalar(select(Attachment).where(Attachment.source == "MEDIA-BIG"))
        assert whatsapp.state == "failed" and whatsapp.reason.startswith("attachment too large")
        assert all(r.storage_key is None for r in rows) and whatsapp.storage_key is None
        assert storage().name == "disk"
    # Nothing half stored: no bytes of any of them in storage.
    assert [p.name for p in Path(app.config["ATTACHMENT_DIR"]).rglob("*") if p.is_file()] == []
    # The file WhatsApp said was too big was never downloaded at all.
    assert not [d for d in provider.downloads() if "MEDIA-BIG" in d.path]
    html = signed_in(app, "ana@example.com").get(f"/conversations/{people['conversation']}/messages",
                                                  htmx=True).get_data(as_text=True)
    assert "file type not allowed (text/html)" in html and "empty file" in html


def test_a_hanging_download_is_tried_again_then_fails(app, people, provider):
    stuck = provider.serve_file("/files/stuck.pdf", PDF, "application/pdf", mode="hang")
    found = inbound(app.test_client(), phone="+5511900001111", body="slow", external_id="hang-1",
                    attachments=[{"url": stuck, "filename": "stuck.pdf"}])
    started = time.monotonic()
    with app.app_context():
        assert worker.fetch_once()
    assert time.monotonic() - started < 1.5 + 2  # the whole download's deadline, not the server's pace
    first = files_of(app, found["message_id"])[0]
    assert first.state == "downloading" and "trying again (attempt 1 of 2)" in first.reason
    time.sleep(0.2)  # its backoff
    with app.app_context():
        assert worker.fetch_once()
    last = files_of(app, found["message_id"])[0]
    assert last.state == "failed" and last.reason.startswith("could not download")
    assert last.storage_key is None


# -- on S3-compatible storage -------------------------------------------------------------------------
@pytest.fixture
def s3(aws_env):
    from tests.test_storage import moto_server, throwaway_bucket

    with moto_server() as url, throwaway_bucket(url) as bucket:
        yield url, bucket


@pytest.fixture
def s3_app(database_url, cache_config, s3, provider):
    url, bucket = s3
    settings = dict(ATTACHMENT_STORAGE="s3", ATTACHMENT_S3_BUCKET=bucket, ATTACHMENT_S3_ENDPOINT_URL=url,
                    ATTACHMENT_S3_REGION="us-east-1", ATTACHMENT_S3_PREFIX="inbox", ATTACHMENT_FETCH_SECONDS=2)
    yield from app_with_tables(make_config(database_url, **cache_config, **settings))


def test_s3_storage_serves_the_same_files(s3_app, s3, provider):
    from tests.test_storage import admin_client

    app = s3_app
    with app.app_context():
        ana = make_user("ana@example.com", "Ana")
        cid = make_conversation("+5511900001111", "Carla Cliente", "active", user=ana).id
        db.session.commit()
    image = png((640, 480))
    found = inbound(app.test_client(), phone="+5511900001111", body="on S3", external_id="s3-1",
                    attachments=[{"url": provider.serve_file("/files/s3.png", image, "image/png")}])
    assert fetch_all(app) == 1
    row = files_of(app, found["message_id"])[0]
    assert row.state == "stored"
    url, bucket = s3
    keys = {o["Key"] for o in admin_client(url).list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"inbox/{row.storage_key}", f"inbox/{row.thumb_key}"}
    agent = signed_in(app, "ana@example.com")
    assert agent.get(f"/attachments/{row.id}").data == image
    assert agent.get(f"/attachments/{row.id}/thumbnail").headers["Content-Type"] == "image/webp"
    assert f"/attachments/{row.id}/thumbnail" in agent.get(f"/conversations/{cid}/messages", htmx=True).get_data(
        as_text=True)


# -- outbound: an agent's files ---------------------------------------------------------------------
def api_headers(app, email: str = "ana@example.com") -> dict:
    from chat import catalog

    with app.app_context():
        return {"Authorization": f"Bearer {catalog.issue_api_token(email)}"}


def upload(data: bytes, name: str):
    return (io.BytesIO(data), name)


def test_a_reply_with_files_is_one_message_per_file(app, people):
    cid, image = people["conversation"], png((500, 400))
    headers = api_headers(app)
    response = app.test_client().post(
        f"/api/conversations/{cid}/messages", headers={**headers, "Idempotency-Key": "files-reply-1"},
        data={"body": "Here is the label and the invoice", "file": [upload(image, "label.png"), upload(PDF, "inv.pdf")]},
        content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    answer = response.get_json()
    first, (second,) = answer["data"], answer["parts"]
    assert first["body"] == "Here is the label and the invoice"  # the text rides on the image
    assert [a["filename"] for a in first["attachments"]] == ["label.png"]
    assert first["attachments"][0]["content_type"] == "image/png" and first["attachments"][0]["thumbnail_url"]
    assert second["body"] == "" and [a["content_type"] for a in second["attachments"]] == ["application/pdf"]
    assert first["delivery"]["state"] == second["delivery"]["state"] == "none"  # no channel in this app
    stored = [p for p in Path(app.config["ATTACHMENT_DIR"]).rglob("*") if p.is_file()]
    assert len(stored) == 3  # two files and the image's thumbnail
    # The same request again (its answer was lost): nothing more stored, the same message.
    again = app.test_client().post(
        f"/api/conversations/{cid}/messages", headers={**headers, "Idempotency-Key": "files-reply-1"},
        data={"body": "Here is the label and the invoice", "file": [upload(image, "label.png"), upload(PDF, "inv.pdf")]},
        content_type="multipart/form-data")
    assert again.status_code == 200 and again.get_json()["data"]["id"] == first["id"]
    assert len([p for p in Path(app.config["ATTACHMENT_DIR"]).rglob("*") if p.is_file()]) == 3
    agent = signed_in(app, "ana@example.com")
    assert agent.get(first["attachments"][0]["url"]).data == image
    # Audio cannot carry a caption: the text goes first, alone.
    voice = app.test_client().post(f"/api/conversations/{cid}/messages", headers=headers, content_type="multipart/form-data",
                                   data={"body": "listen", "file": [upload(OGG, "voice.ogg")]}).get_json()
    assert voice["data"]["body"] == "listen" and voice["data"]["attachments"] == []
    assert voice["parts"][0]["body"] == "" and voice["parts"][0]["attachments"][0]["kind"] == "audio"


@pytest.mark.parametrize("fields, files, error", [
    ({"body": "x"}, [(b"<html><script>alert(1)</script>", "page.html")], "page.html: file type not allowed (text/html)"),
    ({"body": "x"}, [(b"", "empty.txt")], "empty.txt: empty file"),
    ({"body": "x", "private": "true"}, [(PDF, "a.pdf")], "a private note cannot carry files (only replies do)"),
    ({"body": ""}, None, "message body must not be empty"),
    ({"body": "x", "other": "1"}, None, "unknown fields: other"),
])
def test_refused_uploads_store_nothing(app, people, fields, files, error):
    """A good file first, then the bad one: the good one is taken out of storage again."""
    cid = people["conversation"]
    data = dict(fields)
    if files is not None:
        data["file"] = [upload(png(), "fine.png")] + [upload(content, name) for content, name in files]
    response = app.test_client().post(f"/api/conversations/{cid}/messages", headers=api_headers(app),
                                      data=data, content_type="multipart/form-data")
    assert response.status_code == 400 and response.get_json() == {"error": error}
    with app.app_context():
        assert db.session.scalar(select(Attachment.id).limit(1)) is None
        assert db.session.scalar(select(Message.id).where(Message.from_me.is_(True)).limit(1)) is None
    assert [p for p in Path(app.config["ATTACHMENT_DIR"]).rglob("*") if p.is_file()] == []


def test_the_reply_box_sends_files(app, people):
    cid = people["conversation"]
    ana = signed_in(app, "ana@example.com")
    pane = ana.get(f"/conversations/{cid}", htmx=True).get_data(as_text=True)
    assert 'hx-encoding="multipart/form-data"' in pane and 'name="file"' in pane
    response = ana.client.post(f"/conversations/{cid}/messages", headers={"HX-Request": "true"},
                               data={"body": "", "csrf_token": ana.csrf, "file": [upload(png(), "shot.png")]},
                               content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert re.search(r'<img src="/attachments/\d+/thumbnail"', response.get_data(as_text=True))


WEBHOOK_SECRET = "attachments-webhook-secret"


@pytest.fixture
def channel_app(request, database_url, cache_config, tmp_path, provider):
    """The app with a channel pointed at the fake provider (the test's `kind`) and a PUBLIC_URL."""
    kind = request.param
    settings = dict(ATTACHMENT_DIR=str(tmp_path / "files"), PUBLIC_URL="https://inbox.example.com",
                    DELIVERY_SEND_TIMEOUT=2, DELIVERY_BACKOFF_BASE=0.05, DELIVERY_BACKOFF_MAX=0.1,
                    DELIVERY_MAX_ATTEMPTS=3)
    if kind == "webhook":
        provider.secret = WEBHOOK_SECRET
        settings.update(CHANNEL_WEBHOOK_URL=provider.webhook_url, CHANNEL_WEBHOOK_SECRET=WEBHOOK_SECRET)
    else:
        settings.update(WHATSAPP_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_ACCESS_TOKEN=WHATSAPP_TOKEN,
                        WHATSAPP_APP_SECRET=APP_SECRET, WHATSAPP_VERIFY_TOKEN="attachments-verify",
                        WHATSAPP_GRAPH_URL=provider.graph_url)
    for app in app_with_tables(make_config(database_url, **cache_config, **settings)):
        with app.app_context():
            ana = make_user("ana@example.com", "Ana")
            app.config["TEST_CONVERSATION"] = make_conversation("+5511900001111", "Carla Cliente", "active",
                                                                user=ana).id
            db.session.commit()
        yield app


def send_files(app, body: str, files: list) -> dict:
    response = app.test_client().post(f"/api/conversations/{app.config['TEST_CONVERSATION']}/messages",
                                      headers=api_headers(app), content_type="multipart/form-data",
                                      data={"body": body, "file": files})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def drain(app, limit: int = 20) -> int:
    done = 0
    with app.app_context():
        while done < limit and worker.work_once():
            done += 1
    return done


def states(app, ids) -> list[str]:
    with app.app_context():
        return [db.session.get(Message, i).delivery_state for i in ids]


@pytest.mark.parametrize("channel_app", ["webhook"], indirect=True)
def test_files_go_out_through_the_webhook_as_signed_links(channel_app, provider):
    app, image = channel_app, png((300, 200))
    sent = send_files(app, "the label", [upload(image, "label.png"), upload(PDF, "invoice.pdf")])
    ids = [sent["data"]["id"], sent["parts"][0]["id"]]
    assert drain(app) == 2
    assert states(app, ids) == ["sent", "sent"]
    posted = [r for r in provider.accepted()]
    assert [r.json["type"] for r in posted] == ["image", "document"]  # in order, one file each
    assert [r.json["body"] for r in posted] == ["the label", ""]
    assert all(r.signature_ok for r in posted) and all(b"%PDF" not in r.body for r in posted)  # links, not bytes
    links = [r.json["attachments"][0] for r in posted]
    assert [(a["content_type"], a["filename"], a["size"]) for a in links] == [
        ("image/png", "label.png", len(image)), ("application/pdf", "invoice.pdf", len(PDF))]
    assert all(a["url"].startswith("https://inbox.example.com/files/") for a in links)
    anonymous = app.test_client()  # the customer's system: no session, the link is the permission
    got = anonymous.get(links[1]["url"].removeprefix("https://inbox.example.com"))
    assert got.status_code == 200 and got.data == PDF and got.headers["Content-Disposition"].startswith("attachment")
    assert anonymous.get(links[1]["url"].removeprefix("https://inbox.example.com") + "x").status_code == 404
    app.config["ATTACHMENT_LINK_DAYS"] = -1  # every link has expired
    assert anonymous.get(links[0]["url"].removeprefix("https://inbox.example.com")).status_code == 404


@pytest.mark.parametrize("channel_app", ["webhook"], indirect=True)
def test_without_public_url_a_file_reply_fails_saying_why(channel_app, provider):
    app = channel_app
    app.config["PUBLIC_URL"] = None
    sent = send_files(app, "", [upload(PDF, "invoice.pdf")])
    drain(app)
    with app.app_context():
        message = db.session.get(Message, sent["data"]["id"])
        assert message.delivery_state == "failed" and "PUBLIC_URL" in message.delivery_reason
    assert provider.accepted() == []


@pytest.mark.parametrize("channel_app", ["whatsapp"], indirect=True)
def test_files_go_out_through_whatsapp_uploaded_then_sent(channel_app, provider):
    app, image = channel_app, png((300, 200))
    sent = send_files(app, "the label", [upload(image, "label.png"), upload(PDF, "invoice.pdf"),
                                         upload(OGG, "voice.ogg")])
    ids = [sent["data"]["id"]] + [p["id"] for p in sent["parts"]]
    assert drain(app) == 3
    assert states(app, ids) == ["sent", "sent", "sent"]
    assert [(u.data, u.type) for u in provider.uploads] == [
        (image, "image/png"), (PDF, "application/pdf"), (OGG, "audio/ogg")]
    messages = [r.json for r in provider.accepted()]
    assert [m["type"] for m in messages] == ["image", "document", "audio"]
    assert messages[0]["image"] == {"id": provider.uploads[0].media_id, "caption": "the label"}
    assert messages[1]["document"]["id"] == provider.uploads[1].media_id
    assert messages[1]["document"]["filename"] == "invoice.pdf"
    assert messages[2]["audio"] == {"id": provider.uploads[2].media_id}


def test_the_reply_box_takes_files_larger_than_a_forms_limit(app, people):
    """The app refuses bodies over 256 KB before reading them; the views that take files allow
    the files' limit, early enough for CSRF protection, which reads the form before the view."""
    cid = people["conversation"]
    big = PDF + b"%" + b"0" * (3 * 1024 * 1024)  # a 3 MB document
    ana = signed_in(app, "ana@example.com")
    response = ana.client.post(f"/conversations/{cid}/messages", headers={"HX-Request": "true"},
                               data={"body": "the contract", "csrf_token": ana.csrf, "file": [upload(big, "c.pdf")]},
                               content_type="multipart/form-data")
    assert response.status_code == 201, response.status_code
    assert "c.pdf" in response.get_data(as_text=True)
    # Elsewhere the small limit stands.
    refused = ana.client.post("/inbox/mentions/seen", headers={"HX-Request": "true"},
                              data={"csrf_token": ana.csrf, "pad": "x" * (300 * 1024)})
    assert refused.status_code == 413
