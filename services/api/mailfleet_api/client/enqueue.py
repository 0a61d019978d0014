"""``mailfleet enqueue FILE.csv``: stream a CSV of recipients to the enqueue route in batches.

Each batch carries an Idempotency-Key made from the file's name, the batch's number and its
exact body, so running the same command again after an interruption replays the batches that
were stored (the API answers them from the key) and queues only the rest: nothing twice.
"""

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from mailfleet_api.client.api import (
    DEFAULT_API_URL,
    ApiClient,
    ApiKey,
    ApiProblemError,
    ApiUrl,
    Json,
    session,
)
from mailfleet_api.client.render import Output, rows_table

ENQUEUE_PATH = "/api/queue/enqueue"
DEFAULT_BATCH = 1000
# The API's default limit per request (MAILFLEET_ENQUEUE__MAX_RECIPIENTS).
MAX_BATCH = 10_000
EXIT_INTERRUPTED = 130


class CsvError(Exception):
    """The file cannot be read as a CSV of recipients."""


@dataclass(frozen=True)
class Row:
    """One recipient of the file: its record number (1 = first after the header) and line."""

    number: int
    line: int
    email: str
    recipient: dict[str, Any] | None  # None: refused before sending, see `problem`
    problem: str | None = None


@dataclass
class Tally:
    batches: int = 0
    rows: int = 0
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: Row, reason: str) -> None:
        self.rejected.append(
            {"row": row.number, "line": row.line, "email": row.email, "reason": reason}
        )


def _lines(path: Path, on_bytes: Callable[[int], None]) -> Iterator[str]:
    """The file's lines, decoded, counting bytes read (a newline byte never splits a UTF-8 char)."""
    with path.open("rb") as raw:
        for number, chunk in enumerate(raw, start=1):
            on_bytes(len(chunk))
            try:
                yield chunk.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise CsvError(f"line {number} is not UTF-8") from None


def read_rows(lines: Iterator[str]) -> Iterator[Row]:
    """Recipients from CSV lines: email, name, and every other column a template variable."""
    reader = csv.reader(lines)
    header = [name.strip() for name in next(reader, [])]
    lowered = [name.lower() for name in header]
    if "email" not in lowered:
        raise CsvError(f"the header has no email column: {', '.join(header) or '(empty)'}")
    if len(set(header)) != len(header):
        raise CsvError("the header names a column twice")
    email_at = lowered.index("email")
    name_at = lowered.index("name") if "name" in lowered else None
    variables = [(i, n) for i, n in enumerate(header) if i not in (email_at, name_at)]
    number = 0
    for values in reader:
        if not values:
            continue  # a blank line
        number += 1
        line = reader.line_num - values_lines(values) + 1
        email = values[email_at].strip() if email_at < len(values) else ""
        if len(values) != len(header):
            problem = f"{len(values)} fields where the header has {len(header)}"
            yield Row(number, line, email, None, problem)
            continue
        recipient: dict[str, Any] = {"email": email}
        if name_at is not None and values[name_at].strip():
            recipient["name"] = values[name_at].strip()
        if variables:
            recipient["variables"] = {n: values[i] for i, n in variables}
        yield Row(number, line, email, recipient)


def values_lines(values: list[str]) -> int:
    """How many lines a record spans (quoted values may hold line breaks)."""
    return 1 + sum(value.count("\n") for value in values)


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def idempotency_key(file_name: str, batch_number: int, body: bytes) -> str:
    """The same file, batch and content give the same key; anything else another."""
    digest = hashlib.sha256(f"{file_name}\0{batch_number}\0".encode() + body).hexdigest()
    return f"csv-{digest}"


def send_batch(
    client: ApiClient, campaign_id: UUID, file_name: str, number: int, batch: list[Row]
) -> Tally:
    """Enqueue one batch (rows refused before sending are reported, not sent)."""
    tally = Tally(batches=1, rows=len(batch))
    sendable = [row for row in batch if row.recipient is not None]
    for row in batch:
        if row.problem is not None:
            tally.reject(row, row.problem)
    if not sendable:
        return tally
    body = json.dumps(
        {"campaign_id": str(campaign_id), "recipients": [row.recipient for row in sendable]},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    key = idempotency_key(file_name, number, body)
    result = client.request("POST", ENQUEUE_PATH, content=body, headers={"Idempotency-Key": key})
    tally.accepted = result["accepted"]
    for rejected in result["rejected"]:
        tally.reject(sendable[rejected["index"]], rejected["reason"])
    tally.rejected.sort(key=lambda rejected: int(rejected["row"]))
    return tally


def _progress(output: Output) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows, {task.fields[accepted]} accepted"),
        TextColumn("{task.fields[rejected]} rejected"),
        TimeRemainingColumn(),
        console=output.err,
        disable=output.as_json,
    )


def enqueue_csv(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="CSV with a header: email, name, variables."
        ),
    ],
    campaign: Annotated[UUID, typer.Option("--campaign", help="The campaign's id.")],
    batch_size: Annotated[
        int, typer.Option(min=1, max=MAX_BATCH, help="Recipients per request.")
    ] = DEFAULT_BATCH,
    api_url: ApiUrl = DEFAULT_API_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Queue a campaign's recipients from a CSV file, in batches, with a progress bar.

    Columns: email (required), name, and any other column becomes a template variable of that
    name. Safe to run again after an interruption: batches already stored are not queued twice.
    """
    total = Tally()
    with session(api_url, api_key, as_json) as (client, output), _progress(output) as progress:
        task = progress.add_task(
            file.name, total=file.stat().st_size, rows=0, accepted=0, rejected=0
        )

        def advance(size: int) -> None:
            progress.advance(task, size)

        try:
            rows = read_rows(_lines(file, advance))
            for number, batch in enumerate(_batches(rows, batch_size)):
                sent = send_batch(client, campaign, file.name, number, batch)
                total.batches += 1
                total.rows += sent.rows
                total.accepted += sent.accepted
                total.rejected += sent.rejected
                progress.update(
                    task, rows=total.rows, accepted=total.accepted, rejected=len(total.rejected)
                )
        except CsvError as exc:
            output.fail(f"{file}: {exc}", code=2)
        except (ApiProblemError, KeyboardInterrupt) as exc:
            progress.stop()
            output.warn(
                f"stopped after {total.batches} batches ({total.rows} rows): run the same "
                "command again to go on; batches already stored are not queued twice"
            )
            if isinstance(exc, KeyboardInterrupt):
                raise typer.Exit(EXIT_INTERRUPTED) from None
            raise
        progress.stop()
        _report(output, campaign, file, total)


def _report(output: Output, campaign: UUID, file: Path, total: Tally) -> None:
    summary = {
        "campaign_id": str(campaign),
        "file": str(file),
        "batches": total.batches,
        "rows": total.rows,
        "accepted": total.accepted,
        "rejected_count": len(total.rejected),
        "rejected": total.rejected,
    }
    if output.as_json:
        output.json(summary)
        return
    output.line(
        f"{file.name}: {total.rows} rows in {total.batches} batches, {total.accepted} accepted, "
        f"{len(total.rejected)} rejected"
    )
    if total.rejected:
        output.table(
            rows_table(total.rejected, title="rejected", columns=("line", "email", "reason"))
        )
