"""The service worker that keeps the app shell, so the inbox opens with the server unreachable.

It must be served from the site's root to control every page (scope "/"), and it names the
release of the shell it caches: a new deploy changes the version, the browser installs the
new worker, and it deletes the old caches on activate.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, url_for

bp = Blueprint("offline", __name__)

# What every signed-in page loads (templates/base.html), plus the page for what was never seen.
SHELL = ("app.css", "app.js", "vendor/htmx.min.js", "vendor/idiomorph-ext.min.js", "vendor/socket.io.min.js",
         "client/store.js", "client/snapshots.js", "client/live.js", "client/drafts.js", "client/outbox.js",
         "client/notify.js", "client/offline.js", "offline.html")


@lru_cache(maxsize=4)
def shell_version(static_folder: str, release: str) -> str:
    """A digest of the shell's files, the worker itself and the configured RELEASE: any change
    makes a new release (read once per process: a deploy restarts the server)."""
    digest = hashlib.sha256(release.encode())
    for name in (*SHELL, "sw.js"):
        digest.update(name.encode() + b"\0" + (Path(static_folder) / name).read_bytes())
    return digest.hexdigest()[:16]


def asset(name: str) -> str:
    """The URL of a static file named with the release, so a deploy's pages load its files
    (and the service worker's shell matches them exactly)."""
    return url_for("static", filename=name, v=shell_version(current_app.static_folder, current_app.config["RELEASE"]))


def init_app(app: Flask) -> None:
    app.add_template_global(asset)
    app.register_blueprint(bp)


@bp.get("/sw.js")
def service_worker() -> Response:
    static = current_app.static_folder
    head = "const RELEASE = {}, SHELL = {};\n".format(
        json.dumps(shell_version(static, current_app.config["RELEASE"])), json.dumps([asset(n) for n in SHELL]))
    response = Response(head + (Path(static) / "sw.js").read_text(), mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"  # the browser checks for a new release on each visit
    return response
