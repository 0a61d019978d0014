"""Acting on one message read from a mailbox, in one transaction with its checkpoint.

The report row, what it causes (a suppression, the message marked), its events and the
mailbox checkpoint commit together or not at all; the report's digest is unique per account,
so a message read twice (a crash before the IMAP flag was set, a new UIDVALIDITY) is
recognised and causes nothing the second time.

Only a report that matches one of our messages sent through this account acts on an address:
anyone can write to a bounce mailbox, and a forged DSN must not suppress a list. Everything
else is recorded and counted.

Matching, in order: the Message-ID we set (returned headers, In-Reply-To, References); the
signed token of the List-Unsubscribe header we set; the recipient address among this account's
sends, most recent first.
"""

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from mailfleet_common.messages import AccountPaused, Feedback, FeedbackKind
from mailfleet_common.tracking import TokenKind, TokenSigner

from mailfleet_bouncer import metrics, queries
from mailfleet_bouncer.classify import Classified, Recipient, References, classify
from mailfleet_bouncer.imap import Fetched
from mailfleet_bouncer.queries import Conn, SentMessage
from mailfleet_bouncer.settings import BouncerSettings

log = logging.getLogger(__name__)

_EVENT_TYPES: dict[str, FeedbackKind] = {
    "bounce": "bounced",
    "complaint": "complained",
    "reply": "replied",
    "auto-reply": "auto-replied",
    "unsubscribe": "unsubscribed",
}
_DIAGNOSTIC_MAX = 1000


@dataclass(slots=True)
class Outcome:
    """What processing one mailbox message came to."""

    report_id: int | None  # None: processed before
    kind: str
    feedback: list[Feedback] = field(default_factory=list)
    # A hard bounce or complaint was recorded: the account's rates are to be judged (the
    # reader does so once per fetched group, not per message: it reads up to 1,000 sends).
    rates_due: bool = False


@dataclass(frozen=True, slots=True)
class Folder:
    """The mailbox folder a message was read from, under the UIDVALIDITY it was read with."""

    account_id: UUID
    folder: str
    uidvalidity: int


