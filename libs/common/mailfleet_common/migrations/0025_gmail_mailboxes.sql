-- Reading the mailboxes of Gmail-API accounts through the Gmail API (the bouncer).

-- Where each Gmail mailbox was read up to: the history id the next incremental read starts
-- from (users.history.list), the id of the label processed messages get, and how the last
-- read went. history_id is Gmail's unsigned 64-bit history id, kept as its decimal text.
-- NULL history_id: the next read is a full one (the first, or after history expired).
-- backoff_until: Gmail asked this account to slow down (its per-user quota); no replica reads
-- the mailbox before then.
CREATE TABLE gmail_mailboxes (
    account_id         uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    history_id         text CHECK (history_id ~ '^[0-9]{1,20}$'),
    processed_label_id text,
    synced_at          timestamptz,
    full_synced_at     timestamptz,
    polled_at          timestamptz NOT NULL DEFAULT now(),
    last_error         text,
    backoff_until      timestamptz
);

-- The provider's own id of a message read through an API (a Gmail message id: 16 hex digits,
-- an unsigned 64-bit number that fits no bigint). Unique per account: a message listed again
-- (after history expired, or before it was labelled) is recognised before it is fetched, and
-- never acted on twice. IMAP messages leave it NULL (their digest and checkpoint do that job).
-- IF NOT EXISTS: both may be made beforehand, the index CONCURRENTLY (docs/operations.md).
ALTER TABLE inbound_reports ADD COLUMN IF NOT EXISTS provider_id text;
CREATE UNIQUE INDEX IF NOT EXISTS inbound_reports_provider_idx
    ON inbound_reports (account_id, provider_id) WHERE provider_id IS NOT NULL;
