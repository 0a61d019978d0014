"""The bouncer's classifier: the corpus, the decisions, and bytes that must not break it."""

import base64
import json
import random
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from mailfleet_bouncer import autoreply, dsn
from mailfleet_bouncer.classify import Classified, Kind, classify

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text("utf-8"))
PARSERS = {
    "rfc3464",
    "arf",
    "flufl",
    "text",
    "ses",
    "rfc3834",
    "heuristic",
    "reply",
    "mailto",
    "apple",
    "none",
}
OURS = "<12345.Ab3dE5fG7hJ9kL1m@fleet.test>"
TOKEN = "xU7POqpzkACAy5KJ3rgi6yQIR3cPKPrcaMRaPMFx"


def _summary(result: Classified) -> dict[str, Any]:
    return {
        "kind": result.kind,
        "parser": result.parser,
        "recipients": [
            {"address": r.address, "bounce": r.bounce, "status": r.status}
            for r in result.recipients
        ],
        "message_ids": list(result.references.message_ids),
        "unsubscribe_tokens": list(result.references.unsubscribe_tokens),
        "original_recipients": list(result.references.original_recipients),
    }


def _check_shape(result: Classified) -> None:
    assert isinstance(result, Classified)
    assert result.kind in get_args(Kind)
    assert result.parser in PARSERS
    assert result.subject is None or len(result.subject) <= 500
    for recipient in result.recipients:
        assert recipient.diagnostic is None or len(recipient.diagnostic) <= 1000
        assert recipient.bounce in (None, "hard", "soft")
    for message_id in result.references.message_ids:
        assert message_id.startswith("<")
        assert message_id.endswith(">")
        assert not any(c.isspace() for c in message_id)


# The corpus ------------------------------------------------------------------------------


