-- twitch_sync operations: scheduling with pg_cron, alerts, cumulative counters,
-- retention. (status() and metrics() are in finalize.sql: they call a Rust function.)

-- Totals since the extension was created, for metrics(): never pruned, so
-- they can be Prometheus counters. The one row appears with the first recorded
-- run (so a dump and restore carries it without colliding with a fresh row).
CREATE TABLE twitch_sync.counters (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    runs_ok         bigint NOT NULL DEFAULT 0,
    runs_partial    bigint NOT NULL DEFAULT 0,
    runs_failed     bigint NOT NULL DEFAULT 0,
    runs_skipped    bigint NOT NULL DEFAULT 0,
    helix_requests  bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,
    rate_limited    bigint NOT NULL DEFAULT 0,
    streams_started bigint NOT NULL DEFAULT 0,
    streams_ended   bigint NOT NULL DEFAULT 0
);
REVOKE ALL ON twitch_sync.counters FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.counters', '');

-- What an operator should check, from a run's error text.
CREATE FUNCTION twitch_sync.alert_hint(error text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    -- The network, the deadline, the bucket and Twitch's own failures first:
    -- they are the cause whatever endpoint met them (a token endpoint that
    -- is down is no reason to replace the credentials).
    SELECT CASE
        WHEN error IS NULL THEN NULL
        WHEN error ~ '^rolled back: '
            THEN 'The run did not finish and nothing it wrote was kept: it was cancelled, hit '
              || 'statement_timeout (keep it above twitch_sync.run_deadline_ms), its session ended, '
              || 'or it raised the error shown; a later run recorded it.'
        WHEN error ~* 'deadline'
            THEN 'The run hit twitch_sync.run_deadline_ms: raise it (below the schedule interval) '
              || 'or check Twitch''s latency.'
        WHEN error ~* '(could not reach|did not answer|timed out)'
            THEN 'Network: check twitch_sync.helix_url / auth_url and that the database server '
              || 'can reach Twitch over HTTPS (DNS, firewall, proxy).'
        WHEN error ~ '429'
            THEN 'Rate limited: another program may share this client id, or runs are too frequent '
              || 'for the number of channels; schedule less often or use another client id.'
        WHEN error ~ 'HTTP 5[0-9][0-9]'
            THEN 'Twitch answered with server errors; this usually passes and the next run catches up.'
        WHEN error ~* 'not the JSON'
            THEN 'An answer could not be read: check that twitch_sync.helix_url / auth_url lead to '
              || 'Twitch (a proxy or an outage can send such answers); the next run tries again.'
        WHEN error ~* '(401|403|invalid client|credentials|access token)'
            THEN 'Twitch refused the app''s credentials or token: check the Client ID and Secret at '
              || 'dev.twitch.tv/console/apps and run twitch_sync.set_credentials() again.'
        ELSE 'See twitch_sync.runs.error and the server log.'
    END
$$;

-- The run lock: one run() per database at a time, a row lock on
-- twitch_sync.locks' 'run' row (see there), taken only here.
-- Transaction-level: it ends with the run's transaction, however the backend
-- ends, so it cannot be orphaned.
CREATE FUNCTION twitch_sync.try_run_lock() RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.count(*) = 1
      FROM (SELECT 1 FROM twitch_sync.locks l WHERE l.name = 'run' FOR UPDATE SKIP LOCKED) locked
$$;

-- The backend holding the run lock in this database, or NULL: the row's
-- locker (its xmax) while that transaction is in progress (it holds the lock
-- on its own transaction id, which pg_locks shows to every role).
CREATE FUNCTION twitch_sync.run_lock_holder() RETURNS integer
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.pid FROM twitch_sync.locks l, pg_catalog.pg_locks h
     WHERE l.name = 'run' AND h.locktype = 'transactionid' AND h.granted
       AND h.mode = 'ExclusiveLock' AND h.transactionid OPERATOR(pg_catalog.=) l.xmax
     LIMIT 1
$$;

-- What run() polls, as text lists (one datum each instead of a row or an
-- array element per channel: converting 100,000 of those cost more than the
-- scans). Ids are digits and logins [a-z0-9_] (twitch_sync.is_broadcaster_id,
-- is_login), so neither holds a space or a comma.
--
-- poll_channels(): the enabled channels' broadcaster ids, comma-separated, in
-- one sequential scan (every channel is read: no index helps).
CREATE FUNCTION twitch_sync.poll_channels() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET enable_indexscan = off SET enable_indexonlyscan = off SET enable_bitmapscan = off AS $$
    SELECT pg_catalog.string_agg(c.broadcaster_id, ',') FROM twitch_sync.channels c WHERE c.enabled
$$;

-- live_channels(): the enabled channels with a live stream, as 'id login'
-- (or 'id' when no login is stored), comma-separated. run() reads it while its
-- first requests are in flight. The live rows are found through the partial
-- index streams_one_live_per_broadcaster as a bitmap (the heap pages holding
-- live rows, each read once), so ended broadcasts, which accumulate, cost
-- nothing; an index scan would visit the heap once per live row.
CREATE FUNCTION twitch_sync.live_channels() RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET enable_indexscan = off SET enable_indexonlyscan = off AS $$
    SELECT pg_catalog.string_agg(s.broadcaster_id || coalesce(' ' || c.login, ''), ',')
      FROM twitch_sync.streams s
      JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id AND c.enabled
     WHERE s.is_live
$$;

-- record_run(): the one way a run is recorded. Inserts its row into
-- twitch_sync.runs and the channels it could not check into run_unchecked,
-- adds it to the counters, and on failure writes an alert to
-- twitch_sync.alerts with NOTIFY twitch_sync_alerts carrying its id (sent when
-- the run's transaction commits). A function, not a trigger on runs:
-- restoring a dump inserts historical runs, which must neither count nor alert again.
-- ended_at: NULL for the calling run (it ends now); a rolled-back run's end
-- when a later run records it (src/rolled_back.rs).
CREATE FUNCTION twitch_sync.record_run(
    started_at timestamptz, status text, channels_checked integer, live integer,
    updated integer, started integer, ended integer, errors integer,
    helix_requests integer, retries integer, rate_limited integer,
    rate_limit_remaining integer, error text, unknown integer, bad_entries integer,
    failed_ids text[], unknown_ids text[], ended_at timestamptz DEFAULT NULL,
    OUT run_id bigint, OUT finished_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r twitch_sync.runs;
    consecutive bigint;
    alert_payload jsonb;
    id bigint;
BEGIN
    INSERT INTO twitch_sync.runs AS x (started_at, finished_at, status, channels_checked, live,
            updated, started, ended, errors, helix_requests, retries, rate_limited,
            rate_limit_remaining, error, unknown, bad_entries)
    VALUES (record_run.started_at, coalesce(ended_at, pg_catalog.clock_timestamp()), record_run.status,
            record_run.channels_checked, record_run.live, record_run.updated, record_run.started,
            record_run.ended, record_run.errors, record_run.helix_requests, record_run.retries,
            record_run.rate_limited, record_run.rate_limit_remaining, record_run.error,
            record_run.unknown, record_run.bad_entries)
    RETURNING x.* INTO r;
    INSERT INTO twitch_sync.run_unchecked (broadcaster_id, run_id, reason)
    SELECT DISTINCT ON (u.id) u.id, r.run_id, u.reason
      FROM (SELECT f, 'failed' FROM unnest(failed_ids) f
            UNION ALL SELECT k, 'unknown' FROM unnest(unknown_ids) k) AS u(id, reason)
     WHERE u.id IS NOT NULL
     ORDER BY u.id, u.reason;
    -- Skipped runs are not added here: a skipped call's transaction may stay
    -- open, and the counters row would then keep the run holding the lock from
    -- recording itself (or deadlock with it). They are counted from their rows
    -- in runs (metrics()), and prune() adds those it deletes.
    IF r.status <> 'skipped' THEN
        INSERT INTO twitch_sync.counters AS c (singleton, runs_ok, runs_partial, runs_failed,
                helix_requests, retries, rate_limited, streams_started, streams_ended)
        VALUES (true, (r.status = 'ok')::int, (r.status = 'partial')::int, (r.status = 'failed')::int,
                r.helix_requests, r.retries, r.rate_limited, r.started, r.ended)
        ON CONFLICT (singleton) DO UPDATE SET
            runs_ok = c.runs_ok + EXCLUDED.runs_ok,
            runs_partial = c.runs_partial + EXCLUDED.runs_partial,
            runs_failed = c.runs_failed + EXCLUDED.runs_failed,
            helix_requests = c.helix_requests + EXCLUDED.helix_requests,
            retries = c.retries + EXCLUDED.retries,
            rate_limited = c.rate_limited + EXCLUDED.rate_limited,
            streams_started = c.streams_started + EXCLUDED.streams_started,
            streams_ended = c.streams_ended + EXCLUDED.streams_ended;
    END IF;
    IF r.status IN ('failed', 'partial') THEN
        -- Failed or partial runs since the latest ok one, by time (never by id:
        -- ids are not ordered across a dump and restore).
        SELECT count(*) INTO consecutive FROM twitch_sync.runs x
         WHERE x.status IN ('failed', 'partial')
           AND x.started_at > coalesce((SELECT max(o.started_at) FROM twitch_sync.runs o
                                         WHERE o.status = 'ok'), '-infinity');
        alert_payload := jsonb_build_object(
            'alert', CASE WHEN consecutive >= 3 THEN 'repeated_failures' ELSE 'run_' || r.status END,
            'run_id', r.run_id,
            'status', r.status,
            'errors', r.errors,
            'consecutive_failures', consecutive,
            'error', pg_catalog.left(r.error, 1000),
            'check', twitch_sync.alert_hint(r.error),
            'at', r.finished_at);
        INSERT INTO twitch_sync.alerts AS a (run_id, alert, payload, created_at)
        VALUES (r.run_id, alert_payload ->> 'alert', alert_payload, r.finished_at)
        RETURNING a.alert_id INTO id;
        IF twitch_sync.setting('twitch_sync.notify_alerts')::boolean THEN
            PERFORM pg_catalog.pg_notify('twitch_sync_alerts', id::text);
        END IF;
    END IF;
    run_id := r.run_id;
    finished_at := r.finished_at;
END
$$;

-- Adaptive polling's part of a run's record: what it planned (runs.polling)
-- and the channels it checked (channels.checked_at, one statement).
CREATE FUNCTION twitch_sync.record_polling(run_id bigint, polling jsonb, checked text[],
                                           checked_at timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE twitch_sync.runs r SET polling = record_polling.polling WHERE r.run_id = record_polling.run_id;
    UPDATE twitch_sync.channels c SET checked_at = record_polling.checked_at
      FROM unnest(checked) AS i(id)
     WHERE c.broadcaster_id = i.id;
END
$$;

-- channel_status: each tracked channel with what is known of it. Its last
-- successful check is derived (runs write nothing per checked channel): the
-- latest ok or partial run with fixed polling (which checks every enabled
-- channel; runs.polling is NULL) since it was added that did not list it in
-- run_unchecked, or, if later, channels.checked_at (adaptive polling's runs
-- record the channels they checked there, and only those). NULL for disabled
-- channels and channels no run has checked yet.
CREATE VIEW twitch_sync.channel_status AS
SELECT c.broadcaster_id, c.login, c.enabled, c.added_at,
       CASE WHEN c.enabled THEN greatest(c.checked_at, (
           SELECT r.started_at FROM twitch_sync.runs r
            WHERE r.status IN ('ok', 'partial') AND r.polling IS NULL AND r.started_at >= c.added_at
              AND r.started_at > coalesce(c.checked_at, '-infinity')
              AND NOT EXISTS (SELECT 1 FROM twitch_sync.run_unchecked u
                               WHERE u.broadcaster_id = c.broadcaster_id AND u.run_id = r.run_id)
            ORDER BY r.started_at DESC LIMIT 1)) END AS last_checked_at,
       (SELECT max(s.last_seen_at) FROM twitch_sync.streams s
         WHERE s.broadcaster_id = c.broadcaster_id) AS last_live_at,
       l.stream_id AS live_stream_id, l.viewer_count, l.title, l.game_name, l.started_at,
       coalesce(l.missed_polls, 0) AS missed_polls
  FROM twitch_sync.channels c
  LEFT JOIN twitch_sync.streams l ON l.broadcaster_id = c.broadcaster_id AND l.is_live;
COMMENT ON VIEW twitch_sync.channel_status IS 'Tracked channels: last successful check, last seen live, and the live stream if any.';

-- prune(): deletes runs (with their run_unchecked rows), events and alerts
-- older than twitch_sync.runs_retention_days, at most max_rows of each per call
-- so no call holds locks long, and drops the day partitions of viewer samples
-- older than twitch_sync.samples_retention_days (whole UTC days; 0 keeps them).
-- run() calls it after every pass; call it yourself to catch up faster.
CREATE FUNCTION twitch_sync.prune(max_rows integer DEFAULT 50000)
RETURNS TABLE (runs_deleted bigint, samples_deleted bigint, events_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    runs_days integer := twitch_sync.setting('twitch_sync.runs_retention_days')::integer;
    samples_days integer := twitch_sync.setting('twitch_sync.samples_retention_days')::integer;
    runs_cutoff timestamptz := pg_catalog.now() - pg_catalog.make_interval(days => runs_days);
    n bigint;
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be a positive number, not %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    runs_deleted := 0;
    samples_deleted := 0;
    events_deleted := 0;
    IF runs_days > 0 THEN
        WITH gone AS (
            DELETE FROM twitch_sync.runs r WHERE r.ctid = ANY (ARRAY(
                SELECT x.ctid FROM twitch_sync.runs x WHERE x.started_at < runs_cutoff LIMIT max_rows))
            RETURNING r.run_id, r.status
        ), unchecked AS (
            DELETE FROM twitch_sync.run_unchecked u USING gone g WHERE u.run_id = g.run_id
        )
        SELECT count(*), count(*) FILTER (WHERE g.status = 'skipped') INTO runs_deleted, n FROM gone g;
        -- skipped runs are counted from their rows (record_run): keep the pruned ones
        IF n > 0 THEN
            INSERT INTO twitch_sync.counters AS c (singleton, runs_skipped) VALUES (true, n)
            ON CONFLICT (singleton) DO UPDATE SET runs_skipped = c.runs_skipped + EXCLUDED.runs_skipped;
        END IF;
        DELETE FROM twitch_sync.events e WHERE e.ctid = ANY (ARRAY(
            SELECT x.ctid FROM twitch_sync.events x WHERE x.created_at < runs_cutoff LIMIT max_rows));
        GET DIAGNOSTICS events_deleted = ROW_COUNT;
        DELETE FROM twitch_sync.alerts a WHERE a.ctid = ANY (ARRAY(
            SELECT x.ctid FROM twitch_sync.alerts x WHERE x.created_at < runs_cutoff LIMIT max_rows));
        GET DIAGNOSTICS n = ROW_COUNT;
        events_deleted := events_deleted + n;
    END IF;
    -- samples go by whole UTC days: dropping a day's partition costs the
    -- same at any table size
    samples_deleted := twitch_sync.drop_sample_partitions(samples_days);
    RETURN NEXT;
END
$$;

-- The name of twitch_sync's pg_cron job: written once, here.
CREATE FUNCTION twitch_sync.cron_job_name() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'twitch-viewer-count-sync'::text
$$;

-- Whether a pg_cron job's command is the statement `call`: compared without
-- case, blanks or semicolons, so 'select twitch_sync.run();' counts too.
CREATE FUNCTION twitch_sync.cron_command_is(command text, call text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.regexp_replace(pg_catalog.lower(command), '[[:space:];]', '', 'g')
         = pg_catalog.regexp_replace(pg_catalog.lower(call), '[[:space:];]', '', 'g')
$$;

-- The name of its maintenance job (twitch_sync.maintain()).
CREATE FUNCTION twitch_sync.cron_maintain_job_name() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT twitch_sync.cron_job_name() || '-maintain'
$$;

-- The pg_cron job of this database, if pg_cron is here; NULLs otherwise.
-- pg_cron job names are unique per user only, so a job is ours only if it
-- runs SELECT twitch_sync.run() (case, blanks and a trailing ; aside): another
-- role's job under the same name cannot stand in for it in status(),
-- dashboard() or unschedule(). Of several, the caller's own comes first.
CREATE FUNCTION twitch_sync.cron_job()
RETURNS TABLE (jobid bigint, schedule text, active boolean, last_status text,
               last_start timestamptz, last_message text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN NEXT;
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT j.jobid, j.schedule, j.active, d.status, d.start_time, d.return_message
          FROM (SELECT 1) one
          LEFT JOIN cron.job j ON j.jobname = twitch_sync.cron_job_name() AND j.database = pg_catalog.current_database()
                                  AND twitch_sync.cron_command_is(j.command, 'SELECT twitch_sync.run()')
          LEFT JOIN LATERAL (SELECT r.status, r.start_time, r.return_message FROM cron.job_run_details r
                              WHERE r.jobid = j.jobid ORDER BY r.runid DESC LIMIT 1) d ON true
         ORDER BY j.username = pg_catalog.session_user() DESC, j.jobid LIMIT 1 $q$;
END
$$;

-- The schedule of the maintenance job: hourly, at minute 17.
CREATE FUNCTION twitch_sync.cron_maintain_schedule() RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '17 * * * *'
$$;

-- The schedule of schedule('auto'): every 10 minutes, or every minute with
-- twitch_sync.adaptive_polling on (it decides per run what is due).
CREATE FUNCTION twitch_sync.cron_auto_schedule() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN twitch_sync.setting('twitch_sync.adaptive_polling')::boolean
                THEN '* * * * *' ELSE '*/10 * * * *' END
$$;

-- Raises, with the fix, unless pg_cron can schedule jobs from this database.
-- When pg_cron runs in another database, the fix names this database's jobs
-- after it: pg_cron's job names are one namespace per user, across databases,
-- so scheduling a second database under the plain name would take over the
-- first database's job.
CREATE FUNCTION twitch_sync.require_pg_cron() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cron_db text := pg_catalog.current_setting('cron.database_name', true);
    here text := pg_catalog.current_database();
    job text := twitch_sync.cron_job_name() || '-' || here;
BEGIN
    IF cron_db IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not loaded in this server'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Add pg_cron to shared_preload_libraries, set cron.database_name = %L, '
                      || 'restart PostgreSQL, then run CREATE EXTENSION pg_cron; in this database.', here);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF cron_db = here THEN
            RAISE EXCEPTION 'pg_cron is not installed in this database'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Run CREATE EXTENSION pg_cron; as a superuser, then call this again.';
        END IF;
        RAISE EXCEPTION 'pg_cron runs in database %, not in %', cron_db, here
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Either set cron.database_name = %L and restart PostgreSQL, or connect '
                      || 'to %I and schedule this database''s jobs under their own names: '
                      || 'SELECT cron.schedule_in_database(%L, %L, ''SELECT twitch_sync.run()'', %L); '
                      || 'SELECT cron.schedule_in_database(%L, %L, ''SELECT twitch_sync.maintain()'', %L); '
                      || '(to remove them: SELECT cron.unschedule(%L); SELECT cron.unschedule(%L);)',
                      here, cron_db, job, twitch_sync.cron_auto_schedule(), here,
                      job || '-maintain', twitch_sync.cron_maintain_schedule(), here, job, job || '-maintain');
    END IF;
END
$$;

-- schedule(): creates or updates the pg_cron job (twitch_sync.cron_job_name())
-- that runs SELECT twitch_sync.run() in this database; returns its job id.
-- It also schedules SELECT twitch_sync.maintain() hourly, at minute 17
-- (twitch_sync.cron_maintain_job_name()). The default, 'auto', is every 10
-- minutes, or every minute with twitch_sync.adaptive_polling on.
-- pg_cron itself validates the schedule, so whatever the installed pg_cron
-- accepts works (five cron fields, @hourly-style macros, and from pg_cron 1.5
-- '[1-59] seconds'); its refusal reaches the caller as SQLSTATE 22023 with a
-- hint (pg_cron 1.4 gives none).
-- SECURITY INVOKER: the caller needs pg_cron's privileges, and the job runs as
-- the caller (who then needs EXECUTE on twitch_sync.run()).
CREATE FUNCTION twitch_sync.schedule(schedule text DEFAULT 'auto') RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id bigint;
    msg text;
    hint text;
BEGIN
    IF schedule IS NULL THEN
        RAISE EXCEPTION 'invalid schedule: NULL' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass a cron schedule such as ''*/10 * * * *'', or call twitch_sync.schedule() for that default.';
    END IF;
    PERFORM twitch_sync.require_pg_cron();
    IF schedule = 'auto' THEN
        schedule := twitch_sync.cron_auto_schedule();
    END IF;
    BEGIN
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
           INTO id
          USING twitch_sync.cron_job_name(), schedule, 'SELECT twitch_sync.run()', pg_catalog.current_database();
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
          USING twitch_sync.cron_maintain_job_name(), twitch_sync.cron_maintain_schedule(), 'SELECT twitch_sync.maintain()',
                pg_catalog.current_database();
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        IF msg NOT LIKE 'invalid schedule%' THEN
            RAISE;
        END IF;
        -- (pg_cron's message quotes the whole schedule: cut, as other arguments are)
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'invalid schedule: ' || pg_catalog.quote_literal(pg_catalog.left(schedule, 60)),
            HINT = coalesce(nullif(hint, ''),
                'Use five cron fields, evaluated in UTC (minute hour day-of-month month day-of-week), such as '
                || '''*/10 * * * *'' for every ten minutes, or a macro such as ''@hourly''. '
                || 'pg_cron 1.5 and later also take ''[1-59] seconds''.');
    END;
    RETURN id;
END
$$;

-- unschedule(): removes the job (and the maintenance job); true if there was one.
CREATE FUNCTION twitch_sync.unschedule() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id bigint;
    maintain_id bigint;
BEGIN
    PERFORM twitch_sync.require_pg_cron();
    EXECUTE 'SELECT j.jobid FROM cron.job j WHERE j.jobname = $1 AND j.database = pg_catalog.current_database()
                AND twitch_sync.cron_command_is(j.command, $2)
              ORDER BY j.username = pg_catalog.session_user() DESC, j.jobid LIMIT 1'
       INTO maintain_id USING twitch_sync.cron_maintain_job_name(), 'SELECT twitch_sync.maintain()';
    IF maintain_id IS NOT NULL THEN
        EXECUTE 'SELECT cron.unschedule($1)' USING maintain_id;
    END IF;
    SELECT j.jobid INTO id FROM twitch_sync.cron_job() j;
    IF id IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' USING id;
    RETURN true;
END
$$;

-- Reading the event outbox without missing an event. Event ids are drawn
-- when an event is written, and several transactions write events at once
-- (run(), the EventSub worker, webhooks, untrack()): a later id can commit
-- before an earlier one, and a consumer that moved past it would never see
-- it. event_horizon() says how far ids are settled: `drawn` is the last id
-- handed out, and `writing` whether another transaction that may hold one of
-- them is still open (a transaction that inserts into twitch_sync.events
-- holds its RowExclusiveLock to its end, and pg_locks shows it to every
-- role). SECURITY DEFINER for the sequence; it shows no event.
CREATE FUNCTION twitch_sync.event_horizon(OUT drawn bigint, OUT writing boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pg_catalog.pg_sequence_last_value(
                        pg_catalog.pg_get_serial_sequence('twitch_sync.events', 'event_id')::regclass), 0),
           EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                    WHERE l.locktype = 'relation' AND l.relation = 'twitch_sync.events'::regclass
                      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                         WHERE d.datname = pg_catalog.current_database())
                      AND l.mode = 'RowExclusiveLock' AND l.granted
                      AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid())
$$;

-- The events after `last_seen` that can be handled now, in id order: with
-- no other writer open, every event up to the horizon; with one open, those
-- up to the first missing id (it may be that writer's, committing later).
-- The consumer handles them and keeps the last id as its new last_seen;
-- nothing is ever skipped (ids of rolled-back or pruned events are passed
-- once no writer is open). Reads as the caller (SELECT on events), in a
-- snapshot taken after the horizon: READ COMMITTED only.
CREATE FUNCTION twitch_sync.events_after(last_seen bigint)
RETURNS SETOF twitch_sync.events
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h record;
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'twitch_sync.events_after() needs a READ COMMITTED transaction'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Call it on its own (autocommit) or in a READ COMMITTED transaction: it reads events '
                      || 'committed after it looked at the writers in flight.';
    END IF;
    IF last_seen IS NULL THEN
        RAISE EXCEPTION 'last_seen is NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Pass 0 to read from the first event kept.';
    END IF;
    h := twitch_sync.event_horizon();
    RETURN QUERY
        SELECT (e).* FROM (
            SELECT e, e.event_id - events_after.last_seen
                          = pg_catalog.row_number() OVER (ORDER BY e.event_id) AS unbroken
              FROM twitch_sync.events e
             WHERE e.event_id > events_after.last_seen AND e.event_id <= h.drawn) x
         WHERE NOT h.writing OR x.unbroken
         ORDER BY (x.e).event_id;
END
$$;
