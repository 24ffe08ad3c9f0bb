"""2. Database queries on the seed's workload, and stale reads, for every design.

The seed's promise: "100 requests a minute become 1-2 database queries: 98% fewer".

Workload (time compressed, in-process, same random sequence for every design): each agent
reads its lists (Mine and Pending, alternately) `reads_per_agent_minute` times per simulated
minute, while `mutations_per_agent_minute` changes per agent happen: half are the agent's
replies on one of its active conversations, half are contacts writing into a pending
conversation (the webhook's receive_inbound). A pool of threads runs the shuffled events, so
reads and commits overlap as they do in a server. Every SQL statement is counted
(before_cursor_execute), split into statements run by reads and by mutations, and by simulated
minute: the first minute fills cold caches, the later ones are the steady state the promise
is about.

Where the misses come from (the product's design, for the next cut): every fill of a list entry
is counted by key family (the key with its ids replaced by N: `conversations:user:N:tab:mine`)
with the SQL statements it ran; then a probe after the workload, one mutation at a time on warm
caches, reads every agent's lists again and says which entries each mutation kind made miss.

Staleness: every mutation writes a unique marker as the conversation's last message. A read
that *started* after a mutation's commit returned must show that conversation with that
marker (or a newer one), and must show it at all if it belongs in that list (it is then the
newest row). Anything else is a stale read.
"""
from __future__ import annotations

import bisect
import contextlib
import queue
import random
import re
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from .baselines import FlaskCaching, NoCache, Product, ProductPerScope, SeedDesign
from .common import INBOUND_TOKEN, SECRET_KEY, copy_database, save_chart

WORKERS = 8
TABS = ("mine", "pending")
PROBE_MUTATIONS = 10  # of each kind, one at a time


class QueryCounter:
    def __init__(self):
        self.local = threading.local()
        self.lock = threading.Lock()
        self.counts = defaultdict(int)
        self.active = False

    def __call__(self, *_args, **_kwargs):
        self.local.statements = getattr(self.local, "statements", 0) + 1  # this thread's, always
        if self.active:
            with self.lock:
                self.counts[getattr(self.local, "phase", ("other", 0))] += 1

    def statements(self) -> int:
        return getattr(self.local, "statements", 0)


COUNTER = QueryCounter()


def _install_counter():
    if not event.contains(Engine, "before_cursor_execute", COUNTER):
        event.listen(Engine, "before_cursor_execute", COUNTER)


def make_app(database: Path, redis_url: str, prefix: str):
    from chat import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}", "SECRET_KEY": SECRET_KEY,
                       "INBOUND_TOKEN": INBOUND_TOKEN, "REDIS_URL": redis_url, "CACHE_KEY_PREFIX": prefix,
                       "SOCKETIO_MESSAGE_QUEUE": None, "WTF_CSRF_ENABLED": False})


def _world(app):
    """Agents (as Viewers), their active conversations, and the pending ones with their phones."""
    from chat.extensions import db
    from chat.models import ACTIVE, PENDING, Contact, Conversation, User, Viewer

    with app.app_context():
        viewers = [Viewer.of(u) for u in db.session.scalars(select(User).order_by(User.id))]
        active = defaultdict(list)
        for cid, uid in db.session.execute(select(Conversation.id, Conversation.user_id)
                                           .where(Conversation.status == ACTIVE).order_by(Conversation.id)):
            active[uid].append(cid)
        pending = [(cid, dept, phone) for cid, dept, phone in db.session.execute(
            select(Conversation.id, Conversation.department_id, Contact.phone)
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(Conversation.status == PENDING).order_by(Conversation.id))]
    return viewers, dict(active), pending


def plan(viewers, active, pending, sizes, rng: random.Random) -> list[tuple]:
    """The shuffled events of the whole run: ('read', viewer_index, tab) and mutations."""
    events = []
    for minute in range(sizes.workload_minutes):
        batch = []
        for i, viewer in enumerate(viewers):
            batch += [("read", i, TABS[n % 2], minute) for n in range(sizes.reads_per_agent_minute)]
            whole = int(sizes.mutations_per_agent_minute)
            extra = 1 if rng.random() < sizes.mutations_per_agent_minute - whole else 0
            for n in range(whole + extra):
                mine = active.get(viewer.id)
                if (n + minute + i) % 2 == 0 and mine:
                    batch.append(("reply", i, rng.choice(mine), minute))
                elif pending:
                    batch.append(("inbound", i, rng.choice(pending), minute))
        rng.shuffle(batch)
        events += batch
    return events


