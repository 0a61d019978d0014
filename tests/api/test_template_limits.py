"""Campaign templates the API can already see are over the render limits are refused."""

import time
from typing import Any

import httpx
import pytest

from .conftest import campaign_body
from .test_problems import assert_problem

REFUSED = {
    "a power too large to print": ("{{ 10**5000 }}", "4096 bits"),
    "a repetition folded at compile time": ("{{ 'x' * 10**8 }}", "1000000 characters"),
    "a nested loop of 10^10 iterations": (
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "operations",
    ),
}


@pytest.mark.parametrize(("source", "reason"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_template_over_the_limits_is_refused_with_the_reason(
    client: httpx.AsyncClient, operator: dict[str, Any], source: str, reason: str
) -> None:
    started = time.perf_counter()
    response = await client.post(
        "/api/campaigns", json=campaign_body(text_body=source), headers=operator["headers"]
    )
    assert time.perf_counter() - started < 1.0
    body = assert_problem(response, 422)
    assert body["detail"].startswith("text_body: "), body
    assert reason in body["detail"]


async def test_a_template_that_needs_its_variables_is_accepted(
    client: httpx.AsyncClient, operator: dict[str, Any]
) -> None:
    body = campaign_body(
        subject="{{ total / count }}",
        text_body="{% for item in items %}{{ item.name }} {{ 'x' * item.stars }}{% endfor %}",
    )
    response = await client.post("/api/campaigns", json=body, headers=operator["headers"])
    assert response.status_code == 201, response.text
