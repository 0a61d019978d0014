"""Delivering a SendBatch: claim, render, send and record each message, in order."""

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from mailfleet_common import oauth, tracing
from mailfleet_common.crypto import SecretBox, SecretBoxError
from mailfleet_common.db import Pool, while_database_away
from mailfleet_common.messages import AccountPaused, SendAttempt
from mailfleet_common.messages import Outcome as AttemptOutcome
from mailfleet_common.templating import InvalidTemplateError, compile_campaign
from mailfleet_common.topology import ACCOUNT_PAUSED_KEY
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter

from mailfleet_sender import queries
from mailfleet_sender.claims import Claim, Committer, Outcome
from mailfleet_sender.gmail import GmailApi, GmailTransport
from mailfleet_sender.metrics import DELIVERY_LATENCY, MESSAGES
from mailfleet_sender.mime import (
    Attachment,
    Campaign,
    MessageBuildError,
    TemplateCache,
    build_message,
    envelope_address,
    mailbox,
    template_context,
)
from mailfleet_sender.queries import AccountRow, ClaimedMessage
from mailfleet_sender.reporting import AttemptReporter, EventPublisher
from mailfleet_sender.settings import Settings
from mailfleet_sender.smtp import AccountTransport, SmtpEndpoint, SmtpOptions, SmtpResult
from mailfleet_sender.tokens import AccountTokens
from mailfleet_sender.tracking import MessageLinks, Tracker

log = logging.getLogger(__name__)
_tracer = tracing.get_tracer("mailfleet_sender")

_DETAIL_MAX = 1000
_NEVER = datetime.min.replace(tzinfo=UTC)
_URGENT_MAX = 1000
# How long a replica keeps a notice for an account it is not (yet) the active consumer of:
# long enough to outlast a hand-over, short enough that few of them are stale by then.
_PARKED_S = 30.0


class UrgentIds:
    """Transactional messages noticed for an account (UrgentSends), to send before the rest.

    `ready` ones are sent before the next message of the account; `parked` ones were noticed
    while this replica was not known to be the account's active consumer (standby, between
    two registrations in a hand-over): they wait, for `_PARKED_S`, until it becomes active,
    and are then checked against the database before joining the ready ones. Every id is
    only a hint: it is claimed with a compare-and-set, so one sent meanwhile is skipped.
    """

    def __init__(self) -> None:
        self._ready: deque[int] = deque(maxlen=_URGENT_MAX)
        self._parked: dict[int, float] = {}

    def __bool__(self) -> bool:
        return bool(self._ready)

    def add(self, ids: Sequence[int], ready: bool) -> None:
        if ready:
            queued = set(self._ready)
            self._ready.extend(i for i in ids if i not in queued)
            return
        now = time.monotonic()
        self._parked = {i: t for i, t in self._parked.items() if t > now}
        if len(self._parked) + len(ids) <= _URGENT_MAX:
            self._parked.update(dict.fromkeys(ids, now + _PARKED_S))

    def pop(self) -> int | None:
        return self._ready.popleft() if self._ready else None

    def unpark(self) -> list[int]:
        """The parked ids not yet expired, oldest first; none are parked afterwards."""
        now = time.monotonic()
        ids = sorted(i for i, t in self._parked.items() if t > now)
        self._parked.clear()
        return ids

    def park(self) -> None:
        """This replica is no longer the active consumer: the ready ids wait as parked ones."""
        self.add(list(self._ready), ready=False)
        self._ready.clear()


@dataclass(frozen=True, slots=True)
class Connectors:
    """What the replica's accounts send through, shared by all of them."""

    smtp: SmtpOptions
    secrets: SecretBox | None
    tokens: AccountTokens
    gmail: GmailApi


@dataclass
class Account:
    """An account as this replica delivers for it: config, headers and its transport."""

    row: AccountRow
    transport: AccountTransport | GmailTransport
    from_header: str
    envelope_from: str
    domain: str
    # When this replica last finished a command of the account: a command that arrives
    # before then waits for the account's own work, not for the replica.
    free_at: datetime = _NEVER
    # Transactional messages just assigned to the account (UrgentSends): while it works its
    # commands, each is sent before the next message of the command in hand.
    urgent: UrgentIds = field(default_factory=UrgentIds)
    _counters: dict[str, "Counter"] = field(default_factory=dict)

    @property
    def id(self) -> UUID:
        return self.row.id

    def count(self, outcome: str) -> None:
        counter = self._counters.get(outcome)
        if counter is None:
            counter = self._counters[outcome] = MESSAGES.labels(str(self.row.id), outcome)
        counter.inc()

    def forget_metrics(self) -> None:
        """Drop the account's metric series: it is no longer served here."""
        for outcome in self._counters:
            MESSAGES.remove(str(self.row.id), outcome)
        self._counters.clear()


