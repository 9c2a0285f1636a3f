"""Run the fleet benchmark: ``python -m bench.fleet [--quick] [--sizes 4,10,100] ...``.

Sections (``--sections``): ``raw`` (the pgbench ceiling), ``sizes`` (each fleet
size), ``depth`` (claim cost against the table's contents), ``connections``
(what N worker connections cost the server; on a server of its own, see
`bench.fleet.connections`). Each prints a line
as it goes and its table at the end, then the comparison with issue 19's anchors
and targets; the plots and a JSON of every figure go to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path

import asyncpg

from bench.fleet import connections, raw, report
from bench.fleet.context import Context, load, measure_baseline
from bench.fleet.depth import DepthResult, measure_point
from bench.fleet.packer import REPO, WorkerOptions
from bench.fleet.server import StatementStats
from bench.fleet.sizes import Code, SizeResult, SizeSettings, measure_size
from bench.harness import proc_stat
from tests.cluster.postgres import PostgresServer, find_postgres_bin

DEFAULT_OUT = REPO / "docs" / "fleet"
SECTIONS = ("raw", "sizes", "depth", "connections")


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run (under 2 minutes): 4, 10 and 50 workers, short windows, "
                        "depths up to 100 k")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated: raw, sizes, depth, connections")
    p.add_argument("--sizes", type=_ints, default=[4, 10, 50, 100, 300, 1000],
                   help="fleet sizes N, comma-separated")
    p.add_argument("--procs", type=int, default=4, help="packer processes (at most N)")
    p.add_argument("--settle", type=float, default=None,
                   help="seconds after start-up before the idle window (default: claim TTL "
                        "+ 5 s, so that a maintenance leader has been elected)")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="idle window")
    p.add_argument("--baseline-seconds", type=float, default=20.0,
                   help="window of the server's own idle CPU (no worker connected)")
    p.add_argument("--idle-tasks", type=int, default=200,
                   help="single enqueues of the hand-off phase (at least N)")
    p.add_argument("--spacing-ms", type=float, default=20.0,
                   help="time between the hand-off phase's enqueues")
    p.add_argument("--tasks", type=int, default=100_000, help="smallest saturation backlog")
    p.add_argument("--backlog-per-worker", type=int, default=400,
                   help="saturation backlog per worker, when more than --tasks")
    p.add_argument("--deadline", type=float, default=300.0,
                   help="seconds a saturation phase may take (then its figures cover what "
                        "was done)")
    p.add_argument("--depths", type=_ints, default=[10_000, 1_000_000, 10_000_000],
                   help="ready rows of the depth curve (the largest is the slow one)")
    p.add_argument("--histories", type=_ints, default=[1_000_000, 10_000_000],
                   help="finished rows, each with the smallest depth ready")
    p.add_argument("--delayed", type=_ints, default=[1_000_000],
                   help="delayed rows with nothing ready (an idle window each, and one "
                        "without); empty to skip")
    p.add_argument("--depth-tasks", type=int, default=50_000,
                   help="completions per depth point (at most half its ready rows)")
    p.add_argument("--depth-idle-seconds", type=float, default=10.0)
    p.add_argument("--raw-seconds", type=float, default=15.0)
    p.add_argument("--raw-clients", type=int, default=4)
    p.add_argument("--raw-rows", type=int, default=3_000_000)
    p.add_argument("--connection-sizes", type=_ints, default=[10, 100, 300, 1000],
                   help="idle workers of the connections section, comma-separated")
    p.add_argument("--connects", type=int, default=200,
                   help="connections opened one after the other per establishment figure")
    p.add_argument("--connection-settle", type=float, default=10.0,
                   help="seconds the workers idle after their burst, before the snapshot")
    p.add_argument("--concurrency", type=int, default=100, help="per worker")
    p.add_argument("--batch-size", type=int, default=100, help="per worker")
    p.add_argument("--poll-interval", type=float, default=None,
                   help="seconds (default: each code's own default)")
    p.add_argument("--claim-ttl", type=float, default=30.0)
    p.add_argument("--no-statements", action="store_true",
                   help="do not load pg_stat_statements (no statement figures)")
    p.add_argument("--baseline", metavar="REF",
                   help="also measure each fleet size with the workers of commit REF (before "
                        "this checkout's, on the same server and schema): before/after")
    p.add_argument("--dsn", help="admin DSN of a server on this host (default: a throwaway one)")
    p.add_argument("--pg-bin", type=Path, help="Postgres bin directory (throwaway server, pgbench)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where the PNGs and fleet.json go (default {DEFAULT_OUT.relative_to(REPO)}"
                        ", a temporary folder with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = [4, 10, 50]
        args.settle = 2.0 if args.settle is None else args.settle
        args.idle_seconds, args.baseline_seconds = 5.0, 3.0
        args.idle_tasks, args.tasks, args.backlog_per_worker = 30, 5_000, 100
        args.depths, args.histories, args.delayed = [10_000, 100_000], [100_000], [100_000]
        args.depth_tasks, args.depth_idle_seconds = 5_000, 3.0
        args.raw_seconds, args.raw_rows = 3.0, 600_000
        args.connection_sizes, args.connects, args.connection_settle = [10, 50], 50, 2.0
    if args.settle is None:
        args.settle = args.claim_ttl + 5
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    if args.dsn:
        yield args.dsn
        return
    settings = {} if args.no_statements else {"shared_preload_libraries": "pg_stat_statements",
                                               "pg_stat_statements.track_planning": "on"}
    with PostgresServer(bin_dir=args.pg_bin, max_connections=max([*args.sizes, 4]) + 60,
                        settings=settings) as pg:
        yield pg.dsn


async def postmaster_of(dsn: str) -> tuple[int, str]:
    """The postmaster's pid (the parent of a backend: the server must run on this host)
    and the server's version."""
    conn = await asyncpg.connect(dsn)
    try:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        version = await conn.fetchval("SHOW server_version")
        return int(proc_stat(backend)[1]), str(version)  # while the backend lives
    except FileNotFoundError:
        raise SystemExit("the server must run on this host: its CPU is read from /proc") from None
    finally:
        await conn.close()