def family(key: str) -> str:
    """A cache key with its ids (and lists of ids) replaced by N: the entries of one kind."""
    return re.sub(r"\d+(,\d+)*", "N", key)


class Fills:
    """Fills of cache entries (misses) by key family, with the statements each ran itself."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # family -> [fills, statements]
        self.local = threading.local()  # statements of the fills running inside this thread's current one

    def fetch(self, key: str, fetch):
        def counted():
            nested = self.local.__dict__.setdefault("nested", [])
            nested.append(0)
            before = COUNTER.statements()
            try:
                return fetch()
            finally:
                inner, ran = nested.pop(), COUNTER.statements() - before
                if nested:
                    nested[-1] += ran
                with self.lock:
                    entry = self.by_family[family(key)]
                    entry[0] += 1
                    entry[1] += ran - inner  # its own statements, not those of entries it read
        return counted

    @contextlib.contextmanager
    def counting(self, cache):
        """Count every fill of `cache` (a SmartCache) meanwhile, whatever read it."""
        fill = cache._fill
        cache._fill = lambda key, gens, fetch, ttl: fill(key, gens, self.fetch(key, fetch), ttl)
        try:
            yield self
        finally:
            del cache._fill

    def report(self) -> dict:
        return {name: {"fills": fills, "queries": statements, "queries_per_fill": round(statements / fills, 2)}
                for name, (fills, statements) in sorted(self.by_family.items(), key=lambda kv: -kv[1][1])}


def read_list(design, viewer, tab):
    """A list as each design reads it; the product's as its pages and API do (its fragment's
    read: a Pending list is the merge of its queues' cached lists)."""
    from chat import fragments, queries, visibility

    if type(design) is Product:
        return fragments.CONVERSATION_LIST.read(viewer, fragments.list_args(tab))
    key = fragments.conversation_list_key(viewer, tab, None, "")
    tags = visibility.list_scope(viewer, tab).tags
    fetch = lambda: queries.list_conversations(viewer, tab)  # noqa: E731
    if isinstance(design, FlaskCaching):
        return design.read(key, fetch, tags, viewer_id=viewer.id, tab=tab)
    return design.read(key, fetch, tags)


def probe(app, design, viewers, active, pending, rng: random.Random, per_kind: int) -> dict:
    """One mutation at a time on warm caches: which list entries of the agents' Mine and Pending
    does each kind make miss, and what does refilling them cost?"""
    from chat import domain
    from chat.extensions import db

    from chat.cache import smart_cache

    def read_all():
        for viewer in viewers:
            for tab in TABS:
                with app.app_context():
                    read_list(design, viewer, tab)
                    db.session.remove()

    out = {}
    for kind in ("reply", "inbound"):
        fills = Fills()
        for n in range(per_kind):
            read_all()  # warm
            if kind == "reply":
                viewer = rng.choice([v for v in viewers if active.get(v.id)])
                cid = rng.choice(active[viewer.id])
                do = lambda: domain.send_reply(cid, viewer, f"probe {kind} {n}")  # noqa: E731
            else:
                _cid, _dept, phone = rng.choice(pending)
                do = lambda: domain.receive_inbound(phone, f"probe {kind} {n}")  # noqa: E731
            with app.app_context():
                do()
                db.session.remove()
            with fills.counting(smart_cache):
                read_all()
        report = fills.report()
        out[kind] = {"mutations": per_kind,
                     "lists_missed_per_mutation": round(sum(f["fills"] for f in report.values()) / per_kind, 2),
                     "queries_per_mutation": round(sum(f["queries"] for f in report.values()) / per_kind, 2),
                     "by_family": {name: round(f["fills"] / per_kind, 2) for name, f in report.items()}}
    return out


def _smart_cache():
    from chat.cache import smart_cache

    return smart_cache


def _sees_pending(viewer, department_id) -> bool:
    return viewer.is_admin or department_id is None or department_id in viewer.department_ids


