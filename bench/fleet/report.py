"""The tables, the comparison with the issue's anchors and targets, and the plots."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fleet.depth import DepthResult
from bench.fleet.raw import Ceiling
from bench.fleet.sizes import SizeResult

# Issue 19's figures (measured before this benchmark existed, by other means) and targets.
ANCHOR_IDLE_MS_S = 0.42  # server CPU per idle worker, 50 `shoal worker` processes
ANCHOR_IDLE_SIZE = 50
ANCHOR_SERVER_US = 27.4  # bench.cpu_split --tasks 50000, 4 workers
ANCHOR_WORKER_US = 26.2
ANCHOR_TASKS_S = 31_200
ANCHOR_CEILING = 92_800  # pgbench claim-and-delete, 100-row batches
TARGET_IDLE_MS_S = 0.05
TARGET_SERVER_US = 15.0
TARGET_WORKER_US = 20.0
TARGET_FLAT = 0.10  # throughput within 10% from 10 to 1,000 workers
SATURATION_ANCHOR_SIZE = 4


def _f(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], title: str) -> str:
    """A plain-text table, right-aligned but for the first column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                              for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("-" * len(lines[-1]))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines) + "\n"


def size_label(r: SizeResult) -> str:
    return f"{r.size}" + ("*" if r.packed else "") + (f" {r.code}" if r.code else "")


def idle_table(sizes: Sequence[SizeResult], baseline_ms_s: float) -> str:
    rows = [[size_label(r), f"{r.procs}", _f(r.idle.server_ms_s, 3),
             _f(r.idle.server_gross_ms_s, 3), _f(100 * r.idle.server_system, 0, "%"),
             _f(r.idle.statements_s, 2), _f(r.idle.client_ms_s, 3),
             _f(100 * r.idle.busiest_packer, 1, "%"), _f(r.idle.seconds, 0), f"{r.idle.drops}",
             r.load.split()[0]]
            for r in sizes]
    return table(["workers", "procs", "server ms/s", "(gross)", "kernel", "stmts/s",
                  "worker ms/s", "busiest proc", "window s", "drops", "load"], rows,
                 f"Idle: CPU per idle worker per second (server net of its own idle "
                 f"{baseline_ms_s:.1f} ms/s; gross in brackets; kernel: its system-time share), "
                 "statements per worker per second, packer CPU per worker and the busiest "
                 "packer's share of a core, connections dropped")


def handoff_table(sizes: Sequence[SizeResult]) -> str:
    rows = []
    for r in sizes:
        h = r.handoff
        rows.append([size_label(r), f"{h.enqueues}", _f(h.p50_ms, 2), _f(h.p99_ms, 2),
                     _f(100 * h.handed_off, 0, "%"), f"{h.workers_used}/{r.size}",
                     f"{h.max_per_worker} ({h.even_share})", _f(h.server_ms, 2),
                     _f(h.enqueue_us, 0), _f(h.notify_ms, 3), f"{h.duplicates}",
                     f"{h.drops}"])
    return table(["workers", "enqueues", "p50 ms", "p99 ms", "handed off", "workers used",
                  "max/worker (even)", "server ms/enq", "enqueue us", "notify ms", "dups",
                  "drops"], rows,
                 "Idle hand-off: single enqueues to parked workers; enqueue -> handler start, "
                 "spread over the workers, server CPU per enqueue (net of idle; all it causes), "
                 "the enqueue statement's mean execution, server CPU of one NOTIFY's fan-out")


def saturation_table(sizes: Sequence[SizeResult]) -> str:
    rows = []
    for r in sizes:
        s = r.saturation
        rows.append([size_label(r), f"{s.backlog:,}", _f(s.tasks_s, 0), _f(s.tasks_s_all, 0),
                     _f(s.server_us, 1), _f(s.client_us, 1), _f(s.claim_p50_ms, 2),
                     _f(s.claim_p99_ms, 2), _f(s.claim_exec_us, 0), _f(s.tasks_per_claim, 1),
                     _f(s.claim_blocks, 0), _f(s.wal_bytes, 0), _f(100 * s.server_system, 0, "%"),
                     _f(100 * s.busiest_packer, 0, "%"), f"{s.drops}", s.note])
    return table(["workers", "backlog", "tasks/s", "(whole)", "server us/task",
                  "worker us/task", "claim p50 ms", "claim p99 ms", "claim exec us",
                  "tasks/claim", "buffers/claim", "WAL B/task", "kernel", "busiest proc", "drops",
                  "note"], rows,
                 "Saturation: no-op tasks, concurrency and batch 100 per worker; tasks/s over "
                 "the middle 80% of completions (whole phase in brackets); CPU per task over "
                 "the whole phase (kernel: the server's system-time share; busiest proc: "
                 "the busiest packer's share of a core); claim round trip as the workers time "
                 "it; drops: connections the workers dropped (a statement past its bound)")


