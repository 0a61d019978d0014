"""A mailfleet API client in a page: create a campaign, queue recipients, start it, list.

Needs only httpx (`pip install httpx`). Configure it through the environment:

    MAILFLEET_API_URL     where the API answers (default http://127.0.0.1:8000)
    MAILFLEET_API_KEY     an API key (mailfleet create-api-key, or POST /api/admin/api-keys)
    MAILFLEET_EMAIL, MAILFLEET_PASSWORD
                          or log in as a user instead of using a key
    MAILFLEET_ACCOUNT_ID  optional: send through this account only (default: every active one)
    MAILFLEET_PAGE_SIZE   optional: items per page when listing (default 50)

Run it with `python docs/api/client_example.py`.
"""

import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

MAX_ATTEMPTS = 5


class ApiError(Exception):
    """The API answered with an RFC 9457 problem document."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            problem = response.json()
        except ValueError:  # not from the API itself: a proxy's error page
            problem = {"status": response.status_code, "title": response.reason_phrase}
        super().__init__(f"{problem['status']} {problem['title']}: {problem.get('detail', '')}")
        self.problem = problem


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """Send a request, waiting out 429s as Retry-After says; the JSON answer, or ApiError."""
    for _ in range(MAX_ATTEMPTS):
        response = client.request(method, path, **kwargs)
        if response.status_code != 429:
            break
        wait = float(response.headers.get("Retry-After", "1"))
        print(f"rate limited: retrying {method} {path} in {wait:g} s", file=sys.stderr)
        time.sleep(wait)
    if response.is_error:
        raise ApiError(response)
    return response.json()


def walk(client: httpx.Client, path: str, **params: Any) -> Iterator[dict[str, Any]]:
    """Every item of a list, a page at a time: pass each page's next_cursor as cursor."""
    params.setdefault("limit", int(os.environ.get("MAILFLEET_PAGE_SIZE", "50")))
    while True:
        page = call(client, "GET", path, params=params)
        yield from page["items"]
        if page["next_cursor"] is None:
            return
        params["cursor"] = page["next_cursor"]


def authenticate(client: httpx.Client) -> None:
    """Send MAILFLEET_API_KEY with every request, or a token from logging in."""
    token = os.environ.get("MAILFLEET_API_KEY")
    if not token:
        credentials = {
            "email": os.environ["MAILFLEET_EMAIL"],
            "password": os.environ["MAILFLEET_PASSWORD"],
        }
        token = call(client, "POST", "/api/admin/login", json=credentials)["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"


def main() -> None:
    url = os.environ.get("MAILFLEET_API_URL", "http://127.0.0.1:8000")
    with httpx.Client(base_url=url, timeout=30) as client:
        authenticate(client)
        account_id = os.environ.get("MAILFLEET_ACCOUNT_ID")
        campaign = call(
            client,
            "POST",
            "/api/campaigns",
            json={
                "name": "Welcome series",
                "subject": "Welcome aboard, {{ name }}",
                "text_body": "Hi {{ name }}, your {{ plan }} plan is ready.",
                "html_body": "<p>Hi {{ name }}, your <b>{{ plan }}</b> plan is ready.</p>",
                "account_ids": [account_id] if account_id else [],
            },
        )
        print(f"created campaign {campaign['id']} ({campaign['status']})")

        # One key per batch, reused on every retry of that batch: if an answer is lost (a
        # timeout, a dropped connection), sending the batch again queues nothing twice.
        batch = {
            "campaign_id": campaign["id"],
            "recipients": [
                {"email": "ada@example.org", "name": "Ada", "variables": {"plan": "pro"}},
                {"email": "grace@example.com", "name": "Grace", "variables": {"plan": "team"}},
                {"email": "not-an-address", "name": "Typo", "variables": {"plan": "pro"}},
            ],
        }
        headers = {"Idempotency-Key": f"welcome-{uuid.uuid4()}"}
        result = call(client, "POST", "/api/queue/enqueue", json=batch, headers=headers)
        print(f"queued {result['accepted']}, rejected {result['rejected_count']}")
        for rejected in result["rejected"]:
            print(f"  recipient {rejected['index']} ({rejected['email']}): {rejected['reason']}")
        again = call(client, "POST", "/api/queue/enqueue", json=batch, headers=headers)
        print(f"sent again with the same key: the same answer ({again == result})")

        # 202 Accepted: the campaign is running; its messages go out afterwards.
        started = call(client, "POST", f"/api/campaigns/{campaign['id']}/start")
        print(f"campaign {started['id']} is {started['status']}")

        running = list(walk(client, "/api/campaigns", status="running"))
        print(f"{len(running)} running campaigns:")
        for item in running:
            print(f"  {item['id']} {item['name']}")


if __name__ == "__main__":
    try:
        main()
    except ApiError as error:
        sys.exit(f"error: {error}")
