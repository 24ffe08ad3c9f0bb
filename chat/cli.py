"""Command-line tools: `flask --app app seed`, `agent token`, `inbound-token`, `cache stats|clear`, `worker`."""
from __future__ import annotations

import signal
import sys
import threading

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from . import catalog, metrics, seed as demo, worker
from .cache import smart_cache
from .errors import DomainError
from .extensions import db
from .models import AGENT, ROLES, Conversation
from .observability import backend_info

agent_cli = AppGroup("agent", help="Manage agents.")
cache_cli = AppGroup("cache", help="Inspect or clear the smart cache.")


def init_app(app: Flask) -> None:
    app.cli.add_command(seed_command)
    app.cli.add_command(agent_cli)
    app.cli.add_command(inbound_token_command)
    app.cli.add_command(cache_cli)
    app.cli.add_command(worker_command)


# add_command() does not wrap plain click commands: with_appcontext lets them run under any
# runner (app.cli, app.test_cli_runner()), not only under the `flask` FlaskGroup.
@click.command("seed")
@with_appcontext
@click.option("--agents", default=6, show_default=True, help="Agents in all (the 3 demo logins included).")
@click.option("--contacts", type=int, default=None, help="Contacts (default: one per conversation).")
@click.option("--conversations", default=300, show_default=True)
@click.option("--messages", default=3000, show_default=True)
@click.option("--departments", default=3, show_default=True)
@click.option("--if-empty", is_flag=True, help="Only add conversations when there are none yet.")
def seed_command(agents, contacts, conversations, messages, departments, if_empty):
    """Load demo data; the demo logins are always (idempotently) there afterwards."""
    for name, value in (("agents", agents), ("conversations", conversations), ("messages", messages),
                        ("departments", departments)):
        if value < 0:
            raise click.BadParameter(f"{name} must not be negative")
    if contacts is not None and contacts < 0:
        raise click.BadParameter("contacts must not be negative")
    if if_empty and db.session.scalar(select(func.count()).select_from(Conversation)):
        conversations = messages = 0
        contacts = 0
    total = demo.total_rows(agents, contacts, conversations, messages)
    with click.progressbar(length=total, label="Seeding", show_pos=True, file=sys.stderr) as bar:
        counts = demo.seed(agents=agents, contacts=contacts, conversations=conversations,
                           messages=messages, departments=departments, progress=bar.update)
    click.echo(
        f"Added {counts['contacts']} contacts, {counts['conversations']} conversations, "
        f"{counts['messages']} messages."
    )
    click.echo(f"Logins (password {demo.DEMO_PASSWORD}): "
               + ", ".join(email for email, *_ in demo.DEMO_USERS))


@agent_cli.command("token")
@click.argument("email")
def agent_token(email):
    """Issue a new API token for EMAIL (the old one stops working) and print it."""
    try:
        click.echo(catalog.issue_api_token(email))
    except DomainError as exc:
        raise click.ClickException(exc.message) from None


@agent_cli.command("create")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--role", type=click.Choice(ROLES), default=AGENT, show_default=True)
@click.password_option()
def agent_create(email, name, role, password):
    """Create an agent who can log in."""
    try:
        agent = catalog.save_agent(email=email, name=name, role=role, department_ids=[], password=password)
    except DomainError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"Created {agent.email} ({agent.role}).")


@click.command("inbound-token")
@with_appcontext
def inbound_token_command():
    """Print the bearer token that POST /api/inbound expects."""
    click.echo(current_app.config["INBOUND_TOKEN"])


@click.command("worker")
@with_appcontext
@click.option("--concurrency", type=int, default=None,
              help="Replies sent at once by this process (default DELIVERY_CONCURRENCY).")
def worker_command(concurrency):
    """Deliver replies to their channels until stopped (SIGTERM or Ctrl+C): the scaled deployment
    runs a few of these beside the web processes (DELIVERY_WORKER=off there)."""
    app = current_app._get_current_object()
    if concurrency is not None and concurrency < 1:
        raise click.BadParameter("concurrency must be at least 1")
    if not app.config.get("REDIS_URL"):
        click.echo("Warning: REDIS_URL is not set, so the web server's in-process cache and its browsers never "
                   "hear of this worker's changes (ticks stay stale until a reload). Use REDIS_URL, or the "
                   "worker inside the server (DELIVERY_WORKER=embedded, the default).", err=True)
    catalog.channels_from_environment(app.config)
    db.session.remove()  # end its transaction: this thread only waits now, it must not hold locks on channels
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    count = concurrency or app.config["DELIVERY_CONCURRENCY"]
    click.echo(f"Delivery worker: {count} at once, polling every {app.config['DELIVERY_POLL_SECONDS']} s; "
               "Ctrl+C stops it.")
    worker.run(app, stop, count)
    click.echo("Delivery worker stopped.")


