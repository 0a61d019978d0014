"""SMTP XOAUTH2 and OAUTHBEARER against the aiosmtpd peer (tests/smtp_peer.py) with aiosmtplib.

A live token logs in (235) and the message goes through. A revoked one gets Gmail's error
challenge, base64 JSON, and 535 5.7.8 after the client's empty line, or Exchange Online's
``535 5.7.3 Authentication unsuccessful`` at once.
"""

import base64
import json
from collections.abc import Iterator
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.oauth_tokens import TokenRegistry, oauthbearer_response
from tests.smtp_peer import OAuthHandler, SmtpPeer

ADDRESS = "sender@fleet.example.com"
TIMEOUT_S = 10.0


@pytest.fixture
def tokens() -> TokenRegistry:
    return TokenRegistry()


@pytest.fixture(params=["google", "microsoft"])
def peer(request: pytest.FixtureRequest, tokens: TokenRegistry) -> Iterator[SmtpPeer]:
    server = SmtpPeer(tokens=tokens, oauth_errors=request.param).start()
    yield server
    server.stop()


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = ADDRESS
    message["To"] = "rcpt@remote.example.net"
    message["Subject"] = "over xoauth2"
    message["Message-ID"] = "<xoauth2-1@fleet.test>"
    message.set_content("Sent after AUTH XOAUTH2.\n")
    return message


def _client(peer: SmtpPeer) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=peer.port, start_tls=False, timeout=TIMEOUT_S)


async def test_a_live_token_logs_in_and_sends(peer: SmtpPeer, tokens: TokenRegistry) -> None:
    token = tokens.issue(ADDRESS)
    async with _client(peer) as smtp:
        await smtp.ehlo()
        assert {"xoauth2", "oauthbearer"} <= set(smtp.server_auth_methods)
        response = await smtp.auth_xoauth2(ADDRESS, token)
        assert response.code == 235
        await smtp.send_message(_message())
    [received] = peer.handler.to("rcpt@remote.example.net")
    assert received.message_id == "<xoauth2-1@fleet.test>"
    assert peer.handler.logins == [ADDRESS]


async def test_the_token_generator_logs_in_on_connect(
    peer: SmtpPeer, tokens: TokenRegistry
) -> None:
    async def token() -> str:
        return tokens.issue(ADDRESS)

    refused, _ = await aiosmtplib.send(
        _message(),
        hostname="127.0.0.1",
        port=peer.port,
        start_tls=False,
        username=ADDRESS,
        oauth_token_generator=token,
        timeout=TIMEOUT_S,
    )
    assert refused == {}
    assert len(peer.handler.to("rcpt@remote.example.net")) == 1


async def test_a_revoked_token_is_refused_as_the_provider_does(
    peer: SmtpPeer, tokens: TokenRegistry
) -> None:
    handler = peer.handler
    assert isinstance(handler, OAuthHandler)
    token = tokens.issue(ADDRESS)
    tokens.revoke(token)
    initial = base64.b64encode(f"user={ADDRESS}\x01auth=Bearer {token}\x01\x01".encode())
    async with _client(peer) as smtp:
        await smtp.ehlo()
        first = await smtp.execute_command(b"AUTH", b"XOAUTH2", initial)
        if handler.oauth_errors == "google":
            assert first.code == 334
            error = json.loads(base64.b64decode(first.message))
            assert error == {
                "status": "401",
                "schemes": "bearer",
                "scope": "https://mail.google.com/",
            }
            final = await smtp.execute_command(b"")
            assert final.code == 535
            assert "5.7.8" in final.message
        else:
            assert (first.code, first.message) == (535, "5.7.3 Authentication unsuccessful")
        # aiosmtplib's own XOAUTH2 answers the challenge and raises the 535.
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.auth_xoauth2(ADDRESS, token)
        assert refused.value.code == 535
    assert peer.handler.logins == []
    assert handler.refused_tokens == [token, token]


@pytest.mark.parametrize("case", ["unknown", "another user's"])
async def test_tokens_not_issued_to_the_user_are_refused(
    case: str, peer: SmtpPeer, tokens: TokenRegistry
) -> None:
    token = "ya29.unknown" if case == "unknown" else tokens.issue("other@fleet.example.com")
    async with _client(peer) as smtp:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await smtp.auth_xoauth2(ADDRESS, token)


async def test_oauthbearer_with_and_without_an_initial_response(
    peer: SmtpPeer, tokens: TokenRegistry
) -> None:
    blob = base64.b64encode(oauthbearer_response(ADDRESS, tokens.issue(ADDRESS)))
    async with _client(peer) as smtp:
        await smtp.ehlo()
        assert (await smtp.execute_command(b"AUTH", b"OAUTHBEARER", blob)).code == 235
    async with _client(peer) as smtp:
        await smtp.ehlo()
        assert (await smtp.execute_command(b"AUTH", b"OAUTHBEARER")).code == 334
        assert (await smtp.execute_command(blob)).code == 235
