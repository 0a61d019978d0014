import asyncio

import asyncpg
from mailfleet_common.migrate import load_migrations, migrate

from tests.conftest import ADMIN_DSN, _with_database


async def test_two_migrators_at_once_apply_each_migration_exactly_once() -> None:
    name = "mailfleet_test_concurrent_migrate"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = _with_database(ADMIN_DSN, name)
        first, second = await asyncio.gather(migrate(dsn), migrate(dsn))
        expected = [m.version for m in load_migrations()]
        assert sorted(first + second) == expected
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [r["version"] for r in rows] == expected
        assert await migrate(dsn) == []
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
