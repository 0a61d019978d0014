"""The hand-built messages parse as intended with the standard `email` package."""

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default

import pytest
from mailfleet_sender.mime import (
    MessageBuildError,
    build_message,
    display_name,
    envelope_address,
    header_text,
    mailbox,
)


def _content(part: object) -> str:
    # base64 text carries its canonical CRLF line ends through decoding.
    assert isinstance(part, EmailMessage)
    return str(part.get_content()).replace("\r\n", "\n")


def _parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def _build(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "from_header": mailbox("Mail Fleet", "news@fleet.example.com"),
        "to_header": mailbox("Reader", "reader@example.org"),
        "subject": "Hello",
        "message_id": "<1.abc@fleet.example.com>",
        "html": "<p>Hi</p>\n",
        "text": "Hi\n",
    }
    fields.update(overrides)
    return build_message(**fields)  # type: ignore[arg-type]


def test_multipart_message_has_every_header_and_both_parts() -> None:
    raw = _build(html="<p>Caf\u00e9 \u2013 <b>bold</b></p>", text="Caf\u00e9\nline two")
    message = _parse(raw)

    assert message["From"].addresses[0].display_name == "Mail Fleet"
    assert message["From"].addresses[0].addr_spec == "news@fleet.example.com"
    assert message["To"].addresses[0].addr_spec == "reader@example.org"
    assert message["Message-ID"] == "<1.abc@fleet.example.com>"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime is not None
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert _content(text) == "Caf\u00e9\nline two\n"
    assert _content(html) == "<p>Caf\u00e9 \u2013 <b>bold</b></p>\n"
    assert message.defects == []
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_non_ascii_subject_and_names_round_trip() -> None:
    subject = "\u00a1Hola Jos\u00e9! \u6625\u306e\u30b3\u30ec\u30af\u30b7\u30e7\u30f3 " * 4
    raw = _build(
        subject=subject,
        from_header=mailbox("\u00c9quipe Fleet", "news@fleet.example.com"),
        to_header=mailbox("Zo\u00eb \u00d8stergaard", "zoe@example.org"),
    )
    message = _parse(raw)

    assert message["Subject"] == subject.strip() or message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "\u00c9quipe Fleet"
    assert message["To"].addresses[0].display_name == "Zo\u00eb \u00d8stergaard"
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))


def test_names_with_quotes_and_commas_stay_one_mailbox() -> None:
    name = 'Doe, John "JD" \\ Jr.'
    message = _parse(_build(to_header=mailbox(name, "jd@example.org")))

    addresses = message["To"].addresses
    assert len(addresses) == 1
    assert addresses[0].display_name == name
    assert addresses[0].addr_spec == "jd@example.org"


def test_line_breaks_in_rendered_subject_or_name_cannot_inject_headers() -> None:
    raw = _build(
        subject="Hi\r\nBcc: victim@example.org\r\n\r\nbody",
        to_header=mailbox("Eve\nBcc: other@example.org", "eve@example.org"),
    )
    message = _parse(raw)

    assert message["Bcc"] is None
    assert "victim@example.org" in message["Subject"]
    assert "\n" not in message["Subject"]
    assert len(message["To"].addresses) == 1
    assert message["To"].addresses[0].addr_spec == "eve@example.org"


def test_single_part_messages_when_only_one_body_exists() -> None:
    only_text = _parse(_build(html=None, text="plain only"))
    only_html = _parse(_build(html="<p>x</p>", text=None))

    assert only_text.get_content_type() == "text/plain"
    assert _content(only_text) == "plain only\n"
    assert only_html.get_content_type() == "text/html"


def test_long_lines_and_mostly_non_ascii_bodies_stay_within_line_limits() -> None:
    long_line = "word " * 400
    cyrillic = "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440\n" * 200
    raw = _build(html=long_line, text=cyrillic)
    message = _parse(raw)

    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert _content(message.get_body(("html",))) == long_line + "\n"
    assert _content(message.get_body(("plain",))) == cyrillic
    assert b"Content-Transfer-Encoding: base64" in raw


def test_plain_display_names_are_left_unquoted() -> None:
    assert display_name("Mail Fleet") == "Mail Fleet"
    assert display_name("  Two   spaces ") == "Two spaces"
    assert header_text("Plain subject") == "Plain subject"


def test_international_domains_use_idna_and_other_bad_addresses_are_refused() -> None:
    assert envelope_address("user@b\u00fccher.example") == "user@xn--bcher-kva.example"
    for bad in ("j\u00f6rg@example.org", "a b@example.org", "x@y>\r\nBcc: z", "no-at-sign"):
        with pytest.raises(MessageBuildError):
            mailbox(None, bad)
