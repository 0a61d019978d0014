"""deploy/backup: a dump of a database filled through the API, restored, shows the same data."""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from mailfleet_api.main import create_app
from mailfleet_api.settings import Settings
from mailfleet_common.settings import PostgresSettings

from tests.conftest import ADMIN_DSN, _with_database

from .conftest import Conn, account_body, campaign_body

SCRIPTS = Path(__file__).parents[2] / "deploy" / "backup"
MAILFLEET = Path(sys.executable).parent / "mailfleet"


async def pg_bin(db: Conn) -> str:
    """The client tools of the server's major version (pg_dump refuses a newer server)."""
    major = int(await db.fetchval("SHOW server_version_num")) // 10_000
    found = Path(f"/usr/lib/postgresql/{major}/bin")
    return str(found) if (found / "pg_dump").exists() else ""


async def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(a) for a in args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
async def fresh_dsn() -> AsyncIterator[str]:
    """An empty database, dropped afterwards."""
    name = f"mailfleet_restore_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(ADMIN_DSN, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def fill(client: httpx.AsyncClient, admin: dict[str, Any], h: dict[str, str]) -> list[str]:
    """Accounts, campaigns, messages and suppressions, all made through the API."""
    account = await client.post(
        "/api/admin/accounts", json=account_body(), headers=admin["headers"]
    )
    assert account.status_code == 201, account.text
    campaigns = []
    for name in ("spring", "summer", "autumn"):
        created = await client.post("/api/campaigns", json=campaign_body(name=name), headers=h)
        assert created.status_code == 201, created.text
        campaigns.append(created.json()["id"])
    for n, campaign in enumerate(campaigns):
        recipients = [
            {"email": f"r{i}-{n}@example.com", "name": f"R {i}", "variables": {"i": i}}
            for i in range(40)
        ]
        enqueued = await client.post(
            "/api/queue/enqueue",
            json={"campaign_id": campaign, "recipients": recipients},
            headers={**h, "Idempotency-Key": f"fill-{n}"},
        )
        assert enqueued.status_code == 202, enqueued.text
    for body in (
        {"email": "gone@example.com", "reason": "complaint"},
        {"email": "r3-0@example.com", "reason": "asked", "campaign_id": campaigns[0]},
        {"email": "later@example.com", "reason": "bounce", "expires_at": "2099-01-01T00:00:00Z"},
    ):
        suppressed = await client.post("/api/suppressions", json=body, headers=h)
        assert suppressed.status_code in (200, 201), suppressed.text
    cancelled = await client.delete(f"/api/campaigns/{campaigns[2]}", headers=h)
    assert cancelled.status_code == 200, cancelled.text
    return campaigns


async def view(client: httpx.AsyncClient, h: dict[str, str], campaigns: list[str]) -> Any:
    """What the API shows of campaigns, messages and suppressions."""
    paths = [
        "/api/campaigns",
        *(f"/api/campaigns/{c}" for c in campaigns),
        "/api/queue/status",
        "/api/suppressions",
    ]
    shown = {}
    for path in paths:
        response = await client.get(path, headers=h)
        assert response.status_code == 200, (path, response.text)
        shown[path] = response.json()
    export = await client.get("/api/suppressions/export", headers=h)
    shown["export"] = export.text
    # A replayed enqueue returns the stored answer; enqueueing again adds no duplicate.
    for n, campaign in enumerate(campaigns[:2]):
        for key in (f"fill-{n}", f"again-{n}"):
            again = await client.post(
                "/api/queue/enqueue",
                json={
                    "campaign_id": campaign,
                    "recipients": [{"email": f"r{i}-{n}@example.com"} for i in range(40)],
                },
                headers={**h, "Idempotency-Key": key},
            )
            shown[f"enqueue {key}"] = (again.status_code, again.json())
    return shown


