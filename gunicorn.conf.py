"""gunicorn settings for the inbox (`gunicorn -c gunicorn.conf.py`; command-line options win).

gevent's worker is the production mode Flask-SocketIO documents (`gunicorn -k gevent -w 1`):
gunicorn monkey-patches the standard library before the app loads, chat.push then picks
Socket.IO's gevent mode, and each connected browser is a few greenlets (its websocket through
simple-websocket, on the socket gunicorn hands over) instead of a thread, so one process holds
thousands. Socket.IO needs every request of a client to reach the same process, so one worker
per gunicorn; run several gunicorns behind a sticky load balancer to use more processes
(README, "Serving"). `--worker-class gthread` still works (a thread per socket, `threads`).
"""
import os
import signal
import threading

wsgi_app = "app:app"
worker_class = "gevent"  # no preload_app: the app must load after gevent patched the worker
workers = 1
# gevent: connections served at once, open websockets included (each also needs a file
# descriptor: raise `ulimit -n` above this). gthread: at least `threads`.
worker_connections = 10_000
threads = 300  # only for --worker-class gthread

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
            if push.async_mode() == "gevent":
                # A greenlet, as gunicorn's own handlers spawn: the handler may run inside the
                # hub, where even starting a thread (it waits until the thread runs) may not block.
                import gevent

                gevent.spawn(_close_connections_once_not_accepting, worker, push)
            else:
                threading.Thread(target=_close_connections, args=(worker, push), daemon=True).start()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signum, stop)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn had it: don't disturb active requests
    # The embedded default delivers replies from inside this process (DELIVERY_WORKER=off: the
    # scaled deployment's `flask worker` processes do). Under gevent its loops are greenlets.
    from chat import worker as delivery

    delivery.start_embedded(worker.wsgi)


def child_exit(server, worker) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (metrics summed over processes), drop the exited worker's
    live gauges; its counters stay in the sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def _close_connections_once_not_accepting(worker, push) -> None:
    """gevent: the worker accepts connections until its loop notices the stop (within a second;
    a quick stop exits first). Sockets closed before that would reconnect to this stopping
    process and hold it for graceful_timeout, so close them once its listening sockets are
    closed, then again for any whose handshake was still under way."""
    import gevent

    while any(_listening(listener) for listener in worker.sockets):
        gevent.sleep(0.05)
    while True:
        _close_connections(worker, push)
        gevent.sleep(0.5)


def _listening(listener) -> bool:
    # gevent's server closes the plain socket inside gunicorn's gevent one: its fileno goes -1.
    return not getattr(listener, "closed", False) and listener.fileno() != -1


def _close_connections(worker, push) -> None:
    try:
        push.close_connections()
    except Exception:  # noqa: BLE001 - stopping goes on; the sockets then close with the process
        worker.log.exception("could not close Socket.IO connections")


def post_request(worker, req, environ, resp) -> None:
    """Under gevent, let the other connections run after each request. A greenlet switches only
    when it would block, and a keep-alive client that sends its next request at once never
    makes it block: under 32 such connections a few were served in turn while the rest waited
    for seconds (bench/throughput.py: hello-world p50 1 ms, p99 1.5-1.9 s). Yielding here costs
    nothing measurable and brings p99 to ~100 ms."""
    if worker.__class__.__name__ == "GeventWorker":
        import gevent

        gevent.sleep(0)
