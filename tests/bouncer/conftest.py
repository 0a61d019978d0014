"""Fixtures for the bouncer tests: a real Dovecot and Postfix for the whole run (see servers.py).

``dovecot`` serves IMAP and LMTP, ``postfix`` takes SMTP and delivers to it over LMTP, and
``mailbox`` is a new ``sender-<random>@fleet.example.com`` user for each test. Missing packages fail
the tests instead of skipping them: CI installs them (.ci/run, ``make test``).
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bouncer.servers import Dovecot, Mailbox, Postfix, ServerError, make_servers_dir


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
