"""docs/api/client_example.py, run as it is against the API running as a process.

The API's rate limit is set so tight that the example meets a 429 and has to wait it out, and
its page size so small that listing campaigns takes several pages.
"""

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import FAST_ENV
from tests.stack import Stack

from .conftest import account_body

EXAMPLE = Path(__file__).parents[2] / "docs" / "api" / "client_example.py"
PASSWORD = "plum tractor violet 42"
RUN_TIMEOUT_S = 60


@dataclass
class Api:
    url: str
    key: str
    email: str
    account_id: str


@dataclass
class Run:
    stdout: str
    stderr: str
    campaign_id: str
    listed: list[str]


async def _send(client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of a successful request, 429s waited out."""
    for _ in range(5):
        response = await client.request(method, path, **kwargs)
        if response.status_code != 429:
            break
        await asyncio.sleep(float(response.headers["Retry-After"]))
    assert response.is_success, response.text
    return response.json()


async def _get(api: Api, path: str, **params: Any) -> Any:
    """GET with the example's key (what the example left of its budget waited out)."""
    headers = {"Authorization": f"Bearer {api.key}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers) as client:
        return await _send(client, "GET", path, params=params)


@pytest.fixture(scope="module")
async def api(database_dsn: str, rabbit_url: str, crypto_keys: str) -> AsyncIterator[Api]:
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=FAST_ENV
    ) as stack:
        # Tight, so that every run of the example meets a 429 and waits it out.
        server = await stack.start_api({"MAILFLEET_RATE_LIMIT__DEFAULT": "3/3 seconds"})
        email = f"example-{uuid.uuid4().hex[:8]}@example.com"
        token = await stack.admin_token(email, PASSWORD)
        # Set up with the login's token: the key's budget is left whole for the example.
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as client:
            key = (await _send(client, "POST", "/api/admin/api-keys", json={"name": "ex"}))["key"]
            account = account_body(name=f"example-{uuid.uuid4().hex[:6]}")
            account_id = (await _send(client, "POST", "/api/admin/accounts", json=account))["id"]
            # A campaign running already, so that the listing takes more than one page.
            earlier = {"name": "earlier", "subject": "Hi", "text_body": "Hi"}
            campaign = await _send(client, "POST", "/api/campaigns", json=earlier)
            await _send(client, "POST", f"/api/campaigns/{campaign['id']}/start")
        yield Api(server.url, key, email, account_id)


async def _run_example(api: Api, credentials: dict[str, str]) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFLEET_")}
    env |= {
        "MAILFLEET_API_URL": api.url,
        "MAILFLEET_ACCOUNT_ID": api.account_id,
        "MAILFLEET_PAGE_SIZE": "1",
        **credentials,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        out, err = await process.communicate()
    stdout, stderr = out.decode(), err.decode()
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout}\n{stderr}"
    created = re.search(r"^created campaign (\S+) \(draft\)$", stdout, re.MULTILINE)
    assert created, stdout
    listed = re.findall(r"^  ([0-9a-f-]{36}) ", stdout, re.MULTILINE)
    return Run(stdout, stderr, created[1], listed)


async def _running_campaigns(api: Api) -> list[str]:
    page = await _get(api, "/api/campaigns", limit=500)
    return sorted(c["id"] for c in page["items"] if c["status"] == "running")


async def test_the_example_runs_with_an_api_key_and_waits_out_429(api: Api) -> None:
    run = await _run_example(api, {"MAILFLEET_API_KEY": api.key})

    assert "queued 2, rejected 1" in run.stdout
    assert "recipient 2 (not-an-address): " in run.stdout
    assert "sent again with the same key: the same answer (True)" in run.stdout
    assert f"campaign {run.campaign_id} is running" in run.stdout
    assert re.search(r"^rate limited: retrying \S+ \S+ in \d+ s$", run.stderr, re.MULTILINE)
    campaign = await _get(api, f"/api/campaigns/{run.campaign_id}")
    assert campaign["status"] == "running"
    assert campaign["account_ids"] == [api.account_id]
    assert campaign["total_messages"] == 2, "the repeated batch queued nothing more"
    assert sorted(run.listed) == await _running_campaigns(api)
    assert len(run.listed) >= 2, "a page of one each: the cursor was followed"


async def test_the_example_runs_after_logging_in(api: Api) -> None:
    run = await _run_example(api, {"MAILFLEET_EMAIL": api.email, "MAILFLEET_PASSWORD": PASSWORD})

    assert f"campaign {run.campaign_id} is running" in run.stdout
    assert run.campaign_id in run.listed
    assert sorted(run.listed) == await _running_campaigns(api)


def test_the_readme_quotes_the_example_as_it_is() -> None:
    readme = (EXAMPLE.parent / "README.md").read_text()
    quoted = re.search(r"^```python\n(.*?)^```$", readme, re.DOTALL | re.MULTILINE)
    assert quoted, "no ```python block in docs/api/README.md"
    assert quoted[1] == EXAMPLE.read_text(), "docs/api/README.md: paste client_example.py again"