def run_design(design_name: str, ctx, viewers, active, pending, events) -> dict:
    from chat import domain
    from chat.extensions import db

    database = copy_database(ctx.database, ctx.workdir / f"queries-{design_name}.db")
    prefix = f"bench-q-{design_name}-{uuid.uuid4().hex[:6]}:"
    app = make_app(database, ctx.redis_url, prefix)
    design = {"no_cache": lambda: NoCache(), "product": lambda: Product(),
              "product_per_scope": lambda: ProductPerScope(),
              "flask_caching": lambda: FlaskCaching(app, ctx.redis_url, prefix + "fc:"),
              "seed_design": lambda: SeedDesign(ctx.redis.client(), prefix + "seed:")}[design_name]()

    reads, mutations = [], []  # (viewer index, tab, started, items) / (returned, cid, marker, targets)
    log_lock = threading.Lock()
    seq = iter(range(1, 10**9))
    seq_lock = threading.Lock()

    def do_read(i, tab):
        started = time.perf_counter()
        page = read_list(design, viewers[i], tab)
        items = [(item["id"], item["last_message"]) for item in page["items"]]
        with log_lock:
            reads.append((i, tab, started, items))

    def do_mutation(kind, i, target):
        with seq_lock:
            marker = f"bench-m{next(seq)}"
        viewer = viewers[i]
        if kind == "reply":
            cid = target
            targets = [(viewer.id, "mine")]
            patterns = [f"conversations:user:{viewer.id}:*"]
            do = lambda: domain.send_reply(cid, viewer, marker)  # noqa: E731
        else:
            cid, department_id, phone = target
            targets = [(v.id, "pending") for v in viewers if _sees_pending(v, department_id)]
            patterns = ["conversations:*"]
            do = lambda: domain.receive_inbound(phone, marker)  # noqa: E731
        design.mutate(do, patterns, targets)
        returned = time.perf_counter()
        with log_lock:
            mutations.append((returned, cid, marker, targets))

    work: queue.Queue = queue.Queue()
    for e in events:
        work.put(e)
    errors: list[BaseException] = []

    def worker():
        while True:
            try:
                kind, i, arg, minute = work.get_nowait()
            except queue.Empty:
                return
            try:
                with app.app_context():
                    COUNTER.local.phase = ("reads" if kind == "read" else "mutations", minute)
                    if kind == "read":
                        do_read(i, arg)
                    else:
                        do_mutation(kind, i, arg)
                    db.session.remove()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                COUNTER.local.phase = ("other", 0)

    _install_counter()
    COUNTER.counts.clear()
    COUNTER.active = True
    fills = Fills()
    started = time.perf_counter()
    with fills.counting(_smart_cache()) if design_name == "product" else contextlib.nullcontext():
        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - started
    COUNTER.active = False
    counts = defaultdict(int)
    for (phase, minute), n in COUNTER.counts.items():
        counts[phase] += n
        if minute >= 1:  # after the first simulated minute: warm caches, the steady state
            counts[phase + "_steady"] += n
    if errors:
        raise RuntimeError(f"{design_name}: {len(errors)} operations failed, first: {errors[0]!r}") from errors[0]

    stale = check_staleness(reads, mutations, viewers)
    n_reads = len(reads)
    analysis = {}
    if design_name == "product":
        analysis = {"fills_by_family": fills.report(),
                    "probe": probe(app, design, viewers, active, pending, random.Random(7), per_kind=PROBE_MUTATIONS)}
    return {**analysis, "label": design.label, "reads": n_reads, "mutations": len(mutations),
            "read_queries": counts.get("reads", 0), "mutation_queries": counts.get("mutations", 0),
            "read_queries_per_100_reads": round(100 * counts.get("reads", 0) / max(n_reads, 1), 2),
            "read_queries_steady": counts.get("reads_steady", 0),
            "stale_reads": stale["stale"], "stale_examples": stale["examples"][:3],
            "seconds": round(elapsed, 2)}


def check_staleness(reads, mutations, viewers) -> dict:
    mutations = sorted(mutations)
    returned = [m[0] for m in mutations]
    id_of = {i: v.id for i, v in enumerate(viewers)}
    stale, examples = 0, []
    for i, tab, started, items in reads:
        committed = mutations[:bisect.bisect_left(returned, started)]
        if not committed:
            continue
        latest_marker = {}
        latest_for_list = None
        for m in committed:  # in commit order: later ones overwrite
            latest_marker[m[1]] = m[2]
            if (id_of[i], tab) in m[3]:
                latest_for_list = m
        shown = dict(items)
        problem = None
        for cid, body in items:
            if cid in latest_marker and not _at_least(body, latest_marker[cid]):
                problem = f"conversation {cid} shows {body!r}, {latest_marker[cid]!r} was committed"
                break
        if problem is None and latest_for_list and latest_for_list[1] not in shown:
            problem = f"conversation {latest_for_list[1]} ({latest_for_list[2]}) missing from {tab} list"
        if problem:
            stale += 1
            examples.append(f"agent {id_of[i]} {tab}: {problem}")
    return {"stale": stale, "examples": examples}