def statements_table(r: SizeResult) -> str:
    """Where the server's execution time goes at one size: idle, hand-off, saturation."""
    out = []
    for what, per, statements in (
            ("idle", "per worker per s", r.idle.statements),
            ("hand-off", "per enqueue", r.handoff.statements),
            ("saturation", "per task", r.saturation.statements)):
        rows = [[s["name"], _f(s["calls"], 4), _f(s["mean_us"], 1), _f(s["plan_us"], 1),
                 _f(100 * s["share"], 1, "%")] for s in statements]
        if rows:
            out.append(table(["statement", per, "exec us", "plan us", "of exec time"], rows,
                             f"Statements at {r.size} workers, {what} (pg_stat_statements; "
                             "execution is wall time, CPU waits included)"))
    return "\n".join(out)


def depth_table(points: Sequence[DepthResult]) -> str:
    rows = [[f"{p.ready:,}", f"{p.history:,}", f"{p.delayed:,}", _f(p.table_mb, 0),
             _f(p.tasks_s, 0), _f(p.server_us, 1), _f(p.server_idle_ms_s, 3),
             _f(p.claim_exec_us, 0), _f(p.claim_row_us, 2), _f(p.claim_blocks, 0),
             _f(_row_blocks(p), 1), _f(p.claim_p99_ms, 2), p.load.split()[0]] for p in points]
    return table(["ready", "finished", "delayed", "table MB", "tasks/s", "server us/task",
                  "idle ms/s", "claim exec us", "us/claimed row", "buffers/claim",
                  "buffers/row", "claim p99 ms", "load"], rows,
                 "Claim cost against the table's contents (4 workers, one per process); "
                 "'idle ms/s': server CPU per idle worker per second when nothing is ready")


def ceiling_table(c: Ceiling) -> str:
    return table(["clients", "seconds", "tasks", "tasks/s", "server us/task", "pgbench us/task"],
                 [[f"{c.clients}", _f(c.seconds, 0), f"{c.tasks:,}", _f(c.per_s, 0),
                   _f(c.server_us, 1), _f(c.client_us, 1)]],
                 "Raw ceiling: pgbench, FOR UPDATE SKIP LOCKED claim-and-delete of 100 rows "
                 f"per transaction, same server ({c.note})")


@dataclass
class Verdict:
    figure: str
    anchor: str
    target: str
    measured: str
    met: bool | None

    def row(self) -> list[str]:
        mark = "-" if self.met is None else ("meets" if self.met else "misses")
        return [self.figure, self.anchor, self.target, self.measured, mark]


def _by_size(sizes: Sequence[SizeResult], size: int) -> SizeResult | None:
    return next((r for r in sizes if r.size == size), None)


