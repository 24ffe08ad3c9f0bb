"""The product as gunicorn serves it (`app:app`), plus what only the bench needs.

- GET /bench/hello: a bare hello-world route in the same app, process and server: the ceiling.
- BENCH_UNCACHED=1: the SmartCache is switched off (every get_or_fetch calls its fetch, no
  ETags), so the same views run their SQL and render on every request: the "no cache"
  baseline over HTTP.

Never imported by the product.
"""
import os

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
