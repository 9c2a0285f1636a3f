"""Run the benchmark: ``python -m bench.run [--systems ...] [--rounds R] [--quick]``.

Every system runs the same workload on the same Postgres server, each cell
in its own fresh database. The cells run in rounds, the systems taking turns
within each worker count, so that a slow spell of the machine falls on every
system alike; each cell reports the median of its rounds. The table ends with
ratios against PgQueuer's best.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import CellConfig, CellResult, System, run_cell
from tests.cluster.postgres import PostgresServer

# name -> (module, factory attribute). Imported lazily: a missing library only
# makes its own system unavailable.
SYSTEMS: dict[str, tuple[str, str]] = {
    "shoal": ("bench.shoal_bench", "ShoalSystem"),
    "pgqueuer": ("bench.competitors.pgqueuer_bench", "PgQueuerSystem"),
    "procrastinate": ("bench.competitors.procrastinate_bench", "ProcrastinateSystem"),
    "sayiir": ("bench.competitors.sayiir_bench", "SayiirSystem"),
}
BASELINE = "pgqueuer"


def load_system(name: str) -> System | str:
    """The adapter for ``name``, or the reason it is not available."""
    module_name, attr = SYSTEMS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"{name}: not available yet ({exc})"
    factory: Callable[[], System] = getattr(module, attr)
    return factory()


def median_cell(rounds: list[CellResult]) -> CellResult:
    """One cell over its rounds: median tasks/s and idle percentiles; runs summed."""
    p50s = [r.idle_p50_ms for r in rounds if r.idle_p50_ms is not None]
    p99s = [r.idle_p99_ms for r in rounds if r.idle_p99_ms is not None]
    rates = [r.tasks_per_s for r in rounds]
    notes = [r.note for r in rounds if r.note]
    if len(rounds) > 1:
        notes.insert(0, f"{len(rounds)} rounds: {min(rates):,.0f}-{max(rates):,.0f}/s")
    return dataclasses.replace(
        rounds[0],
        enqueue_per_s=statistics.median(r.enqueue_per_s for r in rounds),
        tasks_per_s=statistics.median(rates),
        idle_p50_ms=statistics.median(p50s) if p50s else None,
        idle_p99_ms=statistics.median(p99s) if p99s else None,
        duplicates=sum(r.duplicates for r in rounds),
        missing=sum(r.missing for r in rounds),
        note="; ".join(notes))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(results: list[CellResult], notes: list[str]) -> None:
    """Print the results table and the ratios against the baseline's best."""
    header = (
        f"{'system':<14}{'workers':>8}{'tasks':>8}{'enq/s':>10}{'tasks/s':>10}"
        f"{'idle p50 ms':>13}{'idle p99 ms':>13}{'dups':>6}{'missing':>9}  note"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.system:<14}{r.workers:>8}{r.tasks:>8}{_fmt(r.enqueue_per_s, 0):>10}"
            f"{_fmt(r.tasks_per_s, 0):>10}{_fmt(r.idle_p50_ms, 2):>13}"
            f"{_fmt(r.idle_p99_ms, 2):>13}{r.duplicates:>6}{r.missing:>9}  {r.note}"
        )
    for note in notes:
        print(note)
    base = [r for r in results if r.system == BASELINE]
    if not base:
        return
    best_tps = max(r.tasks_per_s for r in base)
    base_p50 = min((r.idle_p50_ms for r in base if r.idle_p50_ms is not None), default=None)
    print(
        f"\nratios vs {BASELINE} best: {_fmt(best_tps, 0)} tasks/s, "
        f"best idle p50 {_fmt(base_p50, 2)} ms"
    )
    for name in dict.fromkeys(r.system for r in results):
        own = [r for r in results if r.system == name]
        tps = max(r.tasks_per_s for r in own)
        p50 = min((r.idle_p50_ms for r in own if r.idle_p50_ms is not None), default=None)
        tps_ratio = tps / best_tps if best_tps else None
        p50_ratio = p50 / base_p50 if p50 is not None and base_p50 else None
        print(
            f"  {name:<14} best throughput x{_fmt(tps_ratio, 2)}"
            f"   best idle p50 x{_fmt(p50_ratio, 2)}"
        )


@contextlib.contextmanager
def _server(dsn: str | None, pg_bin: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
    else:
        with PostgresServer(bin_dir=Path(pg_bin) if pg_bin else None) as server:
            yield server.dsn


async def run(args: argparse.Namespace) -> list[CellResult]:
    """Run every requested system and worker count for ``args.rounds`` rounds; print
    the table of medians."""
    config = CellConfig(
        tasks=args.tasks,
        idle_tasks=args.idle_tasks,
        idle_spacing=args.idle_spacing_ms / 1000,
        deadline=args.deadline,
    )
    notes: list[str] = []
    systems: list[System] = []
    for name in args.systems:
        system = load_system(name)
        if isinstance(system, str):
            notes.append(system)
            print(system, flush=True)
        else:
            systems.append(system)
    rounds: dict[tuple[str, int], list[CellResult]] = {
        (s.name, w): [] for s in systems for w in args.workers}
    with (
        _server(args.dsn, args.pg_bin) as admin_dsn,
        tempfile.TemporaryDirectory(prefix="shoal-bench-") as workdir,
    ):
        for number in range(1, args.rounds + 1):
            for workers in args.workers:
                for system in systems:
                    result = await run_cell(system, admin_dsn, workers, config,
                                            Path(workdir) / f"round-{number}")
                    print(
                        f"round {number} {system.name} w={workers}: "
                        f"{result.tasks_per_s:,.0f} tasks/s, "
                        f"idle p50 {_fmt(result.idle_p50_ms, 2)} ms {result.note}",
                        flush=True,
                    )
                    rounds[system.name, workers].append(result)
    results = [median_cell(cell) for cell in rounds.values()]
    print()
    print_table(results, notes)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` shrinks everything for a CI smoke run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per throughput cell")
    parser.add_argument("--idle-tasks", type=int, default=200)
    parser.add_argument("--idle-spacing-ms", type=float, default=15.0)
    parser.add_argument(
        "--deadline", type=float, default=20.0, help="seconds allowed per phase of a cell"
    )
    parser.add_argument("--dsn", help="admin DSN of an existing server (default: throwaway)")
    parser.add_argument("--pg-bin", help="Postgres bin directory for the throwaway server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of every cell; each cell reports their median")
    parser.add_argument("--quick", action="store_true", help="CI smoke: few tasks, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.idle_tasks, args.deadline, args.rounds = 300, 20, 20.0, 1
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
