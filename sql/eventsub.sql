-- twitch_sync: EventSub notifications into the transition layer (issue 14, in
-- progress). The notification was parsed and checked in Rust
-- (crates/core/src/eventsub/message.rs: numeric ids, logins, RFC 3339
-- timestamps, no NUL); here it is deduplicated by message id and applied as
-- ONE observation through twitch_sync.apply_observations, in the caller's
-- transaction (one short transaction per event, or a small batch).

-- Message ids seen, for at-least-once delivery: a resend keeps its id.
-- Keyed by broadcaster first (every table that grows per channel has
-- broadcaster_id in its primary key: distribution-ready). Rows older than 20
-- minutes are deleted by apply_eventsub (twice Twitch's 10-minute window:
-- anything older is refused by its timestamp anyway). Not dumped: a restored
-- database starts with an empty window, which is what it should do.
CREATE TABLE twitch_sync.eventsub_messages (
    broadcaster_id text        NOT NULL,
    message_id     text        NOT NULL CHECK (length(message_id) BETWEEN 1 AND 128),
    received_at    timestamptz NOT NULL DEFAULT now(),
    verdict        text        NOT NULL,
    PRIMARY KEY (broadcaster_id, message_id)
);
CREATE INDEX eventsub_messages_received_at ON twitch_sync.eventsub_messages (received_at);
COMMENT ON TABLE twitch_sync.eventsub_messages IS 'EventSub message ids seen in the last 20 minutes (deduplication), with what was done with each.';

