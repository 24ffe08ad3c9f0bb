"""Looking at the cache: /metrics, the admin's cache panel and `flask cache stats|clear`.

Counters are per process and shared by every app this test session creates, so tests compare
numbers before and after what they do, never absolute values.
"""
from __future__ import annotations

import html
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from chat import create_app
from chat.extensions import db
from tests.conftest import make_config

LIST = "/inbox/list?tab=pending"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """GET /metrics as {(sample name, sorted labels): value}, through the Prometheus parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def stats(response) -> dict[str, str]:
    """The numbers the panel shows, by data-stat name, as the user reads them."""
    text = response.get_data(as_text=True)
    return {name: html.unescape(shown) for name, shown in
            re.findall(r'data-stat="([\w-]+)">([^<]*)<', text)}


def number(shown: str) -> int:
    return int(shown.replace(",", ""))


# --- /metrics ------------------------------------------------------------------------------------


def test_metrics_is_prometheus_text_with_the_cache_counters(client, world):
    response = client.get("/metrics")  # no login: scrapers have none
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.get_data(as_text=True)
    for line in ("# TYPE chat_cache_hits_total counter", "# TYPE chat_cache_misses_total counter",
                 "# TYPE chat_cache_invalidations_total counter", "# TYPE chat_sql_queries_total counter",
                 "# TYPE chat_cache_fetch_seconds histogram"):
        assert line in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all(line.startswith("chat_") for line in samples), \
        [line for line in samples if not line.startswith("chat_")][:5]
    for secret in ("ana@example.com", "Paula Pending", "+5511", "test-secret", "inbound-test-token"):
        assert secret not in text


def test_a_page_requested_twice_counts_a_miss_then_a_hit(client, world, login):
    ana = login("ana@example.com")
    before = scrape(client)
    assert ana.get("/inbox").status_code == 200
    after_first = scrape(client)
    assert ana.get("/inbox").status_code == 200
    after_second = scrape(client)

    def delta(a, b, name):
        return value(b, name, family="conversations") - value(a, name, family="conversations")

    assert delta(before, after_first, "chat_cache_misses_total") >= 1
    assert delta(after_first, after_second, "chat_cache_misses_total") == 0
    assert delta(after_first, after_second, "chat_cache_hits_total") >= 1
    assert delta(before, after_first, "chat_cache_fetch_seconds_count") >= 1
    first_queries = total(after_first, "chat_sql_queries_total") - total(before, "chat_sql_queries_total")
    second_queries = total(after_second, "chat_sql_queries_total") - total(after_first, "chat_sql_queries_total")
    assert first_queries > 0
    assert second_queries < first_queries


# --- /admin/cache ----------------------------------------------------------------------------


def test_cache_page_shows_backend_and_numbers_for_admin(app, client, world, login, monkeypatch):
    from chat import metrics

    # Queries saved = hits x what a fetch of their family costs, kept per process: start from
    # this test's own fetches (earlier tests' made-up ones run no SQL and save nothing).
    monkeypatch.setattr(metrics.history, "queries_per_fetch", {})
    monkeypatch.setattr(metrics.history, "hits_by_family", {})
    admin = login("admin@example.com")
    admin.get("/inbox")
    admin.get("/inbox")
    response = admin.get("/admin/cache")
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = response.get_data(as_text=True)
    assert "<h1>Cache</h1>" in text
    assert "this server process" in text
    assert re.search(r'<a href="/admin/cache" aria-current="page">Cache</a>', text)
    backend = re.search(r'class="cache-backend">([^<]*)<', text).group(1)
    if app.config.get("REDIS_URL"):
        assert backend == "Redis 127.0.0.1:6379/0"
        assert app.config["CACHE_KEY_PREFIX"] in text
    else:
        assert backend == "in-process, 20,000 entries max"

    shown = stats(response)
    expected = {"hit-ratio", "hits", "misses", "queries-saved", "invalidations", "sql-queries"}
    if app.config.get("REDIS_URL"):  # the Redis circuit breaker's card (tests/test_faults.py)
        expected |= {"redis-breaker", "redis-breaker-detail"}
    assert set(shown) == expected
    # The same numbers Prometheus gets (this /metrics request reads no cache and runs no SQL).
    samples = scrape(client)
    hits, misses = number(shown["hits"]), number(shown["misses"])
    assert hits == total(samples, "chat_cache_hits_total") and hits >= 1
    assert misses == total(samples, "chat_cache_misses_total") and misses >= 1
    assert number(shown["invalidations"]) == total(samples, "chat_cache_invalidations_total")
    assert number(shown["sql-queries"]) == total(samples, "chat_sql_queries_total")
    assert shown["hit-ratio"] == f"{hits / (hits + misses):.1%}"
    assert number(shown["queries-saved"]) >= sum(metrics.history.hits_by_family.values()) >= 1
    # The chart is on the page too.
    assert "<svg" in text and 'hx-trigger="every 2s"' in text


def test_cache_page_is_for_admins_only(client, world, login):
    ana = login("ana@example.com")
    assert ana.get("/admin/cache").status_code == 403
    assert ana.get("/admin/cache/panel", htmx=True).status_code == 403
    response = client.get("/admin/cache")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")
    # A poll whose session has ended sends the whole page to the login form.
    poll = client.get("/admin/cache/panel", headers={"HX-Request": "true"})
    assert poll.status_code == 401
    assert poll.headers["HX-Redirect"].startswith("/login")
    assert "Hits" not in poll.get_data(as_text=True)


def test_panel_is_a_partial_with_a_live_chart(world, login):
    admin = login("admin@example.com")
    before = stats(admin.get("/admin/cache/panel", htmx=True))
    for _ in range(3):
        admin.get(LIST, htmx=True)
    response = admin.get("/admin/cache/panel", htmx=True)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = response.get_data(as_text=True)
    assert "<html" not in text and "<nav" not in text
    panel = re.search(r'<section id="cache-panel"[^>]*>', text).group(0)
    assert 'hx-get="/admin/cache/panel"' in panel
    assert 'hx-trigger="every 2s"' in panel
    assert 'hx-swap="outerHTML"' in panel
    assert "<svg" in text
    # The numbers moved with the requests in between.
    after = stats(response)
    assert number(after["hits"]) >= number(before["hits"]) + 2
    # Bars for the last five minutes, one per series and busy bucket, as tall as their count.
    bars = [(series, float(height), int(count)) for series, height, count in re.findall(
        r'<rect class="(hits|misses|invalidations)" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)">'
        r"<title>[^<]*: (\d+) \1</title>", text)]
    hit_bars = [b for b in bars if b[0] == "hits"]
    assert sum(count for _, _, count in hit_bars) >= 2
    assert all(height > 0 for _, height, _ in bars)
    tallest = max(bars, key=lambda b: b[2])
    assert tallest[1] >= 40  # the scale's top is at most 2.5 times the busiest bar
    by_count = sorted(bars, key=lambda b: b[2])
    assert [h for _, h, _ in by_count] == sorted(h for _, h, _ in by_count)
    label = re.search(r'<svg[^>]*aria-label="([^"]*)"', text).group(1)
    assert re.search(r"\d+ hits, \d+ misses, \d+ invalidations", label)


# --- flask cache stats / clear ------------------------------------------------------------------


def test_cache_stats(app, runner, world, login):
    login("admin@example.com").get("/inbox")  # something in the cache
    result = runner.invoke(args=["cache", "stats"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"static\s+86,400 s", out)
    assert re.search(r"moderate\s+3,600 s", out)
    assert re.search(r"dynamic\s+1,800 s", out)
    for counter in ("hits", "misses", "queries saved", "invalidations", "SQL queries"):
        assert re.search(rf"^  {counter}\s+[\d,]+$", out, re.M), counter
    if app.config.get("REDIS_URL"):
        assert "Backend: Redis 127.0.0.1:6379/0" in out
        keys = re.search(r"Keys under the key prefix '([^']+)': ([\d,]+) \(([\d,]+) entries", out)
        assert keys.group(1) == app.config["CACHE_KEY_PREFIX"]
        assert number(keys.group(2)) > number(keys.group(3)) > 0  # entries plus their generations
        assert "Used memory" in out
    else:
        assert "Backend: in-process, 20,000 entries max" in out
        assert "each server process has its own cache, so this CLI process sees a new, empty one" in out


def test_cache_clear_makes_cached_fragments_miss(app, runner, world, login):
    admin = login("admin@example.com")
    queries = []
    with app.app_context():
        engine = db.engine
    listener = lambda *args: queries.append(args[2])  # noqa: E731 - the statement
    event.listen(engine, "before_cursor_execute", listener)
    try:
        admin.get(LIST, htmx=True)
        cached = admin.get(LIST, htmx=True)
        assert cached.headers["X-Cache"] == "HIT"
        queries.clear()
        assert admin.get(LIST, htmx=True).headers["X-Cache"] == "HIT" and queries == []

        result = runner.invoke(args=["cache", "clear"])
        assert result.exit_code == 0, result.output
        assert "moved" in result.output and "epoch" in result.output
        if app.config.get("REDIS_URL"):
            assert "Cleared the cache on Redis 127.0.0.1:6379/0" in result.output
        else:
            assert "Cleared this CLI process's in-process cache" in result.output
            assert "Restart the server to clear it." in result.output

        again = admin.get(LIST, htmx=True)
        assert again.status_code == 200
        assert again.headers["X-Cache"] == "MISS"
        assert queries, "after clear the list must be fetched from the database again"
        # same content; only the validator moved with the new epoch
        strip = lambda r: re.sub(r'data-etag="[^"]*"', "", r.get_data(as_text=True))  # noqa: E731
        assert strip(again) == strip(cached)
        queries.clear()
        assert admin.get(LIST, htmx=True).headers["X-Cache"] == "HIT" and queries == []
    finally:
        event.remove(engine, "before_cursor_execute", listener)


@pytest.mark.parametrize("command", ["clear", "stats"])
def test_cache_commands_fail_when_redis_is_unreachable(tmp_path, command):
    app = create_app(make_config(f"sqlite:///{tmp_path / 'down.db'}", REDIS_URL="redis://127.0.0.1:1/0"))
    result = app.test_cli_runner().invoke(args=["cache", command])
    assert result.exit_code == 1, result.output
    if command == "clear":
        assert "could not reach the cache backend (Redis 127.0.0.1:1/0): nothing was cleared." in result.output
        assert "Cleared" not in result.output
    else:
        assert "Redis is unreachable" in result.output
