"""8. Delivery: from an agent's committed reply to the provider receiving it, and a backlog drained.

The provider is tests/provider.py's FakeProvider: a real HTTP server on a free loopback port in
this bench process, which records each request it receives with time.monotonic() (Received.at)
and dedupes by Idempotency-Key. Replies are posted as Ana through the HTTP API (POST
/api/conversations/<id>/messages with the bearer token `flask agent token` issues), on
conversations the bench opens through /api/inbound and Ana accepts. The reply's commit happens
before the API answers, so "committed -> received" is timed from the moment the POST returned
to the provider's Received.at: the same clock, the same machine. The generic webhook channel
is configured as a deployment does it (CHANNEL_WEBHOOK_URL / _SECRET; the default channel).

  latency    one reply at a time, spaced a little: p50/p99 committed -> received, with 1 and 4
             workers,
               embedded  SQLite, the worker inside the one gunicorn process (DELIVERY_CONCURRENCY
                         = workers), in-process cache, as `make run` serves it;
               scaled    a throwaway PostgreSQL database (created and dropped here), Redis under
                         a key prefix of this run (deleted at the end), gunicorn with
                         DELIVERY_WORKER=off and `flask worker --concurrency 1` processes (one per
                         worker; they see another process's reply at their next poll,
                         DELIVERY_POLL_SECONDS), measured before each backlog and once more after
                         the last (the workers then found the queue empty at the same moment).
  backlog    scaled, with 1, 2 and 4 worker processes: the provider is stopped (connections
             refused), N replies are posted (4 clients at once) while the workers keep trying
             (DELIVERY_BACKOFF_MAX=1 s; DELIVERY_MAX_ATTEMPTS raised so the outage cannot use
             them up), then the provider comes back: replies per second from its restart to the
             last reply received. Lost (a reply never received) and duplicates (a key accepted
             twice) must both be 0 (the run fails otherwise); a reply left unfinished or not
             `sent` in the database counts as a failure too.
  request    the agent's reply request itself: POST /api/conversations/<id>/messages on three
             embedded SQLite servers started from the same seed, in turn (the order rotated every
             round): a channel configured (the outbox row is written in the request, and the
             server's worker delivers meanwhile), a channel with DELIVERY_WORKER=off (the row
             alone) and no channel (a reply as it cost before channels).

With --quick: 40 replies per latency configuration, a backlog of 300, 100 requests per server;
full: 300, 10,000 and 1,000. Each phase's seconds are in the results (phase_seconds).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .common import (BIN, INBOUND_TOKEN, ROOT, Gunicorn, Unavailable, app_env, copy_database, http, percentile,
                     save_chart, stop_process)

AGENT = "ana@example.com"
WEBHOOK_SECRET = "bench-webhook-secret"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
# The same delivery settings for every server and worker of the run; only a failed send (the
# backlog's outage) makes the backoff and the attempt limit matter.
DELIVERY_ENV = {"DELIVERY_BACKOFF_MAX": 1, "DELIVERY_MAX_ATTEMPTS": 100_000}


@dataclass(frozen=True)
class Plan:
    latency_replies: int  # per configuration
    spacing_s: float  # pause after each reply's POST returned
    latency_workers: tuple[int, ...]
    backlog: int
    backlog_workers: tuple[int, ...]
    backlog_posters: int  # clients posting the backlog at once
    request_pairs: int  # (with channel, without) reply requests
    conversations: int  # Ana's active conversations the replies go to, round robin


PLANS = {
    "quick": Plan(latency_replies=40, spacing_s=0.03, latency_workers=(1, 4), backlog=300,
                  backlog_workers=(1, 2, 4), backlog_posters=4, request_pairs=100, conversations=20),
    "full": Plan(latency_replies=300, spacing_s=0.05, latency_workers=(1, 4), backlog=10_000,
                 backlog_workers=(1, 2, 4), backlog_posters=4, request_pairs=1_000, conversations=100),
}


# -- the app's side: CLI, API, processes ---------------------------------------------------------
def _flask(env: dict, *args: str, timeout: float = 900) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _token(env: dict) -> str:
    return _flask(env, "agent", "token", AGENT, timeout=120).strip().split()[-1]


class Api:
    """Ana's API client on one server: opens conversations (a contact writes, Ana accepts) and
    posts replies, timing each request."""

    def __init__(self, base: str, token: str):
        self.base, self.token = base, token
        self.local = threading.local()

    @property
    def session(self):
        if not hasattr(self.local, "session"):
            self.local.session = http()
        return self.local.session

    def open_conversations(self, count: int) -> list[int]:
        run = uuid.uuid4().int % 10**5
        ids = []
        for n in range(count):
            r = self.session.post(self.base + "/api/inbound", timeout=30,
                                  json={"phone": f"+55117{run:05d}{n:03d}", "name": f"Delivery {n}",
                                        "body": "hello, anyone there?"},
                                  headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
            r.raise_for_status()
            cid = r.json()["data"]["conversation_id"]
            self.session.post(f"{self.base}/api/conversations/{cid}/accept", timeout=30,
                              headers={"Authorization": f"Bearer {self.token}"}).raise_for_status()
            ids.append(cid)
        return ids

    def reply(self, conversation_id: int, body: str) -> tuple[float, float, str, str]:
        """(returned at (monotonic), request ms, idempotency key the provider will see, delivery state)."""
        t0 = time.monotonic()
        r = self.session.post(f"{self.base}/api/conversations/{conversation_id}/messages", json={"body": body},
                              headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        returned = time.monotonic()
        if r.status_code != 201:
            raise RuntimeError(f"reply to {conversation_id} answered {r.status_code}: {r.text[:300]}")
        message = r.json()["data"]
        return returned, 1000 * (returned - t0), str(message["id"]), message["delivery"]["state"]


class Worker:
    """`flask --app app worker --concurrency 1`: one delivery worker process of the scaled deployment."""

    def __init__(self, workdir: Path, env: dict, n: int):
        self.log = workdir / f"delivery-worker-{n}-{uuid.uuid4().hex[:6]}.log"
        self.process = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker", "--concurrency", "1"],
                                        cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "Delivery worker:" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flask worker did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)


class ThrowawayPostgres:
    """A new database on the machine's PostgreSQL server, dropped (connections and all) on stop."""

    def __init__(self) -> None:
        try:
            import psycopg

            self.admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
        except Exception as exc:  # noqa: BLE001 - no driver or no server: the measurement can't run
            raise Unavailable(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}") from None
        self.name = f"bench_delivery_{uuid.uuid4().hex[:10]}"
        self.admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"

    def query(self, sql: str, *params):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def drop(self) -> None:
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


