"""Settings from the environment, and the start-up checks that refuse a broken configuration."""

import os

import pytest
from asgi_lifespan import LifespanManager
from mailfleet_common.tracking import InvalidTrackingKeysError
from mailfleet_tracker.main import create_app
from mailfleet_tracker.settings import Settings

from tests.stack import free_port

from .conftest import tracker_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("MAILFLEET_HTTP__", "MAILFLEET_TRACKER__")):
            monkeypatch.delenv(name)
    settings = Settings()

    assert settings.http.port == 8003
    tracker = settings.tracker
    assert tracker.allowed_domains == []
    assert (tracker.machine_window_s, tracker.trust_forwarded_for) == (2.0, False)
    assert (tracker.buffer_max, tracker.batch_max, tracker.linger_ms) == (100_000, 1000, 50)
    assert tracker.unsubscribe_settle_s == 15


def test_the_environment_sets_the_tracker_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILFLEET_TRACKER__ALLOWED_DOMAINS", " Example.com, .shop.example.org.,,")
    monkeypatch.setenv("MAILFLEET_TRACKER__TRUST_FORWARDED_FOR", "true")
    monkeypatch.setenv("MAILFLEET_TRACKER__MACHINE_WINDOW_S", "0")
    monkeypatch.setenv("MAILFLEET_TRACKING__KEYS", "k" * 32)

    settings = Settings()

    assert settings.tracker.allowed_domains == ["example.com", "shop.example.org"]
    assert settings.tracker.trust_forwarded_for is True
    assert settings.tracker.machine_window_s == 0
    assert settings.tracking.keys.get_secret_value() == "k" * 32


@pytest.mark.parametrize("keys", ["", " , ", "too-short-to-be-a-secret"])
def test_missing_or_weak_tracking_keys_stop_the_app_from_being_built(keys: str) -> None:
    settings = tracker_settings("postgresql://nowhere/x", "amqp://nowhere/", keys)

    with pytest.raises(InvalidTrackingKeysError, match="tracking key"):
        create_app(settings)


async def test_startup_fails_when_the_database_cannot_be_reached(
    rabbit_url: str, tracking_keys: str
) -> None:
    nothing_there = free_port()
    settings = tracker_settings(
        f"postgresql://postgres@127.0.0.1:{nothing_there}/mailfleet", rabbit_url, tracking_keys
    )
    app = create_app(settings)

    with pytest.raises(ConnectionRefusedError):
        async with LifespanManager(app):  # type: ignore[arg-type]
            pass
