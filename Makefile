# make run: serve the inbox with demo data.  make test: install what tests need, run them all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app app
PORT ?= 5000
# Both databases and both cache backends by default; e.g. CHAT_TEST_DATABASES=sqlite
# CHAT_TEST_CACHES=simple narrows it.
CHAT_TEST_DATABASES ?= sqlite,postgresql
CHAT_TEST_CACHES ?= simple,redis
export CHAT_TEST_DATABASES CHAT_TEST_CACHES

.PHONY: run test deps assets chromium services clean bench wrk nginx cluster

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

static/vendor/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js
	cp node_modules/socket.io-client/dist/socket.io.min.js static/vendor/socket.io.min.js
	cp node_modules/idiomorph/dist/idiomorph-ext.min.js static/vendor/idiomorph-ext.min.js
	touch $@

deps: $(BIN)/.installed static/vendor/.installed

run: deps
	$(FLASK) db upgrade
	$(FLASK) seed --if-empty
	@echo "Inbound webhook token: $$($(FLASK) inbound-token)"
	@echo "Serving the inbox on http://127.0.0.1:$(PORT)"
	$(BIN)/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT) --access-logfile - app:app

# Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Debian's nginx, for make cluster and the tests that run the product behind it (tests/test_cluster.py).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }

# make cluster: nginx with sticky sessions in front of 3 gunicorns sharing PostgreSQL and Redis,
# and 2 delivery workers (`flask --app app worker`; DELIVERY_WORKER=off in the gunicorns), on
# loopback (README, "Serving"); Ctrl+C stops it all. CLUSTER_PORT=8080 by default.
CLUSTER_PORT ?= 8080
cluster: deps nginx services
	$(BIN)/python -m deploy.cluster --port $(CLUSTER_PORT)

# Start the machine's PostgreSQL and Redis when they are not running.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start && sleep 2; }
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /tmp

# make test runs the quick bench too (tests/test_bench.py), so it installs what make bench needs.
# Four pytest-xdist workers on two cores: most tests wait on a browser, a gunicorn or a
# database, so four take about 14 minutes where two took 28 (TEST_WORKERS=0 runs them in this
# one process). The load they make is what found the socket that stopped hearing pushes after
# a reconnect (static/client/live.js, reconnect), so it stays part of the test. loadfile:
# a module's tests stay on one worker, in order, so those sharing a live server (a cluster whose
# process one test kills and the next counts) neither start it twice nor run without the others.
# --durations: the slowest tests, in every run's log (where make test's minutes go).
TEST_WORKERS ?= 4
test: deps chromium wrk nginx services $(VENV)/.bench-installed
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# make bench: every benchmark side by side (see "Performance" in README.md); writes
# bench/results/<name>.json and charts. BENCH_ARGS=--quick is the smoke run the tests use.
BENCH_ARGS ?=

$(VENV)/.bench-installed: pyproject.toml $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# Debian's wrk (the HTTP load generator), redis-server (bench starts a private one) and redis-cli
# (redis-tools: tests/test_redis_cluster.py joins private servers into a cluster with it).
wrk:
	@command -v wrk >/dev/null && command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server redis-tools >/dev/null; }

bench: deps chromium wrk services $(VENV)/.bench-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules static/vendor