# -- what the provider saw ----------------------------------------------------------------------
def _accepted_at(provider, keys) -> dict[str, list[float]]:
    """Each of `keys`' accepted requests' Received.at, in arrival order."""
    found: dict[str, list[float]] = {}
    for r in provider.accepted():
        if r.key in keys:
            found.setdefault(r.key, []).append(r.at)
    return found


def _wait_for_keys(provider, keys: set[str], timeout: float, stall: float = 30.0) -> dict[str, list[float]]:
    """What the provider received of `keys`: all of them, or what came until `timeout`, or until
    nothing new came for `stall` seconds while replies were still arriving (so a slow drain is
    measured to its end, not cut off and counted as lost). Polled gently: the provider runs in
    this process, and scanning its log too often would take the GIL from it."""
    deadline = time.monotonic() + timeout
    seen, progressed = 0, time.monotonic()
    while True:
        found = _accepted_at(provider, keys)
        now = time.monotonic()
        if len(found) > seen:
            seen, progressed = len(found), now
        if len(found) >= len(keys) or (now > deadline and now - progressed > stall):
            return found
        time.sleep(0.02 if len(keys) <= 500 else 0.2)


def _ms(x):
    return round(x, 2) if x is not None else None


def _stats(values: list[float]) -> dict:
    return {"p50_ms": _ms(percentile(values, 50)), "p99_ms": _ms(percentile(values, 99)),
            "min_ms": _ms(min(values)) if values else None, "max_ms": _ms(max(values)) if values else None}