def _git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


def _commit() -> str:
    changed = _git("status", "--porcelain", "--", "worker").strip()
    return _git("rev-parse", "--short", "HEAD").strip() + (" (uncommitted changes)" if changed
                                                            else "")


def _codes(baseline: str | None, tmp: Path) -> list[Code]:
    """What each fleet size is measured with: this checkout, after the tree of commit
    `baseline` (extracted under `tmp`) when one is given."""
    if baseline is None:
        return [Code("", REPO)]
    src = tmp / "baseline"
    src.mkdir()
    archive = subprocess.run(["git", "archive", baseline], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return [Code("before", src), Code("after", REPO)]


@contextlib.asynccontextmanager
async def context(args: argparse.Namespace, admin_dsn: str, workdir: Path
                  ) -> AsyncIterator[tuple[Context, str]]:
    postmaster, version = await postmaster_of(admin_dsn)
    stats = None if args.no_statements else await StatementStats.open(admin_dsn)
    options = WorkerOptions(args.concurrency, args.batch_size, args.poll_interval, args.claim_ttl)
    try:
        yield Context(admin_dsn, postmaster, stats, workdir, options, args.procs), version
    finally:
        if stats is not None:
            await stats.close()


def _out(args: argparse.Namespace) -> Path:
    return args.out or (Path(tempfile.mkdtemp(prefix="shoal-fleet-")) if args.quick
                        else DEFAULT_OUT)


async def run(args: argparse.Namespace) -> int:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    poll = "default" if args.poll_interval is None else f"{args.poll_interval:g}s"
    out = _out(args)
    sizes: list[SizeResult] = []
    depth: list[DepthResult] = []
    ceiling: raw.Ceiling | None = None
    with server(args) as admin_dsn, tempfile.TemporaryDirectory(prefix="shoal-fleet-") as tmp:
        async with context(args, admin_dsn, Path(tmp)) as (ctx, version):
            before = (f" vs {_git('rev-parse', '--short', args.baseline).strip()} (before)"
                      if args.baseline else "")
            caption = (f"{now}, commit {_commit()}{before}, Postgres {version}, "
                       f"{os.cpu_count()} cores, poll {poll}, TTL {args.claim_ttl:g}s")
            print(f"fleet benchmark: {caption}; load {load()}"
                  + ("" if ctx.stats else "; no pg_stat_statements"), flush=True)
            ctx.idle_baseline = await measure_baseline(ctx, args.baseline_seconds)
            print(f"server's own idle CPU: {1000 * ctx.idle_baseline:.2f} ms/s", flush=True)
            if "raw" in args.sections:
                ceiling = await _ceiling(args, ctx)
            if "sizes" in args.sections:
                settings = SizeSettings(args.settle, args.idle_seconds, args.idle_tasks,
                                        args.spacing_ms / 1000, args.tasks,
                                        args.backlog_per_worker, args.deadline)
                codes = _codes(args.baseline, Path(tmp))
                for size in args.sizes:
                    for code in codes:
                        print(f"{size} workers{' (' + code.label + ')' if code.label else ''}:",
                              flush=True)
                        sizes.append(await measure_size(ctx, size, settings, code))
            if "depth" in args.sections:
                for ready, history, delayed in _points(args):
                    print(f"depth: {ready:,} ready, {history:,} finished, {delayed:,} delayed",
                          flush=True)
                    point = await measure_point(
                        ctx, ready=ready, history=history, delayed=delayed,
                        tasks=args.depth_tasks, idle_seconds=args.depth_idle_seconds)
                    print(f"  filled in {point.fill_s:.0f}s ({point.table_mb:,.0f} MB); claim "
                          f"{report._f(point.claim_exec_us, 0)} us per call", flush=True)
                    depth.append(point)
    print()
    print(f"Fleet benchmark, {caption}")
    print(f"command: python -m bench.fleet {' '.join(_argv(args))}")
    print("* packed: more workers than processes (--procs); worker CPU of packed sizes is "
          "not comparable with one worker per process\n")
    if ceiling is not None:
        print(report.ceiling_table(ceiling))
    if sizes:
        print(report.idle_table(sizes, 1000 * ctx.idle_baseline))
        print(report.handoff_table(sizes))
        print(report.saturation_table(sizes))
        print(report.statements_table(sizes[-1]))
    if depth:
        print(report.depth_table(depth))
    after = [r for r in sizes if r.code != "before"]
    before = [r for r in sizes if r.code == "before"]
    print(report.verdict_table(report.verdicts(after, depth, ceiling),
                               report.verdicts(before, [], ceiling) if before else None))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps({
        "caption": caption, "argv": _argv(args), "baseline_ms_s": 1000 * ctx.idle_baseline,
        "ceiling": asdict(ceiling) if ceiling else None,
        "sizes": [r.as_dict() for r in sizes], "depth": [p.as_dict() for p in depth]},
        indent=1))
    for path in report.plot(sizes, depth, ceiling, out, caption):
        print(f"wrote {path}")
    print(f"wrote {out / 'fleet.json'}")
    return 0


