"""The suppression list in bulk: CSV import and export."""

import csv
import io
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import anyio.to_thread
from mailfleet_common.db import Conn
from pydantic import ValidationError

from mailfleet_api import queries, schemas
from mailfleet_api.errors import InvalidError

MAX_IMPORT_BYTES = 20 * 1024 * 1024
# Invalid rows listed in an import's response; all are counted.
MAX_LISTED_INVALID = 100
EXPORT_COLUMNS = ("id", "email", "campaign_id", "reason", "source", "created_at", "expires_at")
# Columns an import reads; any other (such as the export's id, source and created_at) is ignored.
_IMPORT_COLUMNS = ("email", "reason", "campaign_id", "expires_at")
_EXPORT_CHUNK_ROWS = 1000
_MAX_SHOWN_CHARS = 320


# --- import -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    row: int
    email: str
    campaign_id: UUID | None
    reason: str
    expires_at: datetime | None


@dataclass
class _ParsedFile:
    entries: list[_Entry] = field(default_factory=list)
    invalid: list[schemas.InvalidRow] = field(default_factory=list)
    rows: int = 0
    repeated: int = 0


def _records(raw: bytes) -> Iterator[tuple[int, list[str]]]:
    """The file's records with their row numbers; InvalidError if it is not readable CSV."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidError(f"the file is not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        # A quoted field may span lines: a record's row number is its place in the file, as a
        # spreadsheet numbers it, not a line number.
        yield from enumerate(reader, 1)
    except csv.Error as exc:
        raise InvalidError(f"malformed CSV near line {reader.line_num}: {exc}") from None


def _header(first: list[str]) -> dict[str, int] | None:
    """Column positions from the header row; None if the file is a headerless address list."""
    names = [name.strip().lower() for name in first]
    if len(names) == 1 and "@" in names[0]:
        return None  # no column name holds an @: this is the first address
    positions: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in _IMPORT_COLUMNS:
            if name in positions:
                raise InvalidError(f"the header names the column {name} twice")
            positions[name] = position
    if "email" not in positions:
        raise InvalidError(
            "the first row must be a header naming an email column (and optionally reason, "
            "campaign_id, expires_at), or the file a plain list of addresses, one per line"
        )
    return positions


def _problem(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{first['loc'][0]}: {message}" if first["loc"] else message


def parse_import(raw: bytes) -> _ParsedFile:
    """Read and validate every row (CPU-bound: run it in a worker thread).

    Each row is checked as a POST of one suppression would be; a row with the address and
    campaign of an earlier valid row is counted as repeated.
    """
    records = _records(raw)
    first = next(((number, record) for number, record in records if record), None)
    if first is None:
        raise InvalidError("the file is empty")
    header = _header(first[1])
    positions = header or {"email": 0}
    parsed = _ParsedFile()
    seen: set[tuple[str, UUID | None]] = set()
    for number, record in records if header else itertools.chain([first], records):
        if not record:
            continue  # a blank line
        parsed.rows += 1
        values: dict[str, Any] = {}
        for name, position in positions.items():
            cell = record[position].strip() if position < len(record) else ""
            if cell:
                values[name] = cell
        try:
            body = schemas.SuppressionCreate.model_validate(values)
        except ValidationError as exc:
            email = values.get("email")
            parsed.invalid.append(
                schemas.InvalidRow(
                    row=number, email=email and email[:_MAX_SHOWN_CHARS], reason=_problem(exc)
                )
            )
            continue
        key = (body.email.lower(), body.campaign_id)
        if key in seen:
            parsed.repeated += 1
            continue
        seen.add(key)
        parsed.entries.append(
            _Entry(number, body.email, body.campaign_id, body.reason, body.expires_at)
        )
    return parsed


async def import_csv(
    conn: Conn, raw: bytes, source: str, dry_run: bool
) -> schemas.SuppressionImport:
    """Suppress every valid row of a CSV file, or with `dry_run` only say what would happen.

    The rows are stored in a few set-based statements in one transaction: all or none.
    """
    parsed = await anyio.to_thread.run_sync(parse_import, raw)
    entries, invalid = parsed.entries, parsed.invalid
    campaigns = {e.campaign_id for e in entries if e.campaign_id is not None}
    unknown = campaigns - await queries.existing_campaigns(conn, list(campaigns))
    if unknown:
        invalid += [
            schemas.InvalidRow(row=e.row, email=e.email, reason=f"no campaign {e.campaign_id}")
            for e in entries
            if e.campaign_id in unknown
        ]
        invalid.sort(key=lambda row: row.row)
        entries = [e for e in entries if e.campaign_id not in unknown]
    emails = [e.email for e in entries]
    scopes = [e.campaign_id for e in entries]
    reasons = [e.reason for e in entries]
    cancelled = 0
    async with conn.transaction():
        present = len(await queries.actively_suppressed(conn, emails, scopes))
        if not dry_run and entries:
            expiries = [e.expires_at for e in entries]
            cancelled = await queries.suppress_many(conn, emails, scopes, reasons, expiries, source)
    return schemas.SuppressionImport(
        dry_run=dry_run,
        rows=parsed.rows,
        imported=len(entries) - present,
        already_present=present,
        repeated=parsed.repeated,
        invalid_count=len(invalid),
        invalid=invalid[:MAX_LISTED_INVALID],
        cancelled=cancelled,
    )


# --- export -------------------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return value.isoformat() if isinstance(value, datetime) else value


async def export_csv(conn: Conn, filters: schemas.SuppressionFilter) -> AsyncIterator[str]:
    """The matching suppressions as CSV text, newest first, in chunks of rows.

    Rows are read through a server-side cursor, so memory stays flat however long the list.
    The query has run by the time this returns: a value PostgreSQL refuses fails the request
    with a reason instead of cutting the download short.
    """
    chunks = _csv_chunks(conn, filters)
    first = await anext(chunks)
    return _after(first, chunks)


async def _after(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for chunk in rest:
        yield chunk


async def _csv_chunks(conn: Conn, filters: schemas.SuppressionFilter) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    async with conn.transaction(readonly=True):
        count = 0
        async for row in queries.suppression_rows(conn, filters):
            writer.writerow([_cell(row[column]) for column in EXPORT_COLUMNS])
            count += 1
            if count % _EXPORT_CHUNK_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()