# -- the measurements -----------------------------------------------------------------------------
def _latency(api: Api, provider, conversations: list[int], plan: Plan, label: str) -> dict:
    returned: dict[str, float] = {}
    posts = []
    for n in range(plan.latency_replies):
        at, ms, key, _state = api.reply(conversations[n % len(conversations)], f"{label} reply {n}")
        returned[key] = at
        posts.append(ms)
        time.sleep(plan.spacing_s)
    found = _wait_for_keys(provider, set(returned), timeout=30)
    latencies = [1000 * (found[k][0] - returned[k]) for k in returned if k in found]
    out = {"replies": len(returned), "received": len(found), "lost": len(returned) - len(found),
           "duplicates": sum(len(v) - 1 for v in found.values()), **_stats(latencies),
           "post_p50_ms": _ms(percentile(posts, 50))}
    print(f"  latency {label}: committed -> received p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms "
          f"(min {out['min_ms']}, max {out['max_ms']}; {out['received']}/{out['replies']} received, "
          f"{out['duplicates']} duplicates)", flush=True)
    return out


def _backlog(api: Api, provider, conversations: list[int], plan: Plan, pg: ThrowawayPostgres, workers: int) -> dict:
    n = plan.backlog
    provider.stop()  # down: connections refused
    keys: list[str] = []
    lock = threading.Lock()

    def post(part: int) -> None:
        mine = []
        for i in range(part, n, plan.backlog_posters):
            _at, _ms_, key, _state = api.reply(conversations[i % len(conversations)], f"backlog {workers}w {i}")
            mine.append(key)
        with lock:
            keys.extend(mine)

    started = time.monotonic()
    with ThreadPoolExecutor(plan.backlog_posters) as pool:
        for f in [pool.submit(post, p) for p in range(plan.backlog_posters)]:
            f.result()
    queued_s = time.monotonic() - started
    tried = pg.query("SELECT count(*), coalesce(sum(attempts), 0) FROM deliveries WHERE NOT done")[0]
    wanted = set(keys)
    restarted = time.monotonic()
    provider.start()
    found = _wait_for_keys(provider, wanted, timeout=max(60.0, n / 20))
    time.sleep(0.5)  # a late second send of a key would show up here
    found = _accepted_at(provider, wanted)
    firsts = sorted(v[0] for v in found.values())
    ids = [int(k) for k in wanted]
    states = dict(pg.query("SELECT delivery_state, count(*) FROM messages WHERE id = ANY(%s) GROUP BY 1", ids))
    unfinished = pg.query("SELECT count(*) FROM deliveries WHERE NOT done AND message_id = ANY(%s)", ids)[0][0]
    drain_s = firsts[-1] - restarted if firsts else None
    out = {"workers": workers, "replies": n, "queued_s": round(queued_s, 2),
           "unfinished_when_provider_back": tried[0], "attempts_during_outage": int(tried[1]),
           "received": len(found), "lost": len(wanted - set(found)) + (n - len(wanted)),
           "duplicates": sum(len(v) - 1 for v in found.values()),
           "first_after_s": round(firsts[0] - restarted, 3) if firsts else None,
           "drain_s": round(drain_s, 3) if drain_s else None,
           "replies_per_s": round(len(found) / drain_s, 1) if drain_s else None,
           "states": states, "unfinished": unfinished}
    print(f"  backlog {n:,} replies, {workers} worker{'s' if workers > 1 else ''} (PostgreSQL): "
          f"{out['replies_per_s']} replies/s (drained in {out['drain_s']} s, first after {out['first_after_s']} s; "
          f"{out['attempts_during_outage']} attempts refused during the {out['queued_s']} s outage); "
          f"lost {out['lost']}, duplicates {out['duplicates']}", flush=True)
    return out


