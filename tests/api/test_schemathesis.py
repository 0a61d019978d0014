"""Property-based tests of the whole OpenAPI document against the API running as a process.

schemathesis generates requests, valid and invalid, for every operation of the document and
sends them anonymously and as an admin: no answer may be a 5xx, and each must be as
documented (status code, content type, headers, body schema). Seeded and bounded, so a run
is repeatable and takes a couple of minutes at most.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.stack import Stack

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Examples per operation and generation mode; the document has about 40 operations.
ADMIN_EXAMPLES = 25
ANONYMOUS_EXAMPLES = 5
# The HTTP server's framing, not the API's contract: uvicorn answers a malformed one (say
# ``Transfer-Encoding: 4xW``, which negative examples can carry) with a bare 400 before the
# application sees the request.
FRAMING_HEADERS = ("transfer-encoding", "content-length", "connection", "host")


@pytest.fixture(scope="module")
async def running_api(
    database_dsn: str, rabbit_url: str, crypto_keys: str
) -> AsyncIterator[dict[str, Any]]:
    async with Stack(
        postgres_dsn=database_dsn,
        rabbit_url=rabbit_url,
        crypto_keys=crypto_keys,
        env={"MAILFLEET_LOG_LEVEL": "WARNING"},
    ) as stack:
        api = await stack.start_api(
            {
                # Every generated login comes from one address: no 429 between examples.
                "MAILFLEET_THROTTLE__LOGIN_PER_CLIENT": "100000/minute",
                # Thousands of calls with one token: rate limits would make answers depend
                # on the order of operations. Their fields are still sent and checked.
                "MAILFLEET_RATE_LIMIT__DEFAULT": "1000000/hour",
                "MAILFLEET_RATE_LIMIT__HEAVY": "1000000/hour",
            }
        )
        token = await stack.admin_token("fuzz-admin@example.com", "plum tractor violet 42")
        yield {"url": api.url, "headers": {"Authorization": f"Bearer {token}"}}


def _fuzz(api: dict[str, Any], headers: dict[str, str], max_examples: int) -> list[str]:
    """Run every operation in both generation modes; the failures, one line each."""
    document = schemathesis.openapi.from_url(f"{api['url']}/openapi.json")
    failures: list[str] = []
    for found in document.get_all_operations():
        operation = found.ok()
        raw = operation.definition.raw
        takes_input = bool(raw.get("parameters")) or "requestBody" in raw
        # Invalid input needs some input: an operation without any has only valid requests.
        for mode in GenerationMode if takes_input else [GenerationMode.POSITIVE]:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=max_examples,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                for name in FRAMING_HEADERS:
                    case.headers.pop(name, None)
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

            failures += _failures(f"{operation.label} ({mode.value})", run)
    return failures


def _failures(label: str, run: Callable[[], None]) -> list[str]:
    try:
        run()
    except Exception as exc:  # every failure is reported, not only the first
        return [f"{label}: {str(exc).strip()[:2000]}"]
    return []


async def test_every_operation_answers_as_documented_to_an_admin(
    running_api: dict[str, Any],
) -> None:
    failures = await _in_thread(running_api, running_api["headers"], ADMIN_EXAMPLES)
    assert not failures, "\n\n".join(failures)


async def test_every_operation_answers_as_documented_to_anyone(
    running_api: dict[str, Any],
) -> None:
    failures = await _in_thread(running_api, {}, ANONYMOUS_EXAMPLES)
    assert not failures, "\n\n".join(failures)


async def _in_thread(api: dict[str, Any], headers: dict[str, str], examples: int) -> list[str]:
    # schemathesis calls the API with blocking requests: off the test's event loop.
    return await asyncio.to_thread(_fuzz, api, headers, examples)