def _at_least(body: str | None, marker: str) -> bool:
    if not body or not body.startswith("bench-m"):
        return False
    return int(body[len("bench-m"):]) >= int(marker[len("bench-m"):])


DESIGNS = ("no_cache", "flask_caching", "seed_design", "product_per_scope", "product")


def run(ctx) -> dict:
    from chat import create_app  # noqa: F401 - imports the app package before threads start

    probe = make_app(ctx.database, ctx.redis_url, "bench-q-probe:")
    viewers, active, pending = _world(probe)
    events = plan(viewers, active, pending, ctx.sizes, random.Random(42))
    results = {"settings": {"agents": len(viewers), "minutes": ctx.sizes.workload_minutes,
                            "reads_per_agent_minute": ctx.sizes.reads_per_agent_minute,
                            "mutations_per_agent_minute": ctx.sizes.mutations_per_agent_minute,
                            "threads": WORKERS, "cache_backend": "private redis-server",
                            "database": "SQLite copy of the seeded database, one per design"},
               "designs": {}}
    for name in DESIGNS:
        results["designs"][name] = run_design(name, ctx, viewers, active, pending, events)
    base = results["designs"]["no_cache"]["read_queries"]
    for name, r in results["designs"].items():
        r["reduction_vs_no_cache"] = round(1 - r["read_queries"] / base, 4) if base else None
        r["queries_per_agent_minute"] = round(
            r["read_queries"] / (len(viewers) * ctx.sizes.workload_minutes), 2)
        steady_minutes = ctx.sizes.workload_minutes - 1
        r["steady_queries_per_agent_minute"] = round(
            r["read_queries_steady"] / (len(viewers) * steady_minutes), 2) if steady_minutes else None
        steady_base = results["designs"]["no_cache"]["read_queries_steady"]
        r["steady_reduction_vs_no_cache"] = round(1 - r["read_queries_steady"] / steady_base, 4) if steady_base else None
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(results["designs"])
    labels = [results["designs"][n]["label"].replace(" (", "\n(") for n in names]
    per_agent = [results["designs"][n]["steady_queries_per_agent_minute"] or results["designs"][n]["queries_per_agent_minute"]
                 for n in names]
    stale = [results["designs"][n]["stale_reads"] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.barh(labels, per_agent, color="#2563eb")
    ax1.axvline(2, color="#dc2626", linestyle="--", label="promise: 1-2 per 100 requests")
    ax1.set_xscale("log")
    ax1.set_xlabel(f"read SQL queries per agent-minute ({results['settings']['reads_per_agent_minute']} reads), warm, log")
    ax1.invert_yaxis()
    ax1.legend(fontsize=8)
    ax2.barh(labels, stale, color="#dc2626")
    ax2.set_xlabel("stale reads (started after a commit returned,\nshowed older data)")
    ax2.invert_yaxis()
    save_chart(fig, "2. DB queries and stale reads on the seed's workload", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = []
    for name, r in results["designs"].items():
        reduction = f"{100 * r['reduction_vs_no_cache']:.1f}% fewer" if r["reduction_vs_no_cache"] is not None else ""
        steady = ""
        if r.get("steady_queries_per_agent_minute") is not None:
            steady = (f"; after minute 1: {r['steady_queries_per_agent_minute']} per agent-minute"
                      f" ({100 * r['steady_reduction_vs_no_cache']:.1f}% fewer)")
        out.append(("queries", r["label"],
                    f"{r['queries_per_agent_minute']} queries per {results['settings']['reads_per_agent_minute']} reads"
                    f" ({reduction}){steady}; {r['stale_reads']} stale of {r['reads']} reads"))
    product = results["designs"].get("product", {})
    for family_name, f in product.get("fills_by_family", {}).items():
        out.append(("queries", f"product fills of {family_name}",
                    f"{f['fills']} fills, {f['queries']} queries ({f['queries_per_fill']} per fill)"))
    for kind, p in product.get("probe", {}).items():
        families = ", ".join(f"{n} {name}" for name, n in p["by_family"].items())
        out.append(("queries", f"product: one {kind}",
                    f"{p['lists_missed_per_mutation']} list entries miss ({families or 'none'}), "
                    f"{p['queries_per_mutation']} queries to refill"))
    return out
