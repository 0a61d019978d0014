-- Account pools: tags on accounts, and campaigns that target every account carrying one of
-- their tags. Membership is resolved by the dispatcher at each assignment, so an account
-- tagged while a campaign runs joins it, and one untagged, paused or archived leaves it.

-- The API keeps each tag to [a-z0-9][a-z0-9._:-]* of at most 63 characters, sorted and
-- distinct, at most 32 per account.
ALTER TABLE accounts ADD COLUMN tags text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(tags) <= 32);
-- Members of a pool (tags && '{...}'), and the pools listing.
CREATE INDEX accounts_tags_idx ON accounts USING gin (tags);

-- A campaign may send through the accounts it names (account_ids) and through every account
-- carrying any of pool_tags; with both empty, through every active account.
ALTER TABLE campaigns ADD COLUMN pool_tags text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(pool_tags) <= 32);
