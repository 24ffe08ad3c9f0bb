"""Delivery workers: claim a reply from the outbox, hand it to its channel, record the answer;
and fetch the files of inbound messages (`fetch_once`) the same way, after their commit.

`flask --app app worker` runs one as its own process (the scaled deployment); `make run` runs
one inside the gunicorn process (`start_embedded`, from gunicorn.conf.py). Either way it works
after the commit, never inside an agent's or a provider's request. Each worker runs
`concurrency` loops, so one slow provider does not hold up every other reply; the claim
(chat/delivery.py) keeps the replies of one conversation in order and never gives one
delivery to two loops or processes.
"""
from __future__ import annotations

import logging
import random
import secrets
import threading
import time

from flask import Flask
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from . import delivery
from .channels import FetchError, SendError, adapter_for
from .extensions import db
from .models import DOWNLOADING, Attachment, Delivery

log = logging.getLogger(__name__)

# Set after a commit that queued a delivery: this process's loops look at once instead of at
# their next poll. On PostgreSQL the commit also NOTIFYs NOTIFY_CHANNEL, which every worker
# process LISTENs to; elsewhere other processes find it within DELIVERY_POLL_SECONDS.
_queued = threading.Event()
_ENQUEUED = "chat.delivery_enqueued"
_WORKER = "chat.delivery_worker"  # session.info: this transaction is a worker's own
NOTIFY_CHANNEL = "chat_deliveries"


def work_once() -> bool:
    """Claim one delivery and send it; False when there was nothing due. Call in an app context."""
    db.session.info[_WORKER] = True  # its own releases and re-queues wake nobody
    held = delivery.claim()
    if held is None:
        return False
    lease_ends = time.monotonic() + _setting("DELIVERY_LEASE_SECONDS")
    try:
        adapter = adapter_for(held.channel_kind, held.channel_settings, send_timeout())
        provider_id = adapter.send(_with_file(held))
    except SendError as error:
        log.info("delivery %s attempt %s: %s (%s)", held.delivery_id, held.attempt, error.reason,
                 "temporary" if error.temporary else "permanent")
        _record(lease_ends, held, delivery.record_failure, error)
    except Exception as exc:  # noqa: BLE001 - a bug in an adapter fails the reply, visibly, not the worker
        log.exception("delivery %s: the channel adapter raised", held.delivery_id)
        _record(lease_ends, held, delivery.record_failure,
                SendError(f"the inbox could not send it ({type(exc).__name__})", temporary=True))
    else:
        _record(lease_ends, held, delivery.record_sent, provider_id)
    return True


def _with_file(held: delivery.Claim):
    """The reply as its channel needs it: with its file's bytes (WhatsApp uploads them) and a
    signed link the customer's system can fetch it from (the generic webhook sends that)."""
    from dataclasses import replace

    from . import attachments
    from .storage import StorageError, storage

    outgoing = held.outgoing
    if outgoing.file is None or held.file_key is None:
        return outgoing
    try:
        data = storage().get(held.file_key)
    except (KeyError, StorageError) as exc:
        raise SendError(f"could not read the file from storage ({type(exc).__name__})",
                        temporary=not isinstance(exc, KeyError)) from None
    return replace(outgoing, file=replace(outgoing.file, data=data,
                                          url=attachments.public_link(outgoing.file.attachment_id)))


def fetch_once() -> bool:
    """Claim one inbound attachment and fetch it: through its channel, checked from its bytes,
    into storage, with a thumbnail for images; False when none was due. Call in an app context.
    The row says `stored` only once the bytes are in storage; a lease lost meanwhile deletes
    them again (the new holder stores its own)."""
    from flask import current_app

    from . import attachments, media_types, storage

    db.session.info[_WORKER] = True
    held = attachments.claim()
    if held is None:
        return False
    config = current_app.config
    keys: list[str] = []
    try:
        adapter = adapter_for(held.channel_kind, held.channel_settings, send_timeout())
        cap = media_types.limit_for(held.media.kind, config) if held.media.kind else media_types.max_limit(config)
        fetched = adapter.fetch_media(held.media, cap, time.monotonic() + config["ATTACHMENT_FETCH_SECONDS"])
        content_type, kind = media_types.check(fetched.data, held.media.kind, config)
        files = storage.storage()
        key = f"attachments/{held.conversation_id}/{held.attachment_id}-{secrets.token_hex(8)}"
        files.put(key, fetched.data, content_type)
        keys.append(key)
        thumb = media_types.thumbnail(fetched.data) if kind in (media_types.IMAGE, media_types.STICKER) else None
        if thumb is not None:
            files.put(key + "-thumb.webp", thumb, "image/webp")
            keys.append(key + "-thumb.webp")
    except FetchError as error:
        attachments.record_failure(held, error.reason, error.temporary)
    except media_types.Refused as refused:
        attachments.record_failure(held, refused.reason, temporary=False)
    except storage.StorageError as error:
        _forget(keys)
        attachments.record_failure(held, f"could not store it ({error})", temporary=True)
    except Exception as exc:  # noqa: BLE001 - a bug fails this file, visibly, not the worker
        log.exception("attachment %s: fetching it raised", held.attachment_id)
        _forget(keys)
        attachments.record_failure(held, f"could not download it ({type(exc).__name__})", temporary=True)
    else:
        filename = media_types.safe_filename(fetched.filename or held.media.filename, content_type)
        if not attachments.record_stored(held, content_type, kind, len(fetched.data), key,
                                         key + "-thumb.webp" if thumb is not None else None, filename):
            _forget(keys)
    return True


