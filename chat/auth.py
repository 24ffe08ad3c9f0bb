"""Logging agents in and out (Flask-Login sessions, Flask-WTF forms)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import (Blueprint, Flask, Response, flash, jsonify, make_response, redirect, render_template,
                   request, url_for)
from flask_login import LoginManager, current_user, login_required, login_url, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField
from wtforms.validators import DataRequired, Length, ValidationError

from . import catalog, reads, throttle
from .domain import reject_control_characters
from .errors import InvalidInput, Unauthorized
from .models import Viewer

bp = Blueprint("auth", __name__)


def _no_control_characters(_form, field) -> None:
    """The domain's rule for text, as a form validator (NUL would 500 PostgreSQL's lookup)."""
    try:
        reject_control_characters(field.data or "", field.label.text.lower())
    except InvalidInput as exc:
        raise ValidationError(exc.message) from None


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254), _no_control_characters])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256), _no_control_characters])
    remember = BooleanField("Keep me signed in")


def init_app(app: Flask, login_manager: LoginManager) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please sign in to see the inbox."
    login_manager.login_message_category = "info"

    @login_manager.user_loader
    def load_user(session_id: str) -> Viewer | None:
        """The agent of a session or remember-me cookie, if it was issued at the agent's current
        session version (sign-out moves it on, so copies of older cookies are anonymous)."""
        user_id, _, version = session_id.partition(":")
        if not (user_id.isdigit() and version.isdigit()):
            return None  # includes sessions from before versions existed: sign in again
        # From the cache: a page served from cache must not query the users table.
        viewer = reads.viewer(int(user_id))
        if viewer is None or not viewer.active or viewer.session_version != int(version):
            return None
        return viewer

    @login_manager.unauthorized_handler
    def sign_in_first() -> Response:
        """htmx would swap the login form into a fragment: tell it to load the login page instead."""
        if request.headers.get("HX-Request") == "true":
            page = urlsplit(request.headers.get("HX-Current-URL", ""))
            path = page.path + (f"?{page.query}" if page.query else "")
            response = jsonify(error="sign in")
            response.status_code = 401
            response.headers["HX-Redirect"] = url_for("auth.login", next=_safe_next(path))
            return response
        flash(login_manager.login_message, login_manager.login_message_category)
        return redirect(login_url(login_manager.login_view, next_url=request.url))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("inbox.index"))
    form, error = LoginForm(), None
    if form.validate_on_submit():
        try:
            user = catalog.authenticate(form.email.data, form.password.data)
        except Unauthorized as refused:
            error = refused.message
        else:
            login_user(user, remember=form.remember.data)
            throttle.signed_in()
            return redirect(_safe_next(request.args.get("next")))
    status = 401 if error else (400 if form.errors else 200)
    return render_template("auth/login.html", form=form, error=error), status


@bp.errorhandler(429)
def too_many_attempts(_error) -> Response:
    """Throttled (chat/throttle.py): the sign-in page again, saying for how long."""
    wait = throttle.retry_after()
    error = f"Too many sign-in attempts. Wait {wait} second{'s' if wait != 1 else ''} and try again."
    response = make_response(render_template("auth/login.html", form=LoginForm(), error=error), 429)
    response.headers["Retry-After"] = str(wait)
    return response


@bp.post("/logout")
@login_required
def logout():
    catalog.end_sessions(current_user.id)  # every tab, device and socket of this agent, too
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


@bp.get("/session")
def session_state() -> Response:
    """Signed in or not, as JSON for the browser to probe (never a redirect, never cached):
    200 {"agent_id"}, 401 {"error": "sign in"}; no answer at all means the server is unreachable."""
    if current_user.is_authenticated:
        response = jsonify(agent_id=current_user.id)
    else:
        response = jsonify(error="sign in")
        response.status_code = 401
    response.headers["Cache-Control"] = "no-store"
    return response


def _safe_next(target: str | None) -> str:
    """Only follow a relative 'next' link on this site, never to another host."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("inbox.index")
