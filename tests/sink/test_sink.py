import asyncio
import base64
import signal
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from mailfleet_sink.capture import Accepted
from mailfleet_sink.protocol import SmtpSession

from tests.sink.conftest import RunningSink
from tests.stack import Sink, free_port


def _message(n: int, body: str = "Hello.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = f"reader{n}@example.net"
    message["Subject"] = f"message {n}"
    message["Message-ID"] = f"<m{n}@example.com>"
    message.set_content(body)
    return message


def _client(port: int) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10)


async def test_record_holds_message_id_envelope_recipients_and_time(sink: RunningSink) -> None:
    before = time.time()
    async with _client(sink.port) as client:
        await client.send_message(
            _message(1), sender="bounce@example.com", recipients=["a@example.net", "b@x.org"]
        )

    [record] = sink.records()
    assert record["message_id"] == "<m1@example.com>"
    assert record["recipients"] == ["a@example.net", "b@x.org"]
    assert record["mail_from"] == "bounce@example.com"
    assert record["user"] is None
    assert before <= record["at"] <= time.time()


async def test_several_messages_on_one_connection_are_each_recorded_in_order(
    sink: RunningSink,
) -> None:
    async with _client(sink.port) as client:
        for n in range(25):
            await client.send_message(_message(n))
        await client.rset()
        await client.noop()
        await client.send_message(_message(25))

    records = sink.records()
    assert [r["message_id"] for r in records] == [f"<m{n}@example.com>" for n in range(26)]
    assert [r["recipients"] for r in records] == [[f"reader{n}@example.net"] for n in range(26)]
    assert len(sink.messages()) == 26


async def test_dot_stuffed_lines_are_stored_as_they_were_written(sink: RunningSink) -> None:
    body = ".starts with a dot\n.\n..two dots\nmiddle . dot\n.\n"
    message = _message(1, body)
    async with _client(sink.port) as client:
        await client.send_message(message)

    [stored] = sink.messages()
    assert stored == message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    assert b"\r\n..two dots\r\n" in stored
    assert sink.records()[0]["message_id"] == "<m1@example.com>"


async def test_folded_message_id_is_unfolded_and_a_missing_one_is_null(
    sink: RunningSink,
) -> None:
    folded = b"Subject: x\r\nMessage-ID:\r\n <folded@example.com>\r\n\r\nbody\r\n"
    bare = b"Subject: no id\r\n\r\nMessage-ID: <in-body@example.com>\r\n"
    async with _client(sink.port) as client:
        await client.sendmail("a@example.com", ["b@example.net"], folded)
        await client.sendmail("a@example.com", ["b@example.net"], bare)

    assert [r["message_id"] for r in sink.records()] == ["<folded@example.com>", None]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_any_credentials_are_accepted_and_the_login_is_recorded(
    sink: RunningSink, mechanism: str
) -> None:
    async with _client(sink.port) as client:
        assert "starttls" not in client.esmtp_extensions
        assert client.server_auth_methods == ["plain", "login"]
        login = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        response = await login("account-7", "any password at all")
        assert response.code == 235
        await client.send_message(_message(1))

    assert sink.records()[0]["user"] == "account-7"