def test_every_corpus_file_has_an_expectation() -> None:
    files = {path.name for path in CORPUS.glob("*.eml")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus(name: str) -> None:
    expected = EXPECTED[name]
    result = classify((CORPUS / name).read_bytes())
    _check_shape(result)
    assert _summary(result) == {key: expected[key] for key in _summary(result)}
    if "feedback_type" in expected:
        assert result.feedback_type == expected["feedback_type"]
    else:
        assert result.feedback_type is None
    assert result.unsubscribe_token == expected.get("unsubscribe_token")
    if "sender" in expected:
        assert result.sender == expected["sender"]
    if "subject" in expected:
        assert result.subject == expected["subject"]
    if "problem_contains" in expected:
        assert expected["problem_contains"] in (result.problem or "")
    if "diagnostic_contains" in expected:
        assert expected["diagnostic_contains"] in (result.recipients[0].diagnostic or "")
    if "action" in expected:
        assert [r.action for r in result.recipients] == [expected["action"]]


# Each bounce sample names the cause of each failure; only "address" (the message says the
# address itself is bad: unknown, disabled, moved, no such domain, null MX) may be hard.
CAUSES = {name: e["causes"] for name, e in EXPECTED.items() if e["kind"] == "bounce"}


def test_every_bounce_sample_names_its_causes() -> None:
    assert all(len(CAUSES[n]) == len(EXPECTED[n]["recipients"]) for n in CAUSES)
    assert len(CAUSES) >= 70


def test_recognition_over_the_corpus() -> None:
    results = {name: classify((CORPUS / name).read_bytes()) for name in CAUSES}
    recognised = [
        name
        for name, result in results.items()
        if result.kind == "bounce" and any(r.bounce for r in result.recipients)
    ]
    assert len(recognised) / len(results) >= 0.95, sorted(set(results) - set(recognised))


def test_no_hard_verdict_against_the_policy() -> None:
    against: list[tuple[str, str | None, str]] = []
    missed: list[tuple[str, str | None, str]] = []
    for name, causes in CAUSES.items():
        result = classify((CORPUS / name).read_bytes())
        for recipient, cause in zip(result.recipients, causes, strict=False):
            if recipient.bounce == "hard" and cause != "address":
                against.append((name, recipient.address, cause))
            if recipient.bounce != "hard" and cause == "address":
                missed.append((name, recipient.address, cause))
            if recipient.bounce is not None:
                assert recipient.reason, (name, recipient.address)
    assert against == []
    assert missed == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_with_crlf_line_endings(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert _summary(classify(crlf)) == _summary(classify(raw))


@pytest.mark.parametrize("name", sorted(CAUSES))
def test_corpus_with_cr_line_endings(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    cr = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    assert _summary(classify(cr)) == _summary(classify(raw))


# Decisions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "diagnostic", "code"),
    [
        ("5.1.1", None, "5.1.1"),
        ("5.1.1 (bad destination mailbox address)", None, "5.1.1"),
        (None, "smtp; 550 5.1.1 <a@example.com>: User unknown", "5.1.1"),
        (None, "smtp; 550-5.1.1 The email account", "5.1.1"),
        ("5.0.0", "smtp; 550 5.1.1 user unknown", "5.1.1"),  # refined
        ("5.1.1", "smtp; 550 5.7.1 IP blacklisted", "5.7.1"),  # the remote server's code wins
        ("5.1.0", "smtp; 550 5.2.2 Mailbox Full", "5.2.2"),
        ("4.0.0", "smtp; 550 5.1.1 user unknown", "4.0.0"),  # another class does not refine
        (None, "smtp; 550 Requested action not taken", "5.0.0"),
        (None, "smtp;421 try later", "4.0.0"),
        (None, "host 192.0.2.25 said: try later", None),  # an IP is not a code
        ("garbage", None, None),
        (None, None, None),
    ],
)
def test_status_code(status: str | None, diagnostic: str | None, code: str | None) -> None:
    assert dsn.status_code(status, diagnostic) == code


@pytest.mark.parametrize(
    ("subject", "automatic"),
    [
        ("Automatic reply: Your May newsletter", True),
        ("Autoreply: Your May newsletter", True),
        ("Auto: Pat is out of the office (returning 27/05/2024)", True),
        ("Out of Office: Your May newsletter", True),
        ("Abwesenheitsnotiz: Ihr Newsletter", True),
        ("Automatische Antwort: Ihr Newsletter", True),
        ("Réponse automatique : Votre newsletter", True),
        ("Respuesta automática: Su boletín", True),
        ("Risposta automatica: La newsletter", True),
        ("I am on vacation", True),
        ("[EXTERNAL] Automatic reply: hello", True),
        ("自動応答: ニュースレター", True),
        ("Re: out of office tomorrow?", False),
        ("Fwd: Out of office notice", False),
        ("Your May newsletter", False),
        (None, False),
    ],
)
def test_auto_reply_subjects(subject: str | None, automatic: bool) -> None:
    assert autoreply.subject_says_automatic(subject) is automatic


def _message(headers: str, body: str = "Hello.\n") -> bytes:
    return (headers.strip("\n") + "\n\n" + body).encode()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Auto-Submitted: auto-generated", "Auto-Submitted: auto-generated"),
        ("Auto-Submitted: auto-replied; owner-email=a@example.com", "Auto-Submitted"),
        ("X-Autoreply: yes", "x-autoreply"),
        ("X-Autorespond: Your message", "x-autorespond"),
        ("X-Autogenerated: Reply", "X-Autogenerated"),
        ("X-Auto-Response-Suppress: DR, OOF, AutoReply", "X-Auto-Response-Suppress"),
        ("Precedence: auto_reply", "Precedence"),
        ("Precedence: junk", "Precedence"),
        ("X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent", "X-MS-Exchange"),
    ],
)
def test_auto_reply_headers(header: str, reason: str) -> None:
    raw = _message(f"From: a@example.com\nSubject: Re: hello\nIn-Reply-To: {OURS}\n{header}")
    result = classify(raw)
    assert (result.kind, result.parser) == ("auto-reply", "rfc3834")
    assert result.references.message_ids == (OURS,)
    reason_found = autoreply.header_reason(
        {header.split(":")[0].lower(): [header.split(":", 1)[1]]}
    )
    assert reason_found is not None
    assert reason_found.startswith(reason)


