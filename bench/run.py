"""`make bench`: every measurement in one run, side by side, on this machine.

    .venv/bin/python -m bench.run [--quick] [--name NAME] [--only throughput,queries,...]

Seeds a SQLite database, starts a private redis-server on a free loopback port, runs each
measurement (each starts and stops its own gunicorn processes, clients and browsers), then
writes bench/results/<name>.json, one PNG chart per measurement and prints a summary table.
Everything it starts is stopped on the way out, failure or not. Exit status 1 if any
measurement failed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

from .common import FULL, QUICK, IN_CI, PrivateRedis, Sizes, Unavailable, machine, row_counts, seed_database  # noqa: E402

MEASUREMENTS = ("throughput", "queries", "invalidation", "stampede", "push", "browser", "faults", "delivery", "search",
                "attachments")
RESULTS = Path(__file__).resolve().parent / "results"
PROMISES = {
    "first_load_ms": 500, "repeat_load_ms": 5, "push_ms": 50,
    "queries": "100 requests a minute become 1-2 database queries: 98% fewer",
}


@dataclass
class Context:
    sizes: Sizes
    workdir: Path
    database: Path
    redis: PrivateRedis

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @contextlib.contextmanager
    def stack_scope(self):
        with contextlib.ExitStack() as stack:
            yield stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-run sizes (what tests/test_bench.py runs)")
    parser.add_argument("--name", help="results name (default: full or quick)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, databases)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    name = args.name or sizes.name
    wanted = [m.strip() for m in args.only.split(",")] if args.only else list(MEASUREMENTS)
    unknown = set(wanted) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")

    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="inbox-bench-"))
    report: dict = {"name": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "sizes": sizes.as_dict(), "machine": machine(), "promises": PROMISES,
                    "measurements": {}, "errors": {}, "charts": {}}
    failed = False
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            print(f"bench {name}: seeding {sizes.conversations:,} conversations, {sizes.messages:,} messages, "
                  f"{sizes.agents} agents, {sizes.departments} departments ...", flush=True)
            database, seconds = seed_database(workdir, sizes)
            report["data"] = {"rows": row_counts(database), "seed_seconds": round(seconds, 1)}
            redis = PrivateRedis(workdir)
            stack.callback(redis.stop)
            ctx = Context(sizes, workdir, database, redis)
            for measurement in wanted:
                module = importlib.import_module(f"bench.{measurement}")
                print(f"bench {name}: {measurement} ...", flush=True)
                t = time.perf_counter()
                try:
                    results = module.run(ctx)
                except Unavailable as exc:
                    failed = True
                    report["errors"][measurement] = f"unavailable: {exc}"
                    print(f"  {measurement} UNAVAILABLE: {exc}", file=sys.stderr, flush=True)
                    continue
                except Exception:  # noqa: BLE001 - report it, run the others, exit 1
                    failed = True
                    report["errors"][measurement] = traceback.format_exc()
                    print(f"  {measurement} FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
                    continue
                results["seconds"] = round(time.perf_counter() - t, 1)
                report["measurements"][measurement] = results
                chart_path = RESULTS / f"{name}-{measurement}.png"
                module.chart(results, chart_path)
                report["charts"][measurement] = chart_path.name
                print(f"  done in {results['seconds']} s", flush=True)
    finally:
        report["seconds"] = round(time.perf_counter() - started, 1)
        out = RESULTS / f"{name}.json"
        # Keys starting with "_" feed the charts only (e.g. every request of the faults run).
        for results in report["measurements"].values():
            for key in [k for k in results if k.startswith("_")]:
                del results[key]
        out.write_text(json.dumps(report, indent=2, default=str))
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(report))
    print(f"\nwrote {out} and {len(report['charts'])} charts in {report['seconds']} s")
    if IN_CI and report["errors"]:
        print("CI=true: every measurement must run", file=sys.stderr)
    return 1 if failed else 0


def rows(report: dict) -> list[tuple[str, str, str]]:
    out = []
    for measurement in MEASUREMENTS:
        if measurement in report["measurements"]:
            module = importlib.import_module(f"bench.{measurement}")
            out += module.summary(report["measurements"][measurement])
        elif measurement in report["errors"]:
            out.append((measurement, "FAILED", report["errors"][measurement].strip().splitlines()[-1][:100]))
    return out


def table(report: dict) -> str:
    """The summary as a Markdown table (printed, and pasted into the README)."""
    lines = ["| measurement | what | result |", "| --- | --- | --- |"]
    lines += [f"| {m} | {w} | {r} |" for m, w, r in rows(report)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
