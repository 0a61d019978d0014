"""Where accepted messages go: a buffered JSON-lines record, and optionally a maildir."""

import asyncio
import itertools
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# json.dumps builds a new encoder whenever it is given options; this one is built once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much
class Accepted:
    """One message the sink said 250 to."""

    message_id: str | None
    mail_from: str
    recipients: list[str]
    user: str | None  # the AUTH login of the session, if any
    at: float  # Unix time the end of DATA arrived
    # The DATA lines as sent (dot-stuffed), after a leading CRLF so that every line, the first
    # too, starts after one: unstuffing is then a single replace.
    stuffed: bytes

    @property
    def content(self) -> bytes:
        """The message itself (RFC 5321 4.5.2: a leading dot of a line removed)."""
        return self.stuffed.replace(b"\r\n..", b"\r\n.")[2:]

    def record_line(self) -> str:
        record = {
            "message_id": self.message_id,
            "recipients": self.recipients,
            "mail_from": self.mail_from,
            "user": self.user,
            "at": self.at,
        }
        return _ENCODER.encode(record) + "\n"


class RecordFile:
    """Appends one JSON line per message, written in batches every `flush_s` and on close.

    The timer only runs while lines wait, so an idle sink never wakes up.
    """

    def __init__(self, path: Path, flush_s: float = 0.5) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")
        self._flush_s = flush_s
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, message: Accepted) -> None:
        self._pending.append(message.record_line())
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._pending:
            self._file.write("".join(self._pending))
            self._pending.clear()
            self._file.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._file.close()


class Maildir:
    """Writes each message as a file in `new/` (via `tmp/`, so readers never see half a file)."""

    def __init__(self, root: Path) -> None:
        self._root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._pid = os.getpid()
        self._counter = itertools.count(1)

    def add(self, message: Accepted) -> None:
        name = f"{int(time.time())}.P{self._pid}Q{next(self._counter)}.{self._host}"
        tmp = self._root / "tmp" / name
        tmp.write_bytes(message.content)
        tmp.rename(self._root / "new" / name)
