-- Pausing an account for a reason, in one place for every writer that does it: the sender (an
-- SMTP configuration error) and the bouncer (bounce or complaint rates over their limits). The
-- pause and its 'account-paused' event are written together, the event at the instant of the
-- pause, so an AccountPaused published for it is recognised as recorded. Returns that instant,
-- or NULL when the account was not active.
CREATE FUNCTION pause_account(account_id uuid, reason text, source text)
RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$
    WITH paused AS (
        UPDATE accounts SET status = 'paused', status_reason = $2, updated_at = now()
        WHERE id = $1 AND status = 'active'
        RETURNING id, updated_at
    )
    INSERT INTO events (occurred_at, type, account_id, data)
    SELECT updated_at, 'account-paused', id, jsonb_build_object('reason', $2, 'source', $3)
    FROM paused
    RETURNING occurred_at
$$;