# -- cache ----------------------------------------------------------------------------------------
IN_PROCESS_NOTE = ("Note: with the in-process backend each server process has its own cache, so this CLI "
                   "process sees a new, empty one. The server's numbers are on /admin/cache and /metrics.")


@cache_cli.command("stats")
def cache_stats():
    """Show the backend, its keys (Redis), the TTL classes and this process's counters."""
    backend = backend_info()
    failed = False
    click.echo(f"Backend: {backend['label']}")
    if backend["kind"] == "redis":
        prefix = backend["prefix"]
        try:
            kinds = _count_redis_keys(backend["client"], prefix)
            memory = backend["client"].info("memory")
        except Exception as exc:  # noqa: BLE001 - report any Redis failure, then exit non-zero
            click.echo(f"  Redis is unreachable: {exc}")
            failed = True
        else:
            where = f"under the key prefix '{prefix}'" if prefix else "in the whole database (no key prefix)"
            click.echo(f"  Keys {where}: {sum(kinds.values()):,} ({kinds['entries']:,} entries, "
                       f"{kinds['generations']:,} generation stamps, {kinds['locks']:,} fill locks, "
                       f"{kinds['other']:,} other), counted with SCAN")
            click.echo(f"  Used memory (whole Redis server): {memory.get('used_memory_human', '?')}, "
                       f"maxmemory-policy {memory.get('maxmemory_policy', '?')}")
            click.echo("  Entries hidden by an invalidation or `cache clear` stay until their TTL ends.")
    elif backend["kind"] == "in-process":
        click.echo(f"  Entries in this CLI process: {len(getattr(smart_cache.backend, '_cache', {})):,}")
        click.echo(IN_PROCESS_NOTE)
    click.echo("TTL classes:")
    for name, seconds in current_app.config["CACHE_TTL"].items():
        click.echo(f"  {name:<10} {int(seconds):>7,} s")
    totals = metrics.history.totals
    click.echo("Counters of this process (a CLI process starts at zero):")
    for label, value in (("hits", totals["hits"]), ("misses", totals["misses"]),
                         ("queries saved", metrics.queries_saved()),
                         ("invalidations", totals["invalidations"]), ("SQL queries", totals["queries"])):
        click.echo(f"  {label:<14} {value:>7,}")
    if failed:
        raise click.exceptions.Exit(1)


@cache_cli.command("clear")
def cache_clear():
    """Make every cached entry invisible by moving the cache's epoch (O(1), deletes nothing)."""
    backend = backend_info()
    errors = REGISTRY.get_sample_value("chat_cache_errors_total") or 0
    smart_cache.clear()  # reports a backend failure through the error counter, never raises
    if (REGISTRY.get_sample_value("chat_cache_errors_total") or 0) > errors:
        raise click.ClickException(f"could not reach the cache backend ({backend['label']}): nothing was cleared.")
    if backend["kind"] == "redis":
        click.echo(f"Cleared the cache on {backend['label']} (key prefix '{backend['prefix']}'): moved the epoch, "
                   "so every server process now misses every entry once and fetches it again.")
        click.echo("Old entries are not deleted; they expire with their TTL.")
    elif backend["kind"] == "in-process":
        click.echo("Cleared this CLI process's in-process cache (moved its epoch).")
        click.echo("It does not reach the server: each server process has its own in-process cache. "
                   "Restart the server to clear it.")
    else:
        click.echo(f"Cleared the cache on {backend['label']}: moved the epoch, every entry is now invisible.")


def _count_redis_keys(client, prefix: str) -> dict[str, int]:
    """Keys under `prefix` by kind, with SCAN: fine for an operator's CLI, never for a request."""
    pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
    kinds = {"entries": 0, "generations": 0, "locks": 0, "other": 0}
    names = {b"v:": "entries", b"g:": "generations", b"t:": "generations", b"l:": "locks"}
    start = len(prefix.encode())
    for key in client.scan_iter(match=pattern, count=1000):
        kinds[names.get(key[start:start + 2], "other")] += 1
    return kinds
