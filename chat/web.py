"""What every HTML page shares: error pages, security headers, template filters and globals."""
from __future__ import annotations

from datetime import datetime

from flask import Flask, current_app, render_template, request
from flask_wtf.csrf import CSRFError
from markupsafe import Markup
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from . import metrics
from .errors import DomainError
from .models import DEFAULT_COLOR, DELIVERY_WORDS, ROLES
from .media_types import human_size
from .responses import json_error
from .visibility import TABS


def is_fragment_request() -> bool:
    """htmx asked for a part of the page (not a boosted full-page navigation)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-Boosted") != "true"


def wants_json() -> bool:
    return request.path.startswith("/api/")


# What the pages may load; tests/test_csp.py visits every page in chromium and fails on any
# violation.
# - script-src 'self': our files only; no inline script, no eval. htmx runs with allowEval off
#   (the htmx-config meta in base.html), and the morph extension only reaches its Function()
#   path for hx-swap values other than "morph", "morph:innerHTML" and "morph:outerHTML".
# - style-src 'self' plus style-src-attr 'unsafe-inline': the stylesheet is a file, and a
#   department's colour is an inline style="--dept: #1a2b3c" attribute (validated as a hex
#   colour by catalog.py). Attributes cannot hold selectors or run script, so the worst an
#   injected one could do is load an image, which img-src bounds; <style> elements stay
#   forbidden (htmx's indicator styles are off).
# - img-src https: contact avatars are the messaging provider's URLs on its own CDN, so any
#   https host (the webhook refuses other schemes); data: for the empty favicon.
# - connect-src 'self': htmx, GET /session and Socket.IO; in CSP 3 'self' also matches ws: and
#   wss: on the same host and port, which chromium honours.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "style-src-attr 'unsafe-inline'",
    "img-src 'self' data: https:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))


def init_app(app: Flask) -> None:
    _production_settings(app)
    app.add_template_filter(_time_tag, "time")
    app.add_template_filter(_initials, "initials")
    app.add_template_filter(lambda n: human_size(n) if n is not None else "", "filesize")
    app.jinja_env.globals.update(tabs=TABS, roles=ROLES, default_color=DEFAULT_COLOR, delivery_words=DELIVERY_WORDS)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        # Routing errors never reach a blueprint's handlers; keep the API's answers JSON.
        if wants_json():
            if error.code == 413:
                limit = request.max_content_length  # the app's, or an upload view's (chat/uploads.py)
                return json_error(f"request body must be at most {limit} bytes", 413)
            return json_error((error.name or "error").lower(), error.code or 500)
        return error

    @app.errorhandler(404)
    def not_found(error):
        if wants_json():
            return http_error(error)
        return _error_page(404, "Not found", "That page or conversation does not exist, or you cannot see it.")

    @app.errorhandler(403)
    def forbidden(_error):
        return _error_page(403, "Not allowed", "Only admins can open this page.")

    @app.errorhandler(CSRFError)
    def csrf_failed(error):
        return _error_page(400, "Form expired", f"{error.description} Reload the page and try again.")

    @app.errorhandler(DomainError)
    def domain_error(error: DomainError):
        return _error_page(error.status, "Could not do that", error.message)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(error):
        """The database is down or restarting: a clear 503 the browser's outbox retries, never a
        500 page or a sign-in form (the session's agent could not be read either)."""
        from .extensions import db

        current_app.logger.warning("database unavailable: %s", str(error).splitlines()[0][:200])
        try:
            db.session.rollback()
        except Exception:  # noqa: BLE001 - the connection is gone; the pool replaces it
            pass
        response = _error_page(503, "Database unavailable",
                               "The inbox cannot reach its database right now. Try again in a few seconds.")
        response = current_app.make_response(response)
        response.headers["Retry-After"] = "2"
        return response

    @app.before_request
    def count_cache_reads():
        metrics.start_request()

    @app.after_request
    def cache_header(response):
        state = metrics.request_cache_state()
        if state and "X-Cache" not in response.headers:
            response.headers["X-Cache"] = state
        return response

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def _production_settings(app: Flask) -> None:
    """Behind HTTPS or a proxy, or with PRODUCTION=1: session and remember-me cookies are
    Secure (they stay HttpOnly and SameSite=Lax); PROXY_FIX=N trusts N proxies' X-Forwarded-*."""
    config = app.config
    if config.get("PROXY_FIX"):
        hops = int(config["PROXY_FIX"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)
    if config.get("PRODUCTION") or config.get("PREFERRED_URL_SCHEME") == "https" or config.get("PROXY_FIX"):
        config["SESSION_COOKIE_SECURE"] = True
        config["REMEMBER_COOKIE_SECURE"] = True


def _error_page(status: int, title: str, message: str):
    if wants_json():
        return json_error(message, status)
    template = "_error.html" if is_fragment_request() else "error.html"
    return render_template(template, status=status, title=title, message=message), status


def _time_tag(iso: str | None) -> Markup:
    """A <time> the browser shows in local time; the server's UTC text is the fallback."""
    if not iso:
        return Markup("")
    stamp = datetime.fromisoformat(iso.rstrip("Z"))
    return Markup('<time datetime="{0}">{1}</time>').format(iso, stamp.strftime("%d %b %H:%M"))


def _initials(name: str | None) -> str:
    parts = (name or "?").split()
    return "".join(p[0] for p in parts[:2]).upper() or "?"
