"""Gmail-API accounts: users.messages.send against the Google double, each message once.

Gmail's refusals are about the account (quota, daily limit, consent, permissions) and give the
message back unburned; only a refusal of the message itself fails it, and a send whose answer
never came is left uncertain, not sent again.
"""

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from mailfleet_common import topology
from mailfleet_sender.gmail import classify_answer, next_utc_midnight, retry_after_s
from mailfleet_sender.settings import Settings
from prometheus_client import REGISTRY

from tests.doubles import gmail_errors
from tests.doubles.google import GoogleDouble
from tests.doubles.oauth import OAuthClient
from tests.sender.conftest import (
    GMAIL_SEND,
    account_state,
    attempts_of,
    drain_queue,
    held_state,
    insert_campaign,
    insert_messages,
    insert_oauth_account,
    publish_batch,
    reassign,
    running_sender,
    settled,
    statuses,
    wait_for,
)

ALICE = "alice@fleet.example.com"
BOB = "bob@fleet.example.com"


@dataclass
class GmailFleet:
    """Gmail-API accounts at the Google double, and commands for them."""

    db: Any
    crypto_keys: str
    rabbit_url: str
    google: GoogleDouble
    client: OAuthClient
    settings: Settings

    async def account(self, address: str = ALICE) -> tuple[uuid.UUID, str]:
        """A Gmail-API account of `address` and its refresh token."""
        refresh = self.google.issue_refresh_token(self.client, address, [GMAIL_SEND])
        account = await insert_oauth_account(self.db, self.crypto_keys, "google", refresh, address)
        return account, refresh

    async def command(
        self, account: uuid.UUID, count: int, campaign: uuid.UUID | None = None
    ) -> list[int]:
        """`count` messages assigned to the account, and the command to send them."""
        campaign = campaign or await insert_campaign(self.db)
        recipients: list[str | tuple[str, str | None]] = [
            f"r{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(count)
        ]
        ids = await insert_messages(self.db, campaign, account, recipients)
        await publish_batch(self.rabbit_url, account, ids)
        return ids


@pytest.fixture
def fleet(
    db: Any,
    crypto_keys: str,
    rabbit_url: str,
    google: GoogleDouble,
    google_client: OAuthClient,
    oauth_settings: Settings,
) -> GmailFleet:
    return GmailFleet(db, crypto_keys, rabbit_url, google, google_client, oauth_settings)


def _gmail_requests(outcome: str) -> float:
    value = REGISTRY.get_sample_value("mailfleet_sender_gmail_requests_total", {"outcome": outcome})
    return value or 0.0


