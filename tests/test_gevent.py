"""The app under gevent, as gunicorn's gevent worker (gunicorn.conf.py) runs it: the standard
library monkey-patched before the app loads, so threads, locks and thread-locals are greenlets'.
Each check runs in a fresh interpreter (patching the test process would change every other test):

  Socket.IO picks gevent mode when patched ......... test_socketio_mode_follows_the_patching
  per-request state is per greenlet ................ test_request_state_is_per_greenlet
  a frozen Redis stalls no other greenlet; one
  greenlet at a time probes it ..................... test_breaker_under_gevent
"""
from __future__ import annotations

import json
import subprocess
import sys

from chat import push
from tests.live import ROOT
from tests.test_faults import private_redis  # noqa: F401 - the fixture: a redis-server of our own

PATCHED = "from gevent import monkey; monkey.patch_all()\n"


def run_patched(script: str) -> dict:
    """Run `script` in a new interpreter patched by gevent; it prints one JSON line last."""
    done = subprocess.run([sys.executable, "-c", PATCHED + script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_socketio_mode_follows_the_patching():
    assert push.async_mode() == "threading"  # this process: the test client, werkzeug, gthread
    result = run_patched("""
import json
from chat import create_app, push
app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://", "SECRET_KEY": "x",
                  "INBOUND_TOKEN": "x"})
print(json.dumps({"mode": push.async_mode(), "server": push.socketio.server.eio.async_mode}))
""")
    assert result == {"mode": "gevent", "server": "gevent"}


def test_request_state_is_per_greenlet():
    """What the cache and metrics keep per thread (invalidations made, reads of this request)
    is kept per greenlet: one request's invalidation never discards another's lookup."""
    result = run_patched("""
import json
import gevent
from flask import Flask
from chat import metrics
from chat.cache import SmartCache

app = Flask(__name__)
cache = SmartCache()
cache.init_app(app)
seen = {}

def request(name, invalidations, reads):
    with app.app_context():
        metrics.start_request()
        for n in range(invalidations):
            cache.invalidate(f"conversation:{n}*")
            gevent.sleep(0.01)  # the other greenlet runs meanwhile
        for n in range(reads):
            cache.get_or_fetch(f"contact:{n}", lambda: n)
            gevent.sleep(0.01)
        seen[name] = [cache.invalidations_in_this_thread(), metrics.request_cache_state()]

gevent.joinall([gevent.spawn(request, "writer", 3, 0), gevent.spawn(request, "reader", 0, 2)])
print(json.dumps(seen))
""")
    assert result == {"writer": [3, None], "reader": [0, "MISS"]}


def test_breaker_under_gevent(private_redis):  # noqa: F811
    """A read waiting on a frozen Redis yields: other greenlets keep running. Once the breaker
    is open, reads skip Redis; when it is time to probe, one greenlet probes and the others
    still skip (the probe is one greenlet, not the whole thread)."""
    result = run_patched(f"""
import json, os, signal, time
import gevent
from flask import Flask
from chat.cache import SmartCache

app = Flask(__name__)
app.config.update(REDIS_URL={private_redis.url!r})
cache = SmartCache()
cache.init_app(app)
ticks = []

def ticker():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.02)

def read(n):
    with app.app_context():
        return cache.get_or_fetch("conversation:1", lambda: f"db {{n}}")

with app.app_context():
    assert cache.get_or_fetch("conversation:1", lambda: "v1") == "v1"
breaker = cache.breaker
os.kill({private_redis.proc.pid}, signal.SIGSTOP)
beat = gevent.spawn(ticker)
started = time.monotonic()
first = read(0)  # waits for the timeout, and opens the breaker
ticks_while_waiting = sum(1 for t in ticks if t > started)
opens, skipped = breaker.opens, breaker.skipped
later = [read(n) for n in range(1, 11)]
skipped_while_open = breaker.skipped - skipped
time.sleep(breaker.retry_in() + 0.02)  # now one probe may go
skipped = breaker.skipped
probing = [gevent.spawn(read, n) for n in range(20)]
gevent.joinall(probing)
beat.kill()
print(json.dumps({{"first": first, "later": later, "ticks_while_waiting": ticks_while_waiting,
                  "opened": breaker.opens - opens + 1, "skipped_while_open": skipped_while_open,
                  "probe_values": [g.value for g in probing], "skipped_while_probing": breaker.skipped - skipped}}))
""")
    assert result["first"] == "db 0" and result["later"] == [f"db {n}" for n in range(1, 11)]
    assert result["ticks_while_waiting"] >= 2  # the hub ran other greenlets during the wait
    assert result["opened"] >= 1 and result["skipped_while_open"] == 10
    assert result["probe_values"] == [f"db {n}" for n in range(20)]  # served from the database
    assert result["skipped_while_probing"] >= 19  # one greenlet probed; the others did not wait
