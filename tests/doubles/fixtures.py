"""Pytest fixtures serving the Google and Microsoft doubles: one server per session, reset per test.

Use them from another test folder's conftest.py with `from tests.doubles.fixtures import *`
(the session fixtures behind `google` and `microsoft` must be imported with them).
"""

from collections.abc import Iterator

import pytest

from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble

__all__ = ["_google_server", "_microsoft_server", "google", "microsoft"]


@pytest.fixture(scope="session")
def _google_server() -> Iterator[GoogleDouble]:
    double = GoogleDouble().start()
    yield double
    double.stop()


@pytest.fixture(scope="session")
def _microsoft_server() -> Iterator[MicrosoftDouble]:
    double = MicrosoftDouble().start()
    yield double
    double.stop()


@pytest.fixture
def google(_google_server: GoogleDouble) -> GoogleDouble:
    """Google's OAuth endpoints and Gmail, empty at the start of each test."""
    _google_server.reset()
    return _google_server


@pytest.fixture
def microsoft(_microsoft_server: MicrosoftDouble) -> MicrosoftDouble:
    """Microsoft's identity platform endpoints, empty at the start of each test."""
    _microsoft_server.reset()
    return _microsoft_server
