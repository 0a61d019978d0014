"""Campaigns: create, list, show with engagement, change settings, start, pause and cancel."""

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query, status
from mailfleet_common.db import Conn
from mailfleet_common.templating import compile_campaign

from mailfleet_api import pages, queries, schemas
from mailfleet_api.deps import BrokerDep, Cursor, DbConn, Limit, Operator, SettingsDep, Viewer
from mailfleet_api.errors import ConflictError, InvalidError, NotFoundError, TooLargeError
from mailfleet_api.events import announce_recipients
from mailfleet_api.queries import engagement as engagement_queries
from mailfleet_api.schemas.campaigns import CampaignPage

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])

# Two bodies at their limit, JSON-escaped (up to 6 bytes a character), and the rest.
_MAX_CAMPAIGN_BYTES = 16 * schemas.MAX_BODY_BYTES


async def _campaign(conn: Conn, campaign_id: UUID) -> schemas.Campaign:
    campaign = await queries.fetch_campaign(conn, campaign_id)
    if campaign is None:
        raise NotFoundError(f"no campaign {campaign_id}")
    return campaign


async def _check_pool(
    conn: Conn, account_ids: Sequence[UUID] | None, pools: Sequence[str] | None
) -> None:
    """Refuse accounts that are unknown or archived, and tags that no account carries."""
    if account_ids:
        unusable = await queries.unusable_accounts(conn, account_ids)
        if unusable:
            names = ", ".join(map(str, unusable))
            raise InvalidError(f"account_ids name unknown or archived accounts: {names}")
    if pools:
        uncarried = await queries.uncarried_tags(conn, pools)
        if uncarried:
            raise InvalidError(f"pools name tags that no account carries: {', '.join(uncarried)}")


async def _wrong_status(conn: Conn, campaign_id: UUID, action: str) -> Exception:
    current = await queries.fetch_campaign_status(conn, campaign_id)
    if current is None:
        return NotFoundError(f"no campaign {campaign_id}")
    return ConflictError(f"cannot {action} a {current} campaign")


@router.post("", status_code=status.HTTP_201_CREATED, max_body_size=_MAX_CAMPAIGN_BYTES)
async def create_campaign(
    body: schemas.CampaignCreate, conn: DbConn, principal: Operator, settings: SettingsDep
) -> schemas.Campaign:
    """Create a campaign in draft, after checking its templates and account pool.

    The templates are rendered once without variables: one over the template limits already
    is refused (422) rather than failing every message later.
    """
    for part in ("html_body", "text_body"):
        text = getattr(body, part)
        if text is not None and len(text.encode()) > schemas.MAX_BODY_BYTES:
            raise TooLargeError(f"{part} is larger than {schemas.MAX_BODY_BYTES} bytes")
    templates = compile_campaign(
        body.subject, body.html_body, body.text_body, settings.templates.limits()
    )
    templates.check_limits()
    await _check_pool(conn, body.account_ids, body.pools)
    campaign_id = await queries.insert_campaign(conn, principal.user_id, body)
    return await _campaign(conn, campaign_id)


@router.get("")
async def list_campaigns(
    conn: DbConn,
    _: Viewer,
    limit: Limit = 50,
    cursor: Cursor = None,
    status: Annotated[schemas.CampaignStatus | None, Query()] = None,
) -> CampaignPage:
    """List campaigns, newest first, optionally only those in one status."""
    after = pages.after(cursor, pages.BY_CREATION)
    items, more = await queries.list_campaigns(conn, limit, after, status)
    return pages.cursor_page(CampaignPage, items, more, limit, lambda c: (c.created_at, c.id))


@router.get("/{campaign_id}")
async def get_campaign(campaign_id: UUID, conn: DbConn, _: Viewer) -> schemas.CampaignDetail:
    """Show a campaign: its messages in each status, engagement (also by account), feedback."""
    campaign = await _campaign(conn, campaign_id)
    engagement, by_account, feedback = await engagement_queries.campaign_figures(conn, campaign_id)
    return schemas.CampaignDetail(
        **campaign.model_dump(),
        engagement=engagement,
        engagement_by_account=by_account,
        feedback=feedback,
    )


@router.patch("/{campaign_id}")
async def update_campaign(
    campaign_id: UUID, body: schemas.CampaignUpdate, conn: DbConn, _: Operator
) -> schemas.Campaign:
    """Change the pool or unsubscribe scope (any time) or tracking (only on a draft)."""
    await _check_pool(conn, body.account_ids, body.pools)
    if not await queries.update_campaign_settings(conn, campaign_id, body):
        status = await queries.fetch_campaign_status(conn, campaign_id)
        if status is None:
            raise NotFoundError(f"no campaign {campaign_id}")
        raise ConflictError(f"tracking can only be changed on a draft campaign, not a {status} one")
    return await _campaign(conn, campaign_id)


@router.post("/{campaign_id}/start", status_code=status.HTTP_202_ACCEPTED)
async def start_campaign(
    campaign_id: UUID,
    conn: DbConn,
    broker: BrokerDep,
    _: Operator,
    body: Annotated[schemas.CampaignStart | None, Body()] = None,
) -> schemas.Campaign:
    """Start (or resume) a draft or paused campaign, optionally not before ``start_at``.

    202: the campaign is running; its messages go out afterwards, as the dispatcher assigns
    them.

    A campaign whose pool (account_ids, pools) has no active account is refused: it could
    send nothing.
    """
    start_at = None if body is None else body.start_at
    if await queries.pool_lacks_active_account(conn, campaign_id):
        raise ConflictError("the campaign's pool has no active account: activate or tag one")
    if not await queries.start_campaign(conn, campaign_id, start_at):
        raise await _wrong_status(conn, campaign_id, "start")
    queued = await queries.count_queued(conn, campaign_id)
    if queued:
        await announce_recipients(broker, campaign_id, queued)
    return await _campaign(conn, campaign_id)


@router.post("/{campaign_id}/pause")
async def pause_campaign(campaign_id: UUID, conn: DbConn, _: Operator) -> schemas.Campaign:
    """Pause a running campaign: nothing more is dispatched or claimed until it starts again."""
    if not await queries.pause_campaign(conn, campaign_id):
        raise await _wrong_status(conn, campaign_id, "pause")
    return await _campaign(conn, campaign_id)


@router.delete("/{campaign_id}")
async def cancel_campaign(
    campaign_id: UUID, conn: DbConn, _: Operator
) -> schemas.CampaignCancelled:
    """Cancel a campaign and every message not yet being sent; reservations are given back."""
    async with conn.transaction():
        # Locked first so an enqueue that commits meanwhile is seen by the cancel statement.
        current = await queries.lock_campaign_status(conn, campaign_id)
        if current is None:
            raise NotFoundError(f"no campaign {campaign_id}")
        outcome = await queries.cancel_campaign(conn, campaign_id)
        if outcome is None:
            raise ConflictError(f"cannot cancel a {current} campaign")
    cancelled, released = outcome
    return schemas.CampaignCancelled(
        campaign=await _campaign(conn, campaign_id),
        cancelled_messages=cancelled,
        released_reservations=released,
    )
