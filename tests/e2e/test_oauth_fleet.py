"""A fleet of SMTP-password, SMTP-OAuth2 (Microsoft 365) and Gmail-API accounts, on real processes.

The api, dispatcher and senders run as processes; Google's and Microsoft's token endpoints and
the Gmail API are the doubles of tests/doubles (real HTTP servers in this process), password
accounts deliver to the capture server and OAuth2 SMTP accounts to an aiosmtpd peer that takes
only the access tokens the Microsoft double issued. Accounts are created and connected through
the HTTP API, as an operator would.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any, TypeAlias

import asyncpg
import httpx
import pytest

from tests.doubles import gmail_errors
from tests.doubles.fixtures import *  # noqa: F403
from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble
from tests.doubles.oauth import OAuthClient
from tests.e2e.conftest import FAST_ENV, campaign_counts, create_account, start_campaign, wait_until
from tests.e2e.test_delivery import replica_id
from tests.oauth_tokens import ProviderTokens
from tests.smtp_peer import SmtpPeer
from tests.stack import Sink, Stack

pytestmark = pytest.mark.slow

TENANT = "contoso.onmicrosoft.com"
GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_MODIFY = "https://www.googleapis.com/auth/gmail.modify"
OUTLOOK_SMTP = "https://outlook.office.com/SMTP.Send"
OUTLOOK_IMAP = "https://outlook.office.com/IMAP.AccessAsUser.All"

Db: TypeAlias = "asyncpg.Connection[asyncpg.Record]"


@dataclass
class Providers:
    google: GoogleDouble
    microsoft: MicrosoftDouble
    google_client: OAuthClient
    microsoft_client: OAuthClient
    peer: SmtpPeer  # Exchange Online's SMTP submission, as far as XOAUTH2 goes


@pytest.fixture
def providers(google: GoogleDouble, microsoft: MicrosoftDouble) -> Iterator[Providers]:
    peer = SmtpPeer(tokens=ProviderTokens(microsoft.tokens), oauth_errors="microsoft").start()
    yield Providers(google, microsoft, google.add_client(), microsoft.add_client(TENANT), peer)
    peer.stop()


@pytest.fixture
async def oauth_stack(
    db: Db, database_dsn: str, rabbit_url: str, crypto_keys: str, providers: Providers
) -> AsyncIterator[Stack]:
    env = {
        **FAST_ENV,
        "MAILFLEET_OAUTH__GOOGLE__TOKEN_URI": providers.google.token_uri,
        "MAILFLEET_OAUTH__GOOGLE__CLIENT_ID": providers.google_client.client_id,
        "MAILFLEET_OAUTH__GOOGLE__CLIENT_SECRET": providers.google_client.secret or "",
        "MAILFLEET_OAUTH__MICROSOFT__TOKEN_URI": providers.microsoft.token_uri(TENANT),
        "MAILFLEET_OAUTH__MICROSOFT__CLIENT_ID": providers.microsoft_client.client_id,
        "MAILFLEET_OAUTH__MICROSOFT__CLIENT_SECRET": providers.microsoft_client.secret or "",
        "MAILFLEET_GMAIL__API_URL": providers.google.gmail_url,
        # Gmail-API accounts paced at 10 sends/s; the double's quota stays Google's.
        "MAILFLEET_SENDER__GMAIL_UNITS_PER_MINUTE": "60000",
        "MAILFLEET_SENDER__CONNECT_BACKOFF_BASE_S": "0.5",
        "MAILFLEET_SENDER__CONNECT_BACKOFF_CAP_S": "4",
    }
    async with Stack(
        postgres_dsn=database_dsn, rabbit_url=rabbit_url, crypto_keys=crypto_keys, env=env
    ) as running:
        yield running


@dataclass
class Fleet:
    sink: Sink
    providers: Providers
    client: httpx.AsyncClient
    password: list[str]
    smtp_oauth: list[str]
    gmail: list[str]
    gmail_refresh: dict[str, str]  # account id -> its refresh token
    address: dict[str, str]  # account id -> mailbox

    @property
    def all(self) -> list[str]:
        return [*self.password, *self.smtp_oauth, *self.gmail]

    def deliveries(self) -> list[tuple[str, str, str]]:
        """(recipient, Message-ID, where) for every message any server accepted."""
        found = [
            (rcpt, str(r["message_id"]), "sink")
            for r in self.sink.records()
            for rcpt in r["recipients"]
        ]
        found += [
            (r.recipient, r.message_id, "smtp-oauth") for r in self.providers.peer.handler.received
        ]
        found += [
            (parseaddr(str(m.message["To"]))[1], m.message_id, "gmail")
            for m in self.providers.google.gmail.sent
        ]
        return found


async def _connect(client: httpx.AsyncClient, account_id: str, body: dict[str, Any]) -> None:
    response = await client.post(f"/api/admin/accounts/{account_id}/oauth", json=body)
    assert response.status_code in (200, 201, 204), response.text


async def _fleet(
    stack: Stack, providers: Providers, client: httpx.AsyncClient, min_gap_ms: int = 0
) -> Fleet:
    sink = await stack.start_sink()
    fleet = Fleet(sink, providers, client, [], [], [], {}, {})
    for i in range(2):
        account = await create_account(client, f"pw{i}", sink.port, min_gap_ms=min_gap_ms)
        fleet.password.append(account["id"])
    for i in range(2):
        mailbox = f"m365-{i}@contoso.example.com"
        response = await client.post(
            "/api/admin/accounts",
            json={
                "name": f"m365-{i}",
                "kind": "smtp",
                "auth_kind": "oauth2",
                "smtp_host": "127.0.0.1",
                "smtp_port": providers.peer.port,
                "smtp_tls": "none",
                "smtp_username": mailbox,
                "from_email": mailbox,
                "daily_limit": 10_000,
                "min_gap_ms": min_gap_ms,
            },
        )
        assert response.status_code == 201, response.text
        account = response.json()
        assert account["status"] == "paused"  # until it is connected
        refresh = providers.microsoft.issue_refresh_token(
            # What the settings ask on every refresh (Microsoft wants them each time).
            providers.microsoft_client,
            mailbox,
            ["offline_access", OUTLOOK_SMTP, OUTLOOK_IMAP],
        )
        await _connect(client, account["id"], {"provider": "microsoft", "refresh_token": refresh})
        fleet.smtp_oauth.append(account["id"])
        fleet.address[account["id"]] = mailbox
    for i in range(2):
        mailbox = f"gmail-{i}@fleet.example.com"
        response = await client.post(
            "/api/admin/accounts",
            json={
                "name": f"gmail-{i}",
                "kind": "gmail-api",
                "from_email": mailbox,
                "daily_limit": 10_000,
                "min_gap_ms": min_gap_ms,
            },
        )
        assert response.status_code == 201, response.text
        account = response.json()
        refresh = providers.google.issue_refresh_token(
            providers.google_client, mailbox, [GMAIL_SEND, GMAIL_MODIFY]
        )
        await _connect(client, account["id"], {"provider": "google", "refresh_token": refresh})
        fleet.gmail.append(account["id"])
        fleet.gmail_refresh[account["id"]] = refresh
        fleet.address[account["id"]] = mailbox
    for account_id in fleet.all:
        shown = (await client.get(f"/api/admin/accounts/{account_id}")).json()
        assert shown["status"] == "active", shown  # connected: resumed by itself
    return fleet


def _assert_exactly_once(fleet: Fleet, emails: list[str], uncertain: set[str]) -> Counter[str]:
    """Each recipient got one message at most, every one not `uncertain` got exactly one."""
    deliveries = fleet.deliveries()
    per_recipient = Counter(rcpt for rcpt, _, _ in deliveries)
    twice = [rcpt for rcpt, n in per_recipient.items() if n > 1]
    assert not twice, f"recipients that got two messages: {twice[:5]}"
    message_ids = [mid for _, mid, _ in deliveries]
    assert len(message_ids) == len(set(message_ids)), "a message reached a server twice"
    missing = set(emails) - set(per_recipient) - uncertain
    assert not missing, f"lost: {sorted(missing)[:5]}"
    return Counter(where for _, _, where in deliveries)


async def _statuses(db: Db) -> dict[str, int]:
    return dict(await db.fetch("SELECT status, count(*) FROM messages GROUP BY status"))


async def test_a_mixed_fleet_delivers_exactly_once_though_a_sender_is_killed(
    oauth_stack: Stack, providers: Providers, db: Db
) -> None:
    stack = oauth_stack
    await stack.start_api()
    await stack.start_dispatcher()
    senders = [await stack.start_sender({"MAILFLEET_LOG_LEVEL": "INFO"}) for _ in range(2)]
    replica_of = {replica_id(sender): sender for sender in senders}
    async with aclosing(await stack.admin_client()) as client:
        fleet = await _fleet(stack, providers, client)
        emails = [f"person{i}@example.org" for i in range(900)]
        campaign_id = await start_campaign(client, fleet.all, emails)

        async def third_sent() -> bool:
            return (await campaign_counts(client, campaign_id)).get("sent", 0) >= 300

        await wait_until(third_sent, 90, "300 messages sent")
        dead = await db.fetchval(
            "SELECT sender_replica FROM messages WHERE status = 'sent' "
            "GROUP BY sender_replica ORDER BY count(*) DESC LIMIT 1"
        )
        await replica_of[dead].kill()

        async def settled() -> bool:
            counts = await campaign_counts(client, campaign_id)
            return counts.get("sent", 0) + counts.get("uncertain", 0) == len(emails)

        await wait_until(settled, 180, "every message sent or uncertain")

    await asyncio.sleep(1.0)  # anything extra would have arrived by now
    statuses = await _statuses(db)
    assert set(statuses) <= {"sent", "uncertain"}, statuses
    # At most the message in hand on each account the dead replica was delivering for.
    assert statuses.get("uncertain", 0) <= len(fleet.all)
    uncertain = {
        r["email"] for r in await db.fetch("SELECT email FROM messages WHERE status = 'uncertain'")
    }
    where = _assert_exactly_once(fleet, emails, uncertain)
    # Every kind of account took part.
    assert min(where[kind] for kind in ("sink", "smtp-oauth", "gmail")) > 0, where
    sent = await db.fetch(
        "SELECT m.message_id, a.kind, a.auth_kind FROM messages m "
        "JOIN accounts a ON a.id = m.account_id WHERE m.status = 'sent'"
    )
    delivered = {mid for _, mid, _ in fleet.deliveries()}
    assert {r["message_id"] for r in sent} <= delivered, "a message marked sent never arrived"
    kinds = Counter((r["kind"], r["auth_kind"]) for r in sent)
    assert set(kinds) == {("smtp", "password"), ("smtp", "oauth2"), ("gmail-api", "oauth2")}
    # The Microsoft peer saw XOAUTH2 logins of both mailboxes, nothing refused.
    assert set(providers.peer.handler.logins) == {fleet.address[a] for a in fleet.smtp_oauth}
    assert providers.peer.handler.refused_tokens == []


async def test_a_revoked_grant_pauses_one_account_and_a_quota_429_slows_one_account(
    oauth_stack: Stack, providers: Providers, db: Db
) -> None:
    stack = oauth_stack
    google = providers.google
    await stack.start_api()
    await stack.start_dispatcher()
    await stack.start_sender()
    async with aclosing(await stack.admin_client()) as client:
        # Every account paced at 10 sends/s, so that all still have work once the hold ends.
        fleet = await _fleet(stack, providers, client, min_gap_ms=100)
        revoked, throttled = fleet.gmail
        emails = [f"person{i}@example.org" for i in range(1200)]
        campaign_id = await start_campaign(client, fleet.all, emails)

        async def both_sending() -> bool:
            per_user = Counter(m.user for m in google.gmail.sent)
            return all(per_user[fleet.address[a]] >= 5 for a in fleet.gmail)

        await wait_until(both_sending, 60, "both Gmail accounts sending", every_s=0.05)
        # One user's grant is revoked (with the access tokens minted from it); the other's
        # quota is spent for the next 3 s, as Gmail answers it: 429 "Retry after <time>".
        google.revoke_refresh_token(fleet.gmail_refresh[revoked])
        retry_at = datetime.now(UTC) + timedelta(seconds=3)
        stamp = retry_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        google.gmail.fail_next_sends(
            1, gmail_errors.user_rate_limited(429, stamp), user=fleet.address[throttled]
        )
        refused_at = time.time()

        async def settled() -> bool:
            counts = await campaign_counts(client, campaign_id)
            return counts.get("sent", 0) == len(emails)

        await wait_until(settled, 180, "every message sent")
        accounts = {a: (await client.get(f"/api/admin/accounts/{a}")).json() for a in fleet.all}

    await asyncio.sleep(1.0)
    assert await _statuses(db) == {"sent": len(emails)}
    _assert_exactly_once(fleet, emails, set())

    # The revoked account alone is paused, for consent; its messages went to the others.
    paused = {a for a, shown in accounts.items() if shown["status"] != "active"}
    assert paused == {revoked}
    assert accounts[revoked]["status_reason"].startswith("consent needed")
    assert accounts[revoked]["oauth"]["consent"] == "needed"
    after_pause = await db.fetchval(
        "SELECT count(*) FROM messages "
        "WHERE account_id = $1 AND sent_at > to_timestamp($2::float8 + 1)",
        revoked,
        refused_at,
    )
    assert after_pause == 0

    # The throttled account waited out Gmail's time, and only it: the others kept sending.
    sends = sorted(
        m.at for m in google.gmail.sent if m.user == fleet.address[throttled] and m.at > refused_at
    )
    assert sends, "the throttled account never sent again"
    assert sends[0] >= retry_at.timestamp() - 0.2, "sent again before Gmail's retry time"
    others_meanwhile = await db.fetchval(
        "SELECT count(*) FROM messages WHERE account_id <> ALL($1::uuid[]) "
        "AND sent_at BETWEEN to_timestamp($2::float8) AND to_timestamp($3::float8)",
        [revoked, throttled],
        refused_at,
        retry_at.timestamp(),
    )
    assert others_meanwhile >= 20, "the other accounts stalled with the throttled one"
    assert accounts[throttled]["status"] == "active"
