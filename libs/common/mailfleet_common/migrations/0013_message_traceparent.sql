-- The W3C trace context of the enqueue that queued a message, written only when tracing is on
-- and the trace is sampled: the dispatcher picks messages up in batches, long after the
-- request, and continues each one's trace from here. NULL (the default, no rewrite of the
-- table) for every message enqueued without tracing.
ALTER TABLE messages ADD COLUMN traceparent text;
