"""Reading Gmail-API accounts' mailboxes through the Gmail double: full and incremental reads,
the processed label, expired history, each message acted on once, quota and a refused grant.
"""

from uuid import UUID

import pytest
from mailfleet_bouncer.replica import BouncerReplica
from mailfleet_bouncer.settings import Settings
from mailfleet_common.crypto import SecretBox
from mailfleet_common.db import Conn
from mailfleet_common.messages import AccountPaused
from mailfleet_common.settings import GmailSettings, OAuthClientSettings, OAuthSettings
from mailfleet_common.topology import ACCOUNT_PAUSED_KEY
from pydantic import SecretStr

from tests.bouncer import rows
from tests.bouncer.test_mailbox import Published, bouncer_settings, report_count
from tests.doubles.google import GoogleDouble
from tests.doubles.mailbox import Mailbox as GmailBox
from tests.doubles.oauth import OAuthClient

USER = "fleet@gmail.example"
OTHER = "other@gmail.example"
MODIFY = "https://www.googleapis.com/auth/gmail.modify"
SEND = "https://www.googleapis.com/auth/gmail.send"
LABEL = "mailfleet/processed"


@pytest.fixture
def client(google: GoogleDouble) -> OAuthClient:
    return google.add_client()


@pytest.fixture
def settings(
    database_dsn: str,
    rabbit_url: str,
    crypto_keys: str,
    tracking_keys: str,
    google: GoogleDouble,
    client: OAuthClient,
) -> Settings:
    settings = bouncer_settings(database_dsn, rabbit_url, crypto_keys, tracking_keys)
    settings.oauth = OAuthSettings(
        google=OAuthClientSettings(
            client_id=client.client_id,
            client_secret=SecretStr(client.secret or ""),
            token_uri=google.token_uri,
            scopes=f"{SEND} {MODIFY}",
        )
    )
    settings.gmail = GmailSettings(api_url=google.gmail_url, timeout_s=5)
    return settings


async def gmail_account(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, address: str = USER
) -> UUID:
    refresh = google.issue_refresh_token(client, address, [SEND, MODIFY])
    return await rows.insert_gmail_account(db, box, address, refresh)


def labelled(mailbox: GmailBox) -> dict[str, bool]:
    """Each message's id, and whether it carries the processed label."""
    label_ids = [i for i, name in mailbox.user_labels.items() if name == LABEL]
    return {m.id: bool(set(label_ids) & set(m.label_ids)) for m in mailbox.messages.values()}


async def state(db: Conn) -> dict[str, object]:
    row = await db.fetchrow("SELECT * FROM gmail_mailboxes")
    assert row is not None
    return dict(row)