async def test_a_restored_backup_shows_the_same_campaigns_messages_and_suppressions(
    client: httpx.AsyncClient,
    settings: Settings,
    admin: dict[str, Any],
    operator: dict[str, Any],
    db: Conn,
    database_dsn: str,
    fresh_dsn: str,
    tmp_path: Path,
) -> None:
    h = operator["headers"]
    campaigns = await fill(client, admin, h)
    before = await view(client, h, campaigns)
    assert before["enqueue again-0"][1]["accepted"] == 0
    rows = await db.fetch("SELECT * FROM messages ORDER BY id")
    assert len(rows) == 120
    bin_dir = await pg_bin(db)

    backups = tmp_path / "backups"
    made = await run(
        SCRIPTS / "backup.sh", BACKUP_DSN=database_dsn, BACKUP_DIR=str(backups), PG_BIN=bin_dir
    )
    assert made.returncode == 0, made.stderr
    [dump] = list(backups.iterdir())
    assert dump.name.startswith("mailfleet-")
    assert dump.suffix == ".dump"

    restored = await run(SCRIPTS / "restore.sh", dump, fresh_dsn, PG_BIN=bin_dir)
    assert restored.returncode == 0, restored.stderr
    migrated = await run(MAILFLEET, "migrate", MAILFLEET_POSTGRES__DSN=fresh_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert "database is up to date" in migrated.stdout
    # Restoring over data is refused.
    again = await run(SCRIPTS / "restore.sh", dump, fresh_dsn, PG_BIN=bin_dir)
    assert again.returncode == 1
    assert "restore into an empty one" in again.stderr

    postgres = PostgresSettings(dsn=fresh_dsn, pool_min=1, pool_max=2)
    restored_app = create_app(settings.model_copy(update={"postgres": postgres}))
    async with LifespanManager(restored_app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as other:
            assert await view(other, h, campaigns) == before
            # Identity sequences came along: a new message gets a new id.
            added = await other.post(
                "/api/queue/enqueue",
                json={"campaign_id": campaigns[0], "recipients": [{"email": "new@example.com"}]},
                headers=h,
            )
            assert added.json()["accepted"] == 1, added.text
    copy = await asyncpg.connect(fresh_dsn)
    try:
        kept = await copy.fetch(
            "SELECT * FROM messages WHERE email <> 'new@example.com' ORDER BY id"
        )
        assert kept == rows
        new_id = await copy.fetchval("SELECT id FROM messages WHERE email = 'new@example.com'")
        assert new_id > rows[-1]["id"]
    finally:
        await copy.close()


def dump_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_backups_keep_the_newest_and_a_failed_dump_leaves_nothing(
    db: Conn, database_dsn: str, tmp_path: Path
) -> None:
    bin_dir = await pg_bin(db)
    old = [f"mailfleet-2020010{d}T000000Z.dump" for d in range(1, 6)]
    for name in old:
        (tmp_path / name).write_bytes(b"old")
    # Written 40 days ago: past BACKUP_KEEP_DAYS although among the newest by name.
    month_ago = time.time() - 40 * 86400
    os.utime(tmp_path / old[-1], (month_ago, month_ago))
    stale = tmp_path / ".mailfleet-20200101T000000Z.dump.partial"
    stale.write_bytes(b"killed mid-dump")
    os.utime(stale, (month_ago, month_ago))
    keep = {"BACKUP_DIR": str(tmp_path), "PG_BIN": bin_dir, "BACKUP_KEEP": "3"}

    made = await run(SCRIPTS / "backup.sh", BACKUP_DSN=database_dsn, BACKUP_KEEP_DAYS="30", **keep)
    assert made.returncode == 0, made.stderr
    names = dump_names(tmp_path)
    assert names[0] == old[3]
    assert len(names) == 2
    assert names[1].startswith(f"mailfleet-{time.strftime('%Y', time.gmtime())}")
    pg_restore = Path(bin_dir, "pg_restore") if bin_dir else "pg_restore"
    listed = await run(pg_restore, "--list", tmp_path / names[1])
    assert "TABLE public messages" in listed.stdout

    failed = await run(
        SCRIPTS / "backup.sh", BACKUP_DSN=_with_database(ADMIN_DSN, "no_such_database"), **keep
    )
    assert failed.returncode != 0
    assert dump_names(tmp_path) == names