class ReportProcessor:
    """Classifies, matches and acts on mailbox messages of any account."""

    def __init__(self, settings: BouncerSettings, signer: TokenSigner) -> None:
        self._settings = settings
        self._signer = signer

    async def process(self, conn: Conn, mailbox: Folder, fetched: Fetched) -> Outcome:
        """Process one message and advance the checkpoint past it, in one transaction."""
        classified = classify(fetched.raw, truncated=fetched.truncated)
        async with conn.transaction():
            now = datetime.now(UTC)
            report_id = await _insert_report(conn, mailbox, fetched, classified, now)
            if report_id is None:
                outcome = Outcome(None, classified.kind)
                await queries.advance_checkpoint(
                    conn, mailbox.account_id, mailbox.uidvalidity, fetched.uid
                )
            else:
                outcome = await self._act(conn, mailbox, report_id, classified, fetched, now)
        self._count(classified, outcome, fetched)
        return outcome

    async def keep_failed(self, conn: Conn, mailbox: Folder, fetched: Fetched, error: str) -> None:
        """Keep a message whose processing failed as unrecognized, and move past it."""
        failed = Classified(
            kind="unrecognized",
            parser="none",
            recipients=(),
            references=References((), (), ()),
            sender=None,
            subject=None,
            problem=f"processing failed: {error}"[:1000],
        )
        async with conn.transaction():
            report_id = await _insert_report(conn, mailbox, fetched, failed, datetime.now(UTC))
            if report_id is None:
                await queries.advance_checkpoint(
                    conn, mailbox.account_id, mailbox.uidvalidity, fetched.uid
                )
            else:
                await _finish(
                    conn,
                    mailbox,
                    fetched,
                    report_id,
                    [],
                    fetched.raw[: self._settings.keep_raw_bytes],
                )
        metrics.REPORTS.labels("unrecognized", "failed").inc()

    def _count(self, classified: Classified, outcome: Outcome, fetched: Fetched) -> None:
        if outcome.report_id is None:
            metrics.REPORTS.labels(classified.kind, "duplicate").inc()
            return
        matched = any(item.message_id is not None for item in outcome.feedback)
        result = "matched" if matched else "unmatched"
        if classified.kind == "unrecognized":
            result = "kept"
        metrics.REPORTS.labels(classified.kind, result).inc()
        if fetched.truncated:
            metrics.PROBLEMS.labels("truncated").inc()
        if classified.problem:
            label = _problem_class(classified.problem)
            if not (label == "truncated" and fetched.truncated):
                metrics.PROBLEMS.labels(label).inc()

    async def _act(
        self,
        conn: Conn,
        mailbox: Folder,
        report_id: int,
        classified: Classified,
        fetched: Fetched,
        now: datetime,
    ) -> Outcome:
        outcome = Outcome(report_id, classified.kind)
        details: list[dict[str, Any]] = []
        rates_due = False
        for recipient, message, matched_by in await self._match(
            conn, mailbox.account_id, classified
        ):
            address = (recipient.address if recipient else None) or (
                message.email if message else None
            )
            action = "none"
            if message is not None and address is not None:
                action = await self._apply(conn, classified, recipient, message, address, report_id)
                rates_due = rates_due or action in (
                    "suppressed:hard-bounce",
                    "suppressed:complaint",
                )
            elif classified.kind != "unrecognized":
                action = "unmatched"
            diagnostic = recipient.diagnostic if recipient else None
            detail = {
                "address": address,
                "bounce": recipient.bounce if recipient else None,
                "reason": recipient.reason if recipient else None,
                "status": recipient.status if recipient else None,
                "diagnostic": diagnostic[:_DIAGNOSTIC_MAX] if diagnostic else None,
                "action_field": recipient.action if recipient else None,
                "message_id": message.id if message else None,
                "campaign_id": str(message.campaign_id) if message else None,
                "matched_by": matched_by,
                "action": action,
                "feedback_type": classified.feedback_type,
            }
            details.append(detail)
        # The same Feedback the outbox would rebuild from the stored details after a crash.
        outcome.feedback = feedback_from_details(
            report_id, mailbox.account_id, classified.kind, details, now
        )
        events = [
            {
                "occurred_at": now.isoformat(),
                "type": feedback.kind,
                "campaign_id": detail["campaign_id"],
                "message_id": detail["message_id"],
                "account_id": str(mailbox.account_id),
                "data": {k: v for k, v in detail.items() if v is not None}
                | {"report_id": report_id},
                "event_key": feedback.key,
            }
            # One Feedback per detail, or none at all (an unrecognized message).
            for feedback, detail in zip(outcome.feedback, details, strict=bool(outcome.feedback))
        ]
        outcome.rates_due = rates_due
        keep = classified.kind == "unrecognized"
        raw = fetched.raw[: self._settings.keep_raw_bytes] if keep else None
        await _finish(conn, mailbox, fetched, report_id, details, raw, events)
        return outcome

    async def _match(
        self, conn: Conn, account_id: UUID, classified: Classified
    ) -> list[tuple[Recipient | None, SentMessage | None, str | None]]:
        """Each recipient the report is about, with our message it concerns and how it matched."""
        refs = classified.references
        by_header: list[SentMessage] = []
        if refs.message_ids:
            by_header = await queries.messages_by_header_ids(conn, refs.message_ids)
        by_token: list[SentMessage] = []
        tokens = list(refs.unsubscribe_tokens)
        if classified.unsubscribe_token:
            tokens.append(classified.unsubscribe_token)
        for token in tokens:
            verified = self._signer.verify(token)
            if verified is not None and verified.kind is TokenKind.UNSUBSCRIBE:
                found = await queries.message_by_id(conn, verified.message_id)
                if found is not None:
                    by_token.append(found)
        if classified.kind == "unsubscribe":
            # The signed token is proof enough, as on the web page: it may arrive in any
            # account's mailbox (MAILFLEET_TRACKING__UNSUBSCRIBE_MAILTO can name one mailbox
            # for all of them).
            if by_token:
                return [(None, by_token[0], "token")]
            # A feedback loop's opt-out report returns our message: its Message-ID, checked
            # against this account's sends as for a complaint.
            own = [m for m in by_header if m.account_id == account_id]
            if classified.parser == "arf" and own:
                named = classified.recipients[0].address if classified.recipients else None
                hit = _pick([(m, "message-id") for m in own], named)
                return [(None, hit[0], hit[1])] if hit else [(None, None, None)]
            # Apple Mail's one-click unsubscribe may drop our subject: like a reply, it is
            # from the recipient, so it acts on this account's last message to the sender.
            if classified.parser == "apple" and classified.sender is not None:
                found = await queries.latest_message_to(conn, account_id, classified.sender)
                if found is not None:
                    return [(None, found, "sender")]
            return [(None, None, None)]
        # A message of another account is not this mailbox's business (a report forwarded to
        # the wrong mailbox): it is recorded, not acted on.
        candidates = [
            (m, how)
            for found, how in ((by_header, "message-id"), (by_token, "token"))
            for m in found
            if m.account_id == account_id
        ]

        recipients: Sequence[Recipient | None] = classified.recipients or [None]
        matched: list[tuple[Recipient | None, SentMessage | None, str | None]] = []
        for recipient in recipients:
            address = recipient.address if recipient else None
            if classified.kind in ("reply", "auto-reply") and address is None:
                address = classified.sender
            hit = _pick(candidates, address)
            if hit is None and address is not None:
                fallback = await queries.latest_message_to(conn, account_id, address)
                if fallback is not None:
                    hit = (fallback, "recipient")
            if hit is None:
                matched.append((recipient, None, None))
            else:
                matched.append((recipient, hit[0], hit[1]))
        return matched

    async def _apply(
        self,
        conn: Conn,
        classified: Classified,
        recipient: Recipient | None,
        message: SentMessage,
        address: str,
        report_id: int,
    ) -> str:
        kind = classified.kind
        source = f"bouncer:report:{report_id}"
        if (
            kind in ("bounce", "complaint")
            and message.account_id is not None
            and await queries.is_account_address(conn, message.account_id, address)
        ):
            # The classifier drops the notice's own addresses; this holds whatever it missed.
            return "none:own-address"
        if kind == "bounce":
            bounce = recipient.bounce if recipient else None
            if bounce is None:
                return "none"
            await queries.mark_bounced(conn, message.id, bounce)
            if bounce == "hard":
                await queries.suppress(conn, address, None, "hard-bounce", source)
                metrics.ACTIONS.labels("suppressed-hard-bounce").inc()
                return "suppressed:hard-bounce"
            settings = self._settings
            count = await queries.count_soft_bounce(
                conn,
                address,
                report_id,
                message.id,
                settings.soft_bounce_window_days,
            )
            if count < settings.soft_bounce_limit:
                metrics.ACTIONS.labels("soft-bounce-counted").inc()
                return f"soft-bounce:{count}"
            until = None
            if settings.soft_suppress_days > 0:
                until = datetime.now(UTC) + timedelta(days=settings.soft_suppress_days)
            await queries.suppress(conn, address, None, "soft-bounce", source, until)
            metrics.ACTIONS.labels("suppressed-soft-bounce").inc()
            return "suppressed:soft-bounce"
        if kind == "complaint":
            await queries.mark_complained(conn, message.id)
            await queries.suppress(conn, address, None, "complaint", source)
            metrics.ACTIONS.labels("suppressed-complaint").inc()
            return "suppressed:complaint"
        if kind == "reply":
            # A person answered: this campaign stops writing to them; others may go on.
            await queries.mark_replied(conn, message.id)
            await queries.suppress(conn, address, message.campaign_id, "replied", source)
            metrics.ACTIONS.labels("stopped-on-reply").inc()
            return "suppressed:replied"
        if kind == "unsubscribe":
            scope = message.campaign_id if message.unsubscribe_scope == "campaign" else None
            await queries.suppress(conn, message.email, scope, "unsubscribe", source)
            metrics.ACTIONS.labels("suppressed-unsubscribe").inc()
            return "suppressed:unsubscribe"
        return "none"

    async def judge(self, conn: Conn, account_id: UUID) -> AccountPaused | None:
        """Pause the account if its rates are over the limits now.

        The reader asks after each fetched group that recorded a hard bounce or complaint,
        and after every poll: a report often arrives before the sends that decide the rate
        have been made (a bounce in the first few sends).
        """
        async with conn.transaction():
            return await self._judge_rates(conn, account_id)

    async def _judge_rates(self, conn: Conn, account_id: UUID) -> AccountPaused | None:
        settings = self._settings
        rates = await queries.account_rates(conn, account_id, settings.rate_window_sends)
        if rates.sends < settings.rate_min_sends:
            return None
        bounce_rate = rates.hard_bounces / rates.sends
        complaint_rate = rates.complaints / rates.sends
        reason = None
        if bounce_rate > settings.bounce_rate_max:
            reason = (
                f"bounce rate {bounce_rate:.2%} over the last {rates.sends} sends "
                f"is above {settings.bounce_rate_max:.2%}"
            )
        elif complaint_rate > settings.complaint_rate_max:
            reason = (
                f"complaint rate {complaint_rate:.2%} over the last {rates.sends} sends "
                f"is above {settings.complaint_rate_max:.2%}"
            )
        if reason is None:
            return None
        paused_at = await queries.pause_account(conn, account_id, reason)
        if paused_at is None:
            return None
        metrics.ACTIONS.labels("account-paused").inc()
        log.warning("account paused", extra={"account_id": str(account_id), "reason": reason})
        return AccountPaused(account_id=account_id, reason=reason, paused_at=paused_at)


