"""The signed session cookie, its signature checked once per cookie.

Flask verifies the session cookie's HMAC (itsdangerous) and decodes it on every request: about
a tenth of a cached list hit. One cookie string always verifies to the same data, so this keeps
the data of the cookies it verified lately (at most MAX_COOKIES, the least recently used
dropped) and hands each request a copy of its own. What Flask checks still holds on every
request: the cookie's age against PERMANENT_SESSION_LIFETIME (the signed timestamp, kept with
the data), and a cookie changed in any byte is another string, verified (and refused when
forged) like the first. Signing a new cookie is Flask's own code, unchanged.
"""
from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import BadSignature

MAX_COOKIES = 10_000


class VerifiedOnceSessionInterface(SecureCookieSessionInterface):
    def __init__(self) -> None:
        self._verified: OrderedDict[tuple, tuple[dict, int]] = OrderedDict()  # (key, cookie) -> (data, signed at)
        self._lock = threading.Lock()

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        cookie = request.cookies.get(self.get_cookie_name(app))
        if not cookie:
            return self.session_class()
        max_age = int(app.permanent_session_lifetime.total_seconds())
        key = (app.secret_key, cookie)
        with self._lock:
            found = self._verified.get(key)
            if found is not None:
                self._verified.move_to_end(key)
        if found is not None:
            data, signed_at = found
            if 0 <= int(time.time()) - signed_at <= max_age:  # itsdangerous' own rule
                return self.session_class(_own(data))
            return self.session_class()
        try:
            data, stamp = serializer.loads(cookie, max_age=max_age, return_timestamp=True)
        except BadSignature:
            return self.session_class()
        with self._lock:
            self._verified[key] = (copy.deepcopy(data), int(stamp.timestamp()))
            while len(self._verified) > MAX_COOKIES:
                self._verified.popitem(last=False)
        return self.session_class(data)


def _own(data: dict) -> dict:
    """A copy a request may change: the session copies the top level itself; nested lists or
    dicts (flash messages) are copied here."""
    if all(value is None or isinstance(value, (str, int, float)) for value in data.values()):
        return data
    return copy.deepcopy(data)


def init_app(app: Flask) -> None:
    app.session_interface = VerifiedOnceSessionInterface()
