"""The JSON error shape, `{"error": "<what is wrong>"}`: the API's answers and the app-wide
error handlers (chat/web.py) both answer with it, so it sits below both."""
from __future__ import annotations

from flask import jsonify


def json_error(message: str, status: int):
    return jsonify({"error": message}), status