async def _finish(
    conn: Conn,
    mailbox: Folder,
    fetched: Fetched,
    report_id: int,
    details: list[dict[str, Any]],
    raw: bytes | None,
    events: Sequence[dict[str, Any]] = (),
) -> None:
    """Store the report's details and events, and move the checkpoint past it.

    A report without events has nothing for the bus: it leaves the outbox at once.
    """
    await queries.finish_report(
        conn,
        report_id,
        details=details,
        matched=sum(1 for d in details if d["message_id"] is not None),
        raw=raw,
        published=not events,
        events=events,
        account_id=mailbox.account_id,
        uidvalidity=mailbox.uidvalidity,
        uid=fetched.uid,
    )


async def _insert_report(
    conn: Conn, mailbox: Folder, fetched: Fetched, classified: Classified, now: datetime
) -> int | None:
    """The report's row; None when these very bytes were processed for the account before."""
    return await queries.insert_report(
        conn,
        account_id=mailbox.account_id,
        folder=mailbox.folder,
        uidvalidity=mailbox.uidvalidity,
        uid=fetched.uid,
        digest=hashlib.sha256(fetched.raw).digest(),
        kind=classified.kind,
        parser=classified.parser,
        sender=classified.sender,
        subject=classified.subject,
        size=fetched.size,
        truncated=fetched.truncated,
        problem=classified.problem,
        received_at=now,
        provider_id=fetched.provider_id,
    )