REQUEST_CONVERSATIONS = 5  # each comparison server's own (the channel server's are the latency's)
REQUEST_SERVERS = {"channel": "channel configured", "outbox_only": "channel, DELIVERY_WORKER=off",
                   "none": "no channel"}


def _request_cost(apis: dict[str, Api], conversations: dict[str, list[int]], plan: Plan) -> dict:
    """Reply requests to the servers in turn, the order rotated every round: a channel configured
    (its outbox row written in the request, its worker sending meanwhile in the same process), a
    channel with the worker off (the row alone) and none (a reply as it was before channels)."""
    names = list(apis)
    for n in range(10):  # warm each: connections, caches, the first outbox row
        for name in names:
            apis[name].reply(conversations[name][n % len(conversations[name])], f"warm {n}")
    ms: dict[str, list[float]] = {name: [] for name in names}
    states: dict[str, dict[str, int]] = {name: {} for name in names}
    for n in range(plan.request_pairs):
        shift = n % len(names)
        for name in names[shift:] + names[:shift]:
            convs = conversations[name]
            _at, took, _key, state = apis[name].reply(convs[n % len(convs)], f"request {name} {n}")
            ms[name].append(took)
            states[name][state] = states[name].get(state, 0) + 1
        time.sleep(0.005)
    out = {name: {"requests": len(v), **_stats(v), "states": states[name]} for name, v in ms.items()}
    for name in names:
        if name != "none":
            out[name]["p50_over_none"] = round(out[name]["p50_ms"] / out["none"]["p50_ms"], 3)
            out[name]["p99_over_none"] = round(out[name]["p99_ms"] / out["none"]["p99_ms"], 3)
    print("  reply request (embedded SQLite): " + "; ".join(
        f"{REQUEST_SERVERS[name]}: p50 {out[name]['p50_ms']} ms, p99 {out[name]['p99_ms']} ms" for name in names)
        + f" ({plan.request_pairs} each, in turn)", flush=True)
    return out


def _start_servers(workdir: Path, configs: list[tuple[dict, str]]) -> list[Gunicorn]:
    """Several gunicorns started at once (each takes seconds to import the app)."""
    with ThreadPoolExecutor(len(configs)) as pool:
        futures = [pool.submit(Gunicorn, workdir, env, name) for env, name in configs]
    servers, errors = [], []
    for f in futures:
        try:
            servers.append(f.result())
        except Exception as exc:  # noqa: BLE001 - stop the ones that did start, then fail
            errors.append(exc)
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers


def _workers_label(count) -> str:
    """'1 worker', '4 workers', '4 workers after the backlog' for a results key."""
    text = str(count)
    n = int(text.split()[0])
    return f"{n} worker{'s' if n > 1 else ''}{text[len(str(n)):]}"


