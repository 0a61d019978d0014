"""What the client commands print: JSON for scripts, rich tables for people, errors on stderr."""

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

# A list longer than this is cut short in a table (--json always has all of it).
MAX_TABLE_ROWS = 50


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def cell(value: Any) -> Text:
    """A value as table text; Text, so that brackets in data are never read as rich markup."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, dict | list):
        return Text(to_json(value))
    return Text(str(value))


class Output:
    """Where a command's results and errors go: stdout for results, stderr for the rest."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.write(to_json(value) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        self.out.print(Text(text), soft_wrap=True)

    def note(self, text: str) -> None:
        """Progress and hints, for people only: never mixed into JSON output."""
        if not self.as_json:
            self.err.print(Text(text, style="dim"), soft_wrap=True)

    def warn(self, text: str) -> None:
        if self.as_json:
            sys.stderr.write(to_json({"warning": text}) + "\n")
        else:
            self.err.print(Text(text, style="yellow"), soft_wrap=True)

    def fail(self, message: str, code: int = 1) -> NoReturn:
        if self.as_json:
            sys.stderr.write(to_json({"error": message}) + "\n")
        else:
            self.err.print(Text(message, style="red"), soft_wrap=True)
        raise typer.Exit(code)

    def problem(self, text: str, document: Mapping[str, Any]) -> None:
        if self.as_json:
            sys.stderr.write(to_json(document) + "\n")
        else:
            self.err.print(Text(text, style="red"), soft_wrap=True)

    def table(self, table: Table) -> None:
        self.out.print(table)

    def document(self, document: Mapping[str, Any], title: str | None = None) -> None:
        """Any JSON object: its plain fields as one table, each list of objects as another."""
        for table in document_tables(document, title):
            self.out.print(table)


def fields_table(fields: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    for name, value in fields:
        table.add_row(Text(name), cell(value))
    return table


def rows_table(
    rows: Sequence[Mapping[str, Any]], title: str | None = None, columns: Sequence[str] = ()
) -> Table:
    """Objects as rows: the columns given, or every key in order of first appearance."""
    names = list(columns) or list(dict.fromkeys(key for row in rows for key in row))
    caption = None
    if len(rows) > MAX_TABLE_ROWS:
        caption = f"the first {MAX_TABLE_ROWS} of {len(rows)}; --json gives all"
    elif not rows:
        caption = "none"
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for name in names:
        table.add_column(name, overflow="fold")
    for row in rows[:MAX_TABLE_ROWS]:
        table.add_row(*(cell(row.get(name)) for name in names))
    return table


def _flat(prefix: str, value: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(item, dict) and item:
            yield from _flat(name, item)
        else:
            yield name, item


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def document_tables(document: Mapping[str, Any], title: str | None = None) -> list[Table]:
    """Plain fields (nested objects flattened to a.b) in one table; lists of objects apart."""
    plain = {k: v for k, v in document.items() if not (_is_rows(v) and v)}
    tables = [fields_table(_flat("", plain), title)]
    tables += [rows_table(v, title=k) for k, v in document.items() if _is_rows(v) and v]
    return tables
