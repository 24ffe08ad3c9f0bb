"""The product as gunicorn serves it (`app:app`), plus what only the bench needs.

- GET /bench/hello: a bare hello-world route in the same app, process and server.
- BENCH_UNCACHED=1: the SmartCache is switched off (every get_or_fetch calls its fetch, no
  ETags), so the same views run their SQL and render on every request: the "no cache"
  baseline over HTTP.
- BENCH_BARE_RESPONSE=<file>: no Flask and no product at all: a bare WSGI callable that answers
  every request with the status, headers and body stored in that file (a list hit, as the
  product sent it). On the same gunicorn worker, that is the ceiling a hit can reach.

Never imported by the product.
"""
import base64
import json
import os
from pathlib import Path


class Bare:
    config = {"DELIVERY_WORKER": "off"}  # gunicorn.conf.py's worker hook: no delivery loops to start

    def __init__(self, path: str):
        stored = json.loads(Path(path).read_text())
        self.status = stored["status"]
        self.body = base64.b64decode(stored["body"])
        self.headers = [(k, v) for k, v in stored["headers"]] + [("Content-Length", str(len(self.body)))]

    def __call__(self, environ, start_response):
        start_response(self.status, self.headers)
        return [self.body]


if os.environ.get("BENCH_BARE_RESPONSE"):
    app = Bare(os.environ["BENCH_BARE_RESPONSE"])
else:
    from chat import create_app
    from chat.cache import smart_cache

    app = create_app()

    @app.get("/bench/hello")
    def bench_hello():
        return "Hello, World!"

    if os.environ.get("BENCH_UNCACHED") == "1":
        # Data reads, user lookups and rendered fragments alike: nothing is served from the cache.
        smart_cache.get_or_fetch = lambda key, fetch, *args, **kwargs: fetch()
        smart_cache.etag = lambda *args, **kwargs: None
        smart_cache.lookup = lambda *args, **kwargs: None
        smart_cache.get_or_fetch_and_lookup = lambda key, fetch, *args, **kwargs: (fetch(), None)