async def _converse(port: int, lines: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # greeting
    writer.write(lines)
    await writer.drain()
    replies = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
    writer.close()
    await writer.wait_closed()
    return replies


async def test_pipelined_commands_and_data_in_one_write_are_answered_in_order(
    sink: RunningSink,
) -> None:
    plain = base64.b64encode(b"\0user\0secret")
    replies = await _converse(
        sink.port,
        b"EHLO client\r\nAUTH PLAIN " + plain + b"\r\nMAIL FROM:<a@example.com> SIZE=40\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
        b"Message-ID: <piped@example.com>\r\n\r\n..hidden\r\n.\r\n"
        b"MAIL FROM:<>\r\nRCPT TO:<d@example.net>\r\nDATA\r\n.\r\nQUIT\r\n",
    )

    codes = [line[:3] for line in replies.splitlines() if line[3:4] == b" "]
    assert codes == [b"250", b"235", b"250", b"250", b"250", b"354", b"250",
                     b"250", b"250", b"354", b"250", b"221"]  # fmt: skip
    records = sink.records()
    assert [r["recipients"] for r in records] == [
        ["b@example.net", "c@example.net"],
        ["d@example.net"],
    ]
    assert records[0]["user"] == "user"
    assert records[1]["mail_from"] == ""
    assert sink.messages() == [b"Message-ID: <piped@example.com>\r\n\r\n.hidden\r\n", b""]


async def test_commands_out_of_order_are_refused_without_losing_the_session(
    sink: RunningSink,
) -> None:
    replies = await _converse(
        sink.port,
        b"HELO client\r\nRCPT TO:<b@x.org>\r\nDATA\r\nMAIL FROM:<a@x.org>\r\n"
        b"MAIL FROM:<a@x.org>\r\nSTARTTLS\r\nAUTH CRAM-MD5\r\nQUIT\r\n",
    )

    codes = [line[:3] for line in replies.splitlines()]
    assert codes == [b"250", b"503", b"503", b"250", b"503", b"502", b"504", b"221"]
    assert sink.records() == []


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def test_a_message_split_at_any_byte_is_received_whole() -> None:
    conversation = (
        b"EHLO c\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
        b"Message-ID: <split@x.org>\r\n\r\n..\r\n...\r\nend\r\n.\r\nQUIT\r\n"
    )
    for size in (1, 2, 3, 5, 7):
        received: list[Accepted] = []
        session = SmtpSession("sink.test", received.append)
        transport = _Transport()
        session.connection_made(transport)  # type: ignore[arg-type]
        for start in range(0, len(conversation), size):
            session.data_received(conversation[start : start + size])

        assert [m.content for m in received] == [
            b"Message-ID: <split@x.org>\r\n\r\n.\r\n..\r\nend\r\n"
        ]
        assert [m.message_id for m in received] == ["<split@x.org>"]
        assert transport.written.endswith(b"221 2.0.0 bye\r\n")
        assert transport.closed


async def test_the_command_writes_records_while_running_and_the_rest_on_sigterm(
    tmp_path: Path,
) -> None:
    sink = Sink(
        port=free_port(),
        record_path=tmp_path / "records.jsonl",
        log_path=tmp_path / "sink.log",
        maildir=tmp_path / "mail",
    )
    await sink.start()
    try:
        async with _client(sink.port) as client:
            await client.login("someone", "anything")
            await client.send_message(_message(1))
            records = await sink.wait_for_records(1, within_s=5)  # the periodic write
            await client.send_message(_message(2))
            assert sink.records() == records  # the second waits for the next write...
    finally:
        assert await sink.stop() == 0

    # ...or for the exit.
    assert [r["message_id"] for r in sink.records()] == ["<m1@example.com>", "<m2@example.com>"]
    assert len(list((tmp_path / "mail" / "new").iterdir())) == 2
    assert "stopping after 2 messages" in sink.log_tail()


async def test_sigint_stops_the_command_too(tmp_path: Path) -> None:
    sink = Sink(port=free_port(), record_path=tmp_path / "r.jsonl", log_path=tmp_path / "s.log")
    await sink.start()
    assert await sink.kill(signal.SIGINT) == 0


def test_a_defer_rate_answers_that_share_of_messages_451_and_records_only_the_rest() -> None:
    received: list[Accepted] = []
    session = SmtpSession("sink.test", received.append, defer_rate=0.5)
    transport = _Transport()
    session.connection_made(transport)  # type: ignore[arg-type]
    session.data_received(b"EHLO c\r\n")
    for i in range(400):
        session.data_received(
            b"MAIL FROM:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
            b"Message-ID: <%d@x.org>\r\n\r\nhi\r\n.\r\n" % i
        )

    deferred = transport.written.count(b"451 4.3.0")
    accepted = transport.written.count(b"250 2.0.0 OK\r\n") - 400 * 2  # MAIL and RCPT say OK too
    assert deferred + accepted == 400
    assert 120 < deferred < 280
    assert len(received) == accepted
