"""1. Throughput and latency over HTTP: gunicorn (gevent, like `make run`) serving the bench app,
wrk in another process with bench/report.lua for p50/p99.

Scenarios, all in one run and side by side:
  hello      GET /bench/hello: the same app's bare route (the ceiling)
  hit        GET /inbox/list?tab=pending, signed in, HX-Request: true, cache warm
  uncached   the same request on a second server with BENCH_UNCACHED=1 (every read hits SQL)
  304        the same request with If-None-Match: <its ETag>
Each product scenario runs on the default in-process cache and, when a Redis URL is given, again
with REDIS_URL (cache in Redis), since that is how several processes are deployed.

  bare       the same bytes as a hit (status, headers, body, captured from the product) from a
             bare WSGI callable on the same gunicorn worker, no Flask: the ceiling a hit can reach
             (issue 18's goal: a hit >= 0.7x of it)

A hit profiled under load: py-spy samples the serving gunicorn (100 Hz) while wrk sends hits,
and each step of the request is the share of samples whose stack holds its function.

Redis hit over in-process hit (issue 12's goal: >= 0.8): both servers up at once, hit runs
alternating between them in pairs, the ratio of each pair, and their median. (Measured one
after the other, minutes apart, the ratio moved between 0.59 and 1.5 with the machine's speed.)
"""
from __future__ import annotations

import base64
import json
import shutil
import statistics
import subprocess
import threading
from collections import Counter
from pathlib import Path

from .common import Gunicorn, ROOT, Unavailable, app_env, browser_headers, log_in, ratio, save_chart

REDIS_HIT_GOAL = 0.8  # a Redis hit serves at least 0.8x the requests/s of an in-process hit
BARE_GOAL = 0.7  # a hit serves at least 0.7x the requests/s of a bare WSGI app sending the same bytes
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
# The steps of a hit, as the functions whose frames hold them (py-spy's "function (file:line)").
STEPS = (
    ("the whole request in Flask (Flask.wsgi_app)", "wsgi_app (flask/app.py"),
    ("session cookie read (open_session)", "open_session ("),
    ("signed-in agent from the session (flask_login user loader)", "_load_user (flask_login/"),
    ("rate limits looked up (Flask-Limiter)", "_check_request_limit (flask_limiter/"),
    ("fragment served (fragments.serve)", "serve (chat/fragments.py"),
    ("cache round trip (SmartCache lookups)", "(chat/cache.py"),
    ("response finished: compression, headers, cookies (after_request)", "process_response (flask/app.py"),
    ("session cookie saved (save_session)", "save_session ("),
    ("request log and metrics (chat/observability.py)", "(chat/observability.py"),
    ("gunicorn/gevent: reading the request, writing the response", "handle_request (gunicorn/"),
)

LIST_PATH = "/inbox/list?tab=pending"
AGENT = "ana@example.com"


