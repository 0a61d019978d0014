-- OAuth consents started from the API (authorization-code flow with PKCE): one row per
-- consent URL handed out. The provider sends the consenting browser back with the `state`;
-- only its SHA-256 is kept, so the table alone cannot complete a consent. The PKCE
-- code_verifier is encrypted (SecretBox) and dropped once the state is used. A state is used
-- at most once and only before expires_at; used and expired rows stay a day for the record.
CREATE TABLE oauth_consents (
    state_hash        bytea PRIMARY KEY,
    account_id        uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    provider          text NOT NULL CHECK (provider IN ('google', 'microsoft')),
    login_hint        text,
    code_verifier_enc bytea,
    started_by        uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    used_at           timestamptz,
    -- What came of it: 'connected', or why not (shown to whoever consented).
    outcome           text,
    CHECK ((used_at IS NULL) = (code_verifier_enc IS NOT NULL))
);
CREATE INDEX oauth_consents_expires_at ON oauth_consents (expires_at);
