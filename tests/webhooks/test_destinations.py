"""Which webhook destinations the worker refuses: anything that is not a public address."""

import pytest
from mailfleet_webhooks.delivery import refused_destination


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://localhost/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.64.0.1/hook",  # shared address space
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
async def test_non_public_addresses_are_refused(url: str) -> None:
    reason = await refused_destination(url)
    assert reason is not None
    assert "not a public address" in reason


@pytest.mark.parametrize("url", ["https://93.184.215.14/hook", "http://[2606:4700::1111]:8443/in"])
async def test_public_addresses_pass(url: str) -> None:
    assert await refused_destination(url) is None


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    reason = await refused_destination("https://no-such-host.invalid/hook")
    assert reason is not None
    assert "cannot resolve no-such-host.invalid" in reason
