"""IMAP over TLS against the real Dovecot: implicit TLS, STARTTLS, an untrusted CA, the replica.

Dovecot's certificate comes from a CA made up when it starts (``dovecot.ca_file``): a context
that loads it trusts the server, the default one (system CAs only) does not.
"""

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aioimaplib
import pytest
from aioimaplib import IMAP4
from mailfleet_bouncer.imap import Mailbox as ImapMailbox
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn

from tests.bouncer import rows
from tests.bouncer.servers import Dovecot, Mailbox
from tests.bouncer.test_mailbox import Imap, Published, bouncer_settings

TIMEOUT_S = 10.0


def _port(dovecot: Dovecot, tls: str) -> int:
    return dovecot.imaps_port if tls == "implicit" else dovecot.imap_port


@pytest.fixture
def trusting(dovecot: Dovecot) -> ssl.SSLContext:
    """Verifies as the bouncer does (certificate and host name), trusting the tests' CA."""
    return ssl.create_default_context(cafile=str(dovecot.ca_file))


@pytest.fixture
async def imap(mailbox: Mailbox) -> AsyncIterator[Imap]:
    """A plain IMAP session on the test's mailbox, to put messages in it."""
    session = await Imap.login(mailbox)
    yield session
    await session.close()


async def _connect(
    mailbox: Mailbox, host: str, port: int, tls: str, context: ssl.SSLContext
) -> ImapMailbox:
    return await ImapMailbox.connect(
        host,
        port,
        tls,
        mailbox.address,
        mailbox.password,
        timeout_s=TIMEOUT_S,
        ssl_context=context,
    )


async def _read_inbox(session: ImapMailbox, appended: bytes) -> None:
    selected = await session.select("INBOX")
    assert selected.exists == 1
    uids = await session.uids_after(0)
    assert len(uids) == 1
    [fetched] = await session.fetch(uids, 1 << 20)
    assert fetched.uid == uids[0]
    assert not fetched.truncated
    # Dovecot stores what was appended byte for byte.
    assert fetched.raw == appended


def _ssl_object(client: IMAP4) -> ssl.SSLObject | None:
    """The TLS state of a connection as it is now, None when it is in the clear."""
    ssl_object: ssl.SSLObject | None = client.protocol.transport.get_extra_info("ssl_object")
    return ssl_object


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_implicit_tls_logs_in_and_reads(
    dovecot: Dovecot, mailbox: Mailbox, imap: Imap, trusting: ssl.SSLContext, host: str
) -> None:
    message = rows.reply("someone@example.net", None, to=mailbox.address)
    await imap.append(message)

    session = await _connect(mailbox, host, dovecot.imaps_port, "implicit", trusting)
    try:
        ssl_object = _ssl_object(session._client)
        assert ssl_object is not None
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        assert session._client.protocol.state == "AUTH"
        await _read_inbox(session, message)
    finally:
        await session.close()


