"""Looking at the cache: /metrics for Prometheus, and what the admin's live cache panel
(admin.py serves it) and `flask cache stats` show.

/metrics needs no login (scrapers; METRICS_TOKEN or METRICS_ALLOW close it), so it exposes only the app's own counters and histogram
(chat_*): no process, platform or interpreter details, and never a key or a name.
Both views read this process's numbers, or, with PROMETHEUS_MULTIPROC_DIR set, the sum over
every process of the deployment (see metrics.py).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import time

from flask import Blueprint, current_app, make_response, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from . import metrics
from .cache import smart_cache

bp = Blueprint("observability", __name__)

APP_METRICS = "chat_"
STARTED = time.time()
CHART_HEIGHT = 100  # viewBox units; the SVG stretches to the card's width
SERIES = (("hits", "hits"), ("misses", "misses"), ("invalidations", "invalidations"))


class _AppMetrics:
    """The default registry (or every process's, in multiprocess mode), filtered to this app's
    metrics (the process collectors and the panel's own history stay out)."""

    def collect(self):
        for family in metrics.collect_all_processes() if metrics.multiprocess_dir() else REGISTRY.collect():
            if family.name.startswith(APP_METRICS):
                yield family


def _metrics_allowed() -> bool:
    """Open unless METRICS_TOKEN or METRICS_ALLOW is set; then the token or an allowed address."""
    token, allow = current_app.config.get("METRICS_TOKEN"), current_app.config.get("METRICS_ALLOW") or ""
    if not token and not allow.strip():
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n.strip(), strict=False) for n in allow.split(",") if n.strip())


@bp.get("/metrics")
def prometheus_metrics():
    if not _metrics_allowed():
        if not current_app.config.get("METRICS_TOKEN"):
            return make_response("this address may not read the metrics\n", 403)
        response = make_response("metrics need a bearer token (or an allowed address)\n", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = make_response(generate_latest(_AppMetrics()))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


# -- what the panel and `flask cache stats` show ----------------------------------------------
def backend_info() -> dict:
    """Which backend this app uses, fit to print: never a password."""
    backend = smart_cache.backend
    if node := smart_cache.cluster_node():
        # Every key of the cache is on this master (one hash tag): its client counts and measures them.
        client = backend._write_client
        masters = len(client.get_primaries())
        return {"kind": "redis", "where": node.name, "prefix": backend._get_prefix(),
                "label": f"Redis Cluster of {masters} masters, this cache on {node.name}",
                "client": client.get_redis_connection(node)}
    if smart_cache.is_redis:
        conn = backend._write_client.connection_pool.connection_kwargs
        where = (f"unix:{conn['path']}" if conn.get("path")
                 else f"{conn.get('host', 'localhost')}:{conn.get('port', 6379)}") + f"/{conn.get('db', 0)}"
        return {"kind": "redis", "where": where, "prefix": backend._get_prefix(),
                "label": f"Redis {where}", "client": backend._write_client}
    threshold = getattr(backend, "_threshold", None)
    if threshold is not None:
        return {"kind": "in-process", "threshold": threshold,
                "label": f"in-process, {threshold:,} entries max"}
    return {"kind": "other", "label": type(backend).__name__}


def panel_context() -> dict:
    numbers = metrics.panel_numbers()
    totals = numbers["totals"]
    reads = totals["hits"] + totals["misses"]
    return {
        "totals": totals,
        "hit_ratio": f"{totals['hits'] / reads:.1%}" if reads else "–",
        "queries_saved": numbers["queries_saved"],
        "chart": chart(numbers["buckets"]),
        "processes": numbers["processes"],
        "breaker": breaker_info(),
        "pid": os.getpid(),
        "uptime": _duration(time.time() - STARTED),
        "panel_url": url_for("admin.cache_panel"),
    }


def breaker_info() -> dict | None:
    """This process's circuit breaker of the cache's Redis; None with the in-process cache."""
    breaker = smart_cache.breaker
    if breaker is None:
        return None
    return {"state": breaker.state, "opens": breaker.opens, "skipped": breaker.skipped,
            "retry_in": round(breaker.retry_in(), 1)}


def chart(buckets: list[dict]) -> dict:
    """Grouped bars (hits, misses, invalidations) per ten-second bucket, in viewBox units."""
    top = _nice_ceiling(max((b[field] for b in buckets for field, _ in SERIES), default=0))
    slot = 10  # viewBox units per bucket
    width = slot * len(buckets)
    bar = slot / (len(SERIES) + 1)  # one bar's worth of gap between buckets
    now = buckets[-1]["start"] if buckets else 0
    bars = []
    for i, bucket in enumerate(buckets):
        ago = now - bucket["start"]
        when = "this bucket" if ago == 0 else f"{_duration(ago)} ago"
        for j, (field, noun) in enumerate(SERIES):
            value = bucket[field]
            height = value / top * CHART_HEIGHT if top else 0
            if value:
                height = max(height, 1.5)  # one is still visible
            bars.append({
                "series": field, "value": value, "x": round(i * slot + bar / 2 + j * bar, 3),
                "y": round(CHART_HEIGHT - height, 3), "width": round(bar, 3), "height": round(height, 3),
                "title": f"{when}: {value} {noun}",
            })
    sums = {field: sum(b[field] for b in buckets) for field, _ in SERIES}
    return {"bars": bars, "width": round(width, 3), "height": CHART_HEIGHT, "top": top, "sums": sums,
            "minutes": len(buckets) * metrics.BUCKET_SECONDS // 60}


def _nice_ceiling(value: int) -> int:
    """The scale's top: 1, 2, 5, 10, 20, 50, ... at or above `value`."""
    if value <= 0:
        return 0
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
