"""Hard or soft: only a failure that says the address is bad is hard; the reason is kept."""

import pytest
from mailfleet_bouncer import dsn, plaintext
from mailfleet_bouncer.verdict import judge


@pytest.mark.parametrize(
    ("action", "status", "diagnostic", "bounce", "reason"),
    [
        # The codes about the address.
        ("failed", "5.1.1", None, "hard", "bad destination mailbox"),
        ("failed", "5.1.2", None, "hard", "bad destination domain"),
        ("failed", "5.1.6", None, "hard", "moved"),
        ("failed", "5.1.10", None, "hard", "null MX"),
        ("failed", "5.7.27", "smtp; 550 5.7.27 Recipient domain has null MX", "hard", "null MX"),
        ("failed", "5.2.1", "smtp; 550 5.2.1 mailbox disabled", "hard", "disabled"),
        # ... unless their text names another cause.
        (
            "failed",
            "5.2.1",
            "smtp; 550 5.2.1 receiving mail at a rate that prevents",
            "soft",
            "rate",
        ),
        (
            "failed",
            "5.1.1",
            "smtp; 550 5.1.1 blocked using zen.spamhaus.org",
            "soft",
            "blocklisted",
        ),
        # The sender's address, not the recipient's (RFC 3463).
        ("failed", "5.1.7", "smtp; 550 5.1.7 bad sender", "soft", "sender's address"),
        ("failed", "5.1.8", None, "soft", "sender's address"),
        # Codes about the mailbox's size, the message, the system, the sender.
        ("failed", "5.2.2", None, "soft", "mailbox full"),
        ("failed", "5.2.3", None, "soft", "size limit"),
        ("failed", "5.3.4", None, "soft", "receiving mail system"),
        ("failed", "5.4.7", None, "soft", "expired"),
        ("failed", "5.6.0", None, "soft", "content"),
        ("failed", "5.7.1", "smtp; 554 5.7.1 blocked as spam", "soft", "blocked"),
        ("failed", "5.7.26", None, "soft", "policy"),
        # Generic codes: the text decides.
        ("failed", "5.0.0", "smtp; 550 SPF check failed for fleet.test", "soft", "SPF"),
        ("failed", "5.5.0", "smtp; 550 5.5.0 rejected due to DMARC policy", "soft", "DMARC"),
        ("failed", "5.2.0", "smtp; 550 5.2.0 no PTR record for 198.51.100.7", "soft", "PTR"),
        (
            "failed",
            "5.1.0",
            "smtp; 554 5.1.0 client host blocked using bl.example",
            "soft",
            "block",
        ),
        ("failed", "5.0.0", "smtp; 550 identified as spam", "soft", "spam"),
        ("failed", "5.2.0", "smtp; 552 5.2.0 Too many recipients", "soft", "limits"),
        ("failed", "5.2.0", "smtp; 552 5.2.0 Delivery failed: Over quota", "soft", "full"),
        ("failed", "5.0.0", "smtp; 552 Mailbox is full", "soft", "full"),
        ("failed", "5.0.0", "smtp; 550 no such user", "hard", "address is bad"),
        (
            "failed",
            "5.5.0",
            "smtp; 550 5.5.0 Requested action not taken: mailbox unavailable",
            "soft",
            "ambiguous",
        ),
        (
            "failed",
            "5.4.4",
            "X-Postfix; Host or domain name not found. Host not found",
            "hard",
            "bad",
        ),
        ("failed", "5.4.4", "X-Postfix; Host not found, try again", "soft", "try again"),
        ("failed", "5.4.4", None, "soft", "ambiguous"),
        # No code at all: hard only when the words say the address is bad.
        ("failed", None, None, "soft", "ambiguous"),
        ("failed", None, "retry timeout exceeded", "soft", "expired"),
        ("failed", None, "Storage quota exceeded", "soft", "full"),
        ("failed", None, "The users mailfolder is full.", "soft", "full"),
        ("failed", None, "ERROR_CODE :421", "soft", "system"),
        ("failed", None, "550 : User unknown", "hard", "address is bad"),
        ("expired", None, "Connection timed out", "soft", "connection"),
        ("failed", None, "Host not found, try again", "soft", "try again"),
        ("failed", None, "No such user here; if you think this is wrong, try again", "hard", "bad"),
        # A temporary reply stays temporary, whatever the relay's Status says.
        ("failed", "5.0.0", "smtp; 421 4.7.0 try again later", "soft", "temporary"),
        ("failed", "4.4.1", None, "soft", "temporary"),
        ("delayed", "5.1.1", None, "soft", "delayed"),
        ("delayed", None, None, "soft", "delayed"),
        ("delivered", "2.0.0", None, None, None),
        ("relayed", "2.0.0", None, None, None),
        ("expanded", None, None, None, None),
        (None, "5.1.1", None, "hard", "bad destination mailbox"),
        (None, "4.0.0", None, "soft", "temporary"),
        (None, None, None, None, None),
    ],
)
def test_verdict(
    action: str | None,
    status: str | None,
    diagnostic: str | None,
    bounce: str | None,
    reason: str | None,
) -> None:
    found, why = judge(action, status, diagnostic)
    assert found == bounce
    if reason is None:
        assert why is None
    else:
        assert why is not None
        assert reason.lower() in why.lower()


