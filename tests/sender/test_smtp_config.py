"""An account's SMTP configuration errors pause it; an unreachable server holds it.

Nothing was sent in either case, so the messages go back to the queue with no attempt counted,
and the number of connections tried stays bounded however many messages wait.
"""

import asyncio
import errno
import json
import os
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from mailfleet_common import topology
from mailfleet_common.crypto import generate_key
from mailfleet_sender.settings import Settings
from mailfleet_sender.smtp import SmtpEndpoint, SmtpResult, classify_open_failure
from prometheus_client import REGISTRY

from tests.bouncer.servers import write_certificates
from tests.sender.conftest import (
    drain_queue,
    insert_account,
    insert_campaign,
    insert_messages,
    publish_batch,
    running_sender,
    settled,
    statuses,
    wait_for,
)
from tests.smtp_peer import SmtpPeer, _free_port


def _tuned(settings: Settings, **sender: Any) -> Settings:
    return settings.model_copy(
        update={"sender": settings.sender.model_copy(update=sender)}, deep=True
    )


@pytest.fixture
def server_tls(tmp_path: Path) -> ssl.SSLContext:
    """A server context whose certificate comes from a CA the sender does not trust."""
    _, cert, key = write_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def no_auth_peer() -> Iterator[SmtpPeer]:
    """A server that offers no AUTH (as aiosmtpd does on a connection without TLS)."""
    peer = SmtpPeer(auth=False).start()
    yield peer
    peer.stop()


async def _paused_reason(db: Any, account: uuid.UUID) -> str | None:
    row = await db.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account)
    return str(row["status_reason"]) if row["status"] == "paused" else None


async def _attempts(db: Any, ids: list[int]) -> list[int]:
    rows = await db.fetch(
        "SELECT attempts FROM messages WHERE id = ANY($1::bigint[]) ORDER BY id", ids
    )
    return [row["attempts"] for row in rows]


def _connects(outcome: str) -> float:
    """Sessions the sender tried to open (mailfleet_sender_smtp_connects_total), by outcome."""
    value = REGISTRY.get_sample_value("mailfleet_sender_smtp_connects_total", {"outcome": outcome})
    return value or 0.0


async def _misconfigured(
    db: Any, rabbit_url: str, port: int, count: int = 5, **account: Any
) -> tuple[uuid.UUID, list[int]]:
    """An account with `count` messages commanded (the sender running), and no pause seen."""
    await drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name)
    account_id = await insert_account(db, port, **account)
    campaign = await insert_campaign(db)
    ids = await insert_messages(
        db, campaign, account_id, [f"r{i}-{uuid.uuid4().hex[:6]}@example.org" for i in range(count)]
    )
    await publish_batch(rabbit_url, account_id, ids)
    return account_id, ids


async def _expect_paused_with_messages_requeued(
    db: Any, rabbit_url: str, account: uuid.UUID, ids: list[int], reason: str
) -> str:
    text = await wait_for(lambda: _paused_reason(db, account))
    assert reason in text
    await wait_for(lambda: settled(db, ids, "queued"))
    assert await _attempts(db, ids) == [0] * len(ids)
    rows = await db.fetch(
        "SELECT account_id, last_error FROM messages WHERE id = ANY($1::bigint[])", ids
    )
    assert all(row["account_id"] is None for row in rows)
    events = await wait_for(lambda: drain_queue(rabbit_url, topology.ACCOUNT_PAUSED_QUEUE.name))
    assert [e["account_id"] for e in events] == [str(account)]
    assert reason in events[0]["reason"]
    recorded = await db.fetch(
        "SELECT occurred_at, data FROM events WHERE type = 'account-paused' AND account_id = $1",
        account,
    )
    assert [(r["occurred_at"].isoformat(), json.loads(r["data"])) for r in recorded] == [
        (events[0]["paused_at"].replace("Z", "+00:00"), {"reason": text, "source": "sender"})
    ]
    return str(text)