def test_auto_submitted_no_is_not_automatic() -> None:
    raw = _message(
        f"From: a@example.com\nSubject: Re: hello\nIn-Reply-To: {OURS}\nAuto-Submitted: no"
    )
    assert classify(raw).kind == "reply"


def test_human_reply_quoting_a_bounce_is_not_a_bounce() -> None:
    body = (
        "Hi, I got this from your system:\n\n> Delivery to the following recipient failed\n"
        ">   someone@example.com\n> 550 5.1.1 user unknown\n"
    )
    raw = _message(
        f"From: Jane <jane@example.com>\nSubject: Re: Undeliverable: hello\nIn-Reply-To: {OURS}",
        body,
    )
    result = classify(raw)
    assert (result.kind, result.parser, result.recipients) == ("reply", "reply", ())


@pytest.mark.parametrize(
    "sender",
    [
        b"From: MAILER-DAEMON@mail.example.net (Mail Delivery Syst\xe8me)\n",  # raw 8-bit
        b"From: \n",
        b"",
    ],
    ids=["8-bit", "empty", "missing"],
)
def test_flufl_detectors_survive_odd_senders(sender: bytes) -> None:
    # Some detectors assume a str From with an address; one raising would stop them all.
    raw = (CORPUS / "qmail_failure_notice.eml").read_bytes()
    raw = raw.replace(b"From: MAILER-DAEMON@mail.example.net\n", sender, 1)
    result = classify(raw)
    assert (result.kind, result.parser) == ("bounce", "flufl")
    assert [r.address for r in result.recipients] == ["mary.major@example.net"]


def test_a_bounce_subject_alone_does_not_stop_a_reply() -> None:
    raw = _message(
        f"From: Jane <jane@example.com>\nSubject: Parcel not delivered\nIn-Reply-To: {OURS}",
        "Hi, my parcel was not delivered to user@example.com, can you check?\n",
    )
    assert (classify(raw).kind, classify(raw).recipients) == ("reply", ())


def test_an_empty_return_path_alone_does_not_make_a_text_a_bounce() -> None:
    # RFC 3834 auto-replies use an empty Return-Path too; this one names a colleague.
    raw = _message(
        f"From: Pat <pat@example.com>\nReturn-Path: <>\nSubject: Away\nIn-Reply-To: {OURS}",
        "I am away until Monday; for urgent matters write to colleague@example.com.\n",
    )
    result = classify(raw)
    assert (result.kind, result.recipients) == ("reply", ())


def test_bounce_looking_message_without_recipients_is_unrecognized() -> None:
    raw = _message("From: MAILER-DAEMON@example.net\nSubject: Undeliverable mail", "Sorry.\n")
    result = classify(raw)
    assert (result.kind, result.parser) == ("unrecognized", "none")
    assert "looks like a bounce" in (result.problem or "")


@pytest.mark.parametrize(
    ("subject", "kind", "token"),
    [
        (f"unsubscribe {TOKEN}", "unsubscribe", TOKEN),
        (f"UNSUBSCRIBE   {TOKEN} ", "unsubscribe", TOKEN),
        (f"unsubscribe%20{TOKEN}", "unsubscribe", TOKEN),
        ("unsubscribe short", "unrecognized", None),
        (f"Re: unsubscribe {TOKEN}", "reply", None),
        (f"please unsubscribe {TOKEN}", "unrecognized", None),
    ],
)
def test_unsubscribe_subject(subject: str, kind: str, token: str | None) -> None:
    result = classify(_message(f"From: Leaving <Leaving@example.com>\nSubject: {subject}", ""))
    assert (result.kind, result.unsubscribe_token) == (kind, token)
    if token:
        assert (result.parser, result.sender) == ("mailto", "leaving@example.com")