def _points(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    points = [(d, 0, 0) for d in args.depths]
    smallest = min(args.depths) if args.depths else 10_000
    points += [(smallest, h, 0) for h in args.histories]
    if args.delayed:
        points += [(0, 0, 0)] + [(0, 0, d) for d in args.delayed]
    return points


async def _ceiling(args: argparse.Namespace, ctx: Context) -> raw.Ceiling | None:
    pgbench = raw.pgbench_path(args.pg_bin or find_postgres_bin())
    if pgbench is None:
        print("raw ceiling: no pgbench next to the server's binaries (postgresql-contrib)")
        return None
    ceiling = await raw.measure(pgbench, ctx.admin_dsn, ctx.postmaster,
                                clients=args.raw_clients, seconds=args.raw_seconds,
                                rows=args.raw_rows)
    print(f"raw ceiling: {ceiling.per_s:,.0f} tasks/s ({ceiling.clients} pgbench clients, "
          f"{ceiling.server_us:.1f} us server CPU per task)", flush=True)
    return ceiling


def _argv(args: argparse.Namespace) -> list[str]:
    """The options that reproduce this run."""
    if args.quick:
        return ["--quick"]
    baseline = ["--baseline", args.baseline] if args.baseline else []
    sections = ([] if list(args.sections) == list(SECTIONS)
                else ["--sections", ",".join(args.sections)])
    depth = (["--depths", ",".join(map(str, args.depths)),
              "--histories", ",".join(map(str, args.histories)),
              "--delayed", ",".join(map(str, args.delayed))]
             if "depth" in args.sections else [])
    return [*baseline, *sections, "--sizes", ",".join(map(str, args.sizes)),
            "--procs", str(args.procs), "--idle-seconds", f"{args.idle_seconds:g}",
            "--settle", f"{args.settle:g}", *depth]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "connections" in args.sections:
        asyncio.run(connections.run(args, _out(args)))
    if set(args.sections) - {"connections"}:
        return asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
