"""`make bench` at --quick size, so the benchmarks cannot rot.

It starts everything it needs on loopback (a private redis-server, gunicorn processes,
chromium) and stops it again. Without wrk, redis-server or chromium the test skips, except
with CI=true, where a missing tool fails it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"
NAME = "test-quick"


def test_make_bench_quick():
    missing = [tool for tool in ("wrk", "redis-server", "chromium", "make") if not shutil.which(tool)]
    if missing:
        reason = f"make bench needs {', '.join(missing)} (`make bench` installs them with apt-get)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: tests must not skip)")
        pytest.skip(reason)
    results = ROOT / "bench" / "results"
    out = results / f"{NAME}.json"
    out.unlink(missing_ok=True)

    done = subprocess.run(["make", "bench", f"BENCH_ARGS=--quick --name {NAME}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, f"make bench failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    report = json.loads(out.read_text())
    assert report["errors"] == {}
    m = report["measurements"]
    assert set(m) == {"throughput", "queries", "invalidation", "stampede", "push", "browser", "faults", "delivery",
                      "search", "attachments"}
    for measurement in m:
        assert (results / f"{NAME}-{measurement}.png").stat().st_size > 1000
    assert report["machine"]["cores"] and report["data"]["rows"]["conversations"] == 300

    tp = m["throughput"]
    for scenario in (tp["hello"], tp["uncached"], tp["simple"]["hit"], tp["simple"]["304"]):
        assert scenario["rps"] > 0 and scenario["p50_ms"] <= scenario["p99_ms"]
    assert tp["ratios"]["simple"]["hit_over_hello"] > 0
    # The ceiling (a bare WSGI callable sending a hit's bytes) and where a hit spends its time.
    assert tp["bare"]["rps"] > tp["simple"]["hit"]["rps"] > 0 and tp["ratios"]["simple"]["hit_over_bare"] > 0
    profile = tp["hit_profile"]
    if "unavailable" in profile:  # py-spy cannot read this machine's Python build: said, not hidden
        assert "python version" in profile["unavailable"]
    else:
        assert profile["samples"] > 0 and profile["steps_percent"]["fragment served (fragments.serve)"] > 0
    side = tp["redis_vs_simple"]  # Redis hit over in-process hit, in alternating pairs
    assert len(side["pairs"]) == side["rounds"] == 2
    assert all(p["simple"] > 0 and p["redis"] > 0 and p["ratio"] > 0 for p in side["pairs"])

    designs = m["queries"]["designs"]
    assert designs["no_cache"]["read_queries"] >= designs["no_cache"]["reads"] > 0
    assert designs["product"]["read_queries"] < designs["no_cache"]["read_queries"]
    assert designs["product"]["stale_reads"] == designs["product_per_scope"]["stale_reads"] == 0  # every read
    # Where the misses come from: fills by key family, and what one mutation of each kind makes miss.
    assert designs["product"]["fills_by_family"]["conversations:user:N:tab:mine"]["fills"] > 0
    assert "conversations:queue:N:tab:pending" in designs["product"]["fills_by_family"]
    for kind in ("reply", "inbound"):
        assert designs["product"]["probe"][kind]["lists_missed_per_mutation"] >= 1

    assert set(m["invalidation"]["sizes"]) == {"1000", "100000"}
    assert m["stampede"]["designs"]["product"]["threads"]["fetches"] == 1
    assert m["stampede"]["designs"]["product"]["two_processes"]["fetches"] == 1
    for mode in ("embedded", "redis"):
        for r in m["push"][mode].values():
            assert r["delivered"] == r["expected"]
        loaded = m["push"][mode]["20"]["during_fanout"]  # list reads while the event fans out
        assert loaded["list_ok"] == loaded["list_requests"] > 0
        assert loaded["delivered"] == loaded["expected"]
    assert m["browser"]["repeat_visit"]["fragment_requests_max"] == 0
    long_list = m["browser"]["long_list_update"]
    assert long_list["loaded_rows"] >= 200 and long_list["rows_kept"]
    assert m["browser"]["offline"]["reload_to_painted_ms_p50"] > 0
    assert m["browser"]["offline"]["queued_reply_delivered_after_ms"] > 0

    faults = m["faults"]  # Redis frozen, then killed and restarted empty, under load
    assert faults["requests"] > 0 and faults["phases"]["frozen"]["requests"] > 0
    assert faults["status_5xx"] == 0 and faults["failed"] == 0
    assert faults["stale_reads"] == 0 and all(c["reads"] > 0 for c in faults["stale"].values())
    assert faults["breaker"]["opens"] >= 1 and faults["breaker"]["skipped"] > 0

    delivery = m["delivery"]  # replies to the provider: latency, a backlog after an outage, request cost
    for mode, counts in (("embedded", {"1", "4"}), ("scaled", {"1", "4", "4 after the backlog"})):
        assert set(delivery["latency"][mode]) == counts
        for r in delivery["latency"][mode].values():
            assert r["received"] == r["replies"] > 0 and r["lost"] == r["duplicates"] == 0
            assert r["p50_ms"] <= r["p99_ms"]
    assert set(delivery["backlog"]) == {"1", "2", "4"}
    for r in delivery["backlog"].values():
        assert r["received"] == r["replies"] == 300 and r["replies_per_s"] > 0
        assert r["lost"] == 0 and r["duplicates"] == 0 and r["unfinished"] == 0 and r["states"] == {"sent": 300}
    request = delivery["request"]
    for name in ("channel", "outbox_only", "none"):
        assert request[name]["requests"] > 0 and request[name]["p50_ms"] <= request[name]["p99_ms"]
    assert request["none"]["states"] == {"none": request["none"]["requests"]}  # no outbox row without a channel
    assert request["outbox_only"]["states"] == {"queued": request["outbox_only"]["requests"]}

    search = m["search"]  # message search over the seeded messages, cold and cached, on both databases
    assert set(search["databases"]) == {"sqlite", "postgresql"}
    for r in search["databases"].values():
        assert r["messages"] == 3000 and r["requests_per_mode"] > 0
        for mode in ("cold", "cached"):
            assert 0 < r[mode]["p50_ms"] <= r[mode]["p99_ms"]
        assert r["items_found"]["admin@example.com order"] > 0 and r["items_found"]["admin@example.com zebra"] == 0
    assert search["databases"]["sqlite"]["items_found"] == search["databases"]["postgresql"]["items_found"]

    images = m["attachments"]  # a thread of 50 images: painted, then again from the browser's cache
    assert images["first_visit"]["images"] == images["settings"]["images"] == 50
    assert images["first_visit"]["thumbnail_requests"] == 50 and images["first_visit"]["thumbnails"] > 0
    assert images["repeat_visit"]["thumbnail_requests_max"] == 0  # private, immutable: never fetched again

    for leftover in (results / f"{NAME}.json", *results.glob(f"{NAME}-*.png")):
        leftover.unlink()
