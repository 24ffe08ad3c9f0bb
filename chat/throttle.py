"""Throttling guesses with Flask-Limiter: sign-in per account and per client address, and the
bearer-token checks of the API and the webhook per client address.

- Per account, every sign-in attempt counts (an atomic hit before the password is checked, so
  concurrent guesses cannot slip past the limit) and a successful sign-in clears the count:
  the 6th wrong password within the window gets 429, the right one works once it has passed.
- Per address, only refused attempts count (401), so an office behind one NAT can sign in
  at 9:00; the same for failed bearer tokens, so a busy integration is never slowed down.

Limits live in Redis when REDIS_URL is set (every process counts together; keys under
CACHE_KEY_PREFIX, so deployments sharing a Redis stay apart; on a Redis Cluster through limits'
own redis+cluster:// storage, each limit a key of its own), in memory otherwise. A Redis
outage never fails a request, nor stalls one: Flask-Limiter counts in memory until Redis
answers again, and the Redis client fails fast (timeouts, circuit breaker).
"""
from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from .redis_guard import cluster_options, redis_options
from .config import is_cluster_url

ACCOUNT, ADDRESS, API_TOKEN, WEBHOOK_TOKEN = "account", "address", "api-token", "webhook-token"
LIMITED_BLUEPRINTS = ("api", "webhooks")  # and the sign-in view


def init_app(app: Flask) -> None:
    """Call after the blueprints are registered: the sign-in limits wrap the login view."""
    config = app.config
    redis_url = config.get("REDIS_URL")
    config.setdefault("RATELIMIT_STORAGE_URI", redis_url or "memory://")
    if redis_url:
        # Short timeouts, no retries and the circuit breaker (chat.redis_guard.redis_options): a frozen
        # Redis costs one sign-in at most one timeout; while its breaker is open every call
        # fails at once and Flask-Limiter counts in memory, asking Redis again now and then.
        # On a cluster, limits builds redis-py's RedisCluster itself: each node's connection asks
        # the breaker too, but a skipped call also makes that client re-read the cluster's layout
        # from a live node (one CLUSTER SLOTS per refused sign-in while a node is skipped).
        client_options = cluster_options(redis_url) if is_cluster_url(redis_url) else redis_options(redis_url)
        config.setdefault("RATELIMIT_STORAGE_OPTIONS", {
            "key_prefix": f"{config['CACHE_KEY_PREFIX']}limits", **client_options,
        })
    config.setdefault("RATELIMIT_STRATEGY", "moving-window")  # "5 per minute" means any 60 s, not a clock minute
    config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    # One limiter per app: Flask-Limiter keeps its storage on the instance, and tests make many apps.
    limiter = Limiter(key_func=get_remote_address)
    limiter.init_app(app)
    app.extensions["throttle"] = limiter

    login = app.view_functions["auth.login"]
    login = limiter.limit(_setting("SIGN_IN_LIMIT_PER_ADDRESS"), scope=ADDRESS, methods=["POST"],
                          deduct_when=_refused)(login)
    login = limiter.limit(_setting("SIGN_IN_LIMIT_PER_ACCOUNT"), scope=ACCOUNT, methods=["POST"],
                          key_func=_account)(login)
    app.view_functions["auth.login"] = login
    # Every API route checks a bearer token: failed checks count per address, the agents'
    # API tokens and the provider's webhook token each on their own.
    limiter.shared_limit(_setting("TOKEN_LIMIT_PER_ADDRESS"), scope=_token_scope, deduct_when=_refused)(
        app.blueprints["api"])
    # Provider webhooks refused for a wrong signature count like wrong webhook tokens.
    limiter.shared_limit(_setting("TOKEN_LIMIT_PER_ADDRESS"), scope=_token_scope, deduct_when=_refused)(
        app.blueprints["webhooks"])
    if not (config.get("RATELIMIT_DEFAULT") or config.get("RATELIMIT_APPLICATION")):
        # Nothing else is limited: every other request (a page, a fragment, an asset) skips
        # Flask-Limiter's resolution of the limits that apply to it, a tenth of a cached hit.
        limiter.request_filter(_not_limited)


def _not_limited() -> bool:
    return request.blueprint not in LIMITED_BLUEPRINTS and request.endpoint != "auth.login"


def _setting(name: str):
    return lambda: current_app.config[name]


def _refused(response) -> bool:
    return response.status_code == 401


def _token_scope(endpoint: str) -> str:
    return WEBHOOK_TOKEN if endpoint in ("api.inbound", "api.status") or endpoint.startswith("webhooks.") \
        else API_TOKEN


def _account() -> str:
    """The account being signed in to, hashed (the key never holds what someone typed)."""
    try:
        email = request.form.get("email", "")
    except HTTPException:  # e.g. an oversized body: the view answers 413 for it
        return ""
    email = email.strip().lower()
    return hashlib.sha256(email.encode("utf-8", "replace")).hexdigest()[:32] if email else ""


def signed_in() -> None:
    """A right password clears the account's count, so an agent who signs in often is never
    throttled (per address, only failures count anyway)."""
    limiter: Limiter = current_app.extensions["throttle"]
    for limit in limiter.current_limits:
        if limit.request_args[-1].endswith(f":{ACCOUNT}"):
            try:
                limiter.limiter.clear(limit.limit, *limit.request_args)
            except Exception:  # storage down: the count expires by itself
                current_app.logger.warning("could not clear the sign-in count", exc_info=True)


def retry_after() -> int:
    """Seconds until the limit this request broke lets the next attempt through."""
    limiter: Limiter = current_app.extensions["throttle"]
    limit = limiter.current_limit
    try:  # not limit.reset_at: it rounds up by a whole second
        reset = limiter.limiter.get_window_stats(limit.limit, *limit.request_args).reset_time if limit else 0
        return max(1, math.ceil(reset - time.time())) if limit else 60
    except Exception:  # storage down while asking: a minute is the longest window we set
        return 60