def test_unsubscribe_comes_before_auto_reply_headers() -> None:
    raw = _message(
        f"From: a@example.com\nSubject: unsubscribe {TOKEN}\nAuto-Submitted: auto-generated"
    )
    assert classify(raw).kind == "unsubscribe"


def test_message_ids_are_normalised() -> None:
    raw = _message(
        "From: a@example.com\nSubject: Re: x\n"
        "In-Reply-To: <12345.Ab3dE5fG7hJ9kL1m@\n fleet.test> (message of Tuesday)\n"
        "References: 11111.Zz@fleet.test <first@example.com>\n <second@example.com>"
    )
    assert classify(raw).references.message_ids == (
        OURS,
        "<second@example.com>",
        "<first@example.com>",
    )


def test_inline_message_id_when_nothing_else() -> None:
    body = f"Your message could not be read.\n\n> Message-ID: {OURS}\n> Subject: hi\n"
    raw = _message("From: someone@example.com\nSubject: about your message", body)
    assert classify(raw).references.message_ids == (OURS,)


def test_jmrp_original_recipient_header() -> None:
    raw = (CORPUS / "arf_microsoft_jmrp_like.eml").read_bytes()
    raw = raw.replace(
        b"To: <redacted>\n", b"To: <redacted>\nX-HmXmrOriginalRecipient: <Hm.User@example.com>\n"
    )
    result = classify(raw)
    assert [r.address for r in result.recipients] == ["hm.user@example.com"]


def test_delivery_status_sent_as_text() -> None:
    raw = (CORPUS / "postfix_hard_user_unknown.eml").read_bytes()
    raw = raw.replace(b"Content-Type: message/delivery-status", b"Content-Type: text/plain")
    result = classify(raw)
    assert (result.kind, result.parser) == ("bounce", "rfc3464")
    assert [(r.address, r.bounce, r.status) for r in result.recipients] == [
        ("no.such.user@example.net", "hard", "5.1.1")
    ]


def test_broken_delivery_status_blocks() -> None:
    # Blocks run together, Action before the recipient, a stray line in between.
    fields = (
        "Reporting-MTA: dns; mx.example.net\n"
        "Action: failed\n"
        "Final-Recipient: rfc822; first@example.com\n"
        "this line is not a field\n"
        "Status: 5.1.1\n"
        "Final-Recipient: rfc822; second@example.com\n"
        "Action: delayed\n"
    )
    raw = _message(
        "From: MAILER-DAEMON@example.net\nSubject: Delivery report\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        f"--b\nContent-Type: text/plain\n\nreport\n--b\nContent-Type: message/delivery-status\n\n"
        f"{fields}\n--b--\n",
    )
    result = classify(raw)
    assert [(r.address, r.action, r.bounce, r.status) for r in result.recipients] == [
        ("first@example.com", "failed", "hard", "5.1.1"),
        ("second@example.com", "delayed", "soft", None),
    ]


def test_all_successes_is_a_bounce_without_failures() -> None:
    raw = (CORPUS / "postfix_hard_user_unknown.eml").read_bytes()
    raw = raw.replace(b"Action: failed\nStatus: 5.1.1", b"Action: relayed\nStatus: 2.0.0")
    result = classify(raw)
    assert (result.kind, result.parser) == ("bounce", "rfc3464")
    assert [r.bounce for r in result.recipients] == [None]
    assert "without failures" in (result.problem or "")


def test_report_type_parameter_variants() -> None:
    raw = (CORPUS / "arf_rfc822_headers.eml").read_bytes()
    for variant in (b'report-type="FEEDBACK-REPORT"', b"report-type*=us-ascii''feedback-report"):
        changed = raw.replace(b"report-type=feedback-report", variant)
        assert classify(changed).kind == "complaint"


