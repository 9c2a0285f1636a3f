"""Migrations: idempotent, safe when 8 processes or connections run them at once, a
configurable schema that isolates two installations in one database, bad names refused."""

from __future__ import annotations

import asyncio

import pytest

from shoal.backend import Backend, NewTask, WorkerIdentity
from shoal.backend.migrate import migrations
from shoal.errors import InvalidInput
from tests.support import cli

WORKER = WorkerIdentity(id="w", namespace="default", tags=(), task_names=("t",),
                        concurrency=1)
# Every migration shipped, in order: a fresh schema gets each of them once.
ALL = [version for version, _name, _sql in migrations()]


async def schemas(backend: Backend) -> set[str]:
    rows = await backend.pool.fetch("SELECT nspname FROM pg_namespace")
    return {r["nspname"] for r in rows}


async def test_migrate_is_idempotent(dsn: str) -> None:
    backend = await Backend.connect(dsn)
    try:
        assert ALL[0] == 1 and sorted(set(ALL)) == ALL
        assert await backend.migrate() == ALL
        assert await backend.migrate() == []
        assert await backend.aging_seconds() == 300
        assert await backend.migrate(aging_seconds=1.5) == []
        assert await backend.aging_seconds() == 1.5
        assert await backend.migrate() == []  # an omitted interval keeps the setting
        assert await backend.aging_seconds() == 1.5
        versions = await backend.pool.fetch("SELECT version FROM shoal.schema_migrations")
        assert [r["version"] for r in versions] == ALL
    finally:
        await backend.close()


async def test_eight_processes_migrate_at_once(dsn: str) -> None:
    results = await asyncio.gather(*(cli("migrate", "--dsn", dsn, "--aging-interval", "2s")
                                     for _ in range(8)))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    applied = [r.stdout for r in results
               if f"applied migrations {', '.join(map(str, ALL))};" in r.stdout]
    assert len(applied) == 1, [r.stdout for r in results]
    assert all("aging interval 2s" in r.stdout for r in results)
    backend = await Backend.connect(dsn)
    try:
        assert await backend.pool.fetchval(
            "SELECT count(*) FROM shoal.schema_migrations") == len(ALL)
        assert await backend.enqueue([NewTask("t")])  # the schema works
    finally:
        await backend.close()


async def test_eight_connections_migrate_at_once(dsn: str) -> None:
    backends = [await Backend.connect(dsn, max_size=1) for _ in range(8)]
    try:
        applied = await asyncio.gather(*(b.migrate() for b in backends))
        assert sorted(applied) == [[]] * 7 + [ALL]
    finally:
        for b in backends:
            await b.close()


async def test_custom_schemas_are_isolated(dsn: str) -> None:
    alpha = await Backend.connect(dsn, schema="alpha")
    beta = await Backend.connect(dsn, schema="shoal_beta_2")
    try:
        assert await alpha.migrate(aging_seconds=10) == ALL
        assert await beta.migrate() == ALL
        assert {"alpha", "shoal_beta_2"} <= await schemas(alpha)
        assert "shoal" not in await schemas(alpha)
        (task_id,) = await alpha.enqueue([NewTask("t", {"in": "alpha"})])
        assert await beta.claim(WORKER, 10, 30) == []
        (claimed,) = await alpha.claim(WORKER, 10, 30)
        assert claimed.id == task_id and claimed.payload == {"in": "alpha"}
        assert (await alpha.aging_seconds(), await beta.aging_seconds()) == (10, 300)
    finally:
        await alpha.close()
        await beta.close()


@pytest.mark.parametrize("schema", ["Shoal", "1abc", "a-b", "x; DROP TABLE y", "", "a" * 64,
                                    'quo"te'])
async def test_bad_schema_name_is_refused(dsn: str, schema: str) -> None:
    with pytest.raises(InvalidInput, match="invalid schema name"):
        await Backend.connect(dsn, schema=schema)


async def test_cli_refuses_bad_schema_and_writes_nothing(dsn: str) -> None:
    result = await cli("migrate", "--dsn", dsn, "--schema", "x; DROP SCHEMA public")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "shoal: error: invalid schema name 'x; DROP SCHEMA public': "
        "use lower-case letters, digits, _"]
    backend = await Backend.connect(dsn)
    try:
        assert "x" not in await schemas(backend)
        assert "shoal" not in await schemas(backend)
    finally:
        await backend.close()


async def test_liveness_tables_are_never_analyzed(dsn: str) -> None:
    """Autoanalyze of the heartbeat-churned tables would discard every worker's cached
    plans about once a minute; migration 8 turns it off for them (and only for them)."""
    backend = await Backend.connect(dsn)
    try:
        await backend.migrate()
        rows = await backend.pool.fetch(
            "SELECT relname, reloptions FROM pg_class WHERE relnamespace = 'shoal'::regnamespace"
            " AND relkind = 'r' AND reloptions IS NOT NULL")
        never = {r["relname"] for r in rows
                 if "autovacuum_analyze_threshold=2000000000" in r["reloptions"]}
        assert never == {"workers", "leaders"}, rows
    finally:
        await backend.close()