async def test_starttls_upgrades_the_plain_port_and_reads_the_capabilities_again(
    dovecot: Dovecot, mailbox: Mailbox, imap: Imap, trusting: ssl.SSLContext
) -> None:
    # In the clear, Dovecot offers STARTTLS ...
    assert "STARTTLS" in imap.client.protocol.capabilities
    assert _ssl_object(imap.client) is None
    message = rows.reply("someone@example.net", None, to=mailbox.address)
    await imap.append(message)

    session = await _connect(mailbox, dovecot.host, dovecot.imap_port, "starttls", trusting)
    try:
        ssl_object = _ssl_object(session._client)
        assert ssl_object is not None
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        peer = ssl_object.getpeercert()
        assert peer is not None
        assert ("IP Address", dovecot.host) in peer.get("subjectAltName", ())
        # ... and not once TLS is on: the capabilities were asked for again (LOGIN only adds
        # to them, so what was read in the clear would have stayed).
        capabilities = session._client.protocol.capabilities
        assert "STARTTLS" not in capabilities
        assert "LOGINDISABLED" not in capabilities
        assert "IMAP4rev1" in capabilities
        assert session._client.protocol.state == "AUTH"
        await _read_inbox(session, message)
    finally:
        await session.close()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_an_untrusted_certificate_fails_before_login(
    dovecot: Dovecot, mailbox: Mailbox, tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logins: list[str] = []
    login = aioimaplib.IMAP4.login

    async def spy(self: IMAP4, user: str, password: str) -> Any:
        logins.append(user)
        return await login(self, user, password)

    monkeypatch.setattr(aioimaplib.IMAP4, "login", spy)
    untrusting = ssl.create_default_context()  # the system CAs only

    with pytest.raises(ssl.SSLCertVerificationError):
        await _connect(mailbox, dovecot.host, _port(dovecot, tls), tls, untrusting)
    assert logins == []

    # The same path with the CA trusted does log in: the spy sees logins.
    trusting = ssl.create_default_context(cafile=str(dovecot.ca_file))
    session = await _connect(mailbox, dovecot.host, _port(dovecot, tls), tls, trusting)
    await session.close()
    assert logins == [mailbox.address]


async def _logins(dovecot: Dovecot, address: str, count: int, within_s: float = 5.0) -> list[str]:
    """Dovecot's log lines of the logins as ``address``, once ``count`` are in (its log lags)."""
    marker = f"Login: user=<{address}>"
    deadline = time.monotonic() + within_s
    while True:
        lines = [line for line in dovecot.log_path.read_text().splitlines() if marker in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.05)


@pytest.fixture
def tls_settings(
    database_dsn: str, rabbit_url: str, crypto_keys: str, tracking_keys: str, dovecot: Dovecot
) -> Settings:
    """Bouncer settings that trust the tests' CA (MAILFLEET_BOUNCER__IMAP_CA_FILE)."""
    return bouncer_settings(
        database_dsn, rabbit_url, crypto_keys, tracking_keys, imap_ca_file=str(dovecot.ca_file)
    )


@pytest.fixture
async def tls_replica(db: Conn, tls_settings: Settings) -> AsyncIterator[BouncerReplica]:
    bouncer = BouncerReplica(tls_settings)
    await bouncer.open(Published())
    yield bouncer
    await bouncer.stop()


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_the_replica_reads_a_bounce_over_tls(
    db: Conn,
    crypto_keys: str,
    dovecot: Dovecot,
    mailbox: Mailbox,
    imap: Imap,
    tls_replica: BouncerReplica,
    tls: str,
) -> None:
    account = await rows.insert_account(
        db,
        from_email=mailbox.address,
        box=SecretBox(crypto_keys.split(",")),
        imap={
            "host": mailbox.host,
            "port": _port(dovecot, tls),
            "tls": tls,
            "username": mailbox.address,
            "password": mailbox.password,
        },
    )
    campaign = await rows.insert_campaign(db)
    [(message_id, header)] = await rows.insert_sent(db, campaign, account, ["gone@example.net"])
    await imap.append(rows.dsn("gone@example.net", header, sender=mailbox.address))

    assert await tls_replica.poll(account) == 1
    checkpoint = await db.fetchrow("SELECT last_uid, last_error FROM mailbox_checkpoints")
    assert checkpoint is not None
    assert (checkpoint["last_uid"], checkpoint["last_error"]) == (1, None)
    reports = await db.fetch("SELECT account_id, kind, matched FROM inbound_reports")
    assert [(r["account_id"], r["kind"], r["matched"]) for r in reports] == [(account, "bounce", 1)]
    bounced = await db.fetchval("SELECT bounced_at FROM messages WHERE id = $1", message_id)
    assert bounced is not None
    assert await imap.uids("UNSEEN") == []
    # Dovecot's word for it: the replica's login came over TLS (the test's own is in the clear).
    logins = await _logins(dovecot, mailbox.address, 2)
    assert len(logins) == 2, logins
    assert sum(", TLS," in line for line in logins) == 1, logins
