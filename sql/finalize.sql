-- Runs after every object of the extension exists (pgrx "finalize").

-- status(): one row an operator reads at psql. Says whether credentials are
-- set and when the token expires, never the credentials themselves.
CREATE FUNCTION twitch_sync.status() RETURNS TABLE (
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
    next_run_at          timestamptz,
    polling              jsonb,
    eventsub             jsonb
)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    SELECT
        twitch_sync.run_lock_holder() IS NOT NULL,
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
        CASE WHEN j.active THEN twitch_sync.cron_next_run(j.schedule, pg_catalog.now(), j.last_start) END,
        r.polling,
        twitch_sync.eventsub_status()
    FROM twitch_sync.cron_job() j
    -- "last run" is the latest by time, never the highest id (ids are not
    -- ordered across a dump and restore that followed pruning).
    LEFT JOIN LATERAL (SELECT * FROM twitch_sync.runs x WHERE x.status <> 'skipped'
                        ORDER BY x.started_at DESC, x.run_id DESC LIMIT 1) r ON true
    LEFT JOIN twitch_sync.rate_limit rl ON true
$$;

-- metrics(): Prometheus text exposition format (version 0.0.4), for an exporter
-- (for example postgres_exporter's custom queries, or any scraper that can run SQL).
CREATE FUNCTION twitch_sync.metrics() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    -- The counters row appears with the first recorded run: zeros until then.
    WITH c AS (SELECT coalesce(k.runs_ok, 0) AS runs_ok, coalesce(k.runs_partial, 0) AS runs_partial,
                      coalesce(k.runs_failed, 0) AS runs_failed, coalesce(k.runs_skipped, 0)
                          + (SELECT count(*) FROM twitch_sync.runs s WHERE s.status = 'skipped')
                          AS runs_skipped,
                      coalesce(k.helix_requests, 0) AS helix_requests, coalesce(k.retries, 0) AS retries,
                      coalesce(k.rate_limited, 0) AS rate_limited,
                      coalesce(k.streams_started, 0) AS streams_started,
                      coalesce(k.streams_ended, 0) AS streams_ended
                 FROM (SELECT 1) one LEFT JOIN twitch_sync.counters k ON true),
    last AS (SELECT * FROM twitch_sync.runs x WHERE x.status <> 'skipped'
              ORDER BY x.started_at DESC, x.run_id DESC LIMIT 1),
    es AS (SELECT twitch_sync.eventsub_status() AS e),
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
        UNION ALL SELECT 'twitch_sync_poll_budget_requests', 'gauge', 'Adaptive polling: requests the last run could spend.', NULL,
               (SELECT (l.polling ->> 'budget_requests')::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_poll_due_channels', 'gauge', 'Adaptive polling: channels due at the last run.', NULL,
               (SELECT (l.polling ->> 'due')::float8 FROM last l)
        UNION ALL SELECT 'twitch_sync_eventsub_connected', 'gauge', '1 while the EventSub worker''s shard is connected and assigned.', NULL,
               (SELECT (e ->> 'state' = 'connected')::int::float8 FROM es)
        UNION ALL SELECT 'twitch_sync_eventsub_session_age_seconds', 'gauge', 'Age of the EventSub worker''s WebSocket session.', NULL,
               (SELECT (e ->> 'session_age_secs')::float8 FROM es)
        UNION ALL SELECT 'twitch_sync_eventsub_reconnects_total', 'counter', 'EventSub sessions replaced since the worker started.', NULL,
               (SELECT (e ->> 'reconnects')::float8 FROM es)
        UNION ALL SELECT * FROM (
            SELECT 'twitch_sync_eventsub_events_total', 'counter',
                   CASE WHEN k.o = 1 THEN 'EventSub notifications since the worker started, by result.' END,
                   'result="' || k.key || '"', (e -> 'events' ->> k.key)::float8
              FROM es, (VALUES ('received', 1), ('applied', 2), ('duplicate', 3), ('dropped', 4)) AS k(key, o)
             WHERE e ->> 'pid' IS NOT NULL ORDER BY k.o) events
        UNION ALL SELECT 'twitch_sync_eventsub_event_lag_seconds', 'gauge', 'From the last notification''s message_timestamp to its commit.', NULL,
               (SELECT (e ->> 'last_event_lag_ms')::float8 / 1000 FROM es)
        UNION ALL SELECT * FROM (
            SELECT 'twitch_sync_eventsub_channels', 'gauge',
                   CASE WHEN k.o = 1 THEN 'Tracked channels covered by EventSub, and left to polling alone.' END,
                   'coverage="' || k.label || '"', (e ->> k.key)::float8
              FROM es, (VALUES ('eventsub', 'channels_covered', 1), ('poll_only', 'channels_poll_only', 2)) AS k(label, key, o)
             ORDER BY k.o) channels
        UNION ALL SELECT * FROM (
            SELECT 'twitch_sync_eventsub_subscriptions', 'gauge',
                   CASE WHEN row_number() OVER (ORDER BY x.key) = 1 THEN 'EventSub subscriptions by status.' END,
                   -- a status is Twitch's text: escaped as the text format's label values are
                   'status="' || replace(replace(replace(x.key, E'\\', E'\\\\'), '"', E'\\"'), E'\n', E'\\n') || '"',
                   x.value::float8
              FROM es, LATERAL jsonb_each_text(e -> 'subscriptions') x ORDER BY x.key) subscriptions
        UNION ALL SELECT 'twitch_sync_eventsub_cost', 'gauge', 'EventSub total_cost of the client, last answer.', NULL,
               (SELECT (e ->> 'total_cost')::float8 FROM es)
        UNION ALL SELECT 'twitch_sync_eventsub_max_cost', 'gauge', 'EventSub max_total_cost of the client, last answer.', NULL,
               (SELECT (e ->> 'max_total_cost')::float8 FROM es)
        UNION ALL SELECT * FROM (
            SELECT 'twitch_sync_poll_staleness_seconds', 'gauge',
                   CASE WHEN k.n = 1 AND q.o = 1 THEN 'Adaptive polling: age of the last check per class at the last run (quantile 0.5, 0.95, 1 = max).' END,
                   'class="' || (k.cls ->> 'class') || '",quantile="' || q.quantile || '"',
                   (k.cls ->> q.key)::float8
              FROM last l,
                   LATERAL jsonb_array_elements(l.polling -> 'classes') WITH ORDINALITY AS k(cls, n),
                   (VALUES ('0.5', 'p50', 1), ('0.95', 'p95', 2), ('1', 'max', 3)) AS q(quantile, key, o)
             ORDER BY k.n, q.o) staleness
    ),
    numbered AS (SELECT m.*, row_number() OVER () AS n FROM m WHERE m.value IS NOT NULL)
    SELECT pg_catalog.string_agg(
               CASE WHEN help IS NOT NULL THEN '# HELP ' || name || ' ' || help || E'\n# TYPE ' || name || ' ' || kind || E'\n' ELSE '' END
               || name || coalesce('{' || labels || '}', '') || ' ' || value::text || E'\n', '' ORDER BY n)
      FROM numbered
$$;

-- Nothing is readable or executable by PUBLIC; grant on purpose (README,
-- "Privileges"). The upgrade scripts end with the same two lines.
-- dashboard(interval) is SECURITY DEFINER and shows no secret (sql/dashboard.sql):
-- GRANT EXECUTE ON FUNCTION twitch_sync.dashboard(interval) TO <reader>, with
-- USAGE on the schema, is all a role needs to open the page. Its helpers
-- (html_escape, dashboard_*) stay owner-only; dashboard_hours_per_day reads
-- viewer_samples with the caller's rights (for Grafana's role, README "Dashboard").
REVOKE ALL ON ALL TABLES IN SCHEMA twitch_sync FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twitch_sync FROM PUBLIC;
-- ... except setting(): SQL functions a reader is granted (sample_gap(), the
-- analytics) read settings through it, and every setting is readable by
-- anyone with SHOW anyway. It still takes USAGE on the schema to reach it.
GRANT EXECUTE ON FUNCTION twitch_sync.setting(text) TO PUBLIC;