def verdicts(sizes: Sequence[SizeResult], depth: Sequence[DepthResult],
             ceiling: Ceiling | None) -> list[Verdict]:
    out: list[Verdict] = []
    if sizes:
        # The largest fleet gives the most precise figure (most CPU over the same window).
        largest = sizes[-1]
        at_anchor = _by_size(sizes, ANCHOR_IDLE_SIZE)
        shown = ", ".join(f"{r.size}: {r.idle.server_ms_s:.3f}" for r in sizes)
        out.append(Verdict("server CPU per idle worker, ms/s (by fleet size)",
                           f"{ANCHOR_IDLE_MS_S} at {ANCHOR_IDLE_SIZE}",
                           f"<= {TARGET_IDLE_MS_S} (verdict at {largest.size})", shown
                           + ("" if at_anchor else f" (no {ANCHOR_IDLE_SIZE}-worker size)"),
                           largest.idle.server_ms_s <= TARGET_IDLE_MS_S))
    four = _by_size(sizes, SATURATION_ANCHOR_SIZE)
    if four:
        s = four.saturation
        out.append(Verdict("server CPU per task at saturation, us (4 workers)",
                           f"{ANCHOR_SERVER_US}", f"<= {TARGET_SERVER_US:g}",
                           _f(s.server_us, 1), s.server_us <= TARGET_SERVER_US))
        out.append(Verdict("worker CPU per no-op task, us (4 workers, unpacked)",
                           f"{ANCHOR_WORKER_US}", f"<= {TARGET_WORKER_US:g}",
                           _f(s.client_us, 1),
                           None if four.packed else s.client_us <= TARGET_WORKER_US))
        if ceiling is not None:
            half = ceiling.per_s / 2
            out.append(Verdict("4 workers' tasks/s against half the raw ceiling",
                               f"{ANCHOR_TASKS_S:,} vs {ANCHOR_CEILING / 2:,.0f}",
                               f">= {half:,.0f} (ceiling {ceiling.per_s:,.0f} this run)",
                               f"{s.tasks_s:,.0f} ({s.tasks_s / ceiling.per_s:.0%} of the "
                               f"ceiling)", s.tasks_s >= half))
    flat = [r for r in sizes if r.size >= 10]
    if len(flat) >= 2:
        rates = [r.saturation.tasks_s for r in flat]
        spread = 1 - min(rates) / max(rates)
        out.append(Verdict(f"tasks/s from {flat[0].size} to {flat[-1].size} workers", "-",
                           f"within {TARGET_FLAT:.0%}",
                           f"{min(rates):,.0f}..{max(rates):,.0f} ({spread:.0%} below the best)",
                           spread <= TARGET_FLAT))
    ready = sorted((p for p in depth if p.history == 0 and p.ready and p.server_us),
                   key=lambda p: p.ready)
    if len(ready) >= 2:
        lo, hi = ready[0], ready[-1]
        assert lo.server_us is not None and hi.server_us is not None
        ratio = hi.server_us / lo.server_us
        out.append(Verdict(f"server CPU per task, {lo.ready:,} -> {hi.ready:,} ready rows",
                           "-", "flat (within 10%)",
                           f"{lo.server_us:.1f} -> {hi.server_us:.1f} us (x{ratio:.2f}); "
                           f"buffers per claimed row {_f(_row_blocks(lo), 1)} -> "
                           f"{_f(_row_blocks(hi), 1)}", ratio <= 1 + TARGET_FLAT))
    return out


def _row_blocks(p: DepthResult) -> float | None:
    if p.claim_blocks is None or not p.claimed_per_call:
        return None
    return p.claim_blocks / p.claimed_per_call


def verdict_table(rows: Sequence[Verdict], before: Sequence[Verdict] | None = None) -> str:
    """The verdicts; with `before` (the baseline code's, same run), its figures beside."""
    if before is None:
        return table(["figure", "issue's anchor", "target", "this run", ""],
                     [v.row() for v in rows], "Against issue 19's anchors and targets")
    then = {v.figure: v.measured for v in before}
    return table(["figure", "issue's anchor", "target", "before", "after", ""],
                 [[*v.row()[:3], then.get(v.figure, "-"), *v.row()[3:]] for v in rows],
                 "Against issue 19's anchors and targets, before and after (same run)")


# --------------------------------------------------------------------------
# Plots


