"""Fixtures for the bouncer tests: a real Dovecot and Postfix for the whole run (see servers.py).

``dovecot`` serves IMAP and LMTP, ``postfix`` takes SMTP and delivers to it over LMTP, and
``mailbox`` is a new ``sender-<random>@fleet.example.com`` user for each test.
``replica`` is a bouncer replica opened (not started) with the test module's ``settings``,
publishing into ``published``; ``box`` encrypts as it decrypts.
``google`` and ``microsoft`` are the OAuth and Gmail doubles (tests/doubles).
``oauth_dovecot`` is a second Dovecot that also takes XOAUTH2 and OAUTHBEARER logins, checking
the tokens of ``oauth_tokens`` through its introspection endpoint (tests/oauth_tokens.py).
Missing packages fail the tests instead of skipping them: CI installs them (.ci/run,
``make test``).
"""

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn

from tests.bouncer.servers import Dovecot, Mailbox, Postfix, ServerError, make_servers_dir
from tests.bouncer.test_mailbox import Published
from tests.doubles.fixtures import *  # noqa: F403
from tests.oauth_tokens import IntrospectionServer, TokenRegistry


def _start(server: Dovecot | Postfix) -> None:
    """Starts a server, or fails the test with why (a missing package, its log) if it can't."""
    try:
        server.start()
    except ServerError as error:
        server.stop()
        failure = str(error)
    else:
        return
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def mail_servers_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The servers' directory; their logs are kept in pytest's temporary directory at the end."""
    root = make_servers_dir()
    yield root
    kept = tmp_path_factory.mktemp("mail-server-logs")
    for log in [*root.glob("*/*.log"), *root.glob("*/*.out")]:
        shutil.copy(log, kept / f"{log.parent.name}-{log.name}")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(mail_servers_dir: Path) -> Iterator[Dovecot]:
    """Dovecot on free ports of 127.0.0.1: ``imap_port``, ``lmtp_port``, ``add_user()``."""
    server = Dovecot(mail_servers_dir / "dovecot")
    _start(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def introspection() -> Iterator[IntrospectionServer]:
    """An RFC 7662 introspection endpoint over a token registry (``introspection.tokens``)."""
    server = IntrospectionServer(TokenRegistry()).start()
    yield server
    server.stop()


@pytest.fixture
def oauth_tokens(introspection: IntrospectionServer) -> TokenRegistry:
    """The tokens ``oauth_dovecot`` accepts: ``issue(address)``, ``revoke(token)``."""
    return introspection.tokens


@pytest.fixture(scope="session")
def oauth_dovecot(mail_servers_dir: Path, introspection: IntrospectionServer) -> Iterator[Dovecot]:
    """Dovecot like ``dovecot``, also taking XOAUTH2 and OAUTHBEARER with ``oauth_tokens``."""
    server = Dovecot(mail_servers_dir / "dovecot-oauth", oauth2_introspection_url=introspection.url)
    _start(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot, mail_servers_dir: Path) -> Iterator[Postfix]:
    """Postfix on a free port (``smtp_port``) delivering the two test domains to Dovecot."""
    server = Postfix(mail_servers_dir / "postfix", dovecot.lmtp_port)
    _start(server)
    yield server
    server.stop()


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Mailbox:
    """A new Dovecot user ``sender-<random>@fleet.example.com`` with a random password."""
    return dovecot.create_mailbox("sender")


@pytest.fixture
def box(crypto_keys: str) -> SecretBox:
    return SecretBox(crypto_keys.split(","))


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
async def replica(
    db: Conn, settings: Settings, published: Published
) -> AsyncIterator[BouncerReplica]:
    bouncer = BouncerReplica(settings)
    await bouncer.open(published)
    yield bouncer
    await bouncer.stop()
