"""Exports: rows read through a server-side cursor and streamed as CSV or JSON Lines.

Memory stays flat however many rows go out: PostgreSQL hands them over `PREFETCH` at a time
inside one read-only transaction (one consistent snapshot for the whole file), and they leave
as text `CHUNK_ROWS` at a time.
"""

import csv
import io
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from mailfleet_common.db import Conn

Format = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[Format, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
}
PREFETCH = 2000
CHUNK_ROWS = 1000
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Export:
    """A query ($n parameters in `args`) whose rows carry `columns`, in order.

    `shape`, if set, rewrites each row's values (e.g. truncating IP addresses) before output.
    """

    query: str
    args: Sequence[Any]
    columns: tuple[str, ...]
    shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None


def _timestamp(value: datetime) -> str:
    # As the API's JSON writes it (pydantic): UTC as Z.
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def csv_cell(value: Any) -> str:
    """A value as CSV text that no spreadsheet takes for a formula: those get a leading '."""
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = _timestamp(value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, UUID):
        return str(value)
    return value


def filename(stem: str, fmt: Format) -> str:
    return f"{stem}.{fmt}"


def headers(stem: str, fmt: Format) -> dict[str, str]:
    """Content-Disposition naming the file, for a download."""
    return {"Content-Disposition": f'attachment; filename="{filename(stem, fmt)}"'}


async def stream(conn: Conn, export: Export, fmt: Format) -> AsyncIterator[bytes]:
    """The export's rows as `fmt`, in chunks.

    The query has run, and its first rows are in hand, by the time this returns: a value
    PostgreSQL refuses fails the request with a reason instead of cutting the download short.
    """
    chunks = _chunks(conn, export, fmt)
    first = await anext(chunks)
    return _after(first, chunks)


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def _chunks(conn: Conn, export: Export, fmt: Format) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(export.columns)
    count = 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        async for record in conn.cursor(export.query, *export.args, prefetch=PREFETCH):
            row = dict(record)
            if export.shape is not None:
                row = export.shape(row)
            if fmt == "csv":
                writer.writerow([csv_cell(row[c]) for c in export.columns])
            else:
                line = {c: _json_value(row[c]) for c in export.columns}
                buffer.write(json.dumps(line, separators=(",", ":"), default=str))
                buffer.write("\n")
            count += 1
            if count % CHUNK_ROWS == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()
