"""Machine detection: which User-Agents and timings are a scanner's rather than a reader's."""

import pytest
from mailfleet_tracker.machine import machine_reason, read_user_agent, user_agent_reason


@pytest.mark.parametrize(
    ("user_agent", "reason"),
    [
        # Mail-privacy proxies.
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
            "(via ggpht.com GoogleImageProxy)",
            "google-image-proxy",
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            "yahoo-mail-proxy",
        ),
        ("Mozilla/5.0", "apple-mail-privacy"),
        ("  Mozilla/5.0 ", "apple-mail-privacy"),
        # Link scanners.
        (
            "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) "
            "BingPreview/1.0b",
            "microsoft-scanner",
        ),
        ("Microsoft Office Protocol Discovery", "microsoft-scanner"),
        ("Microsoft Office Existence Discovery", "microsoft-scanner"),
        ("Microsoft-WebDAV-MiniRedir/10.0.19045", "microsoft-scanner"),
        ("Mozilla/5.0 SafeLinks", "microsoft-scanner"),
        ("Barracuda Sentinel (EE)", "barracuda"),
        ("Mimecast-URL-Protect/1.0", "mimecast"),
        ("Proofpoint URL Defense", "proofpoint"),
        # Bots and HTTP libraries.
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0)", "bot"),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "bot"),
        ("Mozilla/5.0 (compatible; YandexSpider/3.0)", "bot"),
        ("curl/8.5.0", "http-library"),
        ("Wget/1.21.4", "http-library"),
        ("python-requests/2.32.3", "http-library"),
        ("Python-urllib/3.11", "http-library"),
        ("python-httpx/0.28.1", "http-library"),
        ("Go-http-client/1.1", "http-library"),
        ("okhttp/4.12.0", "http-library"),
        ("", "empty-user-agent"),
        ("   ", "empty-user-agent"),
        # Readers.
        ("Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0", None),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
            None,
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148",
            None,
        ),
        ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", None),
        ("Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 Chrome/120.0", None),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15", None),
    ],
)
def test_user_agents(user_agent: str, reason: str | None) -> None:
    assert user_agent_reason(user_agent) == reason


@pytest.mark.parametrize(
    ("seconds_after_issue", "window_s", "reason"),
    [
        (0.0, 2.0, "too-soon-after-send"),
        (1.9, 2.0, "too-soon-after-send"),
        (-5.0, 2.0, "too-soon-after-send"),  # the sender's clock is ahead
        (2.0, 2.0, None),
        (3600.0, 2.0, None),
        (0.0, 0.0, None),  # a window of 0 turns timing off
    ],
)
def test_hits_right_after_the_message_was_built(
    seconds_after_issue: float, window_s: float, reason: str | None
) -> None:
    issued_at = 1_800_000_000
    now = issued_at + seconds_after_issue
    assert machine_reason(None, issued_at, now, window_s) == reason


def test_a_known_scanner_keeps_its_own_reason_inside_the_window() -> None:
    assert machine_reason("http-library", 100, 100.5, 2.0) == "http-library"


def test_a_header_is_recorded_cut_to_512_characters_with_its_reason() -> None:
    assert read_user_agent(b"curl/8.5.0") == ("curl/8.5.0", "http-library")
    assert read_user_agent(b"") == (None, "empty-user-agent")
    long_agent, reason = read_user_agent(b"Mozilla/5.0 (X11) " + b"x" * 1000 + b" \xe9")
    assert long_agent is not None
    assert (len(long_agent), reason) == (512, None)
