"""Each worker keeps its own default port when only part of MAILFLEET_HTTP__* is set."""

import importlib

import pytest


@pytest.mark.parametrize(
    ("service", "port"),
    [
        ("dispatcher", 8001),
        ("sender", 8002),
        ("tracker", 8003),
        ("bouncer", 8004),
        ("webhooks", 8005),
    ],
)
def test_setting_the_host_keeps_the_services_port(
    service: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILFLEET_HTTP__HOST", "0.0.0.0")  # noqa: S104 - as the image sets it
    monkeypatch.delenv("MAILFLEET_HTTP__PORT", raising=False)
    settings = importlib.import_module(f"mailfleet_{service}.settings").Settings()
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", port)  # noqa: S104
