"""The operator creates or upgrades Shoal's schema on first use (real Postgres)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from shoal.backend.migrate import migrations
from shoal_operator.backends import Backends
from shoal_operator.kube import Kube


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    """The operator's shared Backends (no Secret is read here: no API client)."""
    shared = Backends(cast(Kube, None), "shoal")
    yield shared
    await shared.close()


def _as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


async def test_a_pool_on_an_empty_database_gets_the_schema(dsn: str,
                                                           backends: Backends) -> None:
    backend = await backends.backend_for(dsn, "team_a")
    versions = [r["version"] for r in await backend.pool.fetch(
        "SELECT version FROM team_a.schema_migrations ORDER BY version")]
    assert versions == [v for v, _, _ in migrations()]
    assert (await backend.backlog("default", (), None)).ready == 0


async def test_a_role_without_ddl_rights_uses_a_schema_migrated_for_it(
        dsn: str, backends: Backends) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await (await backends.backend_for(dsn, "shoal")).migrate()  # the administrator's
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA shoal TO {role}")
        await admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA shoal TO {role}")
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC')
    finally:
        await admin.close()
    # Its `shoal migrate` is refused (no CREATE on the database); the operator goes on.
    backend = await backends.backend_for(_as_user(dsn, role), "shoal")
    assert (await backend.backlog("default", (), None)).ready == 0
