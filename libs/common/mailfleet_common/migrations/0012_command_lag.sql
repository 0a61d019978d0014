-- How long send commands waited at each sender replica before it started them (the largest
-- wait since its previous heartbeat, decaying), written with its heartbeat. The dispatcher's
-- stall watch waits that much longer before it takes a command for lost: a replica that is
-- busy holds commands delivered to it, and they must not be issued again meanwhile.
ALTER TABLE sender_replicas
    ADD COLUMN command_lag_ms integer NOT NULL DEFAULT 0;

-- Whether a replica counts as alive: it beat within the timeout. Right after PostgreSQL
-- restarted, silence says nothing (no replica could beat while it was down), so every
-- registered replica counts as alive until the timeout has passed. One definition for the
-- senders' live set, the dispatcher's orphan sweep and the stall watch.
CREATE FUNCTION replica_live(r sender_replicas, timeout_s double precision) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT r.heartbeat_at > now() - make_interval(secs => timeout_s)
        OR pg_postmaster_start_time() > now() - make_interval(secs => timeout_s)
$$;
