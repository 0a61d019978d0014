-- Giving back reserved daily capacity, in one place for every writer that needs it: a cancel
-- (api), a stranded or paused-account assignment (dispatcher), a refused login (sender).
-- Usage rows are locked in (account, day) order, as assignment takes them, so concurrent
-- writers never deadlock. Returns how many units were given back.
CREATE FUNCTION release_reservations(account_ids uuid[], days date[], counts integer[])
RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH released AS (
        SELECT account_id, day, sum(n)::integer AS n
        FROM unnest(account_ids, days, counts) AS r (account_id, day, n)
        WHERE account_id IS NOT NULL AND day IS NOT NULL
        GROUP BY account_id, day
    ), locked AS (
        SELECT u.account_id, u.day FROM account_daily_usage u
        JOIN released r ON r.account_id = u.account_id AND r.day = u.day
        ORDER BY u.account_id, u.day
        FOR NO KEY UPDATE OF u
    ), updated AS (
        UPDATE account_daily_usage u SET reserved = greatest(u.reserved - r.n, 0)
        FROM released r, locked l
        WHERE u.account_id = r.account_id AND u.day = r.day
          AND l.account_id = r.account_id AND l.day = r.day
        RETURNING r.n
    )
    SELECT coalesce(sum(n), 0) FROM updated
$$;
