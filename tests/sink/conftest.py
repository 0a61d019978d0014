"""An in-process sink on a free port, its records and maildir in the test's tmp_path."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mailfleet_sink.capture import Maildir, RecordFile
from mailfleet_sink.server import Capture, start_server


@dataclass
class RunningSink:
    port: int
    capture: Capture
    record_path: Path
    maildir: Path

    def records(self) -> list[dict[str, Any]]:
        """Every record, after writing out what is still buffered."""
        assert self.capture.record is not None
        self.capture.record.flush()
        return [json.loads(line) for line in self.record_path.read_text().splitlines()]

    def messages(self) -> list[bytes]:
        return [path.read_bytes() for path in sorted((self.maildir / "new").iterdir())]


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[RunningSink]:
    record_path = tmp_path / "records.jsonl"
    capture = Capture(RecordFile(record_path), Maildir(tmp_path / "mail"))
    server = await start_server("127.0.0.1", 0, capture)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield RunningSink(port, capture, record_path, tmp_path / "mail")
    capture.close()
