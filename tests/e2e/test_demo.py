"""`mailfleet demo` against the running services: a 1,000-recipient campaign, delivered."""

import asyncpg
import pytest

from tests.stack import Stack

pytestmark = pytest.mark.slow


async def test_demo_delivers_its_thousand_recipients_to_the_capture_server(
    stack: Stack, db: "asyncpg.Connection[asyncpg.Record]"
) -> None:
    sink = await stack.start_sink()
    api = await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    await stack.create_admin("demo@example.com", "a-long-demo-password")

    output = await stack.run_cli(
        "demo", "--api-url", api.url, "--email", "demo@example.com",
        "--password", "a-long-demo-password", "--smtp-port", str(sink.port), "--timeout", "120",
    )  # fmt: skip

    assert "1000 recipients queued" in output
    assert "completed" in output
    records = await sink.wait_for_records(1000)
    assert len({r["message_id"] for r in records}) == 1000
    assert await db.fetchval("SELECT count(DISTINCT account_id) FROM messages") == 5
