-- OAuth2 accounts: how an account authenticates, and its OAuth credentials and token cache.
--
-- The credentials live in their own table, not in `accounts`: a refresh holds its row lock
-- for one round trip to the provider, and the dispatcher's assignment locks account rows, so
-- the two must not share a row. ADD COLUMN with a constant default rewrites nothing.
ALTER TABLE accounts
    ADD COLUMN auth_kind text NOT NULL DEFAULT 'password'
        CHECK (auth_kind IN ('password', 'oauth2'));

CREATE TABLE account_oauth (
    account_id              uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    provider                text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    -- Either a user's refresh token, or a Google service-account key (its JSON file) with
    -- the mailbox it impersonates by domain-wide delegation. Both encrypted (SecretBox).
    refresh_token_enc       bytea,
    service_account_key_enc bytea,
    subject                 text,
    -- 'granted' until the provider refuses the grant (invalid_grant): then 'needed', until a
    -- new token or key is imported.
    consent                 text NOT NULL DEFAULT 'granted'
                            CHECK (consent IN ('granted', 'needed')),
    -- The access token every replica uses until it nears its expiry (encrypted).
    access_token_enc        bytea,
    access_expires_at       timestamptz,
    refreshed_at            timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CHECK ((refresh_token_enc IS NULL) <> (service_account_key_enc IS NULL)),
    CHECK (service_account_key_enc IS NULL
           OR (provider = 'google' AND subject IS NOT NULL)),
    CHECK ((access_token_enc IS NULL) = (access_expires_at IS NULL))
);