def wrk(url: str, headers: dict, seconds: float, connections: int) -> dict:
    exe = shutil.which("wrk")
    if not exe:
        raise Unavailable("wrk not found (apt-get install -y wrk; `make bench` does it)")
    args = [exe, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
            "-s", str(ROOT / "bench" / "report.lua")]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    data = json.loads(line[len("BENCH_JSON "):])
    seconds_run = data["duration_us"] / 1e6
    errors = sum(data["errors"].values())
    if errors:
        raise RuntimeError(f"wrk saw {errors} errors against {url}: {data['errors']}")
    return {"rps": round(data["requests"] / seconds_run, 1), "requests": data["requests"],
            "p50_ms": data["p50_us"] / 1000, "p90_ms": data["p90_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "mean_ms": round(data["mean_us"] / 1000, 3),
            "max_ms": data["max_us"] / 1000}


def _warm(base: str, label: str):
    """A signed-in session whose list is cached: (the session, its hit's headers, the first
    response, its ETag)."""
    session = log_in(base, AGENT)
    headers = {**browser_headers(session), "HX-Request": "true"}
    url = base + LIST_PATH
    first = session.get(url, headers={"HX-Request": "true"}, timeout=30)  # warms the cache
    again = session.get(url, headers={"HX-Request": "true"}, timeout=30)
    if again.status_code != 200 or again.headers.get("X-Cache") != "HIT":
        raise RuntimeError(f"{label}: expected a cache hit, got {again.status_code} X-Cache={again.headers.get('X-Cache')}")
    return session, headers, first, again.headers["ETag"]


def _side_by_side(servers: dict, rounds: int, seconds: float, connections: int) -> dict:
    """Hit runs alternating between the in-process and the Redis server, both up: the ratio of
    each pair is measured within seconds, so the machine's drift cancels out."""
    headers = {label: _warm(server.base, label)[1] for label, server in servers.items()}
    pairs = []
    for _ in range(rounds):
        rps = {label: wrk(server.base + LIST_PATH, headers[label], seconds, connections)["rps"]
               for label, server in servers.items()}
        pairs.append(rps | {"ratio": ratio(rps["redis"], rps["simple"])})
    median = round(statistics.median(p["ratio"] for p in pairs), 3)
    return {"rounds": rounds, "seconds_each": seconds, "connections": connections, "pairs": pairs,
            "ratio_median": median, "goal": REDIS_HIT_GOAL, "met": median >= REDIS_HIT_GOAL}


def _capture(session, url: str) -> dict:
    """A hit as the product sends it to wrk (which asks no compression): status, headers, body."""
    response = session.get(url, headers={"HX-Request": "true", "Accept-Encoding": "identity"}, timeout=30)
    if response.status_code != 200 or response.headers.get("X-Cache") != "HIT":
        raise RuntimeError(f"the list did not answer a hit but {response.status_code} {response.headers}")
    return {"status": f"{response.status_code} {response.reason}",
            "headers": [[k, v] for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP],
            "body": base64.b64encode(response.content).decode()}


CANNOT_READ = "Failed to find python version from target process"  # py-spy, on some Python builds


def _profile(server, url: str, headers: dict, seconds: float, connections: int, workdir: Path) -> dict:
    """py-spy on the serving gunicorn (its worker, through the master) while wrk sends hits: the
    share of samples in each step of STEPS, and the functions of the product seen most."""
    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
    out = workdir / f"hit-profile-{server.port}.txt"
    # At least 3 s: py-spy first finds the worker under the master, and a 1 s smoke run could
    # end before its first sample.
    seconds = max(3, int(seconds))
    spying = subprocess.Popen([spy, "record", "--subprocesses", "--nonblocking", "-r", "100", "-d", str(seconds),
                               "-f", "raw", "-o", str(out), "-p", str(server.process.pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    load = threading.Thread(target=wrk, args=(url, headers, seconds, connections))
    load.start()
    load.join()
    log, _ = spying.communicate(timeout=seconds + 60)
    if CANNOT_READ in log:  # this machine's interpreter is one py-spy cannot read: say so, measured nothing
        return {"samples": 0, "unavailable": log.strip().splitlines()[-1][:300]}
    if spying.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed ({spying.returncode}): {log}")
    stacks = Counter()
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    total = sum(stacks.values())
    if not total:
        raise RuntimeError(f"py-spy took no sample of the serving worker in {seconds} s: {log}")
    steps = {name: round(100 * sum(n for s, n in stacks.items() if marker in s) / total, 1) for name, marker in STEPS}
    own = Counter()
    for stack, n in stacks.items():
        for frame in set(stack.split(";")):
            if "(chat/" in frame:
                own[frame.split(":")[0] + ")"] += n
    return {"samples": total, "steps_percent": steps,
            "product_functions_percent": {f: round(100 * n / total, 1) for f, n in own.most_common(12)}}


def _product_scenarios(base: str, seconds: float, connections: int, label: str) -> dict:
    session, headers, first, etag = _warm(base, label)
    url = base + LIST_PATH
    revalidated = session.get(url, headers={"HX-Request": "true", "If-None-Match": etag}, timeout=30)
    if revalidated.status_code != 304:
        raise RuntimeError(f"{label}: If-None-Match did not answer 304 but {revalidated.status_code}")
    return {
        "hit": wrk(url, headers, seconds, connections) | {"bytes_per_response": len(first.content)},
        "304": wrk(url, headers | {"If-None-Match": etag}, seconds, connections),
        # One connection: the latency of one repeat load on an idle server (the "5 ms" promise).
        "hit_1conn": wrk(url, headers, seconds, 1),
        "304_1conn": wrk(url, headers | {"If-None-Match": etag}, seconds, 1),
    }


def run(ctx) -> dict:
    sizes, workdir = ctx.sizes, ctx.workdir
    seconds, connections = sizes.wrk_seconds, sizes.wrk_connections
    results: dict = {"settings": {"wrk_threads": 1, "connections": connections, "seconds": seconds,
                                  "gunicorn": "gevent, 1 worker", "url": LIST_PATH,
                                  "agent": AGENT, "database": "SQLite (seeded)"}}
    with ctx.stack_scope() as stack:
        server = Gunicorn(workdir, app_env(ctx.database), name="tp-simple")
        stack.callback(server.stop)
        results["hello"] = wrk(server.base + "/bench/hello", {}, seconds, connections)
        results["simple"] = _product_scenarios(server.base, seconds, connections, "simple")
        # Left up, idle, for the side-by-side pairs with the Redis server at the end.

        session, headers, _first, _etag = _warm(server.base, "simple")
        response = workdir / "bare-response.json"
        response.write_text(json.dumps(_capture(session, server.base + LIST_PATH)))
        bare = Gunicorn(workdir, {**app_env(ctx.database), "BENCH_BARE_RESPONSE": str(response)}, name="tp-bare")
        stack.callback(bare.stop)
        # The same request as a hit (its cookie and headers), answered with the same bytes.
        results["bare"] = wrk(bare.base + LIST_PATH, headers, seconds, connections)
        results["bare_1conn"] = wrk(bare.base + LIST_PATH, headers, seconds, 1)
        bare.stop()
        results["hit_profile"] = _profile(server, server.base + LIST_PATH, headers, seconds, connections, workdir)

        uncached = Gunicorn(workdir, app_env(ctx.database, BENCH_UNCACHED=1), name="tp-uncached")
        stack.callback(uncached.stop)
        session = log_in(uncached.base, AGENT)
        for _ in range(2):  # the second request would be a hit on a caching server
            check = session.get(uncached.base + LIST_PATH, headers={"HX-Request": "true"}, timeout=30)
            if check.status_code != 200 or "X-Cache" in check.headers or "ETag" in check.headers:
                raise RuntimeError("the uncached server used its cache")
        headers = {**browser_headers(session), "HX-Request": "true"}
        results["uncached"] = wrk(uncached.base + LIST_PATH, headers, seconds, connections)
        results["uncached_1conn"] = wrk(uncached.base + LIST_PATH, headers, seconds, 1)
        uncached.stop()

        if ctx.redis_url:
            redis_server = Gunicorn(workdir, app_env(ctx.database, ctx.redis_url), name="tp-redis")
            stack.callback(redis_server.stop)
            results["redis"] = _product_scenarios(redis_server.base, seconds, connections, "redis")
            rounds = 5 if sizes.name == "full" else 2
            results["redis_vs_simple"] = _side_by_side({"simple": server, "redis": redis_server}, rounds,
                                                       max(1, int(seconds // 2)), connections)
            redis_server.stop()
        server.stop()

    hello, uncached_rps = results["hello"]["rps"], results["uncached"]["rps"]
    results["ratios"] = {}
    for backend in ("simple", "redis"):
        if backend in results:
            hit, rev = results[backend]["hit"]["rps"], results[backend]["304"]["rps"]
            results["ratios"][backend] = {
                "hit_over_hello": ratio(hit, hello), "hit_over_uncached": ratio(hit, uncached_rps),
                "304_over_hello": ratio(rev, hello), "304_over_hit": ratio(rev, hit),
                "hit_over_bare": ratio(hit, results["bare"]["rps"])}
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    rows = [("bare WSGI, a hit's bytes", results["bare"]), ("hello-world", results["hello"]),
            ("list: uncached", results["uncached"])]
    for backend in ("simple", "redis"):
        if backend in results:
            rows += [(f"list: hit ({backend})", results[backend]["hit"]),
                     (f"list: 304 ({backend})", results[backend]["304"])]
    labels = [r[0] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.barh(labels, [r[1]["rps"] for r in rows], color="#2563eb")
    ax1.set_xlabel("requests/s (higher is better)")
    ax1.invert_yaxis()
    y = range(len(rows))
    ax2.barh([i - 0.2 for i in y], [r[1]["p50_ms"] for r in rows], height=0.4, label="p50")
    ax2.barh([i + 0.2 for i in y], [r[1]["p99_ms"] for r in rows], height=0.4, label="p99")
    ax2.set_yticks(list(y), labels)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.axvline(5, color="#dc2626", linestyle="--", label="promise: 5 ms repeat load")
    ax2.set_xlabel("latency ms (log)")
    ax2.legend(fontsize=8)
    save_chart(fig, "1. Throughput & latency over HTTP (gunicorn gevent, wrk)", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = [("throughput", "hello-world", f"{results['hello']['rps']:.0f} req/s, p50 {results['hello']['p50_ms']:.2f} ms, p99 {results['hello']['p99_ms']:.2f} ms"),
           ("throughput", "list uncached", f"{results['uncached']['rps']:.0f} req/s, p50 {results['uncached']['p50_ms']:.2f} ms, p99 {results['uncached']['p99_ms']:.2f} ms")]
    bare, b1 = results["bare"], results["bare_1conn"]
    out.append(("throughput", "bare WSGI app, a hit's bytes (the ceiling)",
                f"{bare['rps']:.0f} req/s, p50 {bare['p50_ms']:.2f} ms, p99 {bare['p99_ms']:.2f} ms; "
                f"1 connection p50 {b1['p50_ms']:.2f} ms"))
    u1 = results["uncached_1conn"]
    out.append(("throughput", "list uncached, 1 connection", f"p50 {u1['p50_ms']:.2f} ms, p99 {u1['p99_ms']:.2f} ms"))
    for backend in ("simple", "redis"):
        if backend in results:
            for scenario in ("hit", "304"):
                r = results[backend][scenario]
                out.append(("throughput", f"list {scenario} ({backend})",
                            f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"))
            for scenario in ("hit_1conn", "304_1conn"):
                r = results[backend][scenario]
                out.append(("throughput", f"list {scenario.replace('_1conn', '')} ({backend}), 1 connection",
                            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms"))
            q = results["ratios"][backend]
            out.append(("throughput", f"ratios ({backend})",
                        f"hit/bare {q['hit_over_bare']:.2f} (goal >= {BARE_GOAL}), hit/hello {q['hit_over_hello']:.2f}, "
                        f"hit/uncached {q['hit_over_uncached']:.1f}x (goal >= 10x), 304/hello {q['304_over_hello']:.2f}"))
    profile = results.get("hit_profile")
    if profile and "unavailable" in profile:
        out.append(("throughput", "a hit profiled", f"not on this machine: {profile['unavailable']}"))
    elif profile:
        steps = ", ".join(f"{name} {pct}%" for name, pct in profile["steps_percent"].items())
        out.append(("throughput", f"a hit profiled ({profile['samples']} samples, in-process cache)", steps))
    side = results.get("redis_vs_simple")
    if side:
        pairs = ", ".join(f"{p['ratio']:.2f}" for p in side["pairs"])
        out.append(("throughput", f"goal: Redis hit >= {side['goal']} x in-process hit",
                    f"{'met' if side['met'] else 'NOT met'}: median {side['ratio_median']:.2f} of {side['rounds']} "
                    f"alternating pairs ({pairs}), {side['seconds_each']:.0f} s each"))
    return out