# Whatever the bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n  \n",
        b"\x00\xff" * 1000,
        bytes(range(256)) * 40,
        b"From: \xff\xfe\x00\n\n\xff",
        b"Subject: =?x-unknown-charset?Q?caf=E9?=\n\nbody",
        b"Subject: =?utf-8?B?not*base64!?=\n\nbody",
        b"Subject: =?idna?Q?x?= =?rot13?Q?x?= =?base64?Q?x?=\n\nbody",
        b"Content-Type: multipart/report; report-type=delivery-status\n\nno boundary\n",
        b"Content-Type: multipart/mixed; boundary=x\n\n--x\n--x\n--x--\n",
        b"Content-Type: text/plain; charset*=bogus''x; charset=\"\xff\"\n\n\xff\xfe",
        b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n!!!not base64=\n",
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nRnJvbTogYQ==\n",
        b"Content-Type: message/delivery-status\n\nAction: failed\n",
        b"Content-Type: message/feedback-report\n\n\n\n",
        b":\n:\n::::\n\n",
        b"From: MAILER-DAEMON@x\n\n" + b"<a@b>:\n" * 1000,
        b"X" * 100_000,
        b"Subject: " + b"=?utf-8?Q?a?= " * 5000 + b"\n\n",
    ],
)
def test_odd_bytes(raw: bytes) -> None:
    _check_shape(classify(raw))


def test_empty_message() -> None:
    result = classify(b"")
    assert (result.kind, result.parser, result.problem) == ("unrecognized", "none", "empty message")


def test_unknown_charset_is_tolerated_and_said() -> None:
    raw = _message(f"From: a@example.com\nSubject: =?x-klingon?Q?Re:_caf=E9?=\nIn-Reply-To: {OURS}")
    result = classify(raw)
    assert result.kind == "reply"
    assert result.subject == "Re: caf\ufffd"
    assert "charset" in (result.problem or "")


def test_deeply_nested_multiparts() -> None:
    depth = 5000
    head = "".join(
        f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n" for i in range(depth)
    )
    raw = _message(
        "From: MAILER-DAEMON@example.net\nSubject: Undeliverable\n"
        "Content-Type: multipart/mixed; boundary=b0",
        head + "text\n",
    )
    started = time.perf_counter()
    result = classify(raw)
    assert time.perf_counter() - started < 1.0
    _check_shape(result)
    assert "malformed MIME" in (result.problem or "")


def test_deeply_nested_messages() -> None:
    raw = b"Content-Type: message/rfc822\n\n" * 3000 + b"Subject: inner\n\nhi\n"
    _check_shape(classify(b"From: a@example.com\n" + raw))