def _endpoint(row: AccountRow, connectors: Connectors) -> SmtpEndpoint:
    # The schema requires the server of 'smtp' accounts (accounts_smtp_complete).
    host, port, tls = row.smtp_host or "", row.smtp_port or 0, row.smtp_tls or "none"
    if row.auth_kind == "oauth2":
        return SmtpEndpoint(
            host=host,
            port=port,
            tls=tls,
            username=row.smtp_username or row.from_email,
            password=None,
            oauth=connectors.tokens.of(row.id),
        )
    secrets = connectors.secrets
    password = None
    error = None
    if row.smtp_password_enc is not None:
        if secrets is None:
            error = (
                "the SMTP password cannot be decrypted: no key in MAILFLEET_CRYPTO__KEYS; "
                "configure the key it was stored with, or enter the password again"
            )
        else:
            try:
                password = secrets.decrypt(row.smtp_password_enc)
            except SecretBoxError:
                error = (
                    "the SMTP password cannot be decrypted with MAILFLEET_CRYPTO__KEYS: add "
                    "the key it was stored with, or enter the password again"
                )
    return SmtpEndpoint(
        host=host,
        port=port,
        tls=tls,
        username=row.smtp_username,
        password=password,
        password_error=error,
    )


def _transport(
    row: AccountRow, settings: Settings, connectors: Connectors
) -> AccountTransport | GmailTransport:
    if row.kind == "gmail-api":
        return GmailTransport(
            connectors.gmail,
            connectors.tokens.of(row.id),
            settings.sender.max_connections_per_account,
            row.min_gap_ms,
            settings.sender.gmail_units_per_minute,
        )
    return AccountTransport(
        _endpoint(row, connectors),
        connectors.smtp,
        settings.sender.max_connections_per_account,
        row.min_gap_ms,
    )


def open_account(row: AccountRow, settings: Settings, connectors: Connectors) -> Account:
    return Account(
        row=row,
        transport=_transport(row, settings, connectors),
        from_header=mailbox(row.from_name, row.from_email),
        envelope_from=envelope_address(row.from_email),
        domain=row.from_email.rpartition("@")[2] or "mailfleet.invalid",
    )


def reconfigure_account(
    account: Account, row: AccountRow, settings: Settings, connectors: Connectors
) -> None:
    """Adopt a changed account row; its SMTP sessions reopen with the new settings."""
    old = account.row
    account.row = row
    account.from_header = mailbox(row.from_name, row.from_email)
    account.envelope_from = envelope_address(row.from_email)
    account.domain = row.from_email.rpartition("@")[2] or "mailfleet.invalid"
    transport = account.transport
    if (row.kind, row.auth_kind) != (old.kind, old.auth_kind):
        transport.close()  # each SMTP session closes after its message in hand
        account.transport = _transport(row, settings, connectors)
    elif isinstance(transport, GmailTransport):
        transport.reconfigure(row.min_gap_ms)
    else:
        transport.reconfigure(_endpoint(row, connectors), row.min_gap_ms)


@dataclass
class _Batch:
    ids: deque[int]
    traces: Mapping[int, str] | None = None  # each traced message's dispatch traceparent
    # The account was paused (its messages went back to the queue), or held for longer than
    # a command may wait (they stay assigned to it; the dispatcher's sweep requeues them).
    halted: bool = False
    interrupted: bool = False  # shutting down: a pulled id was left unprocessed


