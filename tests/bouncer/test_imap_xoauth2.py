"""IMAP XOAUTH2 and OAUTHBEARER against the real Dovecot's oauth2 passdb and our introspection.

aioimaplib (the bouncer's IMAP client) sends XOAUTH2 as an initial response (SASL-IR) and logs
in with a live token. A refused token gets a continuation carrying the error as base64 JSON,
which the client must answer with an empty line before the tagged NO: aioimaplib 2's
``xoauth2()`` does not, and waits until its timeout, so refusals are checked with imaplib here.
Dovecot asks the introspection endpoint of tests/oauth_tokens.py about each token, so a revoked
one is refused on its next login.
"""

import imaplib
import json
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from aioimaplib import IMAP4

from tests.bouncer.servers import FLEET_DOMAIN, Dovecot, Mailbox, fetch_messages
from tests.oauth_tokens import (
    IntrospectionServer,
    TokenRegistry,
    oauthbearer_response,
    xoauth2_response,
)

TIMEOUT_S = 10.0


@pytest.fixture
def oauth_mailbox(oauth_dovecot: Dovecot) -> Mailbox:
    """A user of ``oauth_dovecot`` (its password works too, for the checks)."""
    return oauth_dovecot.create_mailbox("oauth")


async def _xoauth2_login(dovecot: Dovecot, address: str, token: str) -> IMAP4:
    client = IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT_S)
    await client.wait_hello_from_server()
    response = await client.xoauth2(address, token)
    assert response.result == "OK", response.lines
    return client


def _refused(dovecot: Dovecot, mechanism: str, initial: bytes) -> tuple[str, list[bytes]]:
    """Logs in with ``initial`` expecting a refusal; returns the NO's text and the challenges."""
    challenges: list[bytes] = []

    def respond(challenge: bytes) -> bytes:
        challenges.append(challenge)
        return initial if len(challenges) == 1 else b""

    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=TIMEOUT_S) as imap:
        try:
            imap.authenticate(mechanism, respond)
        except imaplib.IMAP4.error as error:
            return str(error), challenges
    raise AssertionError(f"{mechanism} login accepted")


def _deliver(dovecot: Dovecot, address: str, subject: str) -> str:
    """Hands a message to Dovecot's LMTP for ``address``; returns its Message-ID."""
    message = EmailMessage()
    message["From"] = f"someone@{FLEET_DOMAIN}"
    message["To"] = address
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="fleet.test")
    message.set_content("Read over XOAUTH2.\n")
    with smtplib.LMTP(dovecot.host, dovecot.lmtp_port, timeout=TIMEOUT_S) as lmtp:
        lmtp.send_message(message)
    return str(message["Message-ID"])


async def test_a_live_token_logs_in_and_reads_the_mailbox(
    oauth_dovecot: Dovecot, oauth_mailbox: Mailbox, introspection: IntrospectionServer
) -> None:
    message_id = _deliver(oauth_dovecot, oauth_mailbox.address, "over xoauth2")
    token = introspection.tokens.issue(oauth_mailbox.address)
    asked = introspection.requests

    client = await _xoauth2_login(oauth_dovecot, oauth_mailbox.address, token)
    try:
        assert introspection.requests == asked + 1
        assert (await client.select("INBOX")).result == "OK"
        fetched = await client.uid("fetch", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert fetched.result == "OK"
        assert any(message_id.encode() in bytes(line) for line in fetched.lines)
    finally:
        await client.logout()


async def test_a_revoked_token_is_refused_at_its_next_login(
    oauth_dovecot: Dovecot, oauth_mailbox: Mailbox, oauth_tokens: TokenRegistry
) -> None:
    address, token = oauth_mailbox.address, oauth_tokens.issue(oauth_mailbox.address)
    await (await _xoauth2_login(oauth_dovecot, address, token)).logout()

    oauth_tokens.revoke(token)
    refusal, challenges = _refused(oauth_dovecot, "XOAUTH2", xoauth2_response(address, token))
    # Permanent, like Gmail's "[AUTHENTICATIONFAILED] Invalid credentials", not [UNAVAILABLE].
    assert refusal.startswith("[AUTHENTICATIONFAILED]"), refusal
    # The empty challenge that asks for the response, then the error as JSON.
    first, error = challenges
    assert first == b""
    assert json.loads(error)["status"] == "401", error


@pytest.mark.parametrize("case", ["unknown", "expired", "another user's", "the password"])
def test_credentials_that_are_not_a_live_token_of_this_user_are_refused(
    case: str, oauth_dovecot: Dovecot, oauth_mailbox: Mailbox, oauth_tokens: TokenRegistry
) -> None:
    if case == "unknown":
        token = "ya29.not-issued-by-anyone"
    elif case == "expired":
        token = oauth_tokens.issue(oauth_mailbox.address, lifetime=-1)
    elif case == "another user's":
        token = oauth_tokens.issue(oauth_dovecot.create_mailbox("other").address)
    else:
        token = oauth_mailbox.password

    for mechanism, initial in [
        ("XOAUTH2", xoauth2_response(oauth_mailbox.address, token)),
        ("OAUTHBEARER", oauthbearer_response(oauth_mailbox.address, token)),
    ]:
        refusal, _ = _refused(oauth_dovecot, mechanism, initial)
        assert refusal.startswith("[AUTHENTICATIONFAILED]"), (mechanism, refusal)


async def test_oauthbearer_and_the_password_log_in_alongside(
    oauth_dovecot: Dovecot, oauth_mailbox: Mailbox, oauth_tokens: TokenRegistry
) -> None:
    address, token = oauth_mailbox.address, oauth_tokens.issue(oauth_mailbox.address)
    with imaplib.IMAP4(oauth_dovecot.host, oauth_dovecot.imap_port, timeout=TIMEOUT_S) as imap:
        assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER"} <= set(imap.capabilities)
        status, _ = imap.authenticate("OAUTHBEARER", lambda _: oauthbearer_response(address, token))
        assert status == "OK"
        assert imap.select("INBOX")[0] == "OK"
    # The password logs in through the passwd-file passdb.
    assert await fetch_messages(oauth_mailbox) == []
