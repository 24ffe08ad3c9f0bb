"""Compression: what the browser accepts (brotli or gzip, q-values honoured), for pages,
fragments, the API and the assets; a fragment is compressed once, when it is rendered, and a
hit sends the stored bytes; ETags and 304s are the same whatever the encoding."""
from __future__ import annotations

import gzip
import re

import brotli
import pytest

from chat import compression

BR = {"Accept-Encoding": "gzip, deflate, br, zstd"}  # what Chromium sends
GZIP = {"Accept-Encoding": "gzip"}


@pytest.mark.parametrize("header, expected", [
    ("gzip, deflate, br, zstd", "br"),
    ("gzip", "gzip"),
    ("br;q=0.5, gzip;q=1.0", "gzip"),
    ("gzip;q=0.5, br;q=0.5", "br"),  # a tie: the smaller one
    ("br;q=0, gzip;q=0", None),
    ("identity", None),
    ("", None),
    ("deflate, zstd", None),
    ("br;q=nonsense, gzip", "gzip"),
])
def test_the_encoding_is_the_one_the_browser_rates_highest(header, expected):
    assert compression.chosen(header) == expected


def test_a_fragment_is_compressed_once_and_every_hit_sends_the_stored_bytes(app, world, login, monkeypatch):
    ana = login("ana@example.com")
    url = "/inbox/list?tab=all"
    plain = ana.get(url, htmx=True)
    assert plain.status_code == 200 and "Content-Encoding" not in plain.headers

    calls = []
    real = brotli.compress
    monkeypatch.setattr(compression.brotli, "compress", lambda data, **kw: calls.append(len(data)) or real(data, **kw))
    first = ana.get(url, htmx=True, headers=dict(BR))
    assert first.headers["Content-Encoding"] == "br"
    assert "Accept-Encoding" in first.headers["Vary"] and "Cookie" in first.headers["Vary"]
    assert brotli.decompress(first.get_data()) == plain.get_data()
    assert len(first.get_data()) < len(plain.get_data()) / 3
    assert first.headers["ETag"] == plain.headers["ETag"]  # weak: it names the content, not its encoding
    assert len(calls) == 1

    again = ana.get(url, htmx=True, headers=dict(BR))
    assert again.get_data() == first.get_data() and again.headers["Content-Encoding"] == "br"
    assert again.headers.get("X-Cache") == "HIT"
    assert len(calls) == 1, "a hit compressed again"

    zipped = ana.get(url, htmx=True, headers=dict(GZIP))
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.get_data()) == plain.get_data()

    unchanged = ana.get(url, htmx=True, headers={**BR, "If-None-Match": plain.headers["ETag"]})
    assert unchanged.status_code == 304 and not unchanged.get_data()
    assert "Content-Encoding" not in unchanged.headers


def test_a_small_fragment_is_sent_as_it_is(app, world, login):
    assert compression.encode("<p>short</p>", "br") == "<p>short</p>"
    assert compression.encode("x" * compression.MIN_SIZE, None) == "x" * compression.MIN_SIZE
    assert brotli.decompress(compression.encode("x" * compression.MIN_SIZE, "br")) == b"x" * compression.MIN_SIZE
    ana = login("ana@example.com")
    plain = ana.get("/inbox/counts?tab=mine", htmx=True)
    counts = ana.get("/inbox/counts?tab=mine", htmx=True, headers=dict(BR))
    if len(plain.get_data()) < compression.MIN_SIZE:
        assert "Content-Encoding" not in counts.headers and counts.get_data() == plain.get_data()
    else:
        assert brotli.decompress(counts.get_data()) == plain.get_data()


def test_a_stale_fragment_is_compressed_fresh(app, world, login, token):
    """A change moves the ETag: the compressed copy of the old HTML is never served for it."""
    ana = login("ana@example.com")
    url = "/inbox/list?tab=mine"
    before = ana.get(url, htmx=True, headers=dict(BR))
    from chat import domain
    from chat.models import User
    from chat.extensions import db

    with app.app_context():
        domain.send_reply(world.active_ana, db.session.get(User, world.ana), "a brand new reply to compress")
    after = ana.get(url, htmx=True, headers=dict(BR))
    assert after.headers["ETag"] != before.headers["ETag"]
    assert "a brand new reply to compress" in brotli.decompress(after.get_data()).decode()


def test_pages_the_api_and_the_assets_are_compressed(app, world, login, token):
    ana = login("ana@example.com")
    page = ana.get("/inbox", headers=dict(BR))
    assert page.headers["Content-Encoding"] == "br" and b"Support inbox" in brotli.decompress(page.get_data())
    assert "Accept-Encoding" in page.headers["Vary"]

    api = app.test_client().get("/api/conversations?status=all", headers={**token("admin@example.com"), **GZIP})
    assert api.headers["Content-Encoding"] == "gzip" and b'"data"' in gzip.decompress(api.get_data())

    html = brotli.decompress(page.get_data()).decode()
    bundle_url = re.search(r'src="(/assets/client\.js[^"]*)"', html).group(1)
    bundle = ana.get(bundle_url, headers=dict(BR))
    assert bundle.status_code == 200 and bundle.headers["Content-Encoding"] == "br"
    assert b"Inbox" in brotli.decompress(bundle.get_data())
    plain = ana.get(bundle_url)
    assert "Content-Encoding" not in plain.headers and len(bundle.get_data()) < len(plain.get_data()) / 3
