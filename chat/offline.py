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

from flask import Blueprint, Flask, Response, abort, current_app, request, url_for

bp = Blueprint("offline", __name__)

# The page's scripts, served as one file per bundle (`/assets/<bundle>.js`): a page load reads
# three files from the service worker's cache (or the server), not a dozen, which halves the
# time to paint an offline reload. The sources stay one file per concern under static/, and the
# server concatenates them in this order (no build step). "base" is on every page; "paint" (a
# plain script at the end of <body>: the snapshots on screen before anything else is parsed)
# and "client" (deferred, like "base") on signed-in pages.
BUNDLES = {
    "base": ("vendor/htmx.min.js", "vendor/idiomorph-ext.min.js", "app.js"),
    "paint": ("client/store.js", "client/paint.js"),
    "client": ("vendor/socket.io.min.js", "client/snapshots.js", "client/live.js",
               "client/drafts.js", "client/outbox.js", "client/files.js", "client/notify.js", "client/offline.js"),
}
# The shell the worker keeps: the stylesheet, the bundles, and the page for what was never seen.
SHELL = ("app.css", "bundle:base", "bundle:paint", "bundle:client", "offline.html")
# The files behind the shell, and the worker itself: what a release is made of.
SOURCES = (*(part for name in SHELL for part in BUNDLES.get(name.removeprefix("bundle:"), (name,))), "sw.js")


@lru_cache(maxsize=4)
def shell_version(static_folder: str, release: str) -> str:
    """A digest of the shell's files, the worker itself and the configured RELEASE: any change
    makes a new release (read once per process: a deploy restarts the server)."""
    digest = hashlib.sha256(release.encode())
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (Path(static_folder) / name).read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=8)
def bundle_text(static_folder: str, name: str, version: str) -> str:
    """The bundle's files in order, each under a comment naming it, separated so that one
    file's last statement cannot run into the next one's first."""
    return "".join(f"/* ---- {part} ---- */\n{(Path(static_folder) / part).read_text(encoding='utf-8')}\n;\n"
                   for part in BUNDLES[name])


def version() -> str:
    return shell_version(current_app.static_folder, current_app.config["RELEASE"])


def asset(name: str) -> str:
    """The URL of a static file (or, as "bundle:<name>", of a bundle) named with the release, so
    a deploy's pages load its files (and the service worker's shell matches them exactly)."""
    if name.startswith("bundle:"):
        return url_for("offline.bundle", name=name.split(":", 1)[1], v=version())
    return url_for("static", filename=name, v=version())


def init_app(app: Flask) -> None:
    app.add_template_global(asset)
    app.register_blueprint(bp)


@bp.get("/assets/<name>.js")
def bundle(name: str) -> Response:
    if name not in BUNDLES:
        abort(404)
    current = version()
    response = Response(bundle_text(current_app.static_folder, name, current), mimetype="text/javascript")
    if request.args.get("v") == current:  # this release's URL never names other content
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    response.set_etag(f"{name}-{current}")
    return response.make_conditional(request)


@bp.get("/sw.js")
def service_worker() -> Response:
    static = current_app.static_folder
    head = "const RELEASE = {}, SHELL = {};\n".format(json.dumps(version()), json.dumps([asset(n) for n in SHELL]))
    response = Response(head + (Path(static) / "sw.js").read_text(encoding="utf-8"), mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"  # the browser checks for a new release on each visit
    return response