class Deliverer:
    """Works SendBatch commands through an account's SMTP connections or the Gmail API."""

    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        committer: Committer,
        reporter: AttemptReporter,
        publisher: EventPublisher,
        templates: TemplateCache,
        tracker: Tracker,
        connectors: Connectors,
    ) -> None:
        self._settings = settings
        self._connectors = connectors
        # A hold longer than any connection backoff (a daily limit) ends the command instead
        # of keeping it, unacknowledged, for hours.
        self._long_hold_s = 1.5 * settings.sender.connect_backoff_cap_s
        self._pool = pool
        self._committer = committer
        self._reporter = reporter
        self._publisher = publisher
        self._templates = templates
        self._tracker = tracker
        # Contents of noticed transactional messages, read while they wait for their turn.
        self._contents: dict[int, asyncio.Task[queries.ContentRow | None]] = {}

    async def deliver_batch(
        self,
        account: Account,
        message_ids: list[int],
        stopping: asyncio.Event,
        traces: Mapping[int, str] | None = None,
    ) -> bool:
        """Deliver the messages; False if shutdown interrupted before every one was handled.

        ``traces``: the trace context of each traced message (tracing on); its SMTP
        transaction is recorded as a span continuing it.
        """
        batch = _Batch(deque(message_ids), traces)
        workers = min(account.transport.size, len(message_ids))
        if workers <= 1:
            # One connection (the default): no task of its own, which costs more than the
            # rest of a one-message command's bookkeeping.
            await self._work(account, 0, batch, stopping)
            return batch.halted or not batch.interrupted
        results = await asyncio.gather(
            *(self._work(account, slot, batch, stopping) for slot in range(workers)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return batch.halted or not batch.interrupted

    async def _work(
        self, account: Account, slot: int, batch: _Batch, stopping: asyncio.Event
    ) -> None:
        pending: Outcome | None = None
        while not batch.halted:
            if stopping.is_set() or not await self._wait_while_held(account, batch, stopping):
                batch.interrupted = batch.interrupted or bool(batch.ids)
                break
            # A transactional message goes before the rest of the command: its own command
            # comes later, behind the campaign's, and finds it claimed (compare-and-set).
            message_id = account.urgent.pop()
            if message_id is None:
                if not batch.ids:
                    break
                message_id = batch.ids.popleft()
            delay = account.transport.reserve_turn()
            if delay > 0:
                if pending is not None:
                    # Don't keep an outcome in memory through the pause between sends.
                    await self._committer.submit(pending, None)
                    pending = None
                await asyncio.sleep(delay)
            claimed = await self._committer.submit(
                pending, Claim(message_id, account.id, account.domain)
            )
            pending = None
            if claimed is None:
                continue  # counted by the committer, with the reason
            if claimed.account_updated_at > account.row.updated_at:
                await self._refresh(account)
            try:
                if batch.traces and (parent := batch.traces.get(message_id)):
                    result = await self._traced_attempt(account, slot, claimed, parent)
                else:
                    result = await self._attempt(account, slot, claimed)
            except Exception as exc:
                log.exception("delivery crashed", extra={"message_id": claimed.id})
                # Whether anything reached the server is unknown: never retry it blindly.
                result = SmtpResult("permanent", None, f"internal error: {exc!r}")
            if result.verdict == "throttled":
                account.transport.throttle(
                    result.hold_s or 0.0,
                    self._settings.sender.connect_backoff_base_s,
                    self._settings.sender.connect_backoff_cap_s,
                )
                await self._release(account, claimed, result, account.transport.throttled)
                batch.ids.appendleft(message_id)  # the same message, once the wait is over
                continue
            if result.verdict in ("unreachable", "exhausted"):
                tries = account.transport.hold(
                    self._settings.sender.connect_backoff_base_s,
                    self._settings.sender.connect_backoff_cap_s,
                    counted=result.verdict == "unreachable",
                )
                if tries < self._settings.sender.connect_failures_to_pause:
                    await self._release(account, claimed, result, tries)
                    batch.ids.appendleft(message_id)  # the same message, once the wait is over
                    continue
                what = "Gmail API" if account.row.kind == "gmail-api" else "SMTP server"
                result = SmtpResult(
                    "config",
                    result.code,
                    f"{what} unreachable ({tries} tries in a row): {result.detail}",
                )
            else:
                account.transport.reachable()
            if result.verdict == "config":
                batch.halted = True
                await self._requeue_and_pause(account, claimed, result)
                break
            pending = self._outcome(account, claimed, result)
        if pending is not None:
            await self._committer.submit(pending, None)

    async def deliver_urgent(self, account: Account, stopping: asyncio.Event) -> None:
        """Send the account's noticed transactional messages, outside any command.

        Only the account's active consumer calls this (it alone sends for the account), so
        the account's pace and connections hold as for a command.
        """
        if parked := account.urgent.unpark():

            async def fetch() -> list[int]:
                async with self._pool.acquire() as conn:
                    return await queries.still_assigned(conn, account.id, parked)

            account.urgent.add(await while_database_away(fetch, "noticed messages"), ready=True)
        if account.urgent:
            await self.deliver_batch(account, [], stopping)

    def prefetch_contents(self, message_ids: Sequence[int]) -> None:
        """Start reading the contents of transactional messages about to be sent here.

        A message's content is written with it and never changes, so it can be read before
        the claim; one never sent here is dropped with the oldest.
        """
        for message_id in message_ids:
            if message_id not in self._contents:
                task = asyncio.create_task(self._fetch_content(message_id))
                # A failure is met again, and logged, by the read at send time.
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                self._contents[message_id] = task
        while len(self._contents) > _URGENT_MAX:
            self._contents.pop(next(iter(self._contents))).cancel()

    async def _fetch_content(self, message_id: int) -> queries.ContentRow | None:
        async with self._pool.acquire() as conn:
            return await queries.fetch_content(conn, message_id)

    async def _content(self, message_id: int) -> queries.ContentRow | None:
        prefetched = self._contents.pop(message_id, None)
        if prefetched is not None and not prefetched.cancelled():
            try:
                return await prefetched
            except Exception as exc:
                log.debug("prefetched content not read", extra={"error": repr(exc)})
        return await while_database_away(lambda: self._fetch_content(message_id), "message content")

    async def _wait_while_held(
        self, account: Account, batch: _Batch, stopping: asyncio.Event
    ) -> bool:
        """Wait out the account's hold; False if stopping, or if the hold is too long to wait.

        The messages of a command that stops for a long hold stay assigned to the account,
        which the database marks held: the dispatcher's sweep gives them to other accounts.
        """
        while (left := account.transport.held_until - time.monotonic()) > 0:
            if left > self._long_hold_s:
                batch.halted = True
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=left)
            if stopping.is_set():
                return False
        return True

    async def _release(
        self, account: Account, claimed: ClaimedMessage, result: SmtpResult, tries: int
    ) -> None:
        """Un-claim a message nothing was sent for, its account waiting: it stays assigned."""
        detail = result.detail[:_DETAIL_MAX]
        hold_s = max(0.0, account.transport.held_until - time.monotonic())

        async def release() -> None:
            async with self._pool.acquire() as conn:
                await queries.release_claim(conn, claimed.id, result.code, detail, hold_s)

        # The message is claimed: wait for the database rather than leave it `sending`.
        await while_database_away(release, "release claim")
        account.count("held")
        log.warning(
            "nothing sent; the account waits",
            extra={
                "account_id": str(account.id),
                "verdict": result.verdict,
                "tries": tries,
                "error": detail,
            },
        )

    async def _refresh(self, account: Account) -> None:
        """Adopt an account configuration changed since this replica last polled it."""

        async def fetch() -> AccountRow | None:
            async with self._pool.acquire() as conn:
                return await queries.fetch_account(conn, account.id)

        # The message is claimed already: wait for the database rather than drop it.
        row = await while_database_away(fetch, "account reload")
        if row is not None and row.updated_at > account.row.updated_at:
            reconfigure_account(account, row, self._settings, self._connectors)

    async def _traced_attempt(
        self, account: Account, slot: int, claimed: ClaimedMessage, parent: str
    ) -> SmtpResult:
        """The attempt in a CLIENT span, a child of the message's dispatch in its trace."""
        attributes: dict[str, str | int] = {
            "mailfleet.message_id": claimed.id,
            "mailfleet.account_id": str(account.id),
            "mailfleet.attempt": claimed.attempts,
        }
        if account.row.smtp_host is not None and account.row.smtp_port is not None:
            attributes["server.address"] = account.row.smtp_host
            attributes["server.port"] = account.row.smtp_port
        gmail = account.row.kind == "gmail-api"
        with _tracer.start_as_current_span(
            "gmail send" if gmail else "smtp transaction",
            context=tracing.context_from(parent),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        ) as span:
            result = await self._attempt(account, slot, claimed)
            span.set_attribute("mailfleet.smtp.verdict", result.verdict)
            if result.code is not None:
                span.set_attribute("mailfleet.smtp.code", result.code)
            if result.verdict != "sent":
                span.set_status(StatusCode.ERROR, result.detail[:_DETAIL_MAX])
            return result

    async def _attempt(self, account: Account, slot: int, claimed: ClaimedMessage) -> SmtpResult:
        try:
            campaign = await while_database_away(
                lambda: self._templates.get(claimed.campaign_id), "campaign templates"
            )
            links = self._tracker.links(claimed.id, account.envelope_from)
            context = template_context(
                claimed.email, claimed.name, claimed.variables, links.unsubscribe_url
            )
            if claimed.transactional:
                data = await self._transactional_message(account, claimed, campaign, links, context)
            else:
                subject, html, text = campaign.templates.render(context)
                data = build_message(
                    from_header=account.from_header,
                    to_header=mailbox(claimed.name, claimed.email),
                    subject=subject,
                    message_id=claimed.message_id,
                    html=None if html is None else links.html(html, campaign.tracking),
                    text=None if text is None else links.text(text, campaign.tracking),
                    headers=links.headers(),
                )
            recipient = envelope_address(claimed.email)
        except (InvalidTemplateError, MessageBuildError) as exc:
            return SmtpResult("permanent", None, str(exc))
        connection = account.transport.connections[slot]
        return await connection.send(account.envelope_from, recipient, data)

    async def _transactional_message(
        self,
        account: Account,
        claimed: ClaimedMessage,
        stream: Campaign,
        links: MessageLinks,
        context: dict[str, Any],
    ) -> bytes:
        """A transactional message: its own templates and files, no unsubscribe footer.

        Links and the open pixel follow its stream's `tracking`; there is no List-Unsubscribe
        (it is not bulk mail), but suppressions were checked at claim as for any message.
        """
        content = await self._content(claimed.id)
        if content is None:
            raise MessageBuildError(f"message {claimed.id} has no content")
        templates = compile_campaign(
            content.subject,
            content.html_body,
            content.text_body,
            self._settings.templates.limits(),
        )
        subject, html, text = templates.render(context)
        tracked = stream.tracking
        return build_message(
            from_header=account.from_header,
            to_header=mailbox(claimed.name, claimed.email),
            subject=subject,
            message_id=claimed.message_id,
            html=None if html is None else links.html(html, tracked, unsubscribe=False),
            text=None if text is None else links.text(text, tracked, unsubscribe=False),
            headers=()
            if content.reply_to is None
            else (f"Reply-To: {mailbox(None, content.reply_to)}",),
            attachments=[Attachment(*a) for a in content.attachments],
        )

    def _outcome(self, account: Account, claimed: ClaimedMessage, result: SmtpResult) -> Outcome:
        now = datetime.now(UTC)
        retry_at = None
        status: AttemptOutcome
        if result.verdict == "sent":
            status = "sent"
            DELIVERY_LATENCY.observe(max((now - claimed.enqueued_at).total_seconds(), 0.0))
        elif (
            result.verdict == "temporary" and claimed.attempts < self._settings.sender.max_attempts
        ):
            status = "deferred"
            retry_at = now + timedelta(seconds=self._backoff(claimed.attempts))
        elif result.verdict == "uncertain":
            status = "uncertain"  # it may have been delivered: never sent again by itself
        else:
            status = "failed"
        account.count(status)
        detail = result.detail[:_DETAIL_MAX]
        attempt = SendAttempt.model_construct(
            message_id=claimed.id,
            campaign_id=claimed.campaign_id,
            account_id=account.id,
            attempt=claimed.attempts,
            outcome=status,
            smtp_code=result.code,
            detail=detail,
            attempted_at=now,
        )
        error = None if status == "sent" else detail
        return Outcome(claimed.id, status, result.code, error, retry_at, attempt)

    def _backoff(self, attempts: int) -> float:
        base = self._settings.sender.retry_base_s * 2 ** max(attempts - 1, 0)
        jitter = random.uniform(0.5, 1.5)  # noqa: S311 - spreading retries, not a secret
        return float(min(self._settings.sender.retry_cap_s, base) * jitter)

    async def _requeue_and_pause(
        self, account: Account, claimed: ClaimedMessage, result: SmtpResult
    ) -> None:
        """Pause the account for a configuration error and give its messages back to the queue.

        Nothing was sent, so no attempt is counted or reported; the pause is an
        'account-paused' event and an AccountPaused, and its reason is in the account's row.
        """
        reason = result.detail[:_DETAIL_MAX]
        consent = result.consent

        async def requeue_and_pause() -> datetime | None:
            async with self._pool.acquire() as conn:
                if consent is not None:
                    return await oauth.pause_for_consent(
                        conn, consent, "sender", message_id=claimed.id
                    )
                return await queries.requeue_and_pause_account(
                    conn, claimed.id, account.id, result.code, reason
                )

        # The message is claimed: wait for the database rather than leave it `sending`.
        paused_at = await while_database_away(requeue_and_pause, "requeue and pause")
        account.transport.close()
        account.count("requeued")
        log.error("account paused", extra={"account_id": str(account.id), "reason": reason})
        if paused_at is not None:
            try:
                await self._publisher.publish_event(
                    AccountPaused(account_id=account.id, reason=reason, paused_at=paused_at),
                    ACCOUNT_PAUSED_KEY,
                )
            except Exception:
                log.exception("AccountPaused not published", extra={"account_id": str(account.id)})
