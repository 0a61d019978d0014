-- Gmail-API accounts: sent with users.messages.send and read through the mailbox's history,
-- always with OAuth2 (account_oauth). They have no SMTP server, so its columns become optional
-- and are required of 'smtp' accounts only. An IMAP mailbox read with XOAUTH2 (Microsoft 365)
-- needs no password: the account's OAuth2 access token logs in.
ALTER TABLE accounts
    DROP CONSTRAINT accounts_kind_check,
    ADD CONSTRAINT accounts_kind_check CHECK (kind IN ('smtp', 'gmail-api')),
    ALTER COLUMN smtp_host DROP NOT NULL,
    ALTER COLUMN smtp_port DROP NOT NULL,
    ALTER COLUMN smtp_tls DROP NOT NULL,
    ADD CONSTRAINT accounts_smtp_complete CHECK (
        kind <> 'smtp'
        OR (smtp_host IS NOT NULL AND smtp_port IS NOT NULL AND smtp_tls IS NOT NULL)
    ),
    ADD CONSTRAINT accounts_gmail_api_oauth CHECK (kind <> 'gmail-api' OR auth_kind = 'oauth2'),
    DROP CONSTRAINT accounts_imap_complete,
    ADD CONSTRAINT accounts_imap_complete CHECK (
        imap_host IS NULL OR (imap_port IS NOT NULL AND imap_tls IS NOT NULL
                              AND imap_username IS NOT NULL
                              AND (imap_password_enc IS NOT NULL OR auth_kind = 'oauth2'))
    );
