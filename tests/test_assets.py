"""The page's scripts as bundles (chat/offline.py): one file per bundle, concatenated from
static/ in order, named with the release, and exactly what the service worker keeps."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chat.offline import BUNDLES
from tests.conftest import Agent, app_with_tables, make_config, make_user

STATIC = Path(__file__).resolve().parent.parent / "static"
SCRIPT = re.compile(r'<script src="([^"]+)"')


@pytest.fixture
def app(tmp_path):
    yield from app_with_tables(make_config(f"sqlite:///{tmp_path / 'assets.db'}"))


@pytest.fixture
def signed_in(app):
    from chat.extensions import db

    with app.app_context():
        make_user("ana@example.com", "Ana Costa")
        db.session.commit()
    agent = Agent(app.test_client())
    assert agent.login("ana@example.com").status_code == 302
    return agent


def shell(client) -> list[str]:
    """The SHELL the service worker is served with."""
    head = client.get("/sw.js").get_data(as_text=True).split("\n", 1)[0]
    return json.loads(re.search(r"SHELL = (\[.*\]);", head).group(1))


def test_the_sign_in_page_loads_the_base_bundle_and_a_signed_in_page_all_three(app, signed_in):
    login_page = app.test_client().get("/login").get_data(as_text=True)
    assert [src.split("?")[0] for src in SCRIPT.findall(login_page)] == ["/assets/base.js"]
    inbox = signed_in.get("/inbox").get_data(as_text=True)
    scripts = SCRIPT.findall(inbox)
    # base and client deferred in <head>; paint, the first paint of snapshots, last in <body>
    assert [src.split("?")[0] for src in scripts] == ["/assets/base.js", "/assets/client.js", "/assets/paint.js"]
    assert set(scripts) <= set(shell(signed_in.client))  # what the worker keeps for offline


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_a_bundle_is_its_files_in_order(app, name):
    client = app.test_client()
    url = next(u for u in shell(client) if u.startswith(f"/assets/{name}.js?v="))
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "text/javascript"
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    body = response.get_data(as_text=True)
    at = 0
    for part in BUNDLES[name]:
        source = (STATIC / part).read_text(encoding="utf-8")
        found = body.find(f"/* ---- {part} ---- */\n{source}\n;\n", at)
        assert found >= at, f"{part} is missing or out of order in the {name} bundle"
        at = found + len(source)
    assert client.get(url, headers={"If-None-Match": response.headers["ETag"]}).status_code == 304


def test_another_release_names_other_urls(tmp_path):
    urls = []
    for release in ("one", "two"):
        gen = app_with_tables(make_config(f"sqlite:///{tmp_path / release}.db", RELEASE=release))
        urls.append(shell(next(gen).test_client()))
        next(gen, None)
    assert all(a != b for a, b in zip(*urls) if "?v=" in a)


def test_an_old_or_missing_version_is_not_cached_for_good_and_unknown_bundles_are_404(app):
    client = app.test_client()
    assert client.get("/assets/client.js?v=0123456789abcdef").headers["Cache-Control"] == "no-cache"
    assert client.get("/assets/client.js").headers["Cache-Control"] == "no-cache"
    assert client.get("/assets/nothing.js").status_code == 404
    assert client.get("/assets/..%2Fapp.js").status_code == 404