def run(ctx) -> dict:
    from tests.provider import FakeProvider

    plan = PLANS["quick" if ctx.sizes.name == "quick" else "full"]
    channel = {"CHANNEL_WEBHOOK_SECRET": WEBHOOK_SECRET, **DELIVERY_ENV}
    results = {"settings": {**asdict(plan), "delivery_env": DELIVERY_ENV,
                            "poll_seconds": float(os.environ.get("DELIVERY_POLL_SECONDS") or 0.5),
                            "agent": AGENT, "channel": "generic webhook (CHANNEL_WEBHOOK_URL), FakeProvider",
                            "embedded": "SQLite, gunicorn gevent (1 process) with its worker, in-process cache",
                            "scaled": "PostgreSQL (throwaway database), Redis (own prefix), gunicorn with "
                                      "DELIVERY_WORKER=off, N x `flask worker --concurrency 1`"},
               "latency": {"embedded": {}, "scaled": {}}, "backlog": {}, "phase_seconds": {}}
    phases = results["phase_seconds"]
    clock = {"t": time.perf_counter()}

    def phase(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - clock["t"], 1)
        clock["t"] = now

    with contextlib.ExitStack() as outer:
        # Set up the scaled run's PostgreSQL database meanwhile (nothing is measured until it is ready).
        pg = ThrowawayPostgres()
        outer.callback(pg.drop)  # last: after every process using it stopped
        prefix = f"bench-d-{uuid.uuid4().hex[:8]}:"
        outer.callback(_delete_redis_keys, ctx, prefix, results)
        scaled_provider = FakeProvider(secret=WEBHOOK_SECRET).start()
        outer.callback(scaled_provider.stop)
        scaled_env = app_env(ctx.workdir / "unused.db", ctx.redis_url, prefix, DATABASE_URL=pg.url,
                             CHANNEL_WEBHOOK_URL=scaled_provider.webhook_url, **channel)
        pool = outer.enter_context(ThreadPoolExecutor(1))
        pg_token = pool.submit(_prepare_postgres, scaled_env, ctx.sizes)
        # Embedded: SQLite copies of the seed, with Ana's token issued before they are copied.
        base = copy_database(ctx.database, ctx.workdir / "delivery-base.db")
        token = _token(app_env(base))
        _embedded(ctx, plan, channel, base, token, results, phase, pg_token)
        _scaled(ctx, plan, scaled_env, scaled_provider, pg, pg_token.result(), results, phase)
    return _check(results)


def _prepare_postgres(env: dict, sizes) -> str:
    """Migrate and seed the throwaway database; Ana's token on it."""
    _flask(env, "db", "upgrade")
    _flask(env, "seed", "--agents", str(sizes.agents), "--conversations", str(sizes.conversations),
           "--messages", str(sizes.messages), "--departments", str(sizes.departments))
    return _token(env)


def _embedded(ctx, plan: Plan, channel: dict, base: Path, token: str, results: dict, phase, ready) -> None:
    """The latency with 1 and 4 loops in the server, then the request comparison. Its two other
    servers start with the first and stay up throughout, so every latency shares the same
    (idle) neighbours."""
    from tests.provider import FakeProvider

    with contextlib.ExitStack() as stack:
        provider = FakeProvider(secret=WEBHOOK_SECRET).start()
        stack.callback(provider.stop)
        outbox_provider = FakeProvider(secret=WEBHOOK_SECRET).start()  # its server never sends: stays empty
        stack.callback(outbox_provider.stop)
        databases = {name: copy_database(base, ctx.workdir / f"delivery-{name}.db")
                     for name in ("embedded", "outbox_only", "none")}
        phase("embedded_setup")
        others = [(app_env(databases["outbox_only"], CHANNEL_WEBHOOK_URL=outbox_provider.webhook_url,
                           DELIVERY_WORKER="off", **channel), "delivery-outbox-only"),
                  (app_env(databases["none"], **DELIVERY_ENV), "delivery-none")]
        conversations, apis = None, {}
        for workers in plan.latency_workers:
            env = app_env(databases["embedded"], CHANNEL_WEBHOOK_URL=provider.webhook_url,
                          DELIVERY_CONCURRENCY=workers, **channel)
            with contextlib.ExitStack() as servers:
                started = _start_servers(ctx.workdir, [(env, f"delivery-embedded-{workers}"), *others])
                for s in started:
                    (servers if s is started[0] else stack).callback(s.stop)
                if others:
                    apis = {"outbox_only": Api(started[1].base, token), "none": Api(started[2].base, token)}
                    others = []
                api = Api(started[0].base, token)
                conversations = conversations or api.open_conversations(plan.conversations)
                ready.result()  # PostgreSQL's setup done: nothing else runs while measuring
                phase(f"embedded_{workers}_start")
                results["latency"]["embedded"][str(workers)] = _latency(
                    api, provider, conversations, plan, f"embedded, {_workers_label(workers)}")
                phase(f"embedded_{workers}_latency")
                if workers == plan.latency_workers[-1]:
                    # "channel": this server, as `make run` serves it (DELIVERY_CONCURRENCY 4 is the default).
                    apis["channel"] = api
                    convs = {"channel": conversations, **{name: apis[name].open_conversations(REQUEST_CONVERSATIONS)
                                                          for name in ("outbox_only", "none")}}
                    results["request"] = _request_cost({name: apis[name] for name in REQUEST_SERVERS},
                                                       {name: convs[name] for name in REQUEST_SERVERS}, plan)
                    results["request"]["server"] = f"embedded SQLite, DELIVERY_CONCURRENCY={workers}"
                    phase("request_cost")