-- Applies one EventSub stream.online / stream.offline notification:
--   'stale'      message_timestamp more than 10 minutes from now (Twitch: refuse older)
--   'duplicate'  this message id was seen for this broadcaster in the last 20 minutes
--   'untracked'  the broadcaster is not tracked (or disabled): nothing written but the id
--   'superseded' an offline event naming a stream id that is not the live one, or
--                sent before the live broadcast began (its started_at, or the online
--                event that opened it: Twitch's stream.offline may name no stream)
--                (a late offline of an earlier broadcast must not end the current one),
--                or an online event of a broadcast that was ended at or after the
--                online's own timestamp (a late online must not reopen it), or of
--                a broadcast older than the live one (it must not end it)
--   'applied'    one observation went through apply_observations (events and NOTIFY as polling)
-- online: state 'live', viewer_count NULL (EventSub carries no count: it stays
-- as stored, or unknown, until the next poll), title etc. NULL (kept as stored).
-- offline: state 'offline', which ends the live broadcast at once.
-- observed_at is the message's timestamp (when Twitch sent it), not now().
CREATE FUNCTION twitch_sync.apply_eventsub(
    message_id text, message_at timestamptz, event text, broadcaster_id text,
    stream_id text DEFAULT NULL, login text DEFAULT NULL, started_at timestamptz DEFAULT NULL,
    notify boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    fresh boolean;
    live_id text;
    outcome text;
BEGIN
    IF event NOT IN ('online', 'offline') OR broadcaster_id !~ '^[1-9][0-9]{0,19}$'
       OR (stream_id IS NOT NULL AND stream_id !~ '^[0-9]{1,20}$')
       OR (event = 'online' AND stream_id IS NULL) OR message_at IS NULL
       OR message_id IS NULL OR length(message_id) NOT BETWEEN 1 AND 128 THEN
        RAISE EXCEPTION 'twitch_sync.apply_eventsub: not an event twitch_sync applies'
            USING ERRCODE = '22023',
                  HINT = 'event is online or offline; ids are digits; online needs a stream id';
    END IF;
    IF message_at < now() - interval '10 minutes' OR message_at > now() + interval '10 minutes' THEN
        RETURN 'stale';
    END IF;
    DELETE FROM twitch_sync.eventsub_messages m WHERE m.received_at < now() - interval '20 minutes';
    INSERT INTO twitch_sync.eventsub_messages AS m (broadcaster_id, message_id, verdict)
    VALUES (apply_eventsub.broadcaster_id, apply_eventsub.message_id, 'pending')
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS fresh = ROW_COUNT;
    IF NOT fresh THEN
        RETURN 'duplicate';
    END IF;
    -- (locked to this transaction's end: an untrack() or a disabling in
    -- flight is waited for and then seen, a later one waits for this event)
    PERFORM FROM twitch_sync.channels c
      WHERE c.broadcaster_id = apply_eventsub.broadcaster_id AND c.enabled FOR SHARE;
    IF NOT FOUND THEN
        outcome := 'untracked';
    ELSIF event = 'offline' THEN
        -- Twitch's stream.offline names no stream: one sent before the live
        -- broadcast started (Twitch's started_at), or before the online event
        -- that opened it (both Twitch's clock), ended an earlier broadcast.
        SELECT s.stream_id INTO live_id FROM twitch_sync.streams s
         WHERE s.broadcaster_id = apply_eventsub.broadcaster_id AND s.is_live
           AND (s.stream_id <> coalesce(apply_eventsub.stream_id, s.stream_id)
                OR s.started_at > message_at
                OR (s.state_source = 'eventsub' AND s.state_at > message_at));
        outcome := CASE WHEN live_id IS NOT NULL THEN 'superseded' END;
    ELSIF event = 'online' AND EXISTS (
            SELECT 1 FROM twitch_sync.streams s
             WHERE s.broadcaster_id = apply_eventsub.broadcaster_id
               AND s.stream_id = apply_eventsub.stream_id
               AND NOT s.is_live AND s.ended_at >= message_at) THEN
        -- a late online of a broadcast that an event after it already ended
        outcome := 'superseded';
    ELSIF event = 'online' AND EXISTS (
            SELECT 1 FROM twitch_sync.streams s
             WHERE s.broadcaster_id = apply_eventsub.broadcaster_id AND s.is_live
               AND s.stream_id <> apply_eventsub.stream_id
               AND (s.started_at > message_at OR s.started_at > apply_eventsub.started_at
                    OR (s.state_source = 'eventsub' AND s.state_at > message_at))) THEN
        -- a late online of an earlier broadcast (Twitch resends): the live
        -- one began after it was sent, or after it began (Twitch's
        -- started_at), or was opened by an online sent after it; a restart
        -- is an online of a broadcast that began later
        outcome := 'superseded';
    END IF;
    IF outcome IS NULL THEN
        PERFORM twitch_sync.apply_observations(ARRAY[ROW(
            'eventsub', message_at, apply_eventsub.broadcaster_id,
            CASE event WHEN 'online' THEN 'live' ELSE 'offline' END,
            CASE event WHEN 'online' THEN apply_eventsub.stream_id END,
            apply_eventsub.login, NULL, NULL, NULL, NULL, NULL,
            CASE event WHEN 'online' THEN apply_eventsub.started_at END
        )::twitch_sync.observation], 1, notify);
        outcome := 'applied';
    END IF;
    UPDATE twitch_sync.eventsub_messages m SET verdict = outcome
     WHERE m.broadcaster_id = apply_eventsub.broadcaster_id AND m.message_id = apply_eventsub.message_id;
    RETURN outcome;
END
$$;
COMMENT ON FUNCTION twitch_sync.apply_eventsub(text, timestamptz, text, text, text, text, timestamptz, boolean) IS 'Applies one EventSub stream.online/stream.offline notification (deduplicated by message id) as one observation of the transition layer; returns applied, duplicate, stale, untracked or superseded (a late event: an offline naming another stream or sent before the live broadcast began, an online of a broadcast ended since or older than the live one).';

-- The EventSub background worker (src/worker.rs; README "EventSub"). Its
-- conduit, its live state for status() and metrics(), and its counters since
-- it started: one row, written when something changes (a connection, a
-- reconciliation) and every few seconds while events arrive, never per
-- event. Not dumped: a restored database gets a new conduit.
CREATE TABLE twitch_sync.eventsub_worker (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid              integer,
    started_at       timestamptz,
    state            text NOT NULL DEFAULT 'stopped',   -- stopped, idle, connecting, connected
    detail           text,                              -- why idle or not connected (never a secret)
    client_id        text,                              -- a conduit belongs to a client id
    conduit_id       text,
    shard_id         text,
    session_id       text,
    connected_since  timestamptz,                       -- when the current session was assigned
    reconnects       bigint NOT NULL DEFAULT 0,
    events_received  bigint NOT NULL DEFAULT 0,
    events_applied   bigint NOT NULL DEFAULT 0,
    events_duplicate bigint NOT NULL DEFAULT 0,
    events_dropped   bigint NOT NULL DEFAULT 0,
    last_event_at    timestamptz,
    last_event_lag_ms double precision,                 -- message_timestamp to commit, last event
    max_event_lag_ms  double precision,                 -- the same, largest since the worker started
    total_cost       integer,                           -- Twitch's total_cost / max_total_cost, last answer
    max_total_cost   integer,
    reconciled_at    timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE twitch_sync.eventsub_worker IS 'The EventSub background worker: its conduit, connection and counters since it started (one row).';

-- stream.online / stream.offline subscriptions of the worker's conduit, one
-- row per channel and type. status is Twitch's ('enabled', or why it was
-- revoked: 'authorization_revoked', 'user_removed', 'version_removed', ...).
-- A channel is covered by EventSub when both of its rows are enabled.
CREATE TABLE twitch_sync.eventsub_subscriptions (
    broadcaster_id  text        NOT NULL,
    type            text        NOT NULL CHECK (type IN ('stream.online', 'stream.offline')),
    subscription_id text        NOT NULL CHECK (length(subscription_id) BETWEEN 1 AND 128),
    status          text        NOT NULL,
    cost            integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (broadcaster_id, type)
);
CREATE UNIQUE INDEX eventsub_subscriptions_id ON twitch_sync.eventsub_subscriptions (subscription_id);
COMMENT ON TABLE twitch_sync.eventsub_subscriptions IS 'EventSub subscriptions of the worker''s conduit: one row per tracked channel and type, with Twitch''s status.';

-- Channels covered by EventSub right now: both subscriptions enabled, the
-- worker's shard connected (updated in the last minute), and the channel
-- checked by a poll since the current session began and since both
-- subscriptions were enabled. Twitch does not replay what a dropped
-- connection missed (nor what happened before a subscription existed): a
-- channel that went live meanwhile is found by that one check, not by the
-- slow sweep an hour later. Adaptive polling checks covered channels only in
-- its slow sweep (poll_covered_interval_secs).
CREATE FUNCTION twitch_sync.eventsub_covered() RETURNS TABLE (broadcaster_id text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.broadcaster_id
      FROM twitch_sync.eventsub_subscriptions s
      JOIN twitch_sync.eventsub_worker w
        ON w.state = 'connected' AND w.updated_at > now() - interval '1 minute'
      JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id
     WHERE s.status = 'enabled'
     GROUP BY s.broadcaster_id, c.checked_at, w.connected_since
    HAVING count(*) = 2
       AND c.checked_at >= greatest(coalesce(w.connected_since, 'infinity'), max(s.status_at))
$$;

-- The worker and the subscriptions, for status() and metrics(): no secret
-- (the conduit id is not one: it is useless without the app's token).
CREATE FUNCTION twitch_sync.eventsub_status() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH subs AS (
        SELECT s.broadcaster_id, s.type, s.status FROM twitch_sync.eventsub_subscriptions s
          JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id AND c.enabled),
    -- covered: both subscriptions enabled, and the worker connected (its row
    -- updated in the last minute): a stopped or disconnected worker gets no
    -- events, so every tracked channel is poll-only meanwhile
    covered AS (
        SELECT count(*) AS n FROM (SELECT broadcaster_id FROM subs WHERE status = 'enabled'
                                    GROUP BY 1 HAVING count(*) = 2) x
         WHERE EXISTS (SELECT 1 FROM twitch_sync.eventsub_worker w
                        WHERE w.state = 'connected' AND w.updated_at > now() - interval '1 minute')),
    tracked AS (SELECT count(*) AS n FROM twitch_sync.channels c WHERE c.enabled)
    SELECT jsonb_build_object(
        'state', coalesce(w.state, 'not started'),
        'detail', w.detail,
        'pid', w.pid,
        'conduit_id', w.conduit_id,
        'session_id', w.session_id,
        'connected_since', w.connected_since,
        'session_age_secs', CASE WHEN w.state = 'connected'
                                 THEN extract(epoch FROM now() - w.connected_since)::float8 END,
        'reconnects', w.reconnects,
        'events', jsonb_build_object('received', coalesce(w.events_received, 0),
                                     'applied', coalesce(w.events_applied, 0),
                                     'duplicate', coalesce(w.events_duplicate, 0),
                                     'dropped', coalesce(w.events_dropped, 0)),
        'last_event_at', w.last_event_at,
        'last_event_lag_ms', w.last_event_lag_ms,
        'max_event_lag_ms', w.max_event_lag_ms,
        'subscriptions', (SELECT coalesce(jsonb_object_agg(status, n), '{}')
                            FROM (SELECT status, count(*) AS n FROM twitch_sync.eventsub_subscriptions
                                   GROUP BY 1) x),
        'channels_covered', (SELECT n FROM covered),
        'channels_poll_only', (SELECT t.n - c.n FROM tracked t, covered c),
        'total_cost', w.total_cost,
        'max_total_cost', w.max_total_cost,
        'reconciled_at', w.reconciled_at,
        'updated_at', w.updated_at)
      FROM (SELECT 1) one LEFT JOIN twitch_sync.eventsub_worker w ON true
$$;

-- Who gets EventSub first when the cost budget cannot cover every channel
-- (the rest stay poll-only): higher priority first, then the most watched
-- (the peak of the channel's latest broadcast), then the longest tracked.
CREATE FUNCTION twitch_sync.eventsub_ranked_channels() RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(c.broadcaster_id ORDER BY c.priority DESC, coalesce(p.peak, 0) DESC,
                              c.added_at, c.broadcaster_id), '{}')
      FROM twitch_sync.channels c
      -- the latest broadcast with a start time, straight from streams_broadcaster_started
      -- (DESC, so NULLs first: a NULLS LAST order would sort each channel's rows instead)
      LEFT JOIN LATERAL (SELECT s.peak_viewer_count AS peak FROM twitch_sync.streams s
                          WHERE s.broadcaster_id = c.broadcaster_id AND s.started_at IS NOT NULL
                          ORDER BY s.started_at DESC LIMIT 1) p ON true
     WHERE c.enabled
$$;

-- What the worker (or the webhook receiver) learnt of one subscription:
-- created or listed (status 'enabled' and others), or revoked (its reason).
CREATE FUNCTION twitch_sync.eventsub_record_subscription(
    broadcaster_id text, type text, subscription_id text, status text, cost integer DEFAULT 0)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO twitch_sync.eventsub_subscriptions AS s
           (broadcaster_id, type, subscription_id, status, cost)
    VALUES (broadcaster_id, type, subscription_id, status, coalesce(cost, 0))
    ON CONFLICT ON CONSTRAINT eventsub_subscriptions_pkey DO UPDATE
       SET subscription_id = excluded.subscription_id, status = excluded.status, cost = excluded.cost,
           status_at = CASE WHEN s.status IS DISTINCT FROM excluded.status
                             OR s.subscription_id <> excluded.subscription_id
                            THEN now() ELSE s.status_at END
$$;

-- A revocation (WebSocket message or webhook request): the row keeps the
-- reason as its status. Returns false for a subscription id not on record.
CREATE FUNCTION twitch_sync.eventsub_record_revocation(subscription_id text, status text)
RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH r AS (
        UPDATE twitch_sync.eventsub_subscriptions s
           SET status = left(coalesce(eventsub_record_revocation.status, 'revoked'), 64), status_at = now()
         WHERE s.subscription_id = eventsub_record_revocation.subscription_id
           -- heard again (a listing after a reconnect): its status_at stays, so
           -- the hour before it is tried again is not restarted
           AND s.status IS DISTINCT FROM left(coalesce(eventsub_record_revocation.status, 'revoked'), 64)
        RETURNING 1)
    -- whether the subscription is on record (updated now or already revoked)
    SELECT EXISTS (SELECT 1 FROM twitch_sync.eventsub_subscriptions s
                    WHERE s.subscription_id = eventsub_record_revocation.subscription_id)
$$;