async def _pause_reason(
    settings: Settings, db: Any, rabbit_url: str, port: int, expected: str, **account: Any
) -> str:
    """Send through a misconfigured account; it must pause with `expected` in its reason."""
    async with running_sender(settings):
        account_id, ids = await _misconfigured(db, rabbit_url, port, **account)
        return await _expect_paused_with_messages_requeued(
            db, rabbit_url, account_id, ids, expected
        )


async def test_credentials_for_a_server_without_auth_pause_the_account_after_one_connection(
    settings: Settings, db: Any, no_auth_peer: SmtpPeer, rabbit_url: str, crypto_keys: str
) -> None:
    reason = await _pause_reason(
        settings,
        db,
        rabbit_url,
        no_auth_peer.port,
        "does not offer AUTH",
        crypto_keys=crypto_keys,
        username="u",
        password="p",
    )

    assert "username" in reason
    assert no_auth_peer.handler.ehlos == 1
    assert no_auth_peer.handler.received == []


async def test_starttls_not_offered_pauses_the_account(
    settings: Settings, db: Any, no_auth_peer: SmtpPeer, rabbit_url: str
) -> None:
    await _pause_reason(
        settings, db, rabbit_url, no_auth_peer.port, "does not offer STARTTLS", tls="starttls"
    )

    assert no_auth_peer.handler.received == []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_an_untrusted_certificate_pauses_the_account(
    settings: Settings, db: Any, rabbit_url: str, server_tls: ssl.SSLContext, tls: str
) -> None:
    peer = SmtpPeer(tls=tls, ssl_context=server_tls).start()
    try:
        reason = await _pause_reason(settings, db, rabbit_url, peer.port, "TLS", tls=tls)
    finally:
        peer.stop()

    assert "certificate" in reason.lower()
    assert peer.handler.received == []


@pytest.mark.parametrize(("tls", "ehlos"), [("starttls", 2), ("implicit", 1)])
async def test_an_account_over_tls_logs_in_and_delivers(
    settings: Settings,
    db: Any,
    rabbit_url: str,
    server_tls: ssl.SSLContext,
    crypto_keys: str,
    tls: str,
    ehlos: int,
) -> None:
    peer = SmtpPeer(tls=tls, ssl_context=server_tls).start()
    # The tests' CA is in no trust store: this checks the TLS and login steps, not the chain.
    tuned = _tuned(settings, smtp_validate_certs=False)
    try:
        async with running_sender(tuned):
            account = await insert_account(
                db, peer.port, crypto_keys=crypto_keys, username="u", password="p", tls=tls
            )
            campaign = await insert_campaign(db)
            ids = await insert_messages(db, campaign, account, ["a@example.org", "b@example.org"])
            await publish_batch(rabbit_url, account, ids)
            await wait_for(lambda: settled(db, ids))
    finally:
        peer.stop()

    assert peer.handler.logins == ["u"]
    assert peer.handler.ehlos == ehlos  # STARTTLS: EHLO again once TLS is on (RFC 3207)
    assert len(peer.handler.received) == 2