def _scaled(ctx, plan: Plan, env: dict, provider, pg: ThrowawayPostgres, token: str, results: dict, phase) -> None:
    """PostgreSQL, Redis, gunicorn without a worker; worker processes added one step at a time."""
    with contextlib.ExitStack() as stack:
        workers = [Worker(ctx.workdir, env, 0)]  # starts while gunicorn does
        stack.callback(workers[0].stop)
        server = Gunicorn(ctx.workdir, {**env, "DELIVERY_WORKER": "off"}, name="delivery-scaled")
        stack.callback(server.stop)
        api = Api(server.base, token)
        conversations = api.open_conversations(plan.conversations)
        steps = sorted(set(plan.latency_workers) | set(plan.backlog_workers))
        for count in steps:
            new = [Worker(ctx.workdir, env, n) for n in range(len(workers), count)]
            for w in new:
                stack.callback(w.stop)
                workers.append(w)
            for w in workers:
                w.wait_ready()
            phase(f"scaled_{count}_start")
            if count in plan.latency_workers:
                results["latency"]["scaled"][str(count)] = _latency(api, provider, conversations, plan,
                                                                    f"scaled, {_workers_label(count)}")
                phase(f"scaled_{count}_latency")
            if count in plan.backlog_workers:
                results["backlog"][str(count)] = _backlog(api, provider, conversations, plan, pg, count)
                phase(f"scaled_{count}_backlog")
        # The same workers right after a burst: each found the queue empty at the same moment.
        after = f"{steps[-1]} after the backlog"
        results["latency"]["scaled"][after] = _latency(api, provider, conversations, plan,
                                                       f"scaled, {_workers_label(after)}")
        phase("scaled_latency_after_backlog")
        results["scaled_provider_bad_signatures"] = sum(1 for r in provider.requests if r.signature_ok is False)


def _check(results: dict) -> dict:
    print()
    print(_table(results), flush=True)
    problems = []
    for mode, by_workers in results["latency"].items():
        for count, r in by_workers.items():
            if r["lost"] or r["duplicates"]:
                problems.append(f"latency {mode}/{count}: {r['lost']} lost, {r['duplicates']} duplicates")
    for count, r in results["backlog"].items():
        if r["lost"] or r["duplicates"] or r["unfinished"] or set(r["states"]) - {"sent"}:
            problems.append(f"backlog {count} workers: {r['lost']} lost, {r['duplicates']} duplicates, "
                            f"{r['unfinished']} unfinished, states {r['states']}")
    req = results["request"]
    if set(req["channel"]["states"]) - {"queued", "sending", "sent"} or set(req["outbox_only"]["states"]) != {"queued"} \
            or set(req["none"]["states"]) != {"none"}:
        problems.append("the request comparison's servers are not configured as meant: "
                        + str({name: req[name]["states"] for name in REQUEST_SERVERS}))
    if results["scaled_provider_bad_signatures"]:
        problems.append(f"{results['scaled_provider_bad_signatures']} requests with a bad signature")
    if problems:
        raise RuntimeError("delivery: " + "; ".join(problems))
    return results


def _delete_redis_keys(ctx, prefix: str, results: dict) -> None:
    client = ctx.redis.client()
    deleted = 0
    for key in client.scan_iter(match=prefix + "*", count=1000):
        deleted += client.delete(key)
    results.setdefault("settings", {})["redis_keys_deleted"] = deleted