def plot(sizes: Sequence[SizeResult], depth: Sequence[DepthResult], ceiling: Ceiling | None,
         out: Path, caption: str) -> list[Path]:
    """fleet.png (the curves against N) and depth.png (claim cost against the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    if sizes:
        codes = list(dict.fromkeys(r.code for r in sizes))  # "" alone, or before, after
        fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
        panels: list[tuple[str, list[tuple[str, Callable[[SizeResult], Any]]]]] = [
            ("server CPU per idle worker (ms/s)", [("net", lambda r: r.idle.server_ms_s)]),
            ("tasks/s at saturation", [("middle 80%", lambda r: r.saturation.tasks_s),
                                       ("whole phase", lambda r: r.saturation.tasks_s_all)]),
            ("CPU per task at saturation (us)", [("server", lambda r: r.saturation.server_us),
                                                 ("worker", lambda r: r.saturation.client_us)]),
            ("idle enqueue -> start (ms)", [("p50", lambda r: r.handoff.p50_ms),
                                            ("p99", lambda r: r.handoff.p99_ms)]),
            ("hand-off spread (%)", [
                ("handed off", lambda r: 100 * r.handoff.handed_off),
                ("workers that ran one (of min(K, N))",
                 lambda r: 100 * r.handoff.workers_used / min(r.size, r.handoff.enqueues))]),
            ("server CPU per single enqueue (ms)",
             [("all it causes", lambda r: r.handoff.server_ms),
              ("one NOTIFY's fan-out", lambda r: r.handoff.notify_ms)]),
            ("claim round trip at saturation (ms)", [("p50", lambda r: r.saturation.claim_p50_ms),
                                                    ("p99", lambda r: r.saturation.claim_p99_ms)]),
            ("statements per idle worker per s", [("all", lambda r: r.idle.statements_s)]),
        ]
        logarithmic = {"CPU per task at saturation (us)", "idle enqueue -> start (ms)",
                       "server CPU per single enqueue (ms)",
                       "claim round trip at saturation (ms)"}
        n = sorted({r.size for r in sizes})
        for ax, (title, series) in zip(axes.flat, panels, strict=True):
            for color, (label, get) in enumerate(series):
                for code in codes:  # before: dashed, faint; after (or alone): solid
                    runs = [r for r in sizes if r.code == code]
                    values = [get(r) for r in runs]
                    ax.plot([r.size for r in runs], [math.nan if v is None else v
                                                     for v in values],
                            marker="o", color=f"C{color}",
                            linestyle="--" if code == "before" else "-",
                            alpha=0.5 if code == "before" else 1.0,
                            label=f"{label} ({code})" if code else label)
            ax.set_xscale("log")
            if title in logarithmic:
                ax.set_yscale("log")
                title += " (log)"
            ax.set_xticks(n, [str(x) for x in n])
            ax.minorticks_off()
            ax.set_xlabel("workers")
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        idle_ax, rate_ax, cpu_ax = axes.flat[0], axes.flat[1], axes.flat[2]
        idle_ax.axhline(TARGET_IDLE_MS_S, color="green", linestyle="--", label="target")
        idle_ax.plot([ANCHOR_IDLE_SIZE], [ANCHOR_IDLE_MS_S], "x", color="red", markersize=9,
                     label="issue's figure")
        if ceiling is not None:
            rate_ax.axhline(ceiling.per_s / 2, color="green", linestyle="--",
                            label="half the raw ceiling")
        cpu_ax.axhline(TARGET_SERVER_US, color="C0", linestyle="--", label="server target")
        cpu_ax.axhline(TARGET_WORKER_US, color="C1", linestyle=":", label="worker target")
        for ax in axes.flat:
            if ax.get_yscale() == "linear":
                ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
            ax.legend(fontsize=8)
        fig.suptitle(f"Shoal fleet: {caption}", fontsize=11)
        fig.tight_layout()
        path = out / "fleet.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    if depth:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        groups: list[tuple[str, list[DepthResult], Callable[[DepthResult], int]]] = [
            ("ready rows (no history)", [p for p in depth if p.ready and not p.history],
             lambda p: p.ready),
            (f"finished rows ({_ready_of(depth):,} ready)",
             [p for p in depth if p.ready and (p.history or p.ready == _ready_of(depth))
              and not p.delayed], lambda p: p.history)]
        for ax, (xlabel, points, x) in zip(axes.flat[:2], groups, strict=True):
            points = sorted(points, key=x)
            xs = [max(x(p), 1) for p in points]
            ax.plot(xs, [p.claim_row_us for p in points], marker="o",
                    label="claim exec per claimed row (us)")
            ax.plot(xs, [p.server_us for p in points], marker="s",
                    label="server CPU per task (us)")
            ax.set_xscale("log")
            ax.set_xlabel(xlabel + " (0 plotted at 1)")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.1)
            ax.grid(True, which="both", alpha=0.3)
            blocks = ax.twinx()
            blocks.plot(xs, [_row_blocks(p) for p in points], marker="^", color="C2",
                        label="shared buffers per claimed row (right)")
            blocks.set_ylim(0, blocks.get_ylim()[1] * 1.1)
            lines = ax.get_legend_handles_labels()
            more = blocks.get_legend_handles_labels()
            ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
        idle = sorted((p for p in depth if not p.ready), key=lambda p: p.delayed)
        ax = axes.flat[2]
        ax.plot([max(p.delayed, 1) for p in idle], [p.claim_exec_us for p in idle], marker="o",
                label="empty claim (poll) exec (us)")
        for p in idle:
            if p.claim_exec_us is not None:
                ax.annotate(f"{p.claim_exec_us:,.0f} us; {_f(p.server_idle_ms_s, 2)} ms/s "
                            "server CPU per idle worker", (max(p.delayed, 1), p.claim_exec_us),
                            textcoords="offset points", fontsize=8,
                            xytext=(-8, -14) if p.delayed else (8, -4),
                            ha="right" if p.delayed else "left")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("delayed rows, nothing ready (0 plotted at 1)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(f"Claim cost against the tasks table: {caption}", fontsize=11)
        fig.tight_layout()
        path = out / "depth.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _ready_of(depth: Sequence[DepthResult]) -> int:
    """The ready depth the history points were measured with."""
    return next((p.ready for p in depth if p.history), 0)