def _pick(
    candidates: list[tuple[SentMessage, str]], address: str | None
) -> tuple[SentMessage, str] | None:
    """The candidate sent to `address`; with no address, the only candidate if there is one."""
    if address is None:
        return candidates[0] if len({m.id for m, _ in candidates}) == 1 else None
    for message, how in candidates:
        if message.email.lower() == address.lower():
            return message, how
    return None


def feedback_from_details(
    report_id: int, account_id: UUID, kind: str, details: list[dict[str, Any]], at: datetime
) -> list[Feedback]:
    """The bus copies of a stored report, rebuilt for the outbox after a crash."""
    event_type = _EVENT_TYPES.get(kind)
    if event_type is None:
        return []
    result = []
    for index, detail in enumerate(details):
        campaign = detail.get("campaign_id")
        result.append(
            Feedback(
                key=f"report:{report_id}:{index}",
                kind=event_type,
                account_id=account_id,
                report_id=report_id,
                message_id=detail.get("message_id"),
                campaign_id=UUID(campaign) if campaign else None,
                email=detail.get("address"),
                bounce=detail.get("bounce"),
                status=detail.get("status"),
                diagnostic=detail.get("diagnostic"),
                feedback_type=detail.get("feedback_type"),
                occurred_at=at,
            )
        )
    return result


def _problem_class(problem: str) -> str:
    """A low-cardinality label for a classifier's problem text."""
    lowered = problem.lower()
    for label in ("malformed", "truncated", "decode", "charset", "empty"):
        if label in lowered:
            return label
    return "other"