def _table(results: dict) -> str:
    lines = [f"  {'':44}{'p50 ms':>8}{'p99 ms':>8}  other", "  " + "-" * 90]
    for mode, by_workers in results["latency"].items():
        for count, r in by_workers.items():
            lines.append(f"  {'committed -> received, ' + mode + ', ' + _workers_label(count):44}"
                         f"{r['p50_ms']:>8}{r['p99_ms']:>8}  {r['received']}/{r['replies']} received, "
                         f"{r['duplicates']} duplicates")
    for count, r in results["backlog"].items():
        lines.append(f"  {'backlog of ' + format(r['replies'], ',') + ', PostgreSQL, ' + _workers_label(count):44}"
                     f"{'':>8}{'':>8}  {r['replies_per_s']} replies/s, {r['lost']} lost, {r['duplicates']} duplicates")
    req = results["request"]
    for name, what in REQUEST_SERVERS.items():
        ratio = f", p50 x{req[name]['p50_over_none']} of no channel" if "p50_over_none" in req[name] else ""
        lines.append(f"  {'reply request, ' + what:44}{req[name]['p50_ms']:>8}{req[name]['p99_ms']:>8}  "
                     f"{req[name]['requests']} requests{ratio}")
    return "\n".join(lines)


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.5))
    labels, p50, p99 = [], [], []
    for mode, by_workers in results["latency"].items():
        for count, r in by_workers.items():
            labels.append(f"{mode}\n{_workers_label(count).replace(' after', chr(10) + 'after')}")
            p50.append(r["p50_ms"])
            p99.append(r["p99_ms"])
    xs = list(range(len(labels)))
    left.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    left.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    left.set_xticks(xs, labels, fontsize=7)
    left.set_ylabel("reply POST returned -> provider received (ms)")
    left.set_title(f"committed -> received (poll {results['settings']['poll_seconds']} s)", fontsize=10)
    left.legend(fontsize=8)
    backlog = results["backlog"]
    middle.bar(list(backlog), [r["replies_per_s"] or 0 for r in backlog.values()], color="#16a34a")
    n = next(iter(backlog.values()))["replies"] if backlog else 0
    middle.set_xlabel("worker processes (PostgreSQL)")
    middle.set_ylabel("replies/s once the provider is back")
    middle.set_title(f"backlog of {n:,}: " + ", ".join(
        f"{r['lost']} lost/{r['duplicates']} dup" for r in backlog.values()), fontsize=9)
    req = results["request"]
    names = list(REQUEST_SERVERS)
    xs = list(range(len(names)))
    right.bar([x - 0.2 for x in xs], [req[name]["p50_ms"] for name in names], 0.4, label="p50")
    right.bar([x + 0.2 for x in xs], [req[name]["p99_ms"] for name in names], 0.4, label="p99")
    right.set_xticks(xs, [REQUEST_SERVERS[name].replace(", ", ",\n") for name in names], fontsize=8)
    right.set_ylabel("POST /api/conversations/<id>/messages (ms)")
    right.set_title(f"reply request, {req['server']}", fontsize=9)
    right.legend(fontsize=8)
    for ax in (left, middle, right):
        ax.grid(True, axis="y", alpha=0.3)
    save_chart(fig, "8. Delivery: reply committed -> provider, backlog drain, request cost", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = []
    for mode, by_workers in results["latency"].items():
        for count, r in by_workers.items():
            out.append(("delivery", f"{mode}, {_workers_label(count)}: committed -> received",
                        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['received']}/{r['replies']} received)"))
    for count, r in results["backlog"].items():
        out.append(("delivery", f"backlog of {r['replies']:,}, {_workers_label(count)} (PostgreSQL)",
                    f"{r['replies_per_s']} replies/s, drained in {r['drain_s']} s; {r['lost']} lost, "
                    f"{r['duplicates']} duplicates"))
    req = results["request"]
    out.append(("delivery", f"reply request ({req['server']})", ", ".join(
        f"{REQUEST_SERVERS[name]}: p50 {req[name]['p50_ms']} ms, p99 {req[name]['p99_ms']} ms"
        for name in REQUEST_SERVERS)))
    return out
