"""What the Postgres server spends: CPU from /proc, statements from pg_stat_statements.

CPU: the postmaster's own user+system time, plus that of every process it forked
(backends, autovacuum workers, WAL writer, checkpointer ...), plus the time of
the children it has already reaped (`cutime` + `cstime` of the postmaster): an
autovacuum worker or a backend that ends inside a window still counts, which
summing the live children alone (`bench.cpu_split`) would miss. Clock ticks
(10 ms) per process; over N processes the rounding error of a difference is
about 0.4 tick times sqrt(N), well under the figures measured here.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.harness import TICKS, proc_stat
from shoal.backend.queries import Queries


def postmaster_pid(data: Path) -> int:
    return int((data / "postmaster.pid").read_text().split()[0])


def server_cpu(postmaster: int) -> tuple[float, float]:
    """User and system CPU seconds the server has used so far, children reaped and
    alive included."""
    fields = proc_stat(postmaster)
    user = (int(fields[11]) + int(fields[13])) / TICKS
    system = (int(fields[12]) + int(fields[14])) / TICKS
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            child = proc_stat(proc.name)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(child[1]) == postmaster:
            user += int(child[11]) / TICKS
            system += int(child[12]) / TICKS
    return user, system


# --------------------------------------------------------------------------
# pg_stat_statements


def _shape(sql: str) -> list[str]:
    """A statement's words, with comments dropped and literals, parameters and
    numbers blanked."""
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\$\d+", "?", sql)
    sql = re.sub(r"\b\d+(?:\.\d+)?\b", "?", sql)
    return re.findall(r"\w+|[^\w\s]", sql.lower())


_QUERIES = [(name, _shape(text)) for name, text in vars(Queries("shoal")).items()
            if isinstance(text, str) and name != "schema"]


@functools.cache
def statement_name(query: str) -> str:
    """Shoal's name for a statement (`claim`, `heartbeat` ...), or its first words.

    pg_stat_statements stores a statement with its constants replaced by
    parameters (a literal, but also NULL, `epoch` in `extract(epoch ...)`), so
    the stored text is matched with Shoal's by similarity of their words."""
    shape = _shape(query)
    best, score = "", 0.0
    for name, words in _QUERIES:
        if abs(len(words) - len(shape)) > 0.1 * max(len(words), len(shape)):
            continue
        ratio = difflib.SequenceMatcher(None, shape, words, autojunk=False).ratio()
        if ratio > score:
            best, score = name, ratio
    if score >= 0.9:
        return best
    text = " ".join(query.split())
    return text if len(text) <= 48 else text[:45] + "..."


@dataclass
class Statement:
    name: str
    calls: int = 0
    exec_ms: float = 0.0
    plan_ms: float = 0.0  # with pg_stat_statements.track_planning
    rows: int = 0
    blocks: int = 0  # shared blocks hit + read

    @property
    def mean_us(self) -> float:
        return 1000 * self.exec_ms / self.calls if self.calls else 0.0

    @property
    def plan_us(self) -> float:
        return 1000 * self.plan_ms / self.calls if self.calls else 0.0


@dataclass
class Statements:
    """pg_stat_statements of one database over a window, by Shoal's statement names."""

    by_name: dict[str, Statement] = field(default_factory=dict)

    def get(self, name: str) -> Statement:
        return self.by_name.get(name) or Statement(name)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.by_name.values())

    @property
    def exec_ms(self) -> float:
        return sum(s.exec_ms for s in self.by_name.values())

    def top(self) -> list[Statement]:
        return sorted(self.by_name.values(), key=lambda s: s.exec_ms, reverse=True)


class StatementStats:
    """Resets and reads pg_stat_statements (None: the server does not preload it)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, admin_dsn: str) -> StatementStats | None:
        conn = await asyncpg.connect(admin_dsn)
        loaded = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
        if "pg_stat_statements" not in loaded:
            await conn.close()
            return None
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return cls(conn)

    async def reset(self) -> None:
        await self.conn.execute("SELECT pg_stat_statements_reset()")

    async def read(self, database: str) -> Statements:
        rows = await self.conn.fetch("""
            SELECT s.query, s.calls, s.total_exec_time, s.total_plan_time, s.rows,
                   s.shared_blks_hit + s.shared_blks_read AS blocks
            FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
            WHERE d.datname = $1""", database)
        out = Statements()
        for row in rows:
            name = statement_name(row["query"])
            stat = out.by_name.setdefault(name, Statement(name))
            stat.calls += row["calls"]
            stat.exec_ms += row["total_exec_time"]
            stat.plan_ms += row["total_plan_time"]
            stat.rows += row["rows"]
            stat.blocks += row["blocks"]
        return out

    async def close(self) -> None:
        await self.conn.close()
