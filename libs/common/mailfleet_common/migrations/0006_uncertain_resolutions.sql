-- An operator's decision about a message left `uncertain` (its sender died or lost its
-- database while the SMTP server may or may not have taken it): `sent` marks it delivered,
-- `resend` puts it back in the queue, accepting that the recipient may get it twice. The
-- message moves in the same transaction; this keeps who decided what, and when.
CREATE TABLE uncertain_resolutions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   bigint NOT NULL REFERENCES messages (id),
    resolution   text NOT NULL CHECK (resolution IN ('sent', 'resend')),
    -- api:user:<id>, api:key:<id> or cli:<login>, as suppressions' source.
    resolved_by  text NOT NULL,
    resolved_at  timestamptz NOT NULL DEFAULT now(),
    note         text
);
CREATE INDEX uncertain_resolutions_message_idx ON uncertain_resolutions (message_id);
CREATE INDEX uncertain_resolutions_resolved_idx ON uncertain_resolutions (resolved_at DESC, id DESC);

-- The operator's list of uncertain messages, newest first, without scanning the ledger.
CREATE INDEX messages_uncertain_idx ON messages (updated_at DESC, id DESC)
    WHERE status = 'uncertain';
