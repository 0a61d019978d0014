-- The API's messages and events: lists filtered by campaign, account, status or time, newest
-- first a page at a time; one message's events; the live feed of events in id order.
--
-- Each list reads its page off one of these indexes in order, so a page costs the same at 10M
-- messages as at 1,000 (the keyset is (created_at, id), or (sent_at, id) for sent times).
-- The address filter uses messages_email_idx (0003); a message's attempts the unique
-- (message_id, attempt) of send_attempts.
--
-- Built inside the migration's transaction, so writes to `messages` (enqueues, claims,
-- outcomes) and to `events` wait for the builds: several seconds per million rows. On a large
-- database, build them beforehand with CREATE INDEX CONCURRENTLY under the same names (see
-- docs/operations.md); IF NOT EXISTS then leaves them as they are.
CREATE INDEX IF NOT EXISTS messages_created_idx ON messages (created_at, id);
CREATE INDEX IF NOT EXISTS messages_campaign_created_idx ON messages (campaign_id, created_at, id);
CREATE INDEX IF NOT EXISTS messages_account_created_idx ON messages (account_id, created_at, id)
    WHERE account_id IS NOT NULL;
-- A campaign's messages in one status; it serves every (campaign_id, status) lookup of the
-- index of 0001 too, which it replaces.
CREATE INDEX IF NOT EXISTS messages_campaign_status_created_idx
    ON messages (campaign_id, status, created_at, id);
DROP INDEX IF EXISTS messages_campaign_status_idx;
CREATE INDEX IF NOT EXISTS messages_status_created_idx ON messages (status, created_at, id);
CREATE INDEX IF NOT EXISTS messages_sent_idx ON messages (sent_at, id) WHERE sent_at IS NOT NULL;

-- A message's events (attempts, opens, clicks, bounces, ...), in each monthly partition.
CREATE INDEX IF NOT EXISTS events_message_idx ON events (message_id, occurred_at)
    WHERE message_id IS NOT NULL;
-- The live feed walks events in id order (ids are allocated before commit: see the API's
-- events feed for how a late commit is not skipped).
CREATE INDEX IF NOT EXISTS events_id_idx ON events (id);