def _forget(keys: list[str]) -> None:
    from .storage import StorageError, storage

    for key in keys:
        try:
            storage().delete(key)
        except StorageError:
            log.warning("could not delete %s from storage", key)


def _record(lease_ends: float, held: delivery.Claim, record, answer) -> None:
    """Record the provider's answer, through a database that is away for a moment: the reply
    went out, so giving up would leave it "sending" until the lease ends and then send it
    again. Tried until shortly before the lease ends (after that another worker owns it)."""
    pause = 0.1
    while True:
        try:
            record(held, answer)
            return
        except DBAPIError:
            db.session.rollback()
            if time.monotonic() + pause > lease_ends - 1:
                raise
            log.warning("delivery %s: could not record the provider's answer; trying again in %.1f s",
                        held.delivery_id, pause, exc_info=True)
            time.sleep(pause)
            pause = min(2.0, pause * 2)


def send_timeout() -> float:
    return _setting("DELIVERY_SEND_TIMEOUT")


def _setting(name: str) -> float:
    from flask import current_app

    return current_app.config[name]


def run(app: Flask, stop: threading.Event, concurrency: int | None = None) -> None:
    """Deliver until `stop` is set, with `concurrency` loops (DELIVERY_CONCURRENCY by default)."""
    count = concurrency or app.config["DELIVERY_CONCURRENCY"]
    loops = [threading.Thread(target=_loop, args=(app, stop), name=f"delivery-{n}", daemon=True)
             for n in range(count)]
    if make_url(app.config["SQLALCHEMY_DATABASE_URI"]).get_backend_name() == "postgresql":
        threading.Thread(target=_listen, args=(app, stop), name="delivery-listen", daemon=True).start()
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join()


def _loop(app: Flask, stop: threading.Event) -> None:
    poll = app.config["DELIVERY_POLL_SECONDS"]
    pause = 0.0
    while not stop.is_set():
        try:
            with app.app_context():
                busy = work_once()
            with app.app_context():
                busy = fetch_once() or busy
            pause = 0.0
        except Exception:  # noqa: BLE001 - the database is down or restarting: wait, then go on
            pause = min(5.0, pause * 2 or 0.25)
            log.warning("delivery worker: could not reach the database; trying again in %.2f s", pause, exc_info=True)
            stop.wait(pause)
            continue
        if not busy:
            # Jittered, so processes that emptied the queue together don't keep polling in step.
            _queued.wait(poll * random.uniform(0.75, 1.25))
            _queued.clear()


def _listen(app: Flask, stop: threading.Event) -> None:
    """PostgreSQL: wake this process's loops when any process commits a delivery (LISTEN), so a
    reply from another process is claimed at once, not at the next poll."""
    import psycopg

    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).set(drivername="postgresql")
    while not stop.is_set():
        try:
            with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                                 connect_timeout=5) as connection:
                connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
                while not stop.is_set():
                    for _ in connection.notifies(timeout=1.0):
                        _queued.set()
        except psycopg.Error:
            log.warning("delivery worker: LISTEN lost; polling every %s s until it is back",
                        app.config["DELIVERY_POLL_SECONDS"])
            stop.wait(2)


def start_embedded(app: Flask) -> threading.Event | None:
    """The embedded default: a worker inside this (gunicorn) process, unless DELIVERY_WORKER=off.
    Returns the event that stops it."""
    if app.config["DELIVERY_WORKER"] != "embedded":
        return None
    stop = threading.Event()
    threading.Thread(target=run, args=(app, stop), name="delivery-worker", daemon=True).start()
    log.info("delivery worker running inside this process")
    return stop


def _after_flush(session: Session, _context) -> None:
    if any(isinstance(obj, Delivery) or (isinstance(obj, Attachment) and obj.state == DOWNLOADING)
           for obj in session.new):
        session.info[_ENQUEUED] = True


def _before_commit(session: Session) -> None:
    if session.info.get(_ENQUEUED) and session.get_bind().dialect.name == "postgresql":
        # Transactional: delivered to the listeners when (and only if) this commit succeeds.
        session.connection().exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")


def _after_commit(session: Session) -> None:
    if session.info.pop(_ENQUEUED, False):
        _queued.set()


def _do_orm_execute(state) -> None:
    # A Retry re-queues its delivery with an UPDATE (a worker's own updates wake nobody).
    if state.is_update and getattr(state.statement, "table", None) is not None \
            and state.statement.table.name == "deliveries" and not state.session.info.get(_WORKER):
        state.session.info[_ENQUEUED] = True


def init_app(_app: Flask) -> None:
    if not event.contains(Session, "after_commit", _after_commit):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "do_orm_execute", _do_orm_execute)
        event.listen(Session, "after_soft_rollback", lambda s, _t: s.info.pop(_ENQUEUED, None))


def wait_for_shutdown(stop: threading.Event, seconds: float = 10.0) -> None:
    """Give loops in the middle of a send a moment to record it (the lease covers the rest)."""
    stop.set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(t.name.startswith("delivery-") and t.is_alive()
                                                for t in threading.enumerate()):
        time.sleep(0.05)
