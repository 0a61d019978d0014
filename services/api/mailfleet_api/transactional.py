"""Transactional sends: screening each message, its templates and files, idempotent storage."""

import binascii
import hashlib
import re
from dataclasses import dataclass
from uuid import UUID

from fastapi.exceptions import RequestValidationError
from mailfleet_common import tracing
from mailfleet_common.db import Conn
from mailfleet_common.templating import CampaignTemplates, InvalidTemplateError, compile_campaign
from pydantic import ValidationError

from mailfleet_api import enqueue, queries, schemas
from mailfleet_api.errors import ConflictError, InvalidError, TooLargeError
from mailfleet_api.queries import queue as queue_queries
from mailfleet_api.queries import transactional as tx_queries
from mailfleet_api.recipients import Candidate, RecipientScreen, Rejection
from mailfleet_api.schemas import transactional as tx_schemas
from mailfleet_api.settings import Settings

# type/subtype, RFC 6838 restricted names; parameters are not taken.
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
_UNSAFE_FILENAME = re.compile(r'[\x00-\x1f\x7f"\\/:*?<>|]+')
# Executables and scripts mail providers block outright (SES refuses the same kinds): a
# message carrying one would be refused or damage the account's reputation.
_BLOCKED_NAME = re.compile(
    r".+\.(ade|adp|app|asp|bas|bat|cer|chm|cmd|com|cpl|crt|csh|der|exe|fxp|gadget|hlp|hta|inf"
    r"|ins|isp|its|jar|js|jse|ksh|lib|lnk|ma[dfgmqrstuvw]|md[abetwz]|msc|msh[12]?|mshxml|msi|msp"
    r"|mst|ops|pcd|pif|plg|prf|prg|ps[12](xml)?|psc[12]|reg|scf|scr|sct|sh[bs]|sys|tmp|url|vbe?"
    r"|vbs|vps|vsmacros|vs[stw]|vxd|ws[cfh]?|xnk)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Sent:
    """The answer to one request, and what to announce to the dispatchers."""

    status_code: int
    response: dict[str, object]
    stream_id: UUID | None = None
    accepted: int = 0  # 0 on a replay


def parse_request(raw: bytes, settings: Settings) -> tx_schemas.TransactionalRequest:
    """Parse the raw body, within the batch size."""
    try:
        request = tx_schemas.TransactionalRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    limit = settings.transactional.max_messages
    if len(request.messages) > limit:
        raise TooLargeError(f"{len(request.messages)} messages; at most {limit} per request")
    return request


def sanitize_filename(raw: str) -> str:
    """The file's own name (no directories), without control or reserved characters."""
    name = re.split(r"[/\\]", raw)[-1]
    name = _UNSAFE_FILENAME.sub("_", name).strip(" .")
    if len(name) > tx_schemas.MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        keep = tx_schemas.MAX_FILENAME_CHARS - len(dot + extension) if dot else 0
        name = stem[:keep] + dot + extension if dot and keep > 0 else name[: keep or 255]
    return name or "attachment"


def _attachments(
    message: tx_schemas.TransactionalMessageIn, settings: Settings
) -> list[tuple[str, str, bytes]] | str:
    """The message's files decoded and checked, or why they are refused."""
    limits = settings.transactional
    if len(message.attachments) > limits.max_attachments:
        return f"more than {limits.max_attachments} attachments"
    files = []
    total = 0
    for number, attachment in enumerate(message.attachments):
        content_type = attachment.content_type.strip().lower()
        if not _CONTENT_TYPE.fullmatch(content_type):
            return f"attachment {number}: content_type is not a type/subtype media type"
        try:
            content = binascii.a2b_base64(attachment.content, strict_mode=True)
        except (binascii.Error, ValueError):
            return f"attachment {number}: content is not valid base64"
        if len(content) > limits.max_attachment_bytes:
            return f"attachment {number}: larger than {limits.max_attachment_bytes} bytes"
        total += len(content)
        if total > limits.max_attachments_total_bytes:
            return f"attachments larger than {limits.max_attachments_total_bytes} bytes in all"
        filename = sanitize_filename(attachment.filename)
        if _BLOCKED_NAME.fullmatch(filename):
            return f"attachment {number}: {filename!r} is a file type mail providers block"
        files.append((filename, content_type, content))
    return files


class _Screen:
    """Screens one request's messages, each on its own.

    Address, name and variables as an enqueue does; then the templates (compiled once per
    distinct set) rendered with the message's variables; then its files.
    """

    def __init__(self, request: tx_schemas.TransactionalRequest, settings: Settings) -> None:
        self._request = request
        self._settings = settings
        self._compiled: dict[tuple[str, str | None, str | None], CampaignTemplates] = {}

    def screen(
        self,
    ) -> tuple[list[tuple[int, tx_queries.NewMessage]], list[Rejection]]:
        accepted: list[tuple[int, tx_queries.NewMessage]] = []
        rejected: list[Rejection] = []
        for index, message in enumerate(self._request.messages):
            outcome = self._one(index, message)
            if isinstance(outcome, Rejection):
                rejected.append(outcome)
            else:
                accepted.append((index, outcome))
        return accepted, rejected

    def _one(
        self, index: int, message: tx_schemas.TransactionalMessageIn
    ) -> tx_queries.NewMessage | Rejection:
        request = self._request
        # A screen of its own per message: a batch may write to one address twice.
        recipient = schemas.RecipientIn(
            email=message.to, name=message.name, variables=message.variables
        )
        screened = RecipientScreen(self._settings.enqueue.max_variables_bytes).screen(
            [recipient], index
        )
        if screened[1]:
            return screened[1][0]
        candidate: Candidate = screened[0][0]
        subject = message.subject or request.subject
        html = message.html_body if message.html_body is not None else request.html_body
        text = message.text_body if message.text_body is not None else request.text_body
        if not subject:
            return Rejection(index, candidate.email, "no subject")
        if not html and not text:
            return Rejection(index, candidate.email, "no html_body or text_body")
        for part, body in (("html_body", html), ("text_body", text)):
            if body is not None and len(body.encode()) > schemas.MAX_BODY_BYTES:
                return Rejection(
                    index, candidate.email, f"{part} larger than {schemas.MAX_BODY_BYTES} bytes"
                )
        try:
            templates = self._templates(subject, html, text)
            # Rendered once here, so a message that cannot be rendered is refused now rather
            # than failing at send time.
            templates.render(
                {
                    **message.variables,
                    "email": candidate.email,
                    "name": candidate.name or "",
                    "unsubscribe_url": "",
                }
            )
        except InvalidTemplateError as exc:
            return Rejection(index, candidate.email, f"template: {exc}")
        files = _attachments(message, self._settings)
        if isinstance(files, str):
            return Rejection(index, candidate.email, files)
        return tx_queries.NewMessage(
            candidate.email,
            candidate.name,
            candidate.variables_json,
            subject,
            html,
            text,
            files,
        )

    def _templates(self, subject: str, html: str | None, text: str | None) -> CampaignTemplates:
        key = (subject, html, text)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = compile_campaign(subject, html, text, self._settings.templates.limits())
            compiled.check_limits()
            self._compiled[key] = compiled
        return compiled


async def send(
    conn: Conn,
    raw: bytes,
    settings: Settings,
    owner_id: UUID,
    principal: str,
    idempotency_key: str | None,
) -> Sent:
    """Queue the acceptable messages of one request in its stream, atomically."""
    request_hash = hashlib.sha256(raw).digest()
    if idempotency_key is not None:
        enqueue.check_idempotency_key(idempotency_key)
        stored = await queries.fetch_idempotent_response(conn, principal, idempotency_key)
        if stored is not None and stored["status_code"]:
            replayed = enqueue.replay(stored, request_hash)
            return Sent(replayed.status_code, replayed.response)
    request = parse_request(raw, settings)
    account_ids = [] if request.account_id is None else [request.account_id]
    pools = [] if request.pool is None else [request.pool]
    if account_ids and await queries.unusable_accounts(conn, account_ids):
        raise InvalidError(f"account_id names an unknown or archived account: {account_ids[0]}")
    if pools and await queries.uncarried_tags(conn, pools):
        raise InvalidError(f"pool names a tag that no account carries: {pools[0]}")
    accepted, rejected = _Screen(request, settings).screen()
    try:
        async with conn.transaction():
            if idempotency_key is not None and not await queries.claim_idempotency_key(
                conn, principal, idempotency_key, request_hash
            ):
                raise enqueue.KeyTakenError
            stream = await tx_queries.stream_for(conn, owner_id, account_ids, pools)
            if stream.status == "cancelled":
                raise ConflictError(f"the transactional stream {stream.id} is cancelled")
            suppressed = await queue_queries.suppressed_among(
                conn, stream.id, [m.email for _, m in accepted]
            )
            storable = [(i, m) for i, m in accepted if m.email not in suppressed]
            rejected += [
                Rejection(i, m.email, "suppressed") for i, m in accepted if m.email in suppressed
            ]
            ids = await tx_queries.insert_messages(
                conn,
                stream.id,
                [m for _, m in storable],
                request.reply_to,
                tracing.current_traceparent(),
            )
            rejected.sort(key=lambda r: r.index)
            response: dict[str, object] = {
                "stream_id": str(stream.id),
                "accepted": len(ids),
                "messages": [
                    {"index": i, "id": message_id, "email": m.email}
                    for (i, m), message_id in zip(storable, ids, strict=True)
                ],
                "rejected": [
                    {"index": r.index, "email": r.email, "reason": r.reason} for r in rejected
                ],
            }
            if idempotency_key is not None:
                await queries.store_idempotent_response(
                    conn, principal, idempotency_key, 202, response
                )
    except enqueue.KeyTakenError:
        stored = await queries.fetch_idempotent_response(conn, principal, idempotency_key or "")
        replayed = enqueue.replay(stored, request_hash)
        return Sent(replayed.status_code, replayed.response)
    return Sent(202, response, stream.id, len(ids))
