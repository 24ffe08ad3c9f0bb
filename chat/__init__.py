"""The support inbox: an application factory that reads as a table of contents."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        instance_path=str(ROOT / "instance"),
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    from .config import Config, check_redis_url, normalise_database_url

    app.config.from_object(Config)
    if config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.update(config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)

    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or _instance_secret(app, "secret_key")
    app.config["INBOUND_TOKEN"] = app.config["INBOUND_TOKEN"] or _instance_secret(app, "inbound_token")
    uri = app.config.get("SQLALCHEMY_DATABASE_URI") or f"sqlite:///{Path(app.instance_path) / 'chat.db'}"
    app.config["SQLALCHEMY_DATABASE_URI"] = normalise_database_url(uri)
    app.config["REDIS_URL"] = check_redis_url(app.config.get("REDIS_URL"))  # a bad one stops here, said plainly

    from . import auth, admin, api, cli, inbox, invalidation, observability, offline, push, web
    from . import catalog, compression, contacts, dashboard, files, sessions, storage, throttle, uploads, webhooks, worker
    from .cache import smart_cache
    from .extensions import csrf, db, login_manager, migrate

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).parent / "migrations"))
    uploads.init_app(app)  # before CSRF: it reads the form, whose size limit files raise
    csrf.init_app(app)
    sessions.init_app(app)
    smart_cache.init_app(app)
    invalidation.init_app(app)
    push.init_app(app)
    auth.init_app(app, login_manager)
    web.init_app(app)
    cli.init_app(app)
    offline.init_app(app)
    worker.init_app(app)
    catalog.init_app(app)
    compression.init_app(app)
    app.config["ATTACHMENT_DIR"] = app.config.get("ATTACHMENT_DIR") or str(Path(app.instance_path) / "attachments")
    storage.init_app(app)

    app.register_blueprint(auth.bp)
    app.register_blueprint(inbox.bp)
    app.register_blueprint(contacts.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(observability.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(files.bp)
    csrf.exempt(api.bp)  # the API authenticates with bearer tokens, never with the session cookie
    csrf.exempt(webhooks.bp)  # providers sign their webhooks
    throttle.init_app(app)  # after the blueprints: its limits wrap their views
    return app


def _instance_secret(app: Flask, name: str) -> str:
    """A secret generated once and kept in instance/, so restarts keep sessions and tokens."""
    path = Path(app.instance_path) / name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # SQLite: enforce foreign keys, let readers and one writer work side by side, wait on locks.
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()
