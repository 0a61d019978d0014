-- Transactional sends (POST /api/messages). Each message still belongs to a campaign, so
-- reporting, tracking, suppressions and the uncertain path work unchanged: a campaign of kind
-- 'transactional' per owner and pool (a "stream"), created running on first use and never
-- completed. Its messages carry their own content and attachments, and the dispatcher assigns
-- them ahead of the campaign backlog.

-- Both columns have constant defaults: no table rewrite.
ALTER TABLE campaigns
    ADD COLUMN kind text NOT NULL DEFAULT 'campaign'
        CHECK (kind IN ('campaign', 'transactional')),
    -- The pool a transactional stream sends through, in a canonical text form, so that one
    -- owner's requests naming the same pool share one stream.
    ADD COLUMN stream_key text;
CREATE UNIQUE INDEX campaigns_stream_key ON campaigns (owner_id, stream_key)
    WHERE kind = 'transactional';
-- The dispatcher's priority pass reads the running transactional streams alone.
CREATE INDEX campaigns_running_kind_idx ON campaigns (kind) WHERE status = 'running';

ALTER TABLE messages ADD COLUMN transactional boolean NOT NULL DEFAULT false;

-- A stream sends to the same address as often as asked (two password resets), so only
-- campaign messages are unique per address. The new index is built while messages is locked
-- for writes (a migration runs in a transaction, so not CONCURRENTLY): on a large table,
-- migrate at a quiet time.
CREATE UNIQUE INDEX messages_campaign_email_once ON messages (campaign_id, lower(email))
    WHERE NOT transactional;
DROP INDEX messages_campaign_email_key;
ALTER INDEX messages_campaign_email_once RENAME TO messages_campaign_email_key;

-- What a transactional message says: its own templates (rendered with its variables by the
-- sender, like a campaign's) and attachments. Written with the message, read at send time.
CREATE TABLE message_contents (
    message_id bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    subject    text NOT NULL,
    html_body  text,
    text_body  text,
    reply_to   text
);

CREATE TABLE message_attachments (
    message_id   bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position     smallint NOT NULL,
    filename     text NOT NULL,
    content_type text NOT NULL,
    content      bytea NOT NULL,
    PRIMARY KEY (message_id, position)
);