def _attachment(size: int) -> bytes:
    rng = random.Random(7)
    return base64.encodebytes(rng.randbytes(size * 3 // 4))


def _huge_bounce(size: int) -> bytes:
    raw = (CORPUS / "postfix_hard_user_unknown.eml").read_bytes()
    attachment = (
        b'--=_mf_7c1d0a\nContent-Type: application/pdf; name="catalogue.pdf"\n'
        b"Content-Transfer-Encoding: base64\n\n" + _attachment(size) + b"\n--=_mf_7c1d0a--\n"
    )
    return raw.replace(b"--=_mf_7c1d0a--\n", attachment, 1)


def _huge_reply(size: int) -> bytes:
    return (
        (
            "From: Jane <jane@example.com>\nTo: sender1@fleet.test\nSubject: Re: catalogue\n"
            f"In-Reply-To: {OURS}\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="m"\n\n--m\nContent-Type: text/plain\n\n'
            "Here is the scan you asked for.\n--m\nContent-Type: image/jpeg\n"
            "Content-Transfer-Encoding: base64\n\n"
        ).encode()
        + _attachment(size)
        + b"\n--m--\n"
    )


@pytest.mark.parametrize("build", [_huge_bounce, _huge_reply])
def test_twenty_megabytes_is_fast(build: Any) -> None:
    raw = build(20 * 1024 * 1024)
    assert len(raw) > 20_000_000
    best = min(_timed(raw) for _ in range(3))
    result = classify(raw)
    assert best < 0.5, f"{best:.3f}s"
    if build is _huge_bounce:
        assert (result.kind, result.parser) == ("bounce", "rfc3464")
        assert result.references.message_ids == (OURS,)
        assert result.references.unsubscribe_tokens == (TOKEN,)
    else:
        assert (result.kind, result.references.message_ids) == ("reply", (OURS,))
    assert "truncated for parsing" in (result.problem or "")
    assert "malformed" not in (result.problem or "")


@pytest.mark.parametrize(
    "raw",
    [b"\n" * 20_000_000, b"A" * 20_000_000, (b"A" * 76 + b"\n x\n") * 250_000],
    ids=["newlines", "one-line", "alternating"],
)
def test_twenty_megabytes_of_nonsense_is_fast(raw: bytes) -> None:
    assert _timed(raw) < 1.0


_NOTICE = b"From: MAILER-DAEMON@example.net\nSubject: Undelivered Mail\nReturn-Path: <>\n\n"


@pytest.mark.parametrize(
    "body",
    [
        b"a" * 60_000 + b"@\n",
        b"a@" * 30_000 + b"\n",
        b"x@" + b"a." * 30_000 + b"\n",
        b"-" * 60_000 + b"\n",
        b" " * 60_000 + b"x\n",
        b" -" * 30_000 + b"\n",
        b">>> DATA\n<<< 550 x\n" * 3_000,
        b">>> RCPT To:<a@example.com>\n" * 3_000,
        b"".join(b"u%d@example.com: 550 no such user\n" % i for i in range(5_000)),
    ],
    ids=["local-part", "ats", "dots", "dashes", "spaces", "space-dash", "data", "rcpt", "lines"],
)
def test_a_hostile_notice_text_is_fast(body: bytes) -> None:
    # The text readers run regular expressions over a notice's lines: none may backtrack
    # quadratically over a long run of the characters it accepts.
    assert _timed(_NOTICE + body) < 1.0


def _timed(raw: bytes) -> float:
    started = time.perf_counter()
    classify(raw)
    return time.perf_counter() - started


def test_truncated_by_the_reader() -> None:
    raw = (CORPUS / "gmail_dsn_failure.eml").read_bytes()
    cut = raw[: raw.index(b"Content-Type: message/rfc822") + 400]
    result = classify(cut, truncated=True)
    assert (result.kind, result.parser) == ("bounce", "rfc3464")
    assert [r.address for r in result.recipients] == ["nobody.here@example.com"]
    assert "truncated" in (result.problem or "")
    assert "malformed" not in (result.problem or "")


def _mutations(raw: bytes, rng: random.Random, count: int) -> list[bytes]:
    mutated: list[bytes] = []
    for _ in range(count):
        data = bytearray(raw)
        operation = rng.randrange(7)
        at = rng.randrange(len(data) + 1)
        if operation == 0:
            del data[at:]
        elif operation == 1:
            for _ in range(rng.randrange(1, 50)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif operation == 2:
            del data[at : at + rng.randrange(1, 500)]
        elif operation == 3:
            data[at:at] = rng.randbytes(rng.randrange(1, 200))
        elif operation == 4:
            lines = bytes(data).split(b"\n")
            rng.shuffle(lines)
            data = bytearray(b"\n".join(lines))
        elif operation == 5:
            data = bytearray(bytes(data).replace(b"--", b"-", rng.randrange(1, 4)))
        else:
            chunk = bytes(data[at : at + rng.randrange(1, 2000)])
            data[at:at] = chunk * rng.randrange(2, 20)
        mutated.append(bytes(data))
    return mutated


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mutations_never_raise(name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    rng = random.Random(f"mailfleet-{name}")
    for data in _mutations(raw, rng, 12):
        _check_shape(classify(data))
        _check_shape(classify(data, truncated=True))