async def test_tls_to_a_server_that_does_not_speak_it_pauses_the_account(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    reason = await _pause_reason(settings, db, rabbit_url, smtp_peer.port, "TLS", tls="implicit")

    assert "handshake" in reason


async def test_a_password_the_configured_keys_cannot_decrypt_pauses_the_account(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    reason = await _pause_reason(
        settings,
        db,
        rabbit_url,
        smtp_peer.port,
        "cannot be decrypted",
        crypto_keys=generate_key(),
        username="u",
        password="p",
    )

    assert "MAILFLEET_CRYPTO__KEYS" in reason
    assert smtp_peer.handler.ehlos == 0


async def test_an_unreachable_server_holds_the_account_without_burning_attempts(
    settings: Settings, db: Any, rabbit_url: str
) -> None:
    # Nothing listens on the port until the peer starts there.
    later = SmtpPeer(port=_free_port())
    tuned = _tuned(
        settings,
        connect_backoff_base_s=0.2,
        connect_backoff_cap_s=0.4,
        connect_failures_to_pause=50,
    )
    before = _connects("unreachable")
    try:
        async with running_sender(tuned):
            account, ids = await _misconfigured(db, rabbit_url, later.port, count=4)
            await wait_for(lambda: _unreachable_since(before, 3))
            started = asyncio.get_running_loop().time()
            await asyncio.sleep(1.2)
            tried = _connects("unreachable") - before
            # One connection at a time, then a wait: not one per message.
            assert tried <= 3 + 1.2 / 0.2 + 1
            assert await statuses(db, ids) == ["assigned"] * 4
            assert await _attempts(db, ids) == [0] * 4
            assert await _paused_reason(db, account) is None
            last_error = await db.fetchval("SELECT last_error FROM messages WHERE id = $1", ids[0])
            assert "connect" in last_error.lower()
            # The wait is on the account, for the dispatcher and the operator to see.
            held = await db.fetchrow(
                "SELECT held_until IS NOT NULL AS waiting, held_reason FROM accounts WHERE id = $1",
                account,
            )
            assert held["waiting"] is True
            assert "connect" in held["held_reason"].lower()

            later.start()
            await wait_for(lambda: settled(db, ids))
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        later.stop()

    assert await _attempts(db, ids) == [1] * 4
    assert len(later.handler.received) == 4


async def _unreachable_since(before: float, count: int) -> bool:
    return _connects("unreachable") - before >= count


async def test_a_server_unreachable_over_the_threshold_pauses_the_account(
    settings: Settings, db: Any, rabbit_url: str
) -> None:
    tuned = _tuned(settings, connect_backoff_base_s=0.05, connect_failures_to_pause=3)
    before = _connects("unreachable")

    reason = await _pause_reason(tuned, db, rabbit_url, _free_port(), "unreachable", count=6)

    assert "3 tries" in reason
    assert _connects("unreachable") - before == 3


async def test_resuming_a_fixed_account_delivers_its_messages(
    settings: Settings,
    db: Any,
    no_auth_peer: SmtpPeer,
    smtp_peer: SmtpPeer,
    rabbit_url: str,
    crypto_keys: str,
) -> None:
    async with running_sender(settings):
        account, ids = await _misconfigured(
            db, rabbit_url, no_auth_peer.port, crypto_keys=crypto_keys, username="u", password="p"
        )
        await wait_for(lambda: _paused_reason(db, account))
        await wait_for(lambda: settled(db, ids, "queued"))

        # The operator points the account at a server with AUTH and resumes it; the
        # dispatcher assigns its messages again.
        await db.execute(
            "UPDATE accounts SET smtp_port = $2, status = 'active', status_reason = NULL, "
            "updated_at = now() WHERE id = $1",
            account,
            smtp_peer.port,
        )
        await db.execute(
            "UPDATE messages SET status = 'assigned', account_id = $1, assigned_at = now() "
            "WHERE id = ANY($2::bigint[])",
            account,
            ids,
        )
        await publish_batch(rabbit_url, account, ids)
        await wait_for(lambda: settled(db, ids))

    assert len(smtp_peer.handler.received) == len(ids)
    assert smtp_peer.handler.logins == ["u"]
    assert await _attempts(db, ids) == [1] * len(ids)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_many_misconfigured_accounts_open_a_bounded_number_of_connections(
    settings: Settings,
    db: Any,
    no_auth_peer: SmtpPeer,
    rabbit_url: str,
    crypto_keys: str,
    server_tls: ssl.SSLContext,
) -> None:
    tls_peer = SmtpPeer(tls="implicit", ssl_context=server_tls).start()
    tuned = _tuned(
        settings, connect_backoff_base_s=0.05, connect_failures_to_pause=3, max_connecting=4
    )
    per_kind, messages = 15, 20
    campaign = await insert_campaign(db)
    accounts: list[uuid.UUID] = []
    batches: list[tuple[uuid.UUID, list[int]]] = []
    for kind in ("refused", "no-auth", "bad-tls"):
        for _ in range(per_kind):
            port = {"refused": _free_port(), "no-auth": no_auth_peer.port}.get(kind, tls_peer.port)
            account = await insert_account(
                db,
                port,
                crypto_keys=crypto_keys,
                username="u",
                password="p",
                tls="implicit" if kind == "bad-tls" else "none",
            )
            ids = await insert_messages(
                db,
                campaign,
                account,
                [f"m{i}-{account.hex[:8]}@example.org" for i in range(messages)],
            )
            accounts.append(account)
            batches.append((account, ids))
    before = {kind: _connects(kind) for kind in ("ok", "unreachable", "config")}
    baseline = _open_fds()
    peak = baseline
    try:
        async with running_sender(tuned):
            baseline = _open_fds()  # with the replica's own connections
            for account, ids in batches:
                await publish_batch(rabbit_url, account, ids)

            async def all_paused() -> bool:
                nonlocal peak
                peak = max(peak, _open_fds())
                count = await db.fetchval(
                    "SELECT count(*) FROM accounts WHERE id = ANY($1::uuid[]) "
                    "AND status = 'paused'",
                    accounts,
                )
                return bool(count == len(accounts))

            await wait_for(all_paused, within=30, interval=0.01)
    finally:
        tls_peer.stop()

    tried = {kind: _connects(kind) - value for kind, value in before.items()}
    # Three tries per refusing account, one per misconfigured one, nothing per message.
    assert tried == {"ok": 0, "unreachable": 3 * per_kind, "config": 2 * per_kind}
    assert no_auth_peer.handler.ehlos == per_kind
    # At most `max_connecting` sessions being opened (each end in this process), plus slack
    # for the database and broker connections the run may add.
    assert peak - baseline <= 2 * 4 + 10
    all_ids = [i for _, ids in batches for i in ids]
    assert set(await statuses(db, all_ids)) == {"queued"}
    assert set(await _attempts(db, all_ids)) == {0}


async def test_a_replica_keeps_at_most_max_sessions_open_across_its_accounts(
    settings: Settings, db: Any, smtp_peer: SmtpPeer, rabbit_url: str
) -> None:
    tuned = _tuned(settings, max_sessions=3)
    evicted = REGISTRY.get_sample_value("mailfleet_sender_smtp_sessions_evicted_total") or 0.0
    peak = 0.0
    campaign = await insert_campaign(db)
    batches = []
    for n in range(10):
        account = await insert_account(db, smtp_peer.port)
        ids = await insert_messages(
            db, campaign, account, [f"s{n}-{i}@example.org" for i in range(5)]
        )
        batches.append((account, ids))
    all_ids = [i for _, ids in batches for i in ids]

    async with running_sender(tuned):
        for account, ids in batches:
            await publish_batch(rabbit_url, account, ids)

        async def all_sent() -> bool:
            nonlocal peak
            peak = max(peak, REGISTRY.get_sample_value("mailfleet_sender_smtp_sessions") or 0.0)
            return await settled(db, all_ids)

        await wait_for(all_sent, within=30, interval=0.005)

    assert peak <= 3
    assert len(smtp_peer.handler.received) == 50
    # Sessions were closed to make room, and opened again when their account's turn came.
    assert (
        REGISTRY.get_sample_value("mailfleet_sender_smtp_sessions_evicted_total") or 0
    ) > evicted
    assert smtp_peer.handler.ehlos >= 10
    assert await _attempts(db, all_ids) == [1] * 50


def _failure(exc: Exception, tls: str = "none") -> SmtpResult:
    return classify_open_failure(SmtpEndpoint("mx.example", 25, tls, None, None), exc)


def test_running_out_of_file_descriptors_is_not_the_accounts_fault() -> None:
    cause = OSError(errno.EMFILE, "Too many open files")
    exc = aiosmtplib.SMTPConnectError("Error connecting to mx.example on port 25")
    exc.__cause__ = cause

    assert _failure(exc).verdict == "exhausted"


def test_a_failed_dns_lookup_means_unreachable_and_a_tls_failure_a_configuration_error() -> None:
    dns = aiosmtplib.SMTPConnectError("Error connecting to mx.example on port 25")
    dns.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    tls = aiosmtplib.SMTPConnectError("Error connecting to mx.example on port 465")
    tls.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")

    assert _failure(dns).verdict == "unreachable"
    assert "DNS" in _failure(dns).detail
    assert _failure(tls, "implicit").verdict == "config"
    assert "certificate not trusted" in _failure(tls, "implicit").detail
