-- twitch_sync 0.1.0 -> 0.2.0 (hand-written; ALTER EXTENSION twitch_sync UPDATE runs it).
-- It carries every schema change of 0.2.0, so that an upgraded database equals
-- a fresh install of 0.2.0 (the upgrade test compares their catalogs).
\echo Use "ALTER EXTENSION twitch_sync UPDATE" to load this file. \quit

-- run(): SECURITY DEFINER and the pinned search_path are now part of its
-- declaration (0.1.0 set them with an ALTER that an upgrade could lose).
CREATE OR REPLACE FUNCTION twitch_sync."run"() RETURNS jsonb
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_wrapper';

-- Runs are recorded by record_run(), not counted and alerted by a trigger:
-- a restore re-inserts historical runs, which must not count or alert again.
DROP TRIGGER runs_after_insert ON twitch_sync.runs;
DROP FUNCTION twitch_sync.runs_after_insert();
-- record_run(): the one way a run is recorded. Inserts its row into
-- twitch_sync.runs, adds it to the counters, and alerts on failure with
-- NOTIFY twitch_sync_alerts (delivered when the run's transaction commits).
-- A function, not a trigger on runs: restoring a dump inserts historical runs,
-- and those must neither count again nor alert again.
CREATE OR REPLACE FUNCTION twitch_sync.record_run(
    started_at timestamptz, status text, channels_checked integer, live integer,
    updated integer, started integer, ended integer, errors integer,
    helix_requests integer, retries integer, rate_limited integer,
    rate_limit_remaining integer, error text,
    OUT run_id bigint, OUT finished_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r twitch_sync.runs;
    consecutive bigint;
BEGIN
    INSERT INTO twitch_sync.runs AS x (started_at, finished_at, status, channels_checked, live,
            updated, started, ended, errors, helix_requests, retries, rate_limited,
            rate_limit_remaining, error)
    VALUES (record_run.started_at, pg_catalog.clock_timestamp(), record_run.status,
            record_run.channels_checked, record_run.live, record_run.updated, record_run.started,
            record_run.ended, record_run.errors, record_run.helix_requests, record_run.retries,
            record_run.rate_limited, record_run.rate_limit_remaining, record_run.error)
    RETURNING x.* INTO r;
    INSERT INTO twitch_sync.counters AS c (singleton, runs_ok, runs_partial, runs_failed, runs_skipped,
            helix_requests, retries, rate_limited, streams_started, streams_ended)
    VALUES (true, (r.status = 'ok')::int, (r.status = 'partial')::int, (r.status = 'failed')::int,
            (r.status = 'skipped')::int, r.helix_requests, r.retries, r.rate_limited, r.started, r.ended)
    ON CONFLICT (singleton) DO UPDATE SET
        runs_ok = c.runs_ok + EXCLUDED.runs_ok,
        runs_partial = c.runs_partial + EXCLUDED.runs_partial,
        runs_failed = c.runs_failed + EXCLUDED.runs_failed,
        runs_skipped = c.runs_skipped + EXCLUDED.runs_skipped,
        helix_requests = c.helix_requests + EXCLUDED.helix_requests,
        retries = c.retries + EXCLUDED.retries,
        rate_limited = c.rate_limited + EXCLUDED.rate_limited,
        streams_started = c.streams_started + EXCLUDED.streams_started,
        streams_ended = c.streams_ended + EXCLUDED.streams_ended;
    IF r.status IN ('failed', 'partial')
       AND coalesce(nullif(pg_catalog.current_setting('twitch_sync.notify_alerts', true), ''), 'on')::boolean THEN
        -- Failed or partial runs since the latest ok one, by time (never by id:
        -- ids are not ordered across a dump and restore).
        SELECT count(*) INTO consecutive FROM twitch_sync.runs x
         WHERE x.status IN ('failed', 'partial')
           AND x.started_at > coalesce((SELECT max(o.started_at) FROM twitch_sync.runs o
                                         WHERE o.status = 'ok'), '-infinity');
        PERFORM pg_catalog.pg_notify('twitch_sync_alerts', jsonb_build_object(
            'alert', CASE WHEN consecutive >= 3 THEN 'repeated_failures' ELSE 'run_' || r.status END,
            'run_id', r.run_id,
            'status', r.status,
            'errors', r.errors,
            'consecutive_failures', consecutive,
            'error', pg_catalog.left(r.error, 1000),
            'check', twitch_sync.alert_hint(r.error),
            'at', r.finished_at)::text);
    END IF;
    run_id := r.run_id;
    finished_at := r.finished_at;
END
$$;

-- "Consecutive failures" and "last run" go by time, not by id.
DROP INDEX twitch_sync.runs_ok;
CREATE INDEX runs_ok ON twitch_sync.runs (started_at) WHERE status = 'ok';

-- pg_dump keeps these too: the run id sequence (restored ids must not collide
-- with new ones), the rate-limit state and the counters.
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.rate_limit', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.counters', '');

-- status(): one row an operator reads at psql. Says whether credentials are
-- set and when the token expires, never the credentials themselves.
CREATE OR REPLACE FUNCTION twitch_sync.status() RETURNS TABLE (
    run_in_progress      boolean,
    last_run_id          bigint,
    last_run_at          timestamptz,
    last_run_status      text,
    last_run_error       text,
    last_run_duration_ms bigint,
    tracked_channels     bigint,
    live_streams         bigint,
    credentials_set      boolean,
    token_expires_at     timestamptz,
    rate_limit_remaining integer,
    rate_limit_reset_at  timestamptz,
    runs_24h             bigint,
    failures_24h         bigint,
    schedule             text,
    schedule_active      boolean,
    last_job_status      text,
    last_job_at          timestamptz,
    last_job_message     text,
    next_run_at          timestamptz
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT
        EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                 WHERE l.locktype = 'advisory' AND l.granted
                   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                      WHERE d.datname = pg_catalog.current_database())
                   AND l.classid = 1953720692 AND l.objid = 1 AND l.objsubid = 2),
        r.run_id, r.started_at, r.status, r.error,
        (extract(epoch FROM r.finished_at - r.started_at) * 1000)::bigint,
        (SELECT count(*) FROM twitch_sync.channels c WHERE c.enabled),
        (SELECT count(*) FROM twitch_sync.streams s WHERE s.is_live),
        EXISTS (SELECT 1 FROM twitch_sync.credentials),
        (SELECT c.token_expires_at FROM twitch_sync.credentials c),
        rl.remaining,
        rl.reset_at,
        (SELECT count(*) FROM twitch_sync.runs x WHERE x.started_at > pg_catalog.now() - interval '24 hours'),
        (SELECT count(*) FROM twitch_sync.runs x WHERE x.started_at > pg_catalog.now() - interval '24 hours'
            AND x.status IN ('failed', 'partial')),
        j.schedule, j.active, j.last_status, j.last_start, j.last_message,
        CASE WHEN j.active THEN twitch_sync.cron_next_run(j.schedule, pg_catalog.now()) END
    FROM twitch_sync.cron_job() j
    -- "last run" is the latest by time, never the highest id (ids are not
    -- ordered across a dump and restore that followed pruning).
    LEFT JOIN LATERAL (SELECT * FROM twitch_sync.runs x WHERE x.status <> 'skipped'
                        ORDER BY x.started_at DESC, x.run_id DESC LIMIT 1) r ON true
    LEFT JOIN twitch_sync.rate_limit rl ON true
