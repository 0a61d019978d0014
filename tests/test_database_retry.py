"""while_database_away: what it retries, how long, and when it gives up."""

import asyncpg
import pytest
from mailfleet_common.db import while_database_away


async def test_a_database_away_is_retried_until_the_operation_completes() -> None:
    failures = [
        ConnectionRefusedError(111, "refused"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.InternalClientError("cannot switch to state 12"),
    ]
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)
        return "written"

    assert await while_database_away(operation, "test") == "written"
    assert calls == 5


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.UniqueViolationError("duplicate key")

    with pytest.raises(asyncpg.UniqueViolationError):
        await while_database_away(operation, "test")
    assert calls == 1


async def test_it_gives_up_once_the_caller_says_so() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise OSError("network unreachable")

    with pytest.raises(OSError, match="unreachable"):
        await while_database_away(operation, "test", lambda: 0.3)
    assert 3 <= calls <= 6  # 50, 100, 200 ms apart
