"""Provider webhooks that speak the provider's own protocol: the WhatsApp Cloud API's
verification handshake and its signed notifications. (The generic channel's webhook is
POST /api/inbound and /api/status, chat/api.py.)"""
from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, jsonify, request

from . import catalog, delivery, domain
from .channels import Inbound, adapter_for
from .channels.whatsapp import phone_number_ids
from .errors import DomainError
from .responses import json_error

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
log = logging.getLogger(__name__)


@bp.get("/whatsapp")
def whatsapp_verify():
    """Meta's subscription check: echo hub.challenge when hub.verify_token is ours."""
    mode, token = request.args.get("hub.mode"), request.args.get("hub.verify_token")
    for channel in catalog.whatsapp_channels():
        if adapter_for(channel.kind, channel.settings).verifies_subscription(mode, token):
            return Response(request.args.get("hub.challenge", ""), 200, mimetype="text/plain")
    return Response("verify token does not match", 403, mimetype="text/plain")


@bp.post("/whatsapp")
def whatsapp_notify():
    """A notification: refused (401) unless X-Hub-Signature-256 is the HMAC of these very bytes
    with the app secret of a channel whose phone number it is about; nothing of a refused
    request is stored."""
    # Meta batches up to 1,000 updates in one notification: more than the app's 256 KiB limit.
    request.max_content_length = current_app.config["WHATSAPP_MAX_NOTIFICATION_BYTES"]
    raw = request.get_data(cache=True)  # the raw bytes, before anything parses them
    signed = _signed_by(raw)
    if not signed:
        return json_error("signature does not match", 401)
    payload = _json_object(raw)
    if payload is None:
        return json_error("request body must be a JSON object", 400)
    # Signed, but about no phone number (template, quality or account updates): nothing to
    # store; a 401 would have Meta retry it for days.
    owner = next(((c, a) for c, a in signed if a.owns(payload)), None) if phone_number_ids(payload) else ()
    if owner is None:  # signed by our app, so not a guess: 403, which the throttle does not count
        return json_error("no channel has this phone number id", 403)
    return jsonify({"data": _store(*owner, payload) if owner else {"messages": 0, "statuses": 0, "skipped": 0}})


def _signed_by(raw: bytes) -> list:
    """(channel, adapter) of every WhatsApp channel whose app secret signed these bytes."""
    return [(c, a) for c in catalog.whatsapp_channels()
            for a in [adapter_for(c.kind, c.settings)] if a.verify(raw, request.headers)]


def _json_object(raw: bytes) -> dict | None:
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _store(channel, adapter, payload: dict) -> dict:
    """Each message and status of a notification, item by item: how many of each, and skipped."""
    counts = {"messages": 0, "statuses": 0, "skipped": 0}
    for item in adapter.parse(payload):
        try:
            if isinstance(item, Inbound):
                domain.receive_inbound(phone=item.phone, body=item.body, name=item.name,
                                       external_id=item.external_id, channel_id=channel.id, from_me=item.from_me,
                                       attachments=item.attachments)
                counts["messages"] += 1
            else:
                delivery.record_status(item.provider_message_id, item.status, item.reason)
                counts["statuses"] += 1
        except DomainError as exc:
            # One unusable item must not make Meta retry the whole notification for days.
            log.warning("WhatsApp notification item skipped: %s", exc.message)
            counts["skipped"] += 1
    return counts
