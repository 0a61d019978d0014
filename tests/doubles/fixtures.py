"""Pytest fixtures serving the Google and Microsoft doubles: one server per session, reset per test.

Use them from another test folder with `from tests.doubles.fixtures import google, microsoft`
(imported names are fixtures) or `pytest_plugins` in the root conftest.
"""

from collections.abc import Iterator

import pytest

from tests.doubles.google import GoogleDouble
from tests.doubles.microsoft import MicrosoftDouble


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
