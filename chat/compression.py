"""Compression: brotli or gzip, whichever the browser prefers (Accept-Encoding, q-values
honoured; br on a tie), for anything of at least MIN_SIZE bytes.

- Pages, the API's JSON and the assets: Flask-Compress, after each request.
- Fragments (the cached, hot path): compressed once, when rendered. The rendered-HTML cache
  keeps the compressed bytes per encoding (chat/fragments.py), so a hit sends the stored bytes
  as they are, and Flask-Compress leaves a response that already has a Content-Encoding alone.
ETags are weak and name the content, not its encoding; every answer varies on Accept-Encoding.
"""
from __future__ import annotations

import gzip

import brotli
from flask import Flask
from flask_compress import Compress

ALGORITHMS = ("br", "gzip")  # preference on a tie
MIN_SIZE = 500  # bytes: below this, compressing costs more than it saves
BROTLI_QUALITY = 5  # of 11: most of the size of the best, at a fraction of its time
GZIP_LEVEL = 6

compress = Compress()


def init_app(app: Flask) -> None:
    app.config.setdefault("COMPRESS_ALGORITHM", list(ALGORITHMS))
    app.config.setdefault("COMPRESS_MIN_SIZE", MIN_SIZE)
    app.config.setdefault("COMPRESS_BR_LEVEL", BROTLI_QUALITY)
    app.config.setdefault("COMPRESS_LEVEL", GZIP_LEVEL)
    compress.init_app(app)


def chosen(accept_encoding: str) -> str | None:
    """The encoding to answer with: the one of ALGORITHMS the browser rates highest, or None."""
    best, best_q = None, 0.0
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        name = name.strip()
        if name in ALGORITHMS and (q > best_q or (q == best_q and best and ALGORITHMS.index(name) < ALGORITHMS.index(best))):
            best, best_q = name, q
    return best if best_q > 0 else None


def encode(html: str, encoding: str | None) -> str | bytes:
    """`html` compressed with `encoding` (bytes), or as it is (str) when it is too small or the
    browser takes no encoding."""
    if encoding is None or len(html) < MIN_SIZE:
        return html
    data = html.encode()
    if encoding == "br":
        return brotli.compress(data, quality=BROTLI_QUALITY)
    return gzip.compress(data, GZIP_LEVEL, mtime=0)
