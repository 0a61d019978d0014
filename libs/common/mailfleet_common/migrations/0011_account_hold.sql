-- An account whose SMTP server could not be reached waits before its next try (the sender's
-- backoff per account). The sender writes when the wait ends and why, so the dispatcher gives
-- the account no work meanwhile and hands what it holds to other accounts, and an operator
-- sees it. Not part of the account's configuration: writing it leaves updated_at alone.
ALTER TABLE accounts
    ADD COLUMN held_until timestamptz,
    ADD COLUMN held_reason text;

-- Whether the account waits for its server now.
CREATE FUNCTION account_held(a accounts) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT a.held_until IS NOT NULL AND a.held_until > now()
$$;