def test_a_refusal_after_data_is_not_hard() -> None:
    diagnostic = "smtp; 550 5.1.1 <a@example.com>: User unknown"
    assert judge("failed", "5.1.1", diagnostic)[0] == "hard"
    bounce, reason = judge("failed", "5.1.1", diagnostic, after_data=True)
    assert bounce == "soft"
    assert "after DATA" in (reason or "")
    assert judge("failed", "5.1.1", diagnostic + " (in reply to end of DATA command)")[0] == "soft"


@pytest.mark.parametrize(
    ("address", "status", "bounce"),
    [
        ("a@docomo.ne.jp", "5.0.0", "soft"),
        ("a@ezweb.ne.jp", "5.0.0", "soft"),
        ("a@i.softbank.jp", "5.0.0", "soft"),
        ("a@docomo.ne.jp", "5.1.1", "hard"),  # a specific code still says the address is bad
        ("a@example.com", "5.0.0", "hard"),
    ],
)
def test_mobile_carriers_user_unknown_is_their_filter_too(
    address: str, status: str, bounce: str
) -> None:
    diagnostic = f"smtp; 550 Unknown user {address}"
    assert judge("failed", status, diagnostic, address=address)[0] == bounce


@pytest.mark.parametrize(
    ("status", "diagnostic", "code"),
    [
        ("5.1.1", "smtp; 550 5.7.1 Service unavailable, IP blacklisted", "5.7.1"),
        ("5.1.0", "smtp; 552 5.2.2 <a@example.org>... Mailbox Full", "5.2.2"),
        ("5.0.0", "smtp; 550 5.1.1 user unknown", "5.1.1"),
        ("4.4.7", "smtp; 550 5.1.1 user unknown", "4.4.7"),  # another class: the Status stays
        ("5.1.1", None, "5.1.1"),
    ],
)
def test_the_remote_servers_code_beats_the_status_field(
    status: str, diagnostic: str | None, code: str
) -> None:
    assert dsn.status_code(status, diagnostic) == code


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("jane.doe@example.com", True),
        ("o'brien+news@mail.example.co.uk", True),
        ("user@[192.0.2.1]", True),
        ("mailer-daemon@example.com", False),
        ("Mailer-Daemon@example.com", False),
        ("20240611.abc123@fleet", False),  # no dot in the domain: a Message-ID's right side
        ("/var/spool/exim/input/1sGz0A@mx.example.org", False),
        ("kijitora@example..com", False),
        ("a@b", False),
        ("a@example.123", False),
        ("", False),
        (None, False),
    ],
)
def test_valid_recipient_addresses(address: str | None, valid: bool) -> None:
    assert plaintext.valid_address(address) is valid


@pytest.mark.parametrize(
    ("address", "sender", "reporting"),
    [
        ("postmaster@relay.example.net", "mailer-daemon@relay.example.net", True),
        ("postmaster@mx2.example.net", "mailer-daemon@example.net", True),
        ("postmaster@example.org", "mailer-daemon@relay.example.net", False),
        ("jane@relay.example.net", "mailer-daemon@relay.example.net", False),
    ],
)
def test_the_reporting_sides_postmaster_is_not_a_recipient(
    address: str, sender: str, reporting: bool
) -> None:
    assert plaintext.reporting_postmaster(address, sender) is reporting


def test_candidates_skip_sender_lines_and_rejected_addresses() -> None:
    text = (
        ">>> MAIL FROM:<sender1@fleet.test>\n"
        "<<< 250 ok\n"
        ">>> RCPT TO:<first@example.com>\n"
        "<<< 550 5.1.1 <first@example.com>... User unknown\n"
        "Received: from out1.fleet.test by mx.example.com for <other@example.com>\n"
        "second@example.org: 552 5.2.2 Mailbox full.\n"
        "mailer-daemon@example.com could not help.\n"
    )
    found = plaintext.candidates(text, plaintext.valid_address)
    assert found == ["first@example.com", "second@example.org"]
