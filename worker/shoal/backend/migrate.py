"""Schema migrations: ordered .sql files applied once each, under a lock.

`migrate()` is idempotent and safe when many processes run it at once: an
advisory lock keyed by the schema name, held from the first migration to the
last, serialises them (one applies everything due, the others nothing), and
each file is applied with its version row in a transaction of its own (a
value added to an enum by one migration can be used only by the next).
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg

from shoal.backend.queries import Queries

DEFAULT_AGING_SECONDS = 300.0
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql template) for every migration shipped, in order."""
    found = []
    for entry in resources.files("shoal.backend.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


def latest_version() -> int:
    """The version of the newest migration shipped."""
    return migrations()[-1][0]


async def migrate(conn: asyncpg.Connection, queries: Queries,
                  aging_seconds: float | None = None) -> list[int]:
    """Bring the schema up to date; return the versions applied now.

    `aging_seconds` sets how long a task waits to gain one priority point;
    when None, an existing setting is kept (default 5 minutes).
    """
    applied_now = []
    async with conn.transaction():
        await conn.execute(queries.bootstrap)
        has_sort_key = await conn.fetchval(queries.aging_interval) is not None
        if aging_seconds is not None or not has_sort_key:
            seconds = DEFAULT_AGING_SECONDS if aging_seconds is None else aging_seconds
            await conn.execute(queries.sort_key_definition(seconds))
    await conn.execute(queries.lock_migrations)
    try:
        done = {r["version"] for r in await conn.fetch(queries.applied_versions)}
        for version, name, template in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(template.replace("{schema}", queries.schema))
                await conn.execute(queries.record_migration, version, name)
            applied_now.append(version)
    finally:
        await conn.execute(queries.unlock_migrations)
    return applied_now
