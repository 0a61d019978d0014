"""The doubles' own fixtures."""

from tests.doubles.fixtures import _google_server, _microsoft_server, google, microsoft

__all__ = ["_google_server", "_microsoft_server", "google", "microsoft"]
