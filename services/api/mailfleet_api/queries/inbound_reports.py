"""SQL of the bounces, complaints and replies read from mailboxes."""

from datetime import datetime
from typing import Any

import asyncpg
from mailfleet_common.db import Conn

from mailfleet_api import schemas
from mailfleet_api.queries.pages import newest_first, param

_INBOUND_REPORT_COLUMNS = """
    id, account_id, kind, parser, sender, subject, size, truncated, matched, problem, details,
    received_at, published_at IS NOT NULL AS published, raw IS NOT NULL AS has_raw
"""


def _inbound_report_where(filters: schemas.InboundReportFilter, args: list[Any]) -> str:
    """The condition for the filters given; their values are appended to `args`."""
    clauses: list[str] = []
    if filters.account_id is not None:
        clauses.append(f"account_id = {param(args, filters.account_id)}")
    if filters.kind is not None:
        clauses.append(f"kind = {param(args, filters.kind)}")
    if filters.matched is not None:
        clauses.append("matched > 0" if filters.matched else "matched = 0")
    if filters.problem is not None:
        clauses.append(f"problem IS {'NOT ' if filters.problem else ''}NULL")
    if filters.received_after is not None:
        clauses.append(f"received_at >= {param(args, filters.received_after)}")
    if filters.received_before is not None:
        clauses.append(f"received_at < {param(args, filters.received_before)}")
    return " AND ".join(clauses) or "true"


def _inbound_report(row: asyncpg.Record) -> schemas.InboundReport:
    return schemas.InboundReport.model_validate(dict(row))


async def list_inbound_reports(
    conn: Conn,
    filters: schemas.InboundReportFilter,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[schemas.InboundReport], bool]:
    """A page of matching reports, newest first, after the given (received_at, id).

    Returns the page and whether more follow.
    """
    args: list[Any] = []
    where = _inbound_report_where(filters, args)
    select = f"SELECT {_INBOUND_REPORT_COLUMNS} FROM inbound_reports"  # noqa: S608 - a constant
    rows, more = await newest_first(conn, select, "received_at", where, args, limit, after)
    return [_inbound_report(r) for r in rows], more


async def fetch_inbound_report(conn: Conn, report_id: int) -> schemas.InboundReport | None:
    row = await conn.fetchrow(
        f"SELECT {_INBOUND_REPORT_COLUMNS} FROM inbound_reports WHERE id = $1",  # noqa: S608 - a constant
        report_id,
    )
    return None if row is None else _inbound_report(row)


async def fetch_inbound_report_raw(conn: Conn, report_id: int) -> asyncpg.Record | None:
    """The kept bytes of a report (raw: NULL if none were kept) and its kind; None: no report."""
    return await conn.fetchrow("SELECT kind, raw FROM inbound_reports WHERE id = $1", report_id)
