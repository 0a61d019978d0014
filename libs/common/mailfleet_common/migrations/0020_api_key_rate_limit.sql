-- A rate of the key's own, set when it is created ("600/minute", the `limits` notation the
-- API checks), counted instead of MAILFLEET_RATE_LIMIT__DEFAULT. Null, as for every key that
-- exists already, means the default. A nullable column without a default: no table rewrite.
ALTER TABLE api_keys ADD COLUMN rate_limit text;