async def _attempt_reports(rabbit_url: str, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    async def enough() -> bool:
        for batch in await drain_queue(rabbit_url, topology.SEND_ATTEMPT_QUEUE.name):
            found.extend(batch["attempts"])
        return len(found) >= count

    await wait_for(enough)
    return sorted(found, key=lambda a: (a["message_id"], a["attempt"]))


async def test_a_message_is_sent_once_with_the_same_message_id_across_a_server_error(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, _ = await fleet.account()
    google.gmail.fail_next_sends(1, gmail_errors.BACKEND_ERROR)
    async with running_sender(fleet.settings):
        await drain_queue(rabbit_url, topology.SEND_ATTEMPT_QUEUE.name)
        ids = await fleet.command(account, 1)
        await wait_for(lambda: settled(db, ids, "deferred"))
        first = await db.fetchrow("SELECT message_id, last_error FROM messages WHERE id = $1", *ids)
        assert "backendError" in first["last_error"]
        assert google.gmail.sent == []
        await reassign(db, account, ids)
        await publish_batch(rabbit_url, account, ids)
        await wait_for(lambda: settled(db, ids))
        # A repeated command finds it sent: nothing goes out again.
        await publish_batch(rabbit_url, account, ids)
        await asyncio.sleep(0.5)

    [sent] = google.gmail.sent
    assert sent.message_id == first["message_id"]
    assert sent.user == ALICE
    assert sent.recipients == [await db.fetchval("SELECT email FROM messages WHERE id = $1", *ids)]
    assert await attempts_of(db, ids) == [2]
    reports = await _attempt_reports(rabbit_url, 2)
    assert [(a["attempt"], a["outcome"]) for a in reports] == [(1, "deferred"), (2, "sent")]
    assert sent.id in reports[1]["detail"]


async def test_a_quota_refusal_holds_only_that_account_while_another_keeps_sending(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    alice, _ = await fleet.account(ALICE)
    bob, _ = await fleet.account(BOB)
    retry_at = datetime.now(UTC) + timedelta(seconds=2)
    stamp = retry_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    google.gmail.fail_next_sends(1, gmail_errors.user_rate_limited(429, stamp), user=ALICE)
    async with running_sender(fleet.settings):
        held_ids = await fleet.command(alice, 1)
        other_ids = await fleet.command(bob, 3)
        await wait_for(lambda: settled(db, other_ids))
        state = await wait_for(lambda: held_state(db, alice))
        # Gmail's "Retry after" is honoured; the message went back unburned.
        assert state["held_until"] >= retry_at - timedelta(milliseconds=300)
        assert "rateLimitExceeded" in state["held_reason"]
        assert await statuses(db, held_ids) == ["assigned"]
        assert await attempts_of(db, held_ids) == [0]
        assert (await account_state(db, bob))["held_until"] is None
        # Once the wait is over, the same command sends it.
        await wait_for(lambda: settled(db, held_ids), within=10)

    assert sorted(m.user for m in google.gmail.sent) == [ALICE, BOB, BOB, BOB]
    assert await attempts_of(db, held_ids) == [1]


async def test_the_daily_sending_limit_holds_the_account_until_the_next_utc_midnight(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, _ = await fleet.account()
    google.gmail.daily_send_limit = 1
    async with running_sender(fleet.settings):
        ids = await fleet.command(account, 3)
        state = await wait_for(lambda: held_state(db, account))
        await wait_for(lambda: _statuses_are(db, ids, ["sent", "assigned", "assigned"]))

    midnight = next_utc_midnight(datetime.now(UTC))
    # At midnight, plus at most the jitter spreading the accounts refused together.
    assert midnight <= state["held_until"] <= midnight + timedelta(seconds=1)
    assert "dailyLimitExceeded" in state["held_reason"]
    assert state["status"] == "active"
    # Nothing burned: the others wait, assigned, for the dispatcher to hand them on.
    assert await attempts_of(db, ids) == [1, 0, 0]
    assert len(google.gmail.sent) == 1


async def _statuses_are(db: Any, ids: list[int], wanted: list[str]) -> bool:
    return await statuses(db, ids) == wanted


async def test_a_revoked_grant_pauses_the_account_for_consent_and_requeues_its_messages(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, refresh = await fleet.account()
    google.revoke_refresh_token(refresh)
    async with running_sender(fleet.settings):
        await drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name)
        ids = await fleet.command(account, 3)
        await wait_for(lambda: settled(db, ids, "queued"))

    state = await account_state(db, account)
    assert state["status"] == "paused"
    assert state["status_reason"].startswith("consent needed: ")
    assert await attempts_of(db, ids) == [0, 0, 0]
    events = await wait_for(lambda: drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name))
    assert [(e["account_id"], e["reason"]) for e in events] == [
        (str(account), state["status_reason"])
    ]
    assert google.gmail.sent == []


async def test_a_timeout_after_gmail_received_the_message_leaves_it_uncertain(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, _ = await fleet.account()
    # Received and sent by Gmail, answered after the sender's 1 s timeout.
    google.gmail.delay_next_sends(1, 2.5)
    before = _gmail_requests("uncertain")
    async with running_sender(fleet.settings):
        ids = await fleet.command(account, 2)
        await wait_for(lambda: _statuses_are(db, ids, ["uncertain", "sent"]))
        # A repeated command does not send it again.
        await publish_batch(rabbit_url, account, ids)
        await asyncio.sleep(0.5)

    assert await statuses(db, ids) == ["uncertain", "sent"]
    assert len(google.gmail.sent) == 2
    row = await db.fetchrow("SELECT last_error, attempts FROM messages WHERE id = $1", ids[0])
    assert "no answer after the request was sent" in row["last_error"]
    assert row["attempts"] == 1
    assert _gmail_requests("uncertain") == before + 1


async def test_a_revoked_access_token_is_refreshed_once_and_the_message_sent(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, _ = await fleet.account()
    campaign = await insert_campaign(db)
    refused = _gmail_requests("unauthorized")
    async with running_sender(fleet.settings):
        first = await fleet.command(account, 1, campaign)
        await wait_for(lambda: settled(db, first))
        # The cached access token is revoked (a password change), the grant still holds.
        with google.tokens.lock:
            live = list(google.tokens.access_tokens)
        for token in live:
            google.tokens.revoke(token)
        second = await fleet.command(account, 1, campaign)
        await wait_for(lambda: settled(db, second))

    assert _gmail_requests("unauthorized") == refused + 1
    refreshes = [r for r in google.tokens.requests if r.grant_type == "refresh_token"]
    assert len(refreshes) == 2  # the first token, and one after the refusal
    assert len(google.gmail.sent) == 2
    assert await attempts_of(db, first + second) == [1, 1]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (gmail_errors.INSUFFICIENT_SCOPES, "insufficientPermissions"),
        (gmail_errors.FAILED_PRECONDITION, "failedPrecondition"),
    ],
)
async def test_a_configuration_refusal_pauses_the_account_and_gives_the_message_back(
    error: gmail_errors.GmailError,
    reason: str,
    db: Any,
    rabbit_url: str,
    google: GoogleDouble,
    fleet: GmailFleet,
) -> None:
    account, _ = await fleet.account()
    google.gmail.fail_next_sends(1, error)
    async with running_sender(fleet.settings):
        ids = await fleet.command(account, 2)
        await wait_for(lambda: settled(db, ids, "queued"))

    state = await account_state(db, account)
    assert state["status"] == "paused"
    assert reason in state["status_reason"]
    assert await attempts_of(db, ids) == [0, 0]
    assert google.gmail.sent == []


async def test_a_message_gmail_refuses_as_invalid_fails_and_the_next_is_sent(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    account, _ = await fleet.account()
    google.gmail.fail_next_sends(1, gmail_errors.invalid_argument("Invalid To header"))
    async with running_sender(fleet.settings):
        ids = await fleet.command(account, 2)
        await wait_for(lambda: _statuses_are(db, ids, ["failed", "sent"]))

    row = await db.fetchrow("SELECT last_error FROM messages WHERE id = $1", ids[0])
    assert "Invalid To header" in row["last_error"]
    assert (await account_state(db, account))["status"] == "active"


async def test_sends_of_one_account_are_spaced_to_stay_within_its_quota(
    db: Any, rabbit_url: str, google: GoogleDouble, fleet: GmailFleet
) -> None:
    # 30,000 units a minute at 100 a send: one send every 0.2 s, across both slots.
    paced = fleet.settings.model_copy(
        update={
            "sender": fleet.settings.sender.model_copy(
                update={"gmail_units_per_minute": 30_000, "max_connections_per_account": 2}
            )
        }
    )
    account, _ = await fleet.account()
    async with running_sender(paced):
        ids = await fleet.command(account, 5)
        await wait_for(lambda: settled(db, ids))

    times = sorted(m.at for m in google.gmail.sent)
    assert len(times) == 5
    # Turns start 0.2 s apart; arrivals vary by a request's own latency (the first one also
    # fetched the token), never enough to bunch two sends together.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[-1] - times[0] >= 4 * 0.2 - 0.1, gaps
    assert min(gaps) >= 0.1, gaps


def test_the_wait_gmail_names_is_read_from_retry_after_or_from_its_message() -> None:
    now = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    seconds = httpx.Response(429, headers={"Retry-After": "7"})
    date = httpx.Response(429, headers={"Retry-After": "Sun, 06 Dec 2026 06:00:30 GMT"})
    text = "User-rate limit exceeded.  Retry after 2026-12-06T06:01:00.000Z"
    assert retry_after_s(seconds, "", now) == 7
    assert retry_after_s(date, "", now) == 30
    assert retry_after_s(httpx.Response(429), text, now) == 60
    assert retry_after_s(httpx.Response(429), "Too many concurrent requests for user", now) == 0


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "temporary"),
        (httpx.Response(403, text=""), "config"),
        (gmail_errors.DELEGATION_DENIED, "config"),
        (gmail_errors.RATE_LIMIT, "throttled"),
        (gmail_errors.DAILY_LIMIT, "throttled"),
    ],
)
def test_odd_and_quota_answers_never_fail_the_message(
    response: httpx.Response | gmail_errors.GmailError, verdict: str
) -> None:
    if isinstance(response, gmail_errors.GmailError):
        answer = response.response()
        response = httpx.Response(answer.status_code, content=answer.body)
    result, _ = classify_answer(response, datetime.now(UTC))
    assert result.verdict == verdict