$$;

-- metrics(): Prometheus text exposition format (version 0.0.4), for an exporter
-- (for example postgres_exporter's custom queries, or any scraper that can run SQL).
CREATE OR REPLACE FUNCTION twitch_sync.metrics() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- The counters row appears with the first recorded run: zeros until then.
    WITH c AS (SELECT coalesce(k.runs_ok, 0) AS runs_ok, coalesce(k.runs_partial, 0) AS runs_partial,
                      coalesce(k.runs_failed, 0) AS runs_failed, coalesce(k.runs_skipped, 0) AS runs_skipped,
                      coalesce(k.helix_requests, 0) AS helix_requests, coalesce(k.retries, 0) AS retries,
                      coalesce(k.rate_limited, 0) AS rate_limited,
                      coalesce(k.streams_started, 0) AS streams_started,
                      coalesce(k.streams_ended, 0) AS streams_ended
                 FROM (SELECT 1) one LEFT JOIN twitch_sync.counters k ON true),
    last AS (SELECT * FROM twitch_sync.runs x WHERE x.status <> 'skipped'
              ORDER BY x.started_at DESC, x.run_id DESC LIMIT 1),
    m(name, kind, help, labels, value) AS (
        SELECT 'twitch_sync_runs_total', 'counter', 'Runs of twitch_sync.run() by status.', 'status="ok"', c.runs_ok::float8 FROM c
        UNION ALL SELECT 'twitch_sync_runs_total', 'counter', NULL, 'status="partial"', c.runs_partial FROM c
        UNION ALL SELECT 'twitch_sync_runs_total', 'counter', NULL, 'status="failed"', c.runs_failed FROM c
        UNION ALL SELECT 'twitch_sync_runs_total', 'counter', NULL, 'status="skipped"', c.runs_skipped FROM c
        UNION ALL SELECT 'twitch_sync_helix_requests_total', 'counter', 'Get Streams requests sent.', NULL, c.helix_requests FROM c
        UNION ALL SELECT 'twitch_sync_retries_total', 'counter', 'Requests retried.', NULL, c.retries FROM c
        UNION ALL SELECT 'twitch_sync_rate_limited_total', 'counter', 'HTTP 429 answers received.', NULL, c.rate_limited FROM c
        UNION ALL SELECT 'twitch_sync_streams_started_total', 'counter', 'Broadcasts that started (or came back).', NULL, c.streams_started FROM c
        UNION ALL SELECT 'twitch_sync_streams_ended_total', 'counter', 'Broadcasts that ended.', NULL, c.streams_ended FROM c
        UNION ALL SELECT 'twitch_sync_last_run_duration_seconds', 'gauge', 'Duration of the last run that was not skipped.', NULL,
               (SELECT extract(epoch FROM l.finished_at - l.started_at)::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_last_run_age_seconds', 'gauge', 'Seconds since the last run that was not skipped finished.', NULL,
               (SELECT extract(epoch FROM pg_catalog.now() - l.finished_at)::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_last_run_success', 'gauge', '1 if the last run was ok or partial, 0 if it failed.', NULL,
               (SELECT (l.status <> 'failed')::int::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_last_run_errors', 'gauge', 'Channels in failed batches in the last run.', NULL,
               (SELECT l.errors::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_live_streams', 'gauge', 'Streams live now.', NULL,
               (SELECT count(*)::float8 FROM twitch_sync.streams s WHERE s.is_live)
        UNION ALL SELECT 'twitch_sync_tracked_channels', 'gauge', 'Enabled tracked channels.', NULL,
               (SELECT count(*)::float8 FROM twitch_sync.channels ch WHERE ch.enabled)
        UNION ALL SELECT 'twitch_sync_token_expiry_seconds', 'gauge', 'Seconds until the cached app access token expires.', NULL,
               (SELECT extract(epoch FROM cr.token_expires_at - pg_catalog.now())::float8 FROM twitch_sync.credentials cr)
        UNION ALL SELECT 'twitch_sync_rate_limit_remaining', 'gauge', 'Ratelimit-Remaining of the last Helix answer.', NULL,
               (SELECT rl.remaining::float8 FROM twitch_sync.rate_limit rl)
    ),
    numbered AS (SELECT m.*, row_number() OVER () AS n FROM m WHERE m.value IS NOT NULL)
    SELECT pg_catalog.string_agg(
               CASE WHEN help IS NOT NULL THEN '# HELP ' || name || ' ' || help || E'\n# TYPE ' || name || ' ' || kind || E'\n' ELSE '' END
               || name || coalesce('{' || labels || '}', '') || ' ' || value::text || E'\n', '' ORDER BY n)
      FROM numbered
$$;

-- As on a fresh install: nothing is readable or executable by PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA twitch_sync FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twitch_sync FROM PUBLIC;