async def test_a_dsn_bounces_the_message_suppresses_the_address_and_is_labelled(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    campaign = await rows.insert_campaign(db)
    [(message_id, header)] = await rows.insert_sent(db, campaign, account, ["gone@example.net"])
    google.gmail.deliver(USER, rows.dsn("gone@example.net", header, sender=USER))

    assert await replica.poll(account) == 1

    bounce = await db.fetchrow("SELECT bounce, bounced_at FROM messages WHERE id = $1", message_id)
    assert bounce["bounce"] == "hard"
    assert await db.fetchval(
        "SELECT reason FROM suppressions WHERE email = 'gone@example.net'"
    ) == ("hard-bounce")
    mailbox = google.gmail.mailbox(USER)
    assert list(labelled(mailbox).values()) == [True]
    report = await db.fetchrow("SELECT kind, provider_id, uid FROM inbound_reports")
    assert (report["kind"], report["provider_id"]) == ("bounce", next(iter(mailbox.messages)))
    read = await state(db)
    assert read["history_id"] == str(mailbox.history_id - 1)  # taken before the labelling
    assert read["full_synced_at"] is not None
    assert read["last_error"] is None
    assert read["processed_label_id"] in mailbox.user_labels

    # Read again: nothing new, nothing acted on twice.
    assert await replica.poll(account) == 0
    assert await report_count(db) == 1


async def test_later_reads_take_only_new_inbox_messages_from_the_history(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    campaign = await rows.insert_campaign(db)
    [(message_id, header)] = await rows.insert_sent(db, campaign, account, ["b@example.net"])
    assert await replica.poll(account) == 0
    full = (await state(db))["full_synced_at"]

    google.gmail.deliver(USER, rows.reply("b@example.net", header, to=USER))
    # Its own sent messages are in the mailbox too: not the bouncer's business.
    google.gmail.deliver(USER, rows.reply(USER, None, to="b@example.net"), labels=("SENT",))
    assert await replica.poll(account) == 1

    replied = await db.fetchval("SELECT replied_at FROM messages WHERE id = $1", message_id)
    assert replied is not None
    read = await state(db)
    assert read["full_synced_at"] == full  # an incremental read
    mailbox = google.gmail.mailbox(USER)
    assert read["history_id"] == str(mailbox.history_id - 1)
    assert sorted(labelled(mailbox).values()) == [False, True]
    assert await replica.poll(account) == 0


async def test_a_message_acted_on_but_not_labelled_is_labelled_not_acted_on_again(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    campaign = await rows.insert_campaign(db)
    [(_, header)] = await rows.insert_sent(db, campaign, account, ["full@example.net"])
    assert await replica.poll(account) == 0
    start = (await state(db))["history_id"]
    google.gmail.deliver(USER, rows.dsn("full@example.net", header, status="4.2.2", sender=USER))
    assert await replica.poll(account) == 1

    # As if the process died after committing, before the label and the new history id.
    mailbox = google.gmail.mailbox(USER)
    [stored] = mailbox.messages.values()
    mailbox.relabel(stored, [], list(mailbox.user_labels))
    await db.execute("UPDATE gmail_mailboxes SET history_id = $1", start)

    assert await replica.poll(account) == 0
    assert list(labelled(mailbox).values()) == [True]
    assert await report_count(db) == 1
    assert await db.fetchval("SELECT count(*) FROM soft_bounces") == 1


async def test_expired_history_reads_the_whole_inbox_again_acting_once(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    google.gmail.deliver(USER, rows.reply("a@example.com", None, to=USER))
    assert await replica.poll(account) == 1
    first_full = (await state(db))["full_synced_at"]
    mailbox = google.gmail.mailbox(USER)
    [first] = mailbox.messages.values()
    # The first one lost its label (a crash, or a person), and history is gone.
    mailbox.relabel(first, [], list(mailbox.user_labels))
    google.gmail.deliver(USER, rows.reply("b@example.com", None, to=USER))
    mailbox.expire_history()

    assert await replica.poll(account) == 1

    read = await state(db)
    assert read["full_synced_at"] > first_full
    assert read["last_error"] is None
    assert list(labelled(mailbox).values()) == [True, True]
    senders = await db.fetch("SELECT sender FROM inbound_reports ORDER BY id")
    assert [r["sender"] for r in senders] == ["a@example.com", "b@example.com"]
    assert await replica.poll(account) == 0


async def test_a_refused_access_token_is_refreshed_once_and_the_read_goes_on(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    assert await replica.poll(account) == 0
    google.expire_access_tokens(USER)  # still fresh in our cache: Gmail says 401
    google.gmail.deliver(USER, rows.reply("a@example.com", None, to=USER))

    assert await replica.poll(account) == 1
    assert len([r for r in google.tokens.requests if r.grant_type == "refresh_token"]) == 2
    assert (await state(db))["last_error"] is None


async def test_a_spent_quota_backs_off_that_account_only(
    db: Conn, box: SecretBox, google: GoogleDouble, client: OAuthClient, replica: BouncerReplica
) -> None:
    account = await gmail_account(db, box, google, client)
    other = await gmail_account(db, box, google, client, OTHER)
    assert await replica.poll(other) == 0
    google.gmail.mailbox(USER).spend(15_000, 15_000, google.tokens.now())  # spent elsewhere
    google.gmail.deliver(USER, rows.reply("a@example.com", None, to=USER))
    google.gmail.deliver(OTHER, rows.reply("b@example.com", None, to=OTHER))

    assert await replica.poll(account) == 0
    row = await db.fetchrow(
        "SELECT last_error, backoff_until > now() AS waiting FROM gmail_mailboxes"
        " WHERE account_id = $1",
        account,
    )
    assert row["waiting"], row
    assert "429" in row["last_error"]
    assert await replica.poll(other) == 1
    # Until then the mailbox is left alone, though Gmail would answer again.
    google.gmail.mailbox(USER).spent.clear()
    assert await replica.poll(account) == 0
    await db.execute(
        "UPDATE gmail_mailboxes SET backoff_until = now() WHERE account_id = $1", account
    )
    assert await replica.poll(account) == 1


async def test_a_revoked_grant_pauses_that_account_only(
    db: Conn,
    box: SecretBox,
    google: GoogleDouble,
    client: OAuthClient,
    replica: BouncerReplica,
    published: Published,
) -> None:
    account = await gmail_account(db, box, google, client)
    other = await gmail_account(db, box, google, client, OTHER)
    campaign = await rows.insert_campaign(db)
    queued = await rows.insert_queued(db, campaign, "q@example.net")
    await db.execute(
        "UPDATE messages SET status = 'assigned', account_id = $2, assigned_at = now()"
        " WHERE id = $1",
        queued,
        account,
    )
    google.revoke_user(USER)
    google.gmail.deliver(OTHER, rows.reply("b@example.com", None, to=OTHER))

    assert await replica.poll(account) == 0

    paused = await db.fetchrow("SELECT status, status_reason FROM accounts WHERE id = $1", account)
    assert paused["status"] == "paused"
    assert paused["status_reason"].startswith("consent needed: ")
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", queued) == "queued"
    [(key, event)] = published.events
    assert key == ACCOUNT_PAUSED_KEY
    assert isinstance(event, AccountPaused)
    assert event.account_id == account
    # Its mailbox is not read until someone consents again; the other account goes on.
    await replica.rebalance()
    assert replica.owned == {other}
    assert await replica.poll(other) == 1
    assert await db.fetchval("SELECT status FROM accounts WHERE id = $1", other) == "active"
