"""gunicorn settings for the inbox (`gunicorn -c gunicorn.conf.py`; command-line options win).

Threaded workers are the mode Flask-SocketIO supports here: each connected browser keeps one
thread busy with its Socket.IO connection. Socket.IO needs every request of a client to reach
the same process, so one worker per gunicorn; run several gunicorns behind a sticky load
balancer to use more processes (README, "Serving").
"""
import os
import signal
import threading

wsgi_app = "app:app"
worker_class = "gthread"
workers = 1
threads = 300
worker_connections = 300  # at least `threads`: every open websocket holds a connection too

# A stopping worker closes its sockets at once (see post_worker_init).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def post_worker_init(worker) -> None:
    """Close every Socket.IO connection as soon as the worker is told to stop.

    A graceful stop (SIGTERM) waits up to graceful_timeout for open requests, and an open
    websocket or long poll is one: browsers would believe the server is up for 30 s. Closed at
    the Engine.IO level, they reconnect at once (and find the server gone, or a new one).
    gunicorn has no hook for SIGTERM, so wrap the worker's own signal handlers.
    """
    from chat import push

    for signum in STOP_SIGNALS:
        previous = signal.getsignal(signum)

        def stop(signum, frame, previous=previous):
            # Off the signal handler: closing runs app code (disconnect handlers, Redis).
            threading.Thread(target=_close_connections, args=(worker, push), daemon=True).start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signum, stop)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn had it: don't disturb active requests


def child_exit(server, worker) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (metrics summed over processes), drop the exited worker's
    live gauges; its counters stay in the sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _close_connections(worker, push) -> None:
    try:
        push.close_connections()
    except Exception:  # noqa: BLE001 - stopping goes on; the sockets then close with the process
        worker.log.exception("could not close Socket.IO connections")
