"""The product as gunicorn serves it (`app:app`), plus what only the bench needs.

- GET /bench/hello: a bare hello-world route in the same app, process and server: the ceiling.
- BENCH_UNCACHED=1: every cached read (chat.fragments.read) calls its fetch directly, so the
  same views run their SQL on every request: the "no cache" baseline over HTTP.

Never imported by the product.
"""
import os

from chat import create_app, fragments

app = create_app()


@app.get("/bench/hello")
def bench_hello():
    return "Hello, World!"


if os.environ.get("BENCH_UNCACHED") == "1":
    def _uncached(key, fetch, ttl="dynamic", tags=()):
        return fetch()

    fragments.read = _uncached
