-- How long send commands waited at each sender replica before it started them (the largest
-- wait since its previous heartbeat, decaying), written with its heartbeat. The dispatcher's
-- stall watch waits that much longer before it takes a command for lost: a replica that is
-- busy holds commands delivered to it, and they must not be issued again meanwhile.
ALTER TABLE sender_replicas
    ADD COLUMN command_lag_ms integer NOT NULL DEFAULT 0;
