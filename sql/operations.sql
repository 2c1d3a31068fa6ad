-- twitch_sync operations: scheduling with pg_cron, alerts, cumulative counters,
-- retention. (status() and metrics() are in finalize.sql: they call a Rust function.)

-- Totals since the extension was created, for metrics(): never pruned, so
-- they can be Prometheus counters.
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
INSERT INTO twitch_sync.counters DEFAULT VALUES;
REVOKE ALL ON twitch_sync.counters FROM PUBLIC;

-- What an operator should check, from a run's error text.
CREATE FUNCTION twitch_sync.alert_hint(error text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN error IS NULL THEN NULL
        WHEN error ~* '(401|403|invalid client|credentials|access token)'
            THEN 'Twitch refused the app''s credentials or token: check the Client ID and Secret at '
              || 'dev.twitch.tv/console/apps and run twitch_sync.set_credentials() again.'
        WHEN error ~ '429'
            THEN 'Rate limited: another program may share this client id, or runs are too frequent '
              || 'for the number of channels; schedule less often or use another client id.'
        WHEN error ~* 'deadline'
            THEN 'The run hit twitch_sync.run_deadline_ms: raise it (below the schedule interval) '
              || 'or check Twitch''s latency.'
        WHEN error ~* '(could not reach|did not answer|timed out)'
            THEN 'Network: check twitch_sync.helix_url / auth_url and that the database server '
              || 'can reach Twitch over HTTPS (DNS, firewall, proxy).'
        WHEN error ~ 'HTTP 5[0-9][0-9]'
            THEN 'Twitch answered with server errors; this usually passes and the next run catches up.'
        ELSE 'See twitch_sync.runs.error and the server log.'
    END
$$;

-- After each recorded run: add it to the counters, and alert on failure with
-- NOTIFY twitch_sync_alerts (delivered when the run's transaction commits).
CREATE FUNCTION twitch_sync.runs_after_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    consecutive bigint;
BEGIN
    UPDATE twitch_sync.counters SET
        runs_ok = runs_ok + (NEW.status = 'ok')::int,
        runs_partial = runs_partial + (NEW.status = 'partial')::int,
        runs_failed = runs_failed + (NEW.status = 'failed')::int,
        runs_skipped = runs_skipped + (NEW.status = 'skipped')::int,
        helix_requests = helix_requests + NEW.helix_requests,
        retries = retries + NEW.retries,
        rate_limited = rate_limited + NEW.rate_limited,
        streams_started = streams_started + NEW.started,
        streams_ended = streams_ended + NEW.ended;
    IF NEW.status IN ('failed', 'partial')
       AND coalesce(nullif(pg_catalog.current_setting('twitch_sync.notify_alerts', true), ''), 'on')::boolean THEN
        SELECT count(*) INTO consecutive FROM twitch_sync.runs r
         WHERE r.status IN ('failed', 'partial')
           AND r.run_id > coalesce((SELECT max(o.run_id) FROM twitch_sync.runs o WHERE o.status = 'ok'), 0);
        PERFORM pg_catalog.pg_notify('twitch_sync_alerts', jsonb_build_object(
            'alert', CASE WHEN consecutive >= 3 THEN 'repeated_failures' ELSE 'run_' || NEW.status END,
            'run_id', NEW.run_id,
            'status', NEW.status,
            'errors', NEW.errors,
            'consecutive_failures', consecutive,
            'error', pg_catalog.left(NEW.error, 1000),
            'check', twitch_sync.alert_hint(NEW.error),
            'at', NEW.finished_at)::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_after_insert AFTER INSERT ON twitch_sync.runs
    FOR EACH ROW EXECUTE FUNCTION twitch_sync.runs_after_insert();

-- prune(): deletes runs and viewer samples older than their retention
-- (twitch_sync.runs_retention_days, twitch_sync.samples_retention_days; 0
-- keeps them), at most max_rows of each per call so no call holds locks long.
-- run() calls it after every pass; call it yourself to catch up faster.
CREATE FUNCTION twitch_sync.prune(max_rows integer DEFAULT 50000)
RETURNS TABLE (runs_deleted bigint, samples_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    runs_days integer := coalesce(nullif(pg_catalog.current_setting('twitch_sync.runs_retention_days', true), '')::integer, 30);
    samples_days integer := coalesce(nullif(pg_catalog.current_setting('twitch_sync.samples_retention_days', true), '')::integer, 90);
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION 'max_rows must be a positive number, not %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    runs_deleted := 0;
    samples_deleted := 0;
    IF runs_days > 0 THEN
        DELETE FROM twitch_sync.runs r WHERE r.ctid = ANY (ARRAY(
            SELECT x.ctid FROM twitch_sync.runs x
             WHERE x.started_at < pg_catalog.now() - pg_catalog.make_interval(days => runs_days)
             LIMIT max_rows));
        GET DIAGNOSTICS runs_deleted = ROW_COUNT;
    END IF;
    IF samples_days > 0 THEN
        DELETE FROM twitch_sync.viewer_samples v WHERE v.ctid = ANY (ARRAY(
            SELECT x.ctid FROM twitch_sync.viewer_samples x
             WHERE x.sampled_at < pg_catalog.now() - pg_catalog.make_interval(days => samples_days)
             LIMIT max_rows));
        GET DIAGNOSTICS samples_deleted = ROW_COUNT;
    END IF;
    RETURN NEXT;
END
$$;

-- The pg_cron job of this database, if pg_cron is here; NULLs otherwise.
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
          LEFT JOIN cron.job j ON j.jobname = 'twitch-viewer-count-sync' AND j.database = pg_catalog.current_database()
          LEFT JOIN LATERAL (SELECT r.status, r.start_time, r.return_message FROM cron.job_run_details r
                              WHERE r.jobid = j.jobid ORDER BY r.runid DESC LIMIT 1) d ON true
         ORDER BY j.jobid LIMIT 1 $q$;
END
$$;

-- Raises, with the fix, unless pg_cron can schedule jobs from this database.
CREATE FUNCTION twitch_sync.require_pg_cron() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cron_db text := pg_catalog.current_setting('cron.database_name', true);
BEGIN
    IF cron_db IS NULL THEN
        RAISE EXCEPTION 'pg_cron is not loaded in this server'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Add pg_cron to shared_preload_libraries, set cron.database_name = %L, '
                      || 'restart PostgreSQL, then run CREATE EXTENSION pg_cron; in this database.',
                      pg_catalog.current_database());
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF cron_db = pg_catalog.current_database() THEN
            RAISE EXCEPTION 'pg_cron is not installed in this database'
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Run CREATE EXTENSION pg_cron; as a superuser, then call this again.';
        END IF;
        RAISE EXCEPTION 'pg_cron runs in database %, not in %', cron_db, pg_catalog.current_database()
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Either set cron.database_name = %L and restart PostgreSQL, or connect '
                      || 'to %I and run: SELECT cron.schedule_in_database(''twitch-viewer-count-sync'', '
                      || '''*/10 * * * *'', ''SELECT twitch_sync.run()'', %L);',
                      pg_catalog.current_database(), cron_db, pg_catalog.current_database());
    END IF;
END
$$;

-- schedule(): creates or updates the pg_cron job 'twitch-viewer-count-sync'
-- that runs SELECT twitch_sync.run() in this database; returns its job id.
-- pg_cron itself validates the schedule, so whatever the installed pg_cron
-- accepts works (five cron fields, @hourly-style macros, and from pg_cron 1.5
-- '[1-59] seconds'); its refusal reaches the caller as SQLSTATE 22023 with a
-- hint (pg_cron 1.4 gives none).
-- SECURITY INVOKER: the caller needs pg_cron's privileges, and the job runs as
-- the caller (who then needs EXECUTE on twitch_sync.run()).
CREATE FUNCTION twitch_sync.schedule(schedule text DEFAULT '*/10 * * * *') RETURNS bigint
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
    BEGIN
        EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4)'
           INTO id
          USING 'twitch-viewer-count-sync', schedule, 'SELECT twitch_sync.run()', pg_catalog.current_database();
    EXCEPTION WHEN invalid_parameter_value THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
        IF msg NOT LIKE 'invalid schedule%' THEN
            RAISE;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = msg,
            HINT = coalesce(nullif(hint, ''),
                'Use five cron fields, evaluated in UTC (minute hour day-of-month month day-of-week), such as '
                || '''*/10 * * * *'' for every ten minutes, or a macro such as ''@hourly''. '
                || 'pg_cron 1.5 and later also take ''[1-59] seconds''.');
    END;
    RETURN id;
END
$$;

-- unschedule(): removes the job; true if there was one.
CREATE FUNCTION twitch_sync.unschedule() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id bigint;
BEGIN
    PERFORM twitch_sync.require_pg_cron();
    SELECT j.jobid INTO id FROM twitch_sync.cron_job() j;
    IF id IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT cron.unschedule($1)' USING id;
    RETURN true;
END
$$;
