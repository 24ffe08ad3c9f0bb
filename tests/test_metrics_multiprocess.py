"""Numbers for the whole deployment: with PROMETHEUS_MULTIPROC_DIR shared by several gunicorns,
/metrics and the admin cache panel of any of them sum every process, and the panel says how many."""
from __future__ import annotations

import re

import pytest

from chat import metrics
from tests.live import LiveServer, http, running_pair


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """gunicorn A and B over one SQLite database, writing their numbers to one shared directory."""
    tmp = tmp_path_factory.mktemp("multiproc")
    (tmp / "prometheus").mkdir()
    with running_pair(tmp, seed=("--agents", "2", "--conversations", "5", "--messages", "10"),
                      env={"PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus")}) as pair:
        yield pair


def sign_in_admin(server: LiveServer):
    session = http()
    token = re.search(r'name="csrf-token" content="([^"]+)"', session.get(f"{server.base}/login").text).group(1)
    response = session.post(f"{server.base}/login", allow_redirects=False,
                            data={"email": "admin@example.com", "password": "demo-pass", "csrf_token": token})
    assert response.status_code == 302
    return session


def metric(server: LiveServer, name: str) -> float:
    """The sum of a metric's samples in the server's /metrics."""
    text = http().get(f"{server.base}/metrics", timeout=5).text
    assert "panel_" not in text  # the panel's own history is not a Prometheus metric
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def panel(server: LiveServer, session) -> str:
    response = session.get(f"{server.base}/admin/cache/panel", headers={"HX-Request": "true"}, timeout=5)
    assert response.status_code == 200
    return response.text


def test_metrics_of_one_process_count_the_requests_of_another(two_processes):
    a, b = two_processes
    before = metric(b, "chat_cache_hits_total"), metric(b, "chat_sql_queries_total")
    admin = sign_in_admin(a)
    for _ in range(5):  # the first fills the cache, the others hit it: all served by A
        assert admin.get(f"{a.base}/inbox/list", headers={"HX-Request": "true"}, timeout=5).status_code == 200
    hits, queries = metric(b, "chat_cache_hits_total"), metric(b, "chat_sql_queries_total")
    assert hits >= before[0] + 4  # B never served these
    assert queries > before[1]
    assert metric(a, "chat_cache_hits_total") == hits  # either process answers with the same sums


def test_panel_sums_every_process_and_says_how_many(two_processes):
    a, b = two_processes
    admin = sign_in_admin(a)
    for _ in range(3):
        admin.get(f"{a.base}/inbox/list", headers={"HX-Request": "true"}, timeout=5)
    body = panel(b, admin)  # the session cookie is good on B: same secret key
    assert "Whole deployment: summing 2 processes" in body
    shown_hits = int(re.search(r'data-stat="hits">([\d,]+)<', body).group(1).replace(",", ""))
    assert shown_hits == metric(b, "chat_cache_hits_total")  # the panel and /metrics agree
    chart_hits = int(re.search(r'aria-label="[^"]*: (\d+) hits', body).group(1))
    assert chart_hits >= 3  # A's hits are in B's chart of the last minutes


def test_a_stopped_process_still_counts_but_is_not_running(two_processes):
    a, b = two_processes
    admin = sign_in_admin(b)
    hits = metric(b, "chat_cache_hits_total")
    a.stop(graceful=True)  # gunicorn's child_exit marks the worker dead
    body = panel(b, admin)
    assert "summing 2 processes (1 running)" in body
    assert metric(b, "chat_cache_hits_total") >= hits  # what A counted is not lost


def test_without_the_directory_the_panel_shows_this_process():
    assert metrics.multiprocess_dir() is None
    assert metrics.panel_numbers()["processes"] is None
