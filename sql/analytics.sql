-- twitch_sync: history and analytics. Per broadcast figures are kept on the
-- streams row as samples are recorded (sql/transitions.sql); title and
-- category changes in stream_changes; per-day rollups by twitch_sync.maintain().
--
-- The rules (README "Analytics"), the same everywhere:
-- - A sample's viewer count holds until the broadcast's next sample, when that
--   comes within the gap limit (twitch_sync.max_sample_gap_secs, default 1200:
--   about twice a 10-minute polling interval). A longer gap is not
--   interpolated; nothing is counted before a broadcast's first sample or after
--   its last.
-- - hours watched = sum of viewers x seconds / 3600 over those intervals;
--   average viewers = viewers x seconds / seconds covered (NULL when no
--   interval is covered, such as with a single sample).
-- - airtime = from started_at (Helix's, else when first seen) to ended_at (or now).
-- - Days are UTC; an interval or a broadcast crossing midnight is split at it.

-- The gap limit, in seconds. No SET clause, so it inlines (everything in it
-- is schema-qualified or a keyword).
CREATE FUNCTION twitch_sync.sample_gap() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.make_interval(secs => greatest(twitch_sync.setting('twitch_sync.max_sample_gap_secs')::integer, 1))
$$;

-- Every title and category a broadcast had: one row when it is first seen,
-- and one for each observed change, with its source ('poll', 'eventsub').
CREATE TABLE twitch_sync.stream_changes (
    broadcaster_id text NOT NULL,
    stream_id      text NOT NULL,
    seen_at        timestamptz NOT NULL,
    source         text NOT NULL,
    title          text NOT NULL,
    game_id        text NOT NULL,
    game_name      text NOT NULL,
    CONSTRAINT stream_changes_pkey PRIMARY KEY (broadcaster_id, stream_id, seen_at)
);
COMMENT ON TABLE twitch_sync.stream_changes IS 'Titles and categories of each broadcast: first seen, then every observed change.';
-- Each category's rows, latest first: the view categories reads one entry per
-- category from it (a skip scan) instead of sorting every row. Written only
-- with a row of stream_changes (a title or category change).
CREATE INDEX stream_changes_game_latest ON twitch_sync.stream_changes (game_id, seen_at DESC)
    WHERE game_id <> '';

-- Per channel per UTC day.
CREATE TABLE twitch_sync.channel_days (
    broadcaster_id text NOT NULL,
    day            date NOT NULL,
    airtime        interval NOT NULL,
    hours_watched  double precision NOT NULL,
    peak_viewers   integer,
    avg_viewers    double precision,
    broadcasts     integer NOT NULL,
    categories     text[] NOT NULL,
    CONSTRAINT channel_days_pkey PRIMARY KEY (broadcaster_id, day)
);
CREATE INDEX channel_days_day ON twitch_sync.channel_days (day);
COMMENT ON TABLE twitch_sync.channel_days IS 'Per channel per UTC day: airtime, hours watched, peak and average viewers, broadcasts, categories (twitch_sync.maintain()).';

-- Per category per UTC day. Keyed by category, not broadcaster: an aggregate
-- across channels (a reference table, were the others distributed).
CREATE TABLE twitch_sync.category_days (
    game_id       text NOT NULL,
    day           date NOT NULL,
    game_name     text NOT NULL,
    hours_watched double precision NOT NULL,
    peak_viewers  integer NOT NULL,
    channels_live integer NOT NULL,
    CONSTRAINT category_days_pkey PRIMARY KEY (game_id, day)
);
CREATE INDEX category_days_day ON twitch_sync.category_days (day);
COMMENT ON TABLE twitch_sync.category_days IS 'Per category per UTC day: hours watched, highest single-stream viewers, channels live (twitch_sync.maintain()).';

-- Per channel per category per UTC day: what channel_days and category_days
-- are summed from (twitch_sync.day_parts). maintain() adds to it only what
-- the samples written since its last call make, so its hourly call costs
-- what the hour wrote, not the whole day; a backfill's days are recomputed
-- from their samples. Rows of days whose samples retention dropped are
-- deleted with them (the rollups stay).
CREATE TABLE twitch_sync.channel_category_days (
    broadcaster_id  text NOT NULL,
    day             date NOT NULL,
    game_id         text NOT NULL,
    viewer_seconds  double precision NOT NULL,
    covered_seconds double precision NOT NULL,
    peak_viewers    integer,
    CONSTRAINT channel_category_days_pkey PRIMARY KEY (broadcaster_id, day, game_id)
);
CREATE INDEX channel_category_days_day ON twitch_sync.channel_category_days (day);
COMMENT ON TABLE twitch_sync.channel_category_days IS 'Per channel per category per UTC day: viewer-seconds, seconds covered, peak; what maintain() sums channel_days and category_days from.';

-- How far the rollups are: samples up to rolled_up_to (the latest sample
-- rolled up) are in them. stale_from: the earliest time of what was written
-- since at an earlier time (a backfill; twitch_sync.mark_rollups_stale), where
-- the next maintain() starts; NULL when nothing was.
CREATE TABLE twitch_sync.rollup_state (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_up_to  timestamptz NOT NULL,
    stale_from    timestamptz,
    -- days before this had their samples dropped by retention
    -- (drop_sample_partitions): their rollups are final, and samples written
    -- for them later are past retention too (never rolled up, dropped)
    samples_dropped_before date,
    -- the earliest sample written since at or before rolled_up_to (a
    -- backfill): the next maintain() recomputes channel_category_days from
    -- its day, as it adds only later samples to them
    samples_stale_from timestamptz,
    -- the gap limit channel_category_days were computed with: a call with
    -- another recomputes the days it rolls up from their samples
    rolled_up_gap interval
);

SELECT pg_catalog.pg_extension_config_dump('twitch_sync.stream_changes', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.channel_days', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.category_days', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.channel_category_days', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.rollup_state', '');

-- The rollup lock (a table lock on twitch_sync.rollup_state, taken only
-- here: shared is ROW SHARE, alone is EXCLUSIVE; readers of rollup_state
-- are not held up). A table lock, not a row lock: Postgres queues table
-- locks, so a writer that comes while maintain() waits for the lock waits
-- behind it (row locks let shared lockers pass a waiting exclusive one, and
-- writers that keep overlapping would starve maintain()); and not an
-- advisory lock, which any role could take: LOCK TABLE takes UPDATE on the
-- table, which only the extension's owner has. maintain() holds it alone (waiting for it); a writer of
-- samples, or of airtime on a past day, holds it shared from its stale check
-- (mark_rollups_stale) to its commit. So maintain() waits for the writers in
-- flight before it reads what to roll up, and a writer that comes while
-- maintain() runs waits, then checks what it wrote against the watermark
-- maintain() left: a sample written at or before what maintain() rolled up
-- is marked, never missed, and two maintain() calls never add the same
-- samples twice. drop_sample_partitions() takes it alone only if it is free
-- at once (without `wait`; returns whether it got it): prune() runs at the
-- end of every run(), which already holds it shared, and a prune() waiting
-- for another writer could deadlock with it. Transaction-level: it cannot be
-- orphaned.
CREATE FUNCTION twitch_sync.rollup_lock(exclusive boolean, wait boolean DEFAULT true) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT exclusive THEN
        LOCK TABLE twitch_sync.rollup_state IN ROW SHARE MODE;
    ELSIF wait THEN
        LOCK TABLE twitch_sync.rollup_state IN EXCLUSIVE MODE;
    ELSE
        BEGIN
            LOCK TABLE twitch_sync.rollup_state IN EXCLUSIVE MODE NOWAIT;
        EXCEPTION WHEN lock_not_available THEN
            RETURN false;
        END;
    END IF;
    RETURN true;
END
$$;

-- The partition of viewer_samples holding a UTC day. No SET clause, so it
-- inlines; the operator is schema-qualified instead.
CREATE FUNCTION twitch_sync.sample_partition(day date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'viewer_samples_' OPERATOR(pg_catalog.||) pg_catalog.to_char(day, 'YYYYMMDD')
$$;

-- Creates the missing day partitions of viewer_samples from first_day to
-- last_day (UTC), moving that day's rows out of viewer_samples_default;
-- returns how many it created. A day whose partition cannot be attached
-- within 100 ms (a reader of viewer_samples holds the default partition) is
-- left for the next call: run() calls this for today and tomorrow.
CREATE FUNCTION twitch_sync.create_sample_partitions(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d date := first_day;
    created integer := 0;
    old_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF first_day IS NULL OR last_day IS NULL OR last_day - first_day > 3660 THEN
        RAISE EXCEPTION 'invalid day range: % to %', first_day, last_day
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass two dates at most ten years apart.';
    END IF;
    WHILE d <= last_day LOOP
        IF pg_catalog.to_regclass('twitch_sync.' || twitch_sync.sample_partition(d)) IS NULL THEN
            BEGIN
                -- Attaching locks the default partition: readers of
                -- viewer_samples would queue behind a long wait for it.
                PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
                EXECUTE pg_catalog.format(
                    'CREATE TABLE twitch_sync.%I (LIKE twitch_sync.viewer_samples INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                                                  PRIMARY KEY (broadcaster_id, sampled_at, stream_id))',
                    twitch_sync.sample_partition(d));
                -- samples are written in time order: a block range index finds
                -- the latest ones (maintain() reads what came since its last call)
                EXECUTE pg_catalog.format(
                    'CREATE INDEX ON twitch_sync.%I USING brin (sampled_at) WITH (autosummarize = on)',
                    twitch_sync.sample_partition(d));
                EXECUTE pg_catalog.format(
                    'WITH moved AS (DELETE FROM twitch_sync.viewer_samples_default v
                                     WHERE v.sampled_at >= $1 AND v.sampled_at < $2 RETURNING v.*)
                     INSERT INTO twitch_sync.%I SELECT * FROM moved', twitch_sync.sample_partition(d))
                  USING d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC';
                EXECUTE pg_catalog.format(
                    'ALTER TABLE twitch_sync.viewer_samples ATTACH PARTITION twitch_sync.%I FOR VALUES FROM (%L) TO (%L)',
                    twitch_sync.sample_partition(d),
                    d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
                created := created + 1;
            EXCEPTION
                WHEN duplicate_table OR unique_violation THEN
                    NULL;  -- another session created it meanwhile
                WHEN lock_not_available THEN
                    NULL;  -- in use: its samples wait in the default partition for the next call
            END;
            PERFORM pg_catalog.set_config('lock_timeout', old_timeout, true);
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$$;

-- The time before which the rollups are final: maintain() has rolled up
-- every sample up to rolled_up_to, nothing earlier was written since
-- (stale_from: a backfill), and a sample after that closes an interval
-- starting at most a gap earlier (after the gap limit changed, the longer of
-- the two: maintain() looks back that far). NULL before the first rollup.
-- One rule for drop_sample_partitions() and final_rollup_days().
CREATE FUNCTION twitch_sync.rollups_final_before() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(r.rolled_up_to, coalesce(r.stale_from, 'infinity'))
           - greatest(twitch_sync.sample_gap(), r.rolled_up_gap)
      FROM twitch_sync.rollup_state r
$$;

-- Drops the day partitions of viewer_samples older than keep_days (whole UTC
-- days before now() - keep_days; 0 keeps them all); returns the rows dropped.
-- A day maintain() has not rolled up for good is rolled up first. A partition
-- that is in use (its lock not granted within a second) is left for the next
-- call.
CREATE FUNCTION twitch_sync.drop_sample_partitions(keep_days integer) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    oldest_kept text;
    part text;
    part_day date;
    final_before timestamptz;
    n bigint;
    dropped bigint := 0;
    dropped_through date;
    dropped_before timestamptz;
    locked boolean := false;
    old_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
    IF keep_days IS NULL OR keep_days <= 0 THEN
        RETURN 0;
    END IF;
    oldest_kept := twitch_sync.sample_partition(
        ((pg_catalog.now() - pg_catalog.make_interval(days => keep_days)) AT TIME ZONE 'UTC')::date);
    FOR part IN
        SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'twitch_sync.viewer_samples'::regclass
           AND c.relname ~ '^viewer_samples_[0-9]{8}$' AND c.relname < oldest_kept
         ORDER BY c.relname
    LOOP
        IF NOT locked THEN
            -- with maintain() (or a writer of samples other than this
            -- transaction) at work, the partitions are left for the next call
            locked := twitch_sync.rollup_lock(true, wait => false);
            EXIT WHEN NOT locked;
            -- Days before this are rolled up for good: maintain() has rolled
            -- up the samples up to rolled_up_to, and nothing older was
            -- written since (read under the lock: no backfill is in flight).
            final_before := twitch_sync.rollups_final_before();
        END IF;
        -- a day not rolled up for good is rolled up now from its samples,
        -- before they go
        part_day := pg_catalog.to_date(pg_catalog.substr(part, 16), 'YYYYMMDD');
        IF final_before IS NULL OR (part_day + 1)::timestamp AT TIME ZONE 'UTC' > final_before THEN
            PERFORM twitch_sync.roll_up_days(part_day, part_day, from_samples => true);
        END IF;
        BEGIN
            PERFORM pg_catalog.set_config('lock_timeout', '1s', true);
            -- ONLY: the parent, this partition and the default partition
            -- (DROP TABLE locks it too: its partition constraint changes),
            -- not every partition (a reader of any other day, or its
            -- autovacuum, held every drop up)
            EXECUTE pg_catalog.format('LOCK TABLE ONLY twitch_sync.viewer_samples, ONLY twitch_sync.%I, '
                                      'ONLY twitch_sync.viewer_samples_default IN ACCESS EXCLUSIVE MODE', part);
            EXECUTE pg_catalog.format('SELECT count(*) FROM twitch_sync.%I', part) INTO n;
            EXECUTE pg_catalog.format('DROP TABLE twitch_sync.%I', part);
            dropped := dropped + n;
            dropped_through := part_day;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
        PERFORM pg_catalog.set_config('lock_timeout', old_timeout, true);
    END LOOP;
    IF dropped_through IS NOT NULL THEN
        -- Remembered: a later backfill into these days must not replace their
        -- rollups with itself (maintain() would re-create their partitions).
        -- Without a rollup_state row, every dropped day was rolled up above.
        INSERT INTO twitch_sync.rollup_state AS r (singleton, rolled_up_to, samples_dropped_before)
        VALUES (true, (dropped_through + 1)::timestamp AT TIME ZONE 'UTC', dropped_through + 1)
        ON CONFLICT (singleton) DO UPDATE
            SET samples_dropped_before = greatest(r.samples_dropped_before, EXCLUDED.samples_dropped_before);
    END IF;
    -- what maintain() sums the rollups from goes with the samples (it adds
    -- nothing to days already dropped)
    IF dropped_through IS NOT NULL THEN
        DELETE FROM twitch_sync.channel_category_days r WHERE r.day <= dropped_through;
    END IF;
    -- samples written since for days already dropped wait in the default
    -- partition (maintain() makes no partition for them): past retention too
    -- (none before any day was dropped: no scan of the default partition,
    -- which holds a backfill until maintain() moves it)
    SELECT r.samples_dropped_before::timestamp AT TIME ZONE 'UTC' INTO dropped_before
      FROM twitch_sync.rollup_state r;
    IF dropped_before IS NULL THEN
        RETURN dropped;
    END IF;
    DELETE FROM twitch_sync.viewer_samples_default v WHERE v.sampled_at < dropped_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN dropped + n;
END
$$;

-- The intervals that overlap [lo, hi), as the samples closing them carry them
-- (viewer_samples.prev_*, written with each sample): the previous sample's
-- time (sampled_at), count and category, up to the closing sample (next_at).
-- `gap` is the gap limit (pass twitch_sync.sample_gap(), computed once): an
-- interval counts when it was within the limit both when its sample was
-- written and now (lowering twitch_sync.max_sample_gap_secs stops longer ones
-- counting; raising it does not bring back gaps that were not recorded). No
-- sort: one range read of the partitions from lo to hi plus the gap. No SET
-- clause, so it inlines into the caller's query, where the planner sees the
-- rows it reads (a stored function result is guessed at 1,000 rows);
-- operators and types are schema-qualified instead.
CREATE FUNCTION twitch_sync.sample_intervals(lo timestamptz, hi timestamptz, gap interval)
RETURNS TABLE (broadcaster_id text, stream_id text, game_id text, viewer_count integer,
               sampled_at timestamptz, next_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT v.broadcaster_id, v.stream_id, v.prev_game_id, v.prev_viewer_count, v.prev_sampled_at,
           v.sampled_at
      FROM twitch_sync.viewer_samples v
     WHERE v.sampled_at OPERATOR(pg_catalog.>) lo
       AND v.sampled_at OPERATOR(pg_catalog.<) (hi OPERATOR(pg_catalog.+) gap)
       AND v.prev_sampled_at OPERATOR(pg_catalog.<) hi
       AND (v.sampled_at OPERATOR(pg_catalog.-) v.prev_sampled_at) OPERATOR(pg_catalog.<=) gap
$$;

-- The first instant of day `day` in time zone tz: the first instant whose
-- local date is `day`. Every day's bounds come from here, and an instant's day
-- is (instant AT TIME ZONE tz)::date, so the two agree. Where midnight happens
-- twice (America/Havana on 2026-11-01), `day::timestamp AT TIME ZONE tz` is
-- the later one; with the offset of three hours before, the earlier one. Where
-- midnight is skipped, it is the end of the gap. A day the zone skipped
-- altogether (Pacific/Apia, 2011-12-30) is empty: it starts when the next
-- day does.
CREATE FUNCTION twitch_sync.day_start(day date, tz text) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(min(k.c), (day + 1)::timestamp AT TIME ZONE tz)
      FROM (SELECT day::timestamp AT TIME ZONE tz AS x) x,
           LATERAL (VALUES (x.x),
                           ((day::timestamp - (((x.x - interval '3 hours') AT TIME ZONE tz)
                                               - ((x.x - interval '3 hours') AT TIME ZONE 'UTC')))
                            AT TIME ZONE 'UTC')) k(c)
     WHERE (k.c AT TIME ZONE tz)::date = day
$$;

-- The arguments of sample_pieces() (and so of day_parts()): finite times and
-- a gap limit from 0 to a day (twitch_sync.sample_gap() is one); true, or
-- SQLSTATE 22023. NULLs pass (they make no rows). An infinite time made the
-- days between them an endless series that filled the disk.
CREATE FUNCTION twitch_sync.check_time_range(lo timestamptz, hi timestamptz, gap interval)
RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT pg_catalog.isfinite(lo) OR NOT pg_catalog.isfinite(hi)
       OR gap < interval '0' OR gap > interval '1 day' THEN
        RAISE EXCEPTION 'invalid time range: % to % with a gap limit of %', lo, hi, gap
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass finite times and a gap limit from 0 to 1 day, such as twitch_sync.sample_gap().';
    END IF;
    RETURN true;
END
$$;

-- The intervals of sample_intervals(lo, hi, gap) cut at midnight in time zone
-- tz (days as day_start() bounds them): one piece per day an interval covers,
-- with its length in seconds and the time of the sample that closed the
-- interval (closed_at). Pieces outside [lo, hi) are the callers' to drop.
-- Its arguments are checked (check_time_range) before the days are made.
-- Inlines like sample_intervals (no SET clause; qualified operators and types).
CREATE FUNCTION twitch_sync.sample_pieces(lo timestamptz, hi timestamptz, tz text, gap interval)
RETURNS TABLE (day date, broadcaster_id text, stream_id text, game_id text, viewer_count integer,
               secs double precision, closed_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH days AS MATERIALIZED (  -- the days the intervals can touch, with their bounds, once
        SELECT d::pg_catalog.date AS day, twitch_sync.day_start(d::pg_catalog.date, tz) AS day_lo,
               twitch_sync.day_start(d::pg_catalog.date OPERATOR(pg_catalog.+) 1, tz) AS day_hi
          FROM pg_catalog.generate_series(
                   pg_catalog.timezone(tz, lo OPERATOR(pg_catalog.-) gap)::pg_catalog.date,
                   CASE WHEN twitch_sync.check_time_range(lo, hi, gap)
                        THEN pg_catalog.timezone(tz, hi OPERATOR(pg_catalog.+) gap)::pg_catalog.date END,
                   '1 day'::pg_catalog.interval) d
    )
    -- each interval's piece on the day it starts (joined on the day: hashed)
    SELECT x.day, i.broadcaster_id, i.stream_id, i.game_id, i.viewer_count,
           extract(epoch FROM least(i.next_at, x.day_hi) OPERATOR(pg_catalog.-) i.sampled_at)::pg_catalog.float8,
           i.next_at
      FROM twitch_sync.sample_intervals(lo, hi, gap) i
      JOIN days x ON x.day OPERATOR(pg_catalog.=) pg_catalog.timezone(tz, i.sampled_at)::pg_catalog.date
    UNION ALL  -- an interval crossing midnight: a piece on each later day it covers
    SELECT x.day, i.broadcaster_id, i.stream_id, i.game_id, i.viewer_count,
           extract(epoch FROM least(i.next_at, x.day_hi) OPERATOR(pg_catalog.-) x.day_lo)::pg_catalog.float8,
           i.next_at
      FROM twitch_sync.sample_intervals(lo, hi, gap) i
      JOIN days x ON x.day OPERATOR(pg_catalog.>) pg_catalog.timezone(tz, i.sampled_at)::pg_catalog.date
                 AND x.day OPERATOR(pg_catalog.<=) pg_catalog.timezone(tz, i.next_at)::pg_catalog.date
                 AND x.day_lo OPERATOR(pg_catalog.<) i.next_at
     WHERE pg_catalog.timezone(tz, i.next_at)::pg_catalog.date
           OPERATOR(pg_catalog.>) pg_catalog.timezone(tz, i.sampled_at)::pg_catalog.date
$$;

-- Per channel per category per day in time zone tz, what the samples written
-- at or before `through` make of the days: the pieces of the intervals
-- (sample_pieces(lo, hi, tz, gap)) on the day, by the category each interval
-- began in: viewers x seconds (viewer_seconds) and seconds (covered_seconds,
-- NULL: none); and the highest of the samples in [lo, hi) on the day in that
-- category (peak_viewers, NULL: none). A NULL category counts as ''. Days
-- outside [lo, hi) are the callers' to drop. The daily figures are sums and
-- maxima of these: channel_days_in and category_days_in compute them from
-- here, and maintain() keeps them per UTC day in channel_category_days,
-- adding what each call finds new (lo = its last sample, through = the
-- latest). Inlines like sample_pieces.
CREATE FUNCTION twitch_sync.day_parts(lo timestamptz, hi timestamptz, tz text, gap interval,
                                      through timestamptz)
RETURNS TABLE (day date, broadcaster_id text, game_id text, viewer_seconds double precision,
               covered_seconds double precision, peak_viewers integer)
LANGUAGE sql STABLE AS $$
    SELECT k.day, k.broadcaster_id, k.game_id, pg_catalog.sum(k.vs), pg_catalog.sum(k.cs),
           pg_catalog.max(k.peak)
      FROM (SELECT p.day, p.broadcaster_id, coalesce(p.game_id, '') AS game_id,
                   (p.viewer_count::pg_catalog.float8 OPERATOR(pg_catalog.*) p.secs) AS vs, p.secs AS cs,
                   NULL::pg_catalog.int4 AS peak
              FROM twitch_sync.sample_pieces(lo, hi, tz, gap) p
             WHERE p.closed_at OPERATOR(pg_catalog.<=) through
            UNION ALL
            SELECT pg_catalog.timezone(tz, v.sampled_at)::pg_catalog.date, v.broadcaster_id,
                   coalesce(v.game_id, ''), NULL, NULL, v.viewer_count
              FROM twitch_sync.viewer_samples v
             WHERE v.sampled_at OPERATOR(pg_catalog.>=) lo AND v.sampled_at OPERATOR(pg_catalog.<) hi
               AND v.sampled_at OPERATOR(pg_catalog.<=) through) k
     GROUP BY k.day, k.broadcaster_id, k.game_id
$$;

-- The latest name of each category: what DISTINCT ON (game_id) ... ORDER BY
-- game_id, seen_at DESC gives, read as a skip scan of
-- stream_changes_game_latest (one index probe per category: the first entry
-- after the previous category is the next one's latest), not a sort of every
-- row of stream_changes.
CREATE VIEW twitch_sync.categories AS
WITH RECURSIVE latest AS (
    (SELECT c.game_id, c.game_name FROM twitch_sync.stream_changes c
      WHERE c.game_id <> ''
      ORDER BY c.game_id, c.seen_at DESC LIMIT 1)
    UNION ALL
    SELECT n.game_id, n.game_name
      FROM latest l
     CROSS JOIN LATERAL (
            SELECT c.game_id, c.game_name FROM twitch_sync.stream_changes c
             WHERE c.game_id <> '' AND c.game_id > l.game_id
             ORDER BY c.game_id, c.seen_at DESC LIMIT 1) n
)
SELECT l.game_id, l.game_name FROM latest l;
COMMENT ON VIEW twitch_sync.categories IS 'Each category (game_id) with the latest name seen for it.';

-- The arguments of channel_days_in and category_days_in: a known time zone
-- and first_day <= last_day at most ten years apart; SQLSTATE 22023 otherwise.
CREATE FUNCTION twitch_sync.check_days_in(tz text, first_day date, last_day date) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF tz IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names z WHERE z.name = tz)
                     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_abbrevs z WHERE z.abbrev = tz) THEN
        RAISE EXCEPTION 'unknown time zone: %', coalesce(pg_catalog.quote_literal(pg_catalog.left(tz, 60)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a name from pg_timezone_names, such as ''UTC'' or ''Europe/Berlin''.';
    END IF;
    IF first_day IS NULL OR last_day IS NULL OR NOT pg_catalog.isfinite(first_day)
       OR NOT pg_catalog.isfinite(last_day) OR last_day < first_day OR last_day - first_day > 3660 THEN
        RAISE EXCEPTION 'invalid day range: % to %', first_day, last_day
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass finite days, first_day <= last_day, at most ten years apart.';
    END IF;
END
$$;

-- Per channel per day, days from first_day to last_day in time zone tz: the
-- airtime of its broadcasts (overlapping ones merged, so no instant counts
-- twice) and how many were on the air, from the streams table.
CREATE FUNCTION twitch_sync.broadcast_days(tz text, first_day date, last_day date)
RETURNS TABLE (day date, broadcaster_id text, airtime interval, broadcasts integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    range_lo timestamptz;
    range_hi timestamptz;
BEGIN
    -- (infinite days: 22023 with a hint, not 22008 from day_start)
    PERFORM twitch_sync.check_time_range(first_day, last_day, interval '0');
    range_lo := twitch_sync.day_start(first_day, tz);
    range_hi := twitch_sync.day_start(last_day + 1, tz);
    RETURN QUERY
    WITH days AS MATERIALIZED (  -- each day with its bounds, once
        SELECT d::date AS day, twitch_sync.day_start(d::date, tz) AS day_lo,
               twitch_sync.day_start(d::date + 1, tz) AS day_hi
          FROM pg_catalog.generate_series(first_day, last_day, interval '1 day') d
    ), spans AS (  -- each broadcast's time within the days
        SELECT b.broadcaster_id, greatest(coalesce(b.started_at, b.first_seen_at), range_lo) AS a,
               least(coalesce(b.ended_at, pg_catalog.now()), range_hi) AS z
          FROM twitch_sync.streams b
         WHERE coalesce(b.started_at, b.first_seen_at) < range_hi
           AND coalesce(b.ended_at, pg_catalog.now()) > range_lo
    ), runs AS (  -- a channel's overlapping broadcasts merged, so no instant counts twice
        SELECT r.broadcaster_id, min(r.a) AS a, max(r.z) AS z
          FROM (SELECT m.broadcaster_id, m.a, m.z,
                       count(*) FILTER (WHERE m.reach IS NULL OR m.a > m.reach)
                           OVER (PARTITION BY m.broadcaster_id ORDER BY m.a, m.z) AS run
                  FROM (SELECT p.broadcaster_id, p.a, p.z,
                               max(p.z) OVER (PARTITION BY p.broadcaster_id ORDER BY p.a, p.z
                                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
                          FROM spans p WHERE p.z > p.a) m) r
         GROUP BY r.broadcaster_id, r.run
    )
    -- per day: the merged runs' airtime, and the broadcasts on the air
    SELECT x.day, i.broadcaster_id,
           sum(least(i.z, x.day_hi) - greatest(i.a, x.day_lo)) FILTER (WHERE i.merged),
           (count(*) FILTER (WHERE NOT i.merged))::int
      FROM (SELECT r.broadcaster_id, r.a, r.z, true AS merged FROM runs r
            UNION ALL
            SELECT p.broadcaster_id, p.a, p.z, false FROM spans p) i
     CROSS JOIN LATERAL pg_catalog.generate_series((i.a AT TIME ZONE tz)::date,
                                                   (i.z AT TIME ZONE tz)::date, interval '1 day') d
      JOIN days x ON x.day = d::date
     WHERE least(i.z, x.day_hi) > greatest(i.a, x.day_lo)
     GROUP BY 1, 2;
END
$$;

-- Per channel per day, days from first_day to last_day in time zone tz,
-- computed from raw samples and broadcasts (so only within the samples'
-- retention). channel_days holds the same for UTC, kept by maintain().
CREATE FUNCTION twitch_sync.channel_days_in(tz text, first_day date, last_day date)
RETURNS TABLE (broadcaster_id text, day date, airtime interval, hours_watched double precision,
               peak_viewers integer, avg_viewers double precision, broadcasts integer,
               categories text[])
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    -- the days' bounds as values, which the planner estimates the samples of
    range_lo timestamptz;
    range_hi timestamptz;
    gap interval := twitch_sync.sample_gap();
BEGIN
    PERFORM twitch_sync.check_days_in(tz, first_day, last_day);
    range_lo := twitch_sync.day_start(first_day, tz);
    range_hi := twitch_sync.day_start(last_day + 1, tz);
    RETURN QUERY
    WITH names AS MATERIALIZED (  -- once, not per row
        SELECT c.game_id, c.game_name FROM twitch_sync.categories c
    ), parts AS (
        SELECT p.day, p.broadcaster_id, sum(p.viewer_seconds) AS vs, sum(p.covered_seconds) AS cs,
               max(p.peak_viewers) AS peak,
               array_agg(coalesce(n.game_name, p.game_id) ORDER BY coalesce(n.game_name, p.game_id))
                   FILTER (WHERE p.peak_viewers IS NOT NULL AND p.game_id <> '') AS categories
          FROM twitch_sync.day_parts(range_lo, range_hi, tz, gap, 'infinity') p
          LEFT JOIN names n ON n.game_id = p.game_id
         WHERE p.day BETWEEN first_day AND last_day
         GROUP BY 1, 2
    )
    SELECT coalesce(x.broadcaster_id, a.broadcaster_id), coalesce(x.day, a.day),
           coalesce(a.airtime, interval '0'), coalesce(x.vs, 0) / 3600, x.peak,
           CASE WHEN x.cs > 0 THEN x.vs / x.cs END, coalesce(a.broadcasts, 0), coalesce(x.categories, '{}')
      FROM parts x
      FULL JOIN twitch_sync.broadcast_days(tz, first_day, last_day) a
        ON a.day = x.day AND a.broadcaster_id = x.broadcaster_id;
END
$$;

-- Per category per day (time zone tz), from raw samples: hours watched, the
-- highest viewer count of a single stream, and channels with a sample in it.
CREATE FUNCTION twitch_sync.category_days_in(tz text, first_day date, last_day date)
RETURNS TABLE (game_id text, day date, game_name text, hours_watched double precision,
               peak_viewers integer, channels_live integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    -- the days' bounds as values, which the planner estimates the samples of
    range_lo timestamptz;
    range_hi timestamptz;
    gap interval := twitch_sync.sample_gap();
BEGIN
    PERFORM twitch_sync.check_days_in(tz, first_day, last_day);
    range_lo := twitch_sync.day_start(first_day, tz);
    range_hi := twitch_sync.day_start(last_day + 1, tz);
    RETURN QUERY
    SELECT p.game_id, p.day, coalesce(min(c.game_name), ''), coalesce(sum(p.viewer_seconds), 0) / 3600,
           coalesce(max(p.peak_viewers), 0), (count(*) FILTER (WHERE p.peak_viewers IS NOT NULL))::int
      FROM twitch_sync.day_parts(range_lo, range_hi, tz, gap, 'infinity') p
      LEFT JOIN twitch_sync.categories c ON c.game_id = p.game_id
     WHERE p.day BETWEEN first_day AND last_day AND p.game_id <> ''
     GROUP BY p.game_id, p.day;
END
$$;

-- Recomputes channel_days and category_days for the UTC days from first_day
-- to last_day from channel_category_days and the broadcasts; with
-- from_samples, from the raw samples instead (channel_category_days is left
-- as it is). Returns the number of days. The sums are those channel_days_in
-- and category_days_in make of day_parts, written again over the table: those
-- two run with their caller's rights, and a reader granted them needs no grant
-- on channel_category_days (a query naming the table would).
CREATE FUNCTION twitch_sync.roll_up_days(first_day date, last_day date, from_samples boolean DEFAULT false)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
BEGIN
    DELETE FROM twitch_sync.channel_days c WHERE c.day BETWEEN first_day AND last_day;
    DELETE FROM twitch_sync.category_days c WHERE c.day BETWEEN first_day AND last_day;
    IF from_samples THEN
        INSERT INTO twitch_sync.channel_days
        SELECT * FROM twitch_sync.channel_days_in('UTC', first_day, last_day);
        INSERT INTO twitch_sync.category_days
        SELECT * FROM twitch_sync.category_days_in('UTC', first_day, last_day);
        RETURN last_day - first_day + 1;
    END IF;
    INSERT INTO twitch_sync.channel_days
    WITH names AS MATERIALIZED (  -- once, not per row
        SELECT c.game_id, c.game_name FROM twitch_sync.categories c
    ), parts AS (
        SELECT p.day, p.broadcaster_id, sum(p.viewer_seconds) AS vs, sum(p.covered_seconds) AS cs,
               max(p.peak_viewers) AS peak,
               array_agg(coalesce(n.game_name, p.game_id) ORDER BY coalesce(n.game_name, p.game_id))
                   FILTER (WHERE p.peak_viewers IS NOT NULL AND p.game_id <> '') AS categories
          FROM twitch_sync.channel_category_days p
          LEFT JOIN names n ON n.game_id = p.game_id
         WHERE p.day BETWEEN first_day AND last_day
         GROUP BY 1, 2
    )
    SELECT coalesce(x.broadcaster_id, a.broadcaster_id), coalesce(x.day, a.day),
           coalesce(a.airtime, interval '0'), coalesce(x.vs, 0) / 3600, x.peak,
           CASE WHEN x.cs > 0 THEN x.vs / x.cs END, coalesce(a.broadcasts, 0), coalesce(x.categories, '{}')
      FROM parts x
      FULL JOIN twitch_sync.broadcast_days('UTC', first_day, last_day) a
        ON a.day = x.day AND a.broadcaster_id = x.broadcaster_id;
    INSERT INTO twitch_sync.category_days
    SELECT p.game_id, p.day, coalesce(min(c.game_name), ''), sum(p.viewer_seconds) / 3600,
           coalesce(max(p.peak_viewers), 0), (count(*) FILTER (WHERE p.peak_viewers IS NOT NULL))::int
      FROM twitch_sync.channel_category_days p
      LEFT JOIN twitch_sync.categories c ON c.game_id = p.game_id
     WHERE p.day BETWEEN first_day AND last_day AND p.game_id <> ''
     GROUP BY p.game_id, p.day;
    RETURN last_day - first_day + 1;
END
$$;

-- Adds to channel_category_days what the samples written after `since` up to
-- `through` make (twitch_sync.day_parts: the intervals they close, their
-- peaks) on the UTC days from first_day to before_day (exclusive; NULL: no
-- limit); with `since` NULL, recomputes those days from their samples
-- instead. Returns the rows written.
CREATE FUNCTION twitch_sync.add_day_parts(since timestamptz, through timestamptz, first_day date,
                                          before_day date)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    gap interval := twitch_sync.sample_gap();
    lo timestamptz := coalesce(since, first_day::timestamp AT TIME ZONE 'UTC');
    -- day_parts reads samples in [lo, hi): the latest one is in (least()
    -- ignores a NULL before_day)
    hi timestamptz := least(through + interval '1 microsecond', before_day::timestamp AT TIME ZONE 'UTC');
    n bigint;
BEGIN
    IF since IS NULL THEN
        DELETE FROM twitch_sync.channel_category_days r
         WHERE r.day >= first_day AND (before_day IS NULL OR r.day < before_day);
    END IF;
    IF through IS NULL OR hi <= lo THEN
        RETURN 0;
    END IF;
    INSERT INTO twitch_sync.channel_category_days AS r
    SELECT p.broadcaster_id, p.day, p.game_id, coalesce(p.viewer_seconds, 0), coalesce(p.covered_seconds, 0),
           p.peak_viewers
      FROM twitch_sync.day_parts(lo, hi, 'UTC', gap, through) p
     WHERE p.day >= first_day AND (before_day IS NULL OR p.day < before_day)
    ON CONFLICT ON CONSTRAINT channel_category_days_pkey DO UPDATE
       SET viewer_seconds = r.viewer_seconds + EXCLUDED.viewer_seconds,
           covered_seconds = r.covered_seconds + EXCLUDED.covered_seconds,
           peak_viewers = greatest(r.peak_viewers, EXCLUDED.peak_viewers);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- maintain(): the maintenance step, scheduled by twitch_sync.schedule() (hourly)
-- or called by hand. Creates viewer_samples partitions a week ahead, rolls up
-- every day that got samples (or airtime) since the last call, or from a
-- backfill (rollup_state.stale_from), among the days whose samples are kept,
-- and drops rollups past twitch_sync.rollups_retention_days (0, the default,
-- keeps them).
CREATE FUNCTION twitch_sync.maintain(
    OUT partitions_created integer, OUT days_rolled_up integer, OUT rollups_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    today date := (pg_catalog.now() AT TIME ZONE 'UTC')::date;
    since timestamptz;
    stale timestamptz;
    samples_stale timestamptz;
    last_gap interval;
    gap interval := twitch_sync.sample_gap();
    lookback interval;
    first_call boolean;
    all_days boolean;  -- recompute all the days rolled up from their samples
    through timestamptz;
    full_from date;
    first_day date;
    keep_days integer := twitch_sync.setting('twitch_sync.rollups_retention_days')::integer;
    keep_samples integer := twitch_sync.setting('twitch_sync.samples_retention_days')::integer;
    n bigint;
    day date;
    span record;
    pending date[];
    dropped_before date;
BEGIN
    -- (everything read below is read under the lock)
    PERFORM twitch_sync.rollup_lock(true);
    -- days whose samples retention dropped: never partitioned or rolled up again
    dropped_before := (SELECT r.samples_dropped_before FROM twitch_sync.rollup_state r);
    partitions_created := twitch_sync.create_sample_partitions(today, today + 7);
    -- days whose samples landed in the default partition get theirs
    FOR day IN SELECT DISTINCT (v.sampled_at AT TIME ZONE 'UTC')::date
                 FROM twitch_sync.viewer_samples_default v ORDER BY 1 LOOP
        IF dropped_before IS NULL OR day >= dropped_before THEN
            partitions_created := partitions_created + twitch_sync.create_sample_partitions(day, day);
        END IF;
    END LOOP;
    -- a day whose partition could not be attached (a reader held the default
    -- partition) still has its samples there: it is rolled up like the others
    SELECT coalesce(array_agg(DISTINCT (v.sampled_at AT TIME ZONE 'UTC')::date), '{}') INTO pending
      FROM twitch_sync.viewer_samples_default v;
    -- The first call rolls up everything there is.
    SELECT r.rolled_up_to, r.stale_from, r.samples_stale_from, r.rolled_up_gap
      INTO since, stale, samples_stale, last_gap
      FROM twitch_sync.rollup_state r;
    first_call := since IS NULL;
    IF first_call THEN
        since := least((SELECT min(v.sampled_at) FROM twitch_sync.viewer_samples v),
                       (SELECT min(coalesce(b.started_at, b.first_seen_at)) FROM twitch_sync.streams b),
                       -- (not later than now, when samples exist: one dated ahead waits)
                       CASE WHEN EXISTS (SELECT 1 FROM twitch_sync.viewer_samples) THEN pg_catalog.now() END);
    END IF;
    -- Days whose figures can have changed since: an interval ending after
    -- `since` (or after `stale`, the oldest observation written since the last
    -- call at an earlier time: a backfill) may start up to a gap earlier; a
    -- broadcast still live adds airtime.
    -- (A gap limit changed since looks back as far as the longer of the two.)
    lookback := greatest(gap, last_gap);
    first_day := least(((coalesce(least(since, stale, samples_stale), pg_catalog.now()) - lookback) AT TIME ZONE 'UTC')::date,
                       coalesce((SELECT min((coalesce(b.started_at, b.first_seen_at) AT TIME ZONE 'UTC')::date)
                                   FROM twitch_sync.streams b WHERE b.is_live), today),
                       today);
    -- This call rolls up the samples up to the latest one (later ones are
    -- the next call's, even if they commit while this one runs).
    -- (Samples dated more than a day ahead, written by hand, wait until
    -- their time comes: rollups never run ahead of the clock.)
    through := coalesce((SELECT max(v.sampled_at) FROM twitch_sync.viewer_samples v
                          WHERE v.sampled_at > since AND v.sampled_at <= pg_catalog.now() + interval '1 day'),
                        since);
    -- channel_category_days: recomputed from their samples for the days a
    -- backfill of samples changed (all the days this call rolls up on the
    -- first call, or with another gap limit); for the days before, the
    -- samples since the last call are added. Days whose samples retention
    -- dropped get nothing (their rollups stay as they are).
    all_days := first_call OR last_gap IS DISTINCT FROM gap;
    IF all_days OR samples_stale IS NOT NULL THEN
        full_from := greatest(CASE WHEN all_days THEN first_day
                                   ELSE ((samples_stale - lookback) AT TIME ZONE 'UTC')::date END,
                              dropped_before);
        PERFORM twitch_sync.add_day_parts(NULL, through, full_from, NULL);
    END IF;
    IF NOT first_call THEN
        PERFORM twitch_sync.add_day_parts(since, through, coalesce(dropped_before, '-infinity'), full_from);
    END IF;
    -- Only days whose samples are kept are rolled up: a day without its
    -- partition of viewer_samples (dropped by samples_retention_days) keeps
    -- the rollups it has. A day of airtime that never had a partition (a
    -- broadcast live before its first sample, a start time learned or
    -- backfilled later) is rolled up too, from nothing but its airtime, if
    -- it lies within samples_retention_days (no partition is made for it:
    -- one per day of a long history would take a lock each, in this one
    -- transaction). A day after a dropped
    -- one is whole in its own samples (and the next day's): each sample
    -- carries the interval it closes, the one that began the day before too.
    -- Consecutive days go in one roll_up_days call.
    days_rolled_up := 0;
    FOR span IN
        WITH kept AS (
            SELECT d::date AS d FROM pg_catalog.generate_series(first_day, today, interval '1 day') d
             WHERE (pg_catalog.to_regclass('twitch_sync.' || twitch_sync.sample_partition(d::date)) IS NOT NULL
                    OR d::date = ANY (pending)
                    OR ((keep_samples = 0 OR d::date > today - keep_samples)
                        AND EXISTS (SELECT 1 FROM twitch_sync.streams b
                                     WHERE coalesce(b.started_at, b.first_seen_at)
                                               < ((d::date + 1)::timestamp AT TIME ZONE 'UTC')
                                       AND (b.ended_at IS NULL
                                            OR b.ended_at > (d::date::timestamp AT TIME ZONE 'UTC')))))
               AND (dropped_before IS NULL OR d::date >= dropped_before)
        )
        SELECT min(k.d) AS a, max(k.d) AS z
          FROM (SELECT k.d, k.d - (pg_catalog.row_number() OVER (ORDER BY k.d))::integer AS run FROM kept k) k
         GROUP BY k.run ORDER BY 1
    LOOP
        days_rolled_up := days_rolled_up + twitch_sync.roll_up_days(span.a, span.z);
    END LOOP;
    since := greatest(since, through);
    IF since IS NOT NULL THEN
        -- the stale marks are cleared unless a backfill moved them meanwhile
        -- (then the next call starts there)
        INSERT INTO twitch_sync.rollup_state AS r (singleton, rolled_up_to, rolled_up_gap)
        VALUES (true, since, gap)
        ON CONFLICT (singleton) DO UPDATE
            SET rolled_up_to = EXCLUDED.rolled_up_to, rolled_up_gap = EXCLUDED.rolled_up_gap,
                stale_from = CASE WHEN r.stale_from IS NOT DISTINCT FROM stale THEN NULL ELSE r.stale_from END,
                samples_stale_from = CASE WHEN r.samples_stale_from IS NOT DISTINCT FROM samples_stale
                                          THEN NULL ELSE r.samples_stale_from END;
    END IF;
    rollups_deleted := 0;
    IF keep_days > 0 THEN
        DELETE FROM twitch_sync.channel_days c WHERE c.day < today - keep_days;
        GET DIAGNOSTICS n = ROW_COUNT;
        rollups_deleted := n;
        DELETE FROM twitch_sync.category_days c WHERE c.day < today - keep_days;
        GET DIAGNOSTICS n = ROW_COUNT;
        rollups_deleted := rollups_deleted + n;
    END IF;
END
$$;

-- One row per broadcast, kept after it ends. Its peak is the highest sample
-- (NULL with no sample, as in channel_days).
CREATE VIEW twitch_sync.broadcasts AS
SELECT s.stream_id, s.broadcaster_id, c.login, s.is_live,
       coalesce(s.started_at, s.first_seen_at) AS started_at, s.ended_at,
       coalesce(s.ended_at, pg_catalog.now()) - coalesce(s.started_at, s.first_seen_at) AS airtime,
       CASE WHEN s.sample_count > 0 THEN s.peak_viewer_count END AS peak_viewers, s.peak_at,
       CASE WHEN s.covered_seconds > 0 THEN s.viewer_seconds / s.covered_seconds END AS avg_viewers,
       s.viewer_seconds / 3600 AS hours_watched,
       s.sample_count AS samples,
       ARRAY(SELECT t.title FROM twitch_sync.stream_changes t
              WHERE t.broadcaster_id = s.broadcaster_id AND t.stream_id = s.stream_id AND t.title <> ''
              GROUP BY t.title ORDER BY min(t.seen_at)) AS titles,
       ARRAY(SELECT t.game_name FROM twitch_sync.stream_changes t
              WHERE t.broadcaster_id = s.broadcaster_id AND t.stream_id = s.stream_id AND t.game_id <> ''
              GROUP BY t.game_name ORDER BY min(t.seen_at)) AS categories
  FROM twitch_sync.streams s
  LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id;
COMMENT ON VIEW twitch_sync.broadcasts IS 'One row per broadcast: airtime, peak (and when), average viewers, hours watched, samples, every title and category.';

-- What is live now, most watched first.
CREATE VIEW twitch_sync.live_now AS
SELECT s.broadcaster_id, c.login, s.stream_id, s.viewer_count, s.title, s.game_id, s.game_name,
       s.language, coalesce(s.started_at, s.first_seen_at) AS started_at,
       pg_catalog.now() - coalesce(s.started_at, s.first_seen_at) AS uptime, s.updated_at
  FROM twitch_sync.streams s
  LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id
 WHERE s.is_live
 ORDER BY s.viewer_count DESC, s.broadcaster_id;
COMMENT ON VIEW twitch_sync.live_now IS 'Live streams now, most watched first, with uptime.';

-- viewer_trend(): one channel's viewers over [from_time, to_time) in buckets
-- (aligned to 2000-01-01 UTC): min, mean of the samples, and max per bucket.
CREATE FUNCTION twitch_sync.viewer_trend(broadcaster_id text, from_time timestamptz,
                                         to_time timestamptz, bucket interval DEFAULT '1 hour')
RETURNS TABLE (bucket_start timestamptz, min_viewers integer, avg_viewers double precision,
               max_viewers integer, samples integer)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM twitch_sync.check_broadcaster_id(viewer_trend.broadcaster_id);
    IF bucket IS NULL OR bucket <= interval '0' OR bucket > interval '366 days'
       OR extract(month FROM bucket) <> 0 OR extract(year FROM bucket) <> 0 THEN
        RAISE EXCEPTION 'invalid bucket: %', coalesce(bucket::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a positive interval of days, hours, minutes or seconds, such as ''1 hour''.';
    END IF;
    IF from_time IS NULL OR to_time IS NULL OR to_time <= from_time
       OR NOT pg_catalog.isfinite(from_time) OR NOT pg_catalog.isfinite(to_time) THEN
        RAISE EXCEPTION 'invalid time range: % to %', from_time, to_time
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass finite times, from_time < to_time.';
    END IF;
    -- (in epoch seconds: to_time - from_time overflows, to a negative
    -- interval, across the whole range of timestamptz)
    IF (extract(epoch FROM to_time) - extract(epoch FROM from_time)) / extract(epoch FROM bucket) > 100000 THEN
        RAISE EXCEPTION 'too many buckets: % in % to %', bucket, from_time, to_time
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a larger bucket (at most 100,000 buckets).';
    END IF;
    RETURN QUERY
    SELECT pg_catalog.date_bin(bucket, v.sampled_at, timestamptz '2000-01-01 00:00:00+00') AS b,
           min(v.viewer_count), avg(v.viewer_count)::float8, max(v.viewer_count), count(*)::int
      FROM twitch_sync.viewer_samples v
     WHERE v.broadcaster_id = viewer_trend.broadcaster_id
       AND v.sampled_at >= from_time AND v.sampled_at < to_time
     GROUP BY b ORDER BY b;
END
$$;

-- top_channels(): the channels with the most hours watched, the highest peak
-- or the most airtime over UTC days first_day to last_day (channel_days).
CREATE FUNCTION twitch_sync.top_channels(first_day date, last_day date,
                                         by text DEFAULT 'hours_watched', n integer DEFAULT 10)
RETURNS TABLE (rank integer, broadcaster_id text, login text, hours_watched double precision,
               peak_viewers integer, airtime interval)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF by IS NULL OR by NOT IN ('hours_watched', 'peak_viewers', 'airtime') THEN
        RAISE EXCEPTION 'invalid ranking: %', coalesce(pg_catalog.quote_literal(pg_catalog.left(by, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Rank by ''hours_watched'', ''peak_viewers'' or ''airtime''.';
    END IF;
    IF n IS NULL OR n < 1 OR n > 10000 THEN
        RAISE EXCEPTION 'invalid limit: %', coalesce(n::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass a limit from 1 to 10,000.';
    END IF;
    IF first_day IS NULL OR last_day IS NULL OR NOT pg_catalog.isfinite(first_day)
       OR NOT pg_catalog.isfinite(last_day) OR last_day < first_day THEN
        RAISE EXCEPTION 'invalid day range: % to %', first_day, last_day
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pass finite days, first_day <= last_day.';
    END IF;
    RETURN QUERY
    WITH t AS (
        SELECT d.broadcaster_id, sum(d.hours_watched)::float8 AS hw, max(d.peak_viewers) AS pk,
               sum(d.airtime) AS air
          FROM twitch_sync.channel_days d
         WHERE d.day BETWEEN first_day AND last_day
         GROUP BY d.broadcaster_id
    ), ranked AS (
        SELECT t.*, (pg_catalog.row_number() OVER (ORDER BY
                   CASE by WHEN 'hours_watched' THEN t.hw WHEN 'peak_viewers' THEN t.pk::float8
                           ELSE extract(epoch FROM t.air)::float8 END DESC NULLS LAST,
                   t.broadcaster_id))::int AS r
          FROM t
    )
    SELECT r.r, r.broadcaster_id, c.login, r.hw, r.pk, r.air
      FROM ranked r LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = r.broadcaster_id
     WHERE r.r <= n
     ORDER BY r.r;
END
$$;
