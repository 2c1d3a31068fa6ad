-- twitch_sync: the transition layer. Every change of stream state, whatever
-- its source (a poll batch, an EventSub event), goes through
-- twitch_sync.apply_observations: typed observations in, named set-based steps,
-- a typed result out. Only what changed is written: a channel that was offline
-- and is still not listed costs no row write.
--
-- Observations reaching here were validated in Rust (crates/core/src/streams.rs:
-- numeric ids, logins, cleaned text, bounded timestamps); the steps still guard
-- what SQL alone can know (a stream id owned by another broadcaster).

-- What a source saw of one channel at one time.
CREATE TYPE twitch_sync.observation AS (
    source         text,         -- 'poll' (a Get Streams batch), 'eventsub' (one event), 'untrack'
    observed_at    timestamptz,
    broadcaster_id text,
    state          text,         -- 'live', 'not_listed' (poll: absent from a complete answer), 'offline' (event)
    stream_id      text,         -- live only
    login          text,         -- when the source knows it
    viewer_count   integer,      -- live; NULL when the source has no count (stream.online)
    title          text,         -- live; NULL keeps the stored value
    game_id        text,
    game_name      text,
    language       text,
    started_at     timestamptz
);
-- One call takes at most one observation per broadcaster (a second one for the
-- same broadcaster makes the call fail: apply_poll reports it).
COMMENT ON TYPE twitch_sync.observation IS 'What a source (poll or eventsub) saw of one channel at one time: the input of twitch_sync.apply_observations.';

-- What one call of apply_observations did.
CREATE TYPE twitch_sync.applied AS (
    live      integer,  -- live observations applied
    updated   integer,  -- live rows updated (same broadcast)
    started   integer,  -- broadcasts started (new, or reopened)
    ended     integer,  -- broadcasts ended (offline, missed, or superseded by a restart)
    conflicted text[],  -- broadcasters left as they were: their live stream id belongs to another broadcaster
    events    integer   -- events written to twitch_sync.events
);

-- One state change, as the steps report it to emit_events.
CREATE TYPE twitch_sync.transition AS (
    event              text,     -- 'online', 'restart', 'offline'
    broadcaster_id     text,
    stream_id          text,
    reopened           boolean,
    previous_stream_id text,
    viewer_count       integer,
    peak_viewer_count  integer,
    title              text,
    game_name          text,
    started_at         timestamptz,
    ended_at           timestamptz,
    at                 timestamptz
);

-- Step 0: a stream id belongs to one broadcaster. Broadcasters whose live
-- observation claims a stream id that is stored under another broadcaster, or
-- that another observation of this call gives to another broadcaster (and that
-- is not already theirs), are refused: every observation of theirs is dropped
-- and they are left as they were. The stream id's owner is applied as usual.
CREATE FUNCTION twitch_sync.stream_id_conflicts(obs twitch_sync.observation[]) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
    WITH live AS (
        SELECT o.broadcaster_id, o.stream_id FROM unnest(obs) o WHERE o.state = 'live'
    ), shared AS (  -- stream ids this call gives to more than one broadcaster
        SELECT l.stream_id FROM live l GROUP BY l.stream_id HAVING count(DISTINCT l.broadcaster_id) > 1
    )
    SELECT coalesce(array_agg(DISTINCT l.broadcaster_id ORDER BY l.broadcaster_id), '{}')
      FROM live l
     WHERE EXISTS (SELECT 1 FROM twitch_sync.streams s
                    WHERE s.stream_id = l.stream_id AND s.broadcaster_id <> l.broadcaster_id)
        OR (l.stream_id IN (SELECT h.stream_id FROM shared h)
            AND NOT EXISTS (SELECT 1 FROM twitch_sync.streams s
                             WHERE s.broadcaster_id = l.broadcaster_id AND s.stream_id = l.stream_id)));
END
$$;

-- Step 1: the common case first. A live observation that continues the
-- broadcaster's live broadcast (same stream id, still live) updates that row
-- (a miss count starts over: it was listed; the broadcast's analytics take the
-- new sample, see sql/analytics.sql), records its viewer sample, and a title or
-- category change in stream_changes, in one statement: nothing else can apply
-- to it (the stream id is the broadcaster's own, there is nothing to supersede
-- or reopen). The live observations come as columns (one element per stream)
-- of one source and time: a poll chunk's live streams as run() sends them
-- (apply_poll), with no observation built for them. Returns the broadcasters
-- it updated; the steps below see only the other observations. In a steady
-- poll this is the only write there is.
CREATE FUNCTION twitch_sync.continue_broadcasts(
    source text, observed_at timestamptz, broadcaster_id text[], stream_id text[],
    viewer_count integer[], title text[], game_id text[], game_name text[], language text[],
    started_at timestamptz[])
RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gap interval := twitch_sync.sample_gap();
    seen timestamptz := observed_at;
    seen_by text := source;
    continuing text[];
BEGIN
    -- A live broadcast without Twitch's started_at takes the observation's
    -- (below), and its airtime then starts there, on a day the rollups may
    -- be past. Usually no live broadcast lacks it: one probe of an empty
    -- index (streams_live_without_start).
    IF EXISTS (SELECT 1 FROM twitch_sync.streams s WHERE s.is_live AND s.started_at IS NULL) THEN
        PERFORM twitch_sync.mark_rollups_stale(min(least(o.started_at, s.first_seen_at)), NULL)
           FROM unnest(continue_broadcasts.broadcaster_id, continue_broadcasts.stream_id,
                       continue_broadcasts.started_at) AS o(broadcaster_id, stream_id, started_at)
           JOIN twitch_sync.streams s ON s.broadcaster_id = o.broadcaster_id AND s.stream_id = o.stream_id
          WHERE s.is_live AND s.started_at IS NULL AND o.started_at IS NOT NULL
         HAVING count(*) > 0;
    END IF;
    WITH updated AS (
        UPDATE twitch_sync.streams s
           -- a sample counts in the order written: one at or before the
           -- broadcast's latest sample (a backfill into its past) is recorded
           -- and peaks, but neither closes an interval nor becomes the latest
           SET viewer_count = CASE WHEN o.viewer_count IS NOT NULL
                                        AND (s.last_sampled_at IS NULL OR seen > s.last_sampled_at)
                                   THEN o.viewer_count ELSE s.viewer_count END,
               peak_viewer_count = greatest(s.peak_viewer_count, coalesce(o.viewer_count, 0)),
               peak_at = CASE WHEN o.viewer_count > s.peak_viewer_count
                                OR (s.peak_at IS NULL AND o.viewer_count IS NOT NULL)
                              THEN seen ELSE s.peak_at END,
               title = coalesce(o.title, s.title), game_id = coalesce(o.game_id, s.game_id),
               game_name = coalesce(o.game_name, s.game_name),
               language = coalesce(o.language, s.language),
               started_at = coalesce(s.started_at, o.started_at),
               updated_at = seen, last_seen_at = seen, missed_polls = 0,
               sample_count = s.sample_count + (o.viewer_count IS NOT NULL)::integer,
               viewer_seconds = s.viewer_seconds + CASE
                   WHEN o.viewer_count IS NOT NULL AND seen > s.last_sampled_at
                        AND seen - s.last_sampled_at <= gap
                   THEN s.viewer_count * extract(epoch FROM seen - s.last_sampled_at)::float8
                   ELSE 0 END,
               covered_seconds = s.covered_seconds + CASE
                   WHEN o.viewer_count IS NOT NULL AND seen > s.last_sampled_at
                        AND seen - s.last_sampled_at <= gap
                   THEN extract(epoch FROM seen - s.last_sampled_at)::float8
                   ELSE 0 END,
               last_sampled_at = CASE WHEN o.viewer_count IS NOT NULL
                                           AND (s.last_sampled_at IS NULL OR seen > s.last_sampled_at)
                                      THEN seen ELSE s.last_sampled_at END,
               -- the interval this sample closes, for the sample to carry
               sampled_game_id = CASE WHEN o.viewer_count IS NOT NULL
                                           AND (s.last_sampled_at IS NULL OR seen > s.last_sampled_at)
                                      THEN coalesce(o.game_id, s.game_id) ELSE s.sampled_game_id END,
               prev_sampled_at = CASE WHEN o.viewer_count IS NULL THEN s.prev_sampled_at
                                      WHEN seen > s.last_sampled_at AND seen - s.last_sampled_at <= gap
                                      THEN s.last_sampled_at END,
               prev_viewer_count = CASE WHEN o.viewer_count IS NULL THEN s.prev_viewer_count
                                        WHEN seen > s.last_sampled_at AND seen - s.last_sampled_at <= gap
                                        THEN s.viewer_count END,
               prev_game_id = CASE WHEN o.viewer_count IS NULL THEN s.prev_game_id
                                   WHEN seen > s.last_sampled_at AND seen - s.last_sampled_at <= gap
                                   THEN s.sampled_game_id END,
               changed_at = CASE WHEN o.title IS DISTINCT FROM s.title AND o.title IS NOT NULL
                                   OR o.game_id IS DISTINCT FROM s.game_id AND o.game_id IS NOT NULL
                                 THEN seen ELSE s.changed_at END
          FROM unnest(continue_broadcasts.broadcaster_id, continue_broadcasts.stream_id,
                      continue_broadcasts.viewer_count, continue_broadcasts.title,
                      continue_broadcasts.game_id, continue_broadcasts.game_name,
                      continue_broadcasts.language, continue_broadcasts.started_at)
            AS o(broadcaster_id, stream_id, viewer_count, title, game_id, game_name, language,
                 started_at)
         WHERE s.broadcaster_id = o.broadcaster_id AND s.stream_id = o.stream_id AND s.is_live
        RETURNING s.broadcaster_id, s.stream_id, o.viewer_count, s.title, s.game_id, s.game_name,
                  s.changed_at = seen AS changed, s.prev_sampled_at, s.prev_viewer_count, s.prev_game_id
    ), sampled AS (
        INSERT INTO twitch_sync.viewer_samples (broadcaster_id, stream_id, sampled_at, viewer_count, game_id,
                                                prev_sampled_at, prev_viewer_count, prev_game_id)
        SELECT u.broadcaster_id, u.stream_id, seen, u.viewer_count, u.game_id,
               u.prev_sampled_at, u.prev_viewer_count, u.prev_game_id
          FROM updated u
         WHERE u.viewer_count IS NOT NULL
    ), changes AS (
        INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
        SELECT u.broadcaster_id, u.stream_id, seen, seen_by, u.title, u.game_id, u.game_name
          FROM updated u
         WHERE u.changed
        ON CONFLICT DO NOTHING
    )
    SELECT coalesce(array_agg(u.broadcaster_id), '{}') INTO continuing FROM updated u;
    RETURN continuing;
END
$$;

-- Step 1 for observations: their live ones through continue_broadcasts, one
-- call per source and time (one, for a poll chunk or an event).
CREATE FUNCTION twitch_sync.update_continuing(obs twitch_sync.observation[]) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
    continuing text[] := '{}';
BEGIN
    FOR g IN
        SELECT o.source, o.observed_at, array_agg(o.broadcaster_id) AS broadcaster_id,
               array_agg(o.stream_id) AS stream_id, array_agg(o.viewer_count) AS viewer_count,
               array_agg(o.title) AS title, array_agg(o.game_id) AS game_id,
               array_agg(o.game_name) AS game_name, array_agg(o.language) AS language,
               array_agg(o.started_at) AS started_at
          FROM unnest(obs) o
         WHERE o.state = 'live'
         GROUP BY o.source, o.observed_at
    LOOP
        continuing := continuing || twitch_sync.continue_broadcasts(
            g.source, g.observed_at, g.broadcaster_id, g.stream_id, g.viewer_count, g.title,
            g.game_id, g.game_name, g.language, g.started_at);
    END LOOP;
    RETURN continuing;
END
$$;

-- Step 2: a channel seen live under a new stream id ends its previous broadcast:
-- when the new one started, if that was after the previous one was last seen
-- (else when last seen), and never after the observation.
CREATE FUNCTION twitch_sync.end_superseded(obs twitch_sync.observation[])
RETURNS SETOF twitch_sync.transition
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    UPDATE twitch_sync.streams s
       SET is_live = false,
           -- no later than the new broadcast's start (when after the old one
           -- was last seen): a channel's airtime never counts an instant twice
           ended_at = greatest(coalesce(s.started_at, s.first_seen_at),
                               least(o.observed_at,
                                     greatest(s.last_seen_at, coalesce(o.started_at, o.observed_at)))),
           updated_at = o.observed_at,
           missed_polls = 0, state_source = o.source, state_at = o.observed_at
      FROM unnest(obs) o
     WHERE o.state = 'live' AND s.broadcaster_id = o.broadcaster_id AND s.is_live
       AND s.stream_id <> o.stream_id
    RETURNING (ROW('restart', s.broadcaster_id, s.stream_id, NULL, NULL, s.viewer_count,
                  s.peak_viewer_count, s.title, s.game_name, s.started_at, s.ended_at,
                  o.observed_at)::twitch_sync.transition).*;
END
$$;

-- Step 3: a broadcast seen live again under its stream id after it had ended
-- (Twitch resumes a broadcast after a short disconnect) is reopened: live
-- again, and then updated like a continuing one (update_continuing). Returns
-- its 'online' transitions, with the observed values.
CREATE FUNCTION twitch_sync.reopen_broadcasts(obs twitch_sync.observation[])
RETURNS SETOF twitch_sync.transition
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- its airtime from its old end on counts again: those days are rolled up again
    PERFORM twitch_sync.mark_rollups_stale(e.ended_at, NULL)
       FROM (SELECT min(s.ended_at) AS ended_at
               FROM unnest(obs) o
               JOIN twitch_sync.streams s ON s.broadcaster_id = o.broadcaster_id AND s.stream_id = o.stream_id
              WHERE o.state = 'live' AND NOT s.is_live) e
      WHERE e.ended_at IS NOT NULL;
    RETURN QUERY
    UPDATE twitch_sync.streams s
       SET is_live = true, ended_at = NULL, missed_polls = 0, state_source = o.source,
           state_at = o.observed_at
      FROM unnest(obs) o
     WHERE o.state = 'live' AND s.broadcaster_id = o.broadcaster_id AND s.stream_id = o.stream_id
       AND NOT s.is_live
    RETURNING (ROW('online', s.broadcaster_id, s.stream_id, true, NULL,
                  coalesce(o.viewer_count, s.viewer_count),
                  greatest(s.peak_viewer_count, coalesce(o.viewer_count, 0)),
                  coalesce(o.title, s.title), coalesce(o.game_name, s.game_name),
                  coalesce(s.started_at, o.started_at), NULL, o.observed_at)::twitch_sync.transition).*;
END
$$;

-- Step 4: new broadcasts: their row (first seen now), their first viewer
-- sample, and their first title and category in stream_changes. Fields an
-- observation lacks (NULL: an EventSub online event has no count or title)
-- start empty. Returns their 'online' transitions.
CREATE FUNCTION twitch_sync.start_broadcasts(obs twitch_sync.observation[])
RETURNS SETOF twitch_sync.transition
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    WITH started AS (
        INSERT INTO twitch_sync.streams AS s
            (stream_id, broadcaster_id, is_live, viewer_count, peak_viewer_count, title,
             game_id, game_name, language, started_at, ended_at, updated_at, last_seen_at,
             first_seen_at, peak_at, sample_count, last_sampled_at, changed_at, state_source, state_at,
             sampled_game_id)
        SELECT o.stream_id, o.broadcaster_id, true, coalesce(o.viewer_count, 0),
               coalesce(o.viewer_count, 0), coalesce(o.title, ''), coalesce(o.game_id, ''),
               coalesce(o.game_name, ''), coalesce(o.language, ''), o.started_at, NULL,
               o.observed_at, o.observed_at, o.observed_at,
               CASE WHEN o.viewer_count IS NOT NULL THEN o.observed_at END,
               (o.viewer_count IS NOT NULL)::integer,
               CASE WHEN o.viewer_count IS NOT NULL THEN o.observed_at END,
               o.observed_at, o.source, o.observed_at,
               CASE WHEN o.viewer_count IS NOT NULL THEN coalesce(o.game_id, '') END
          FROM unnest(obs) o
         WHERE o.state = 'live'
           AND NOT EXISTS (SELECT 1 FROM twitch_sync.streams x
                            WHERE x.broadcaster_id = o.broadcaster_id AND x.stream_id = o.stream_id)
        ON CONFLICT DO NOTHING
        RETURNING s.*
    ), sampled AS (
        INSERT INTO twitch_sync.viewer_samples (broadcaster_id, stream_id, sampled_at, viewer_count, game_id)
        SELECT t.broadcaster_id, t.stream_id, t.last_sampled_at, t.viewer_count, t.game_id
          FROM started t
         WHERE t.sample_count = 1
    ), changes AS (
        INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
        SELECT t.broadcaster_id, t.stream_id, t.first_seen_at, o.source, t.title, t.game_id, t.game_name
          FROM started t JOIN unnest(obs) o ON o.broadcaster_id = t.broadcaster_id AND o.state = 'live'
        ON CONFLICT DO NOTHING
    )
    SELECT (ROW('online', t.broadcaster_id, t.stream_id, false, NULL, t.viewer_count,
               t.peak_viewer_count, t.title, t.game_name, t.started_at, NULL,
               t.updated_at)::twitch_sync.transition).*
      FROM started t;
END
$$;

-- Step 5: misses. A live stream whose channel a poll checked without listing it
-- counts a miss on its row; `misses` in a row end it. Only live rows are
-- written: a channel offline before and after costs nothing.
CREATE FUNCTION twitch_sync.count_misses(obs twitch_sync.observation[], misses integer)
RETURNS SETOF twitch_sync.transition
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    WITH missed AS (
        UPDATE twitch_sync.streams s
           SET missed_polls = CASE WHEN s.missed_polls + 1 >= misses THEN 0
                                   ELSE s.missed_polls + 1 END,
               is_live = s.missed_polls + 1 < misses,
               ended_at = CASE WHEN s.missed_polls + 1 >= misses THEN o.observed_at END,
               updated_at = CASE WHEN s.missed_polls + 1 >= misses THEN o.observed_at
                                 ELSE s.updated_at END,
               state_source = CASE WHEN s.missed_polls + 1 >= misses THEN o.source
                                   ELSE s.state_source END,
               state_at = CASE WHEN s.missed_polls + 1 >= misses THEN o.observed_at
                               ELSE s.state_at END
          FROM unnest(obs) o
         WHERE o.state = 'not_listed' AND s.broadcaster_id = o.broadcaster_id AND s.is_live
        RETURNING s.*
    )
    SELECT (ROW('offline', e.broadcaster_id, e.stream_id, NULL, NULL, e.viewer_count,
               e.peak_viewer_count, e.title, e.game_name, e.started_at, e.ended_at,
               e.ended_at)::twitch_sync.transition).*
      FROM missed e
     WHERE NOT e.is_live;
END
$$;

-- Step 6: an 'offline' observation (EventSub stream.offline) ends the live
-- broadcast at once.
CREATE FUNCTION twitch_sync.apply_offline(obs twitch_sync.observation[])
RETURNS SETOF twitch_sync.transition
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    WITH ended AS (
        UPDATE twitch_sync.streams s
           SET is_live = false, ended_at = o.observed_at, updated_at = o.observed_at,
               missed_polls = 0, state_source = o.source, state_at = o.observed_at
          FROM unnest(obs) o
         WHERE o.state = 'offline' AND s.broadcaster_id = o.broadcaster_id AND s.is_live
        RETURNING s.*
    )
    SELECT (ROW('offline', e.broadcaster_id, e.stream_id, NULL, NULL, e.viewer_count,
               e.peak_viewer_count, e.title, e.game_name, e.started_at, e.ended_at,
               e.ended_at)::twitch_sync.transition).*
      FROM ended e;
END
$$;

-- Step 7: logins Helix reports, where they differ from the stored one. (An
-- 'untrack' observation's login is the channel's own, for its event.)
CREATE FUNCTION twitch_sync.update_logins(obs twitch_sync.observation[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE twitch_sync.channels c SET login = o.login
      FROM unnest(obs) o
     WHERE o.login IS NOT NULL AND o.source <> 'untrack' AND c.broadcaster_id = o.broadcaster_id
       AND c.login IS DISTINCT FROM o.login;
END
$$;

-- Step 8: events. Each state change becomes a row of the outbox
-- twitch_sync.events (readable only by granted roles); with `notify`, NOTIFY
-- twitch_sync carries just its event id, sent when the transaction commits.
-- The payload's login is the channel's, else (no channels row: a channel
-- deleted by the statement whose trigger ended its broadcast) the one its
-- observation in `obs` carries.
CREATE FUNCTION twitch_sync.emit_events(changes twitch_sync.transition[], notify boolean,
                                        obs twitch_sync.observation[] DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids bigint[];
BEGIN
    WITH written AS (
        INSERT INTO twitch_sync.events AS e (broadcaster_id, event, stream_id, payload, created_at)
        SELECT t.broadcaster_id, t.event, t.stream_id,
               jsonb_strip_nulls(jsonb_build_object(
                   'event', t.event, 'broadcaster_id', t.broadcaster_id,
                   'login', coalesce(c.login, o.login),
                   'stream_id', t.stream_id,
                   'reopened', CASE WHEN t.reopened THEN true END,
                   'previous_stream_id', t.previous_stream_id,
                   'viewer_count', t.viewer_count,
                   'peak_viewer_count', CASE WHEN t.event = 'offline' THEN t.peak_viewer_count END,
                   'title', pg_catalog.left(t.title, 300),
                   'game_name', pg_catalog.left(t.game_name, 200),
                   'started_at', t.started_at, 'ended_at', t.ended_at, 'at', t.at)),
               t.at
          FROM unnest(changes) t
          LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = t.broadcaster_id
          LEFT JOIN (SELECT DISTINCT ON (x.broadcaster_id) x.broadcaster_id, x.login
                       FROM unnest(obs) x
                      WHERE x.login IS NOT NULL
                      ORDER BY x.broadcaster_id) o ON o.broadcaster_id = t.broadcaster_id
         WHERE t.event IS NOT NULL
         ORDER BY t.at, t.broadcaster_id
        RETURNING e.event_id
    )
    SELECT coalesce(array_agg(w.event_id ORDER BY w.event_id), '{}') INTO ids FROM written w;
    IF notify THEN
        PERFORM pg_catalog.pg_notify('twitch_sync', i::text) FROM unnest(ids) i;
    END IF;
    RETURN coalesce(array_length(ids, 1), 0);
END
$$;

-- Polling and events must not fight (README "EventSub"): Helix's listing
-- lags EventSub by 30-60 s and more. Within twitch_sync.eventsub_grace_secs
-- (default 180) of a transition an EventSub event made, a poll observation
-- that contradicts it is held (ignored):
--   1. the broadcast an offline event ended is still listed: not reopened
--      (listed again after the grace period, it is: Twitch resumed it);
--   2. the broadcast an online event opened is not listed, or another stream
--      id is listed for its channel: no miss counted, nothing superseded.
-- Returns the broadcasters whose poll observations are held.
CREATE FUNCTION twitch_sync.eventsub_grace() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.make_interval(secs => greatest(twitch_sync.setting('twitch_sync.eventsub_grace_secs')::integer, 0))
$$;

CREATE FUNCTION twitch_sync.held_by_events(obs twitch_sync.observation[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(DISTINCT o.broadcaster_id), '{}')
      FROM unnest(obs) o
      CROSS JOIN LATERAL (
            SELECT s.stream_id, s.is_live, s.state_source, s.state_at
              FROM twitch_sync.streams s
             WHERE s.broadcaster_id = o.broadcaster_id
             ORDER BY s.is_live DESC, s.state_at DESC NULLS LAST
             LIMIT 1) s
     WHERE o.source = 'poll' AND s.state_source = 'eventsub'
       AND o.observed_at < s.state_at + twitch_sync.eventsub_grace()
       AND CASE WHEN s.is_live THEN o.state = 'not_listed' OR (o.state = 'live' AND o.stream_id <> s.stream_id)
                ELSE o.state = 'live' AND o.stream_id = s.stream_id END
$$;

-- Observations at a time the rollups are past (a backfill through
-- apply_observations) change days maintain() would not look at again: the
-- earliest such time is kept in rollup_state.stale_from, and the next
-- maintain() rolls up from there; nothing is written unless that moves the
-- first day maintain() rolls up back. Samples written at or before the
-- latest one rolled up (sampled: the earliest sample written, NULL: none)
-- are kept in samples_stale_from, from where the next maintain() recomputes
-- channel_category_days (it adds only later samples). So a poll of now costs
-- one read of one row. A writer of samples, or of what counts on a day
-- before today (since less the gap limit), takes the rollup lock shared
-- (twitch_sync.rollup_lock) before it reads or writes rollup_state: it waits
-- for a maintain() in progress, and a later one waits for it. Anything else
-- changes only today, which every maintain() rolls up, and writes nothing
-- here.
CREATE FUNCTION twitch_sync.mark_rollups_stale(since timestamptz, sampled timestamptz) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF sampled IS NULL AND ((since - twitch_sync.sample_gap()) AT TIME ZONE 'UTC')::date
                           >= (pg_catalog.now() AT TIME ZONE 'UTC')::date THEN
        RETURN;
    END IF;
    PERFORM twitch_sync.rollup_lock(false);
    UPDATE twitch_sync.rollup_state r
       SET stale_from = CASE WHEN ((since - twitch_sync.sample_gap()) AT TIME ZONE 'UTC')::date
                                  < ((least(r.rolled_up_to, r.stale_from) - twitch_sync.sample_gap()) AT TIME ZONE 'UTC')::date
                             THEN since ELSE r.stale_from END,
           -- (a sample of a day whose samples retention dropped is never rolled up)
           samples_stale_from = least(r.samples_stale_from,
                                      CASE WHEN sampled <= r.rolled_up_to
                                            AND (sampled AT TIME ZONE 'UTC')::date >= coalesce(r.samples_dropped_before, '-infinity')
                                           THEN sampled END)
     WHERE ((since - twitch_sync.sample_gap()) AT TIME ZONE 'UTC')::date
           < ((least(r.rolled_up_to, r.stale_from) - twitch_sync.sample_gap()) AT TIME ZONE 'UTC')::date
        OR sampled <= r.rolled_up_to AND sampled < coalesce(r.samples_stale_from, 'infinity')
           AND (sampled AT TIME ZONE 'UTC')::date >= coalesce(r.samples_dropped_before, '-infinity');
END
$$;

-- The transition layer's entry point: applies observations in order of the
-- steps above and says what it did. run() gives it what remains of each chunk
-- of answers once the continuing streams are written (apply_poll); an EventSub
-- consumer calls it with single events. Steps with nothing to do are not
-- called: observations that all continue their broadcasts cost one pass over
-- them and update_continuing.
CREATE FUNCTION twitch_sync.apply_observations(
    obs twitch_sync.observation[], offline_after_misses integer, notify boolean)
RETURNS twitch_sync.applied
-- jit off: short OLTP statements, where JIT compilation costs more than it saves.
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    n_live integer;
    n_logins integer;
    oldest timestamptz;
    oldest_sample timestamptz;  -- of the observations with a count (a sample each)
    continuing text[] := '{}';
    rest twitch_sync.observation[];
    conflicted text[] := '{}';
    held text[] := '{}';
    tracked text[];
    changes twitch_sync.transition[] := '{}';
    live_changes twitch_sync.transition[] := '{}';
    result twitch_sync.applied;
    bad text;
    twice text;
BEGIN
    IF offline_after_misses IS NULL OR offline_after_misses < 1 OR notify IS NULL THEN
        RAISE EXCEPTION 'invalid offline_after_misses or notify: %, %',
                coalesce(offline_after_misses::text, 'NULL'), coalesce(notify::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass offline_after_misses >= 1 (checks without a listing that end a live '
                      || 'stream) and notify true or false.';
    END IF;
    -- One pass: what is live, what carries a login to store, an observation
    -- that breaks the type's rules (the lowest broadcaster id of those), and
    -- one broadcaster observed twice. Rust's observations never do (it applies
    -- the same rules to what it reads from the network: crates/core/src/streams.rs,
    -- whose constants these numbers are); this is for a hand-written source.
    SELECT count(*) FILTER (WHERE o.state = 'live'),
           count(*) FILTER (WHERE o.login IS NOT NULL AND o.source <> 'untrack'),
           min(o.observed_at),
           min(o.observed_at) FILTER (WHERE o.state = 'live' AND o.viewer_count IS NOT NULL),
           min(coalesce(pg_catalog.quote_literal(pg_catalog.left(o.broadcaster_id, 40)), 'NULL'))
               FILTER (WHERE o.source IS NULL OR o.source NOT IN ('poll', 'eventsub', 'untrack')
                          -- from Twitch's first day (Justin.tv's, 2007) to a day ahead (clock
                          -- skew) of the clock now, never of the transaction's start: Rust
                          -- bounds what it parsed by its clock then, which is earlier
                          OR o.observed_at IS NULL OR NOT pg_catalog.isfinite(o.observed_at)
                          OR o.observed_at NOT BETWEEN '2007-01-01 00:00+00' AND pg_catalog.clock_timestamp() + interval '1 day'
                          OR o.started_at IS NOT NULL
                             AND (NOT pg_catalog.isfinite(o.started_at)
                                  OR o.started_at NOT BETWEEN '2007-01-01 00:00+00'
                                                          AND pg_catalog.clock_timestamp() + interval '1 day')
                          OR NOT coalesce(twitch_sync.is_broadcaster_id(o.broadcaster_id), false)
                          OR o.state IS NULL OR o.state NOT IN ('live', 'not_listed', 'offline')
                          OR o.state = 'live' AND NOT coalesce(o.stream_id ~ '^[0-9]{1,20}$', false)
                          OR o.state <> 'live' AND o.stream_id !~ '^[0-9]{1,20}$'
                          OR o.login IS NOT NULL AND NOT twitch_sync.is_login(o.login)
                          OR o.game_id IS NOT NULL AND o.game_id !~ '^([0-9]{1,20})?$'
                          OR pg_catalog.length(o.title) > 300 OR pg_catalog.length(o.game_name) > 200
                          OR pg_catalog.length(o.language) > 16
                          OR o.viewer_count < 0),
           (SELECT pg_catalog.quote_literal(pg_catalog.left(d.broadcaster_id, 40))
              FROM unnest(obs) d GROUP BY d.broadcaster_id HAVING count(*) > 1
             ORDER BY d.broadcaster_id LIMIT 1)
      INTO n_live, n_logins, oldest, oldest_sample, bad, twice
      FROM unnest(obs) o;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'invalid observation of broadcaster %', bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Each observation needs source ''poll'', ''eventsub'' or ''untrack''; an observed_at '
                      || 'from 2007 to a day from now; a broadcaster id; state ''live'', ''not_listed'' or '
                      || '''offline''; when live a stream_id of 1 to 20 digits. viewer_count is NULL or >= 0, '
                      || 'started_at NULL or from 2007 to a day from now, login NULL or a Twitch login, game_id '
                      || 'NULL, '''' or digits; title, game_name and language at most 300, 200 and 16 characters.';
    END IF;
    IF twice IS NOT NULL THEN
        RAISE EXCEPTION 'more than one observation of broadcaster %', twice
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass at most one observation per broadcaster in one call; apply later ones in '
                      || 'another call, in the order they were seen.';
    END IF;
    -- before anything is written: what the observations' times change of
    -- the rollups (and the rollup lock, if they write samples or a past day)
    PERFORM twitch_sync.mark_rollups_stale(oldest, oldest_sample);
    IF n_live > 0 THEN
        continuing := twitch_sync.update_continuing(obs);
    END IF;
    IF cardinality(continuing) < cardinality(obs) THEN
        rest := CASE WHEN cardinality(continuing) = 0 THEN obs ELSE ARRAY(
                    SELECT o FROM unnest(obs) o
                     WHERE o.state <> 'live'
                        OR o.broadcaster_id NOT IN (SELECT c FROM unnest(continuing) c)) END;
        IF EXISTS (SELECT 1 FROM unnest(rest) o WHERE o.source = 'poll') THEN
            -- a channel untracked (or disabled) while a run was in flight: no
            -- broadcast is started, reopened or ended from what the run saw of
            -- it (untrack() and disabling end its live row first, so
            -- update_continuing found none). The channels that stay are
            -- locked (FOR SHARE, to this transaction's end): an untrack() or
            -- a disabling in flight is waited for and then seen, and one
            -- that comes later waits for this run and ends what it wrote.
            SELECT coalesce(pg_catalog.array_agg(t.broadcaster_id), '{}') INTO tracked
              FROM (SELECT c.broadcaster_id FROM twitch_sync.channels c
                     WHERE c.broadcaster_id IN (SELECT o.broadcaster_id FROM unnest(rest) o WHERE o.source = 'poll')
                       AND c.enabled
                     ORDER BY c.broadcaster_id FOR SHARE) t;
            rest := ARRAY(SELECT o FROM unnest(rest) o
                           WHERE o.source <> 'poll' OR o.broadcaster_id = ANY (tracked));
            held := twitch_sync.held_by_events(rest);
            IF cardinality(held) > 0 THEN
                rest := ARRAY(SELECT o FROM unnest(rest) o
                               WHERE o.source <> 'poll' OR o.broadcaster_id <> ALL (held));
            END IF;
        END IF;
        conflicted := twitch_sync.stream_id_conflicts(rest);
        IF cardinality(conflicted) > 0 THEN
            -- Their broadcasters are left as they were: drop every observation of them.
            obs := ARRAY(SELECT o FROM unnest(obs) o WHERE o.broadcaster_id <> ALL (conflicted));
            rest := ARRAY(SELECT o FROM unnest(rest) o WHERE o.broadcaster_id <> ALL (conflicted));
        END IF;
        changes := ARRAY(SELECT twitch_sync.end_superseded(rest));
        live_changes := ARRAY(SELECT twitch_sync.reopen_broadcasts(rest));
        IF cardinality(live_changes) > 0 THEN
            -- reopened: live again, now updated like a continuing broadcast
            PERFORM twitch_sync.update_continuing(ARRAY(
                SELECT o FROM unnest(rest) o
                 WHERE o.state = 'live'
                   AND o.broadcaster_id IN (SELECT t.broadcaster_id FROM unnest(live_changes) t)));
        END IF;
        live_changes := live_changes || ARRAY(SELECT twitch_sync.start_broadcasts(rest));
        changes := changes || live_changes
            || ARRAY(SELECT twitch_sync.count_misses(rest, greatest(coalesce(offline_after_misses, 1), 1)))
            || ARRAY(SELECT twitch_sync.apply_offline(rest));
    END IF;
    IF n_logins > 0 THEN
        PERFORM twitch_sync.update_logins(obs);
    END IF;
    -- a broadcast's airtime changes from its start, or from its end: a
    -- backfill if that is older than the rollups
    PERFORM twitch_sync.mark_rollups_stale(
        min(CASE WHEN t.event = 'online' AND NOT t.reopened THEN t.started_at ELSE t.ended_at END), NULL)
       FROM unnest(changes) t
    HAVING min(CASE WHEN t.event = 'online' AND NOT t.reopened THEN t.started_at ELSE t.ended_at END) IS NOT NULL;
    result.live := n_live - cardinality(conflicted);  -- one live observation each
    result.updated := cardinality(continuing);
    result.started := cardinality(live_changes);
    result.conflicted := conflicted;
    IF cardinality(changes) = 0 THEN
        result.ended := 0;
        result.events := 0;
        RETURN result;
    END IF;
    -- A restart is reported once, as the new broadcast's 'restart' event
    -- naming the broadcast it superseded.
    changes := ARRAY(
        SELECT CASE WHEN t.event = 'online' AND p.stream_id IS NOT NULL
                    THEN ROW('restart', t.broadcaster_id, t.stream_id, t.reopened, p.stream_id,
                             t.viewer_count, t.peak_viewer_count, t.title, t.game_name,
                             t.started_at, NULL, t.at)::twitch_sync.transition
                    ELSE t END
          FROM unnest(changes) t
          LEFT JOIN unnest(changes) p ON p.event = 'restart' AND p.broadcaster_id = t.broadcaster_id
                                     AND t.event = 'online'
         WHERE t.event <> 'restart');
    result.ended := (SELECT count(*) FROM unnest(changes) t WHERE t.event = 'offline')
                  + (SELECT count(*) FROM unnest(changes) t WHERE t.event = 'restart');
    result.events := twitch_sync.emit_events(changes, notify, obs);
    RETURN result;
END
$$;

-- A poll chunk as observations: the live streams Helix listed (columns of
-- the same length, one element per stream), except those of the broadcasters
-- in `continuing` (already applied by continue_broadcasts), and the checked
-- channels it did not list.
CREATE FUNCTION twitch_sync.poll_observations(
    observed_at timestamptz, broadcaster_id text[], stream_id text[], login text[],
    viewer_count integer[], title text[], game_id text[], game_name text[], language text[],
    started_at timestamptz[], not_listed text[], continuing text[])
RETURNS twitch_sync.observation[]
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(
        SELECT ROW('poll', observed_at, l.broadcaster_id, 'live', l.stream_id, l.login,
                   l.viewer_count, l.title, l.game_id, l.game_name, l.language,
                   l.started_at)::twitch_sync.observation
          FROM unnest(broadcaster_id, stream_id, login, viewer_count, title, game_id,
                      game_name, language, started_at)
            AS l(broadcaster_id, stream_id, login, viewer_count, title, game_id, game_name,
                 language, started_at)
         WHERE NOT EXISTS (SELECT 1 FROM unnest(continuing) c(id) WHERE c.id = l.broadcaster_id)
        UNION ALL
        SELECT ROW('poll', observed_at, n.id, 'not_listed', NULL, NULL, NULL, NULL, NULL,
                   NULL, NULL, NULL)::twitch_sync.observation
          FROM unnest(not_listed) AS n(id))
$$;

-- One poll chunk through the transition layer, in a subtransaction: the
-- live streams Helix listed (columns of the same length, one element per
-- stream and at most one per broadcaster, as for apply_observations; `login`
-- only where it differs from the stored one) and the checked
-- channels it did not list that may have a live row. The streams that
-- continue their broadcast go straight to continue_broadcasts (with their
-- logins to update_logins); everything else becomes observations for
-- apply_observations, which applies them exactly as if it had been given the
-- whole chunk. A chunk that still fails (the last line of defence behind the
-- validation in Rust) is rolled back alone and reported with its error, so
-- the run goes on and records itself. Query cancel is not caught.
CREATE FUNCTION twitch_sync.apply_poll(
    observed_at timestamptz, broadcaster_id text[], stream_id text[], login text[],
    viewer_count integer[], title text[], game_id text[], game_name text[], language text[],
    started_at timestamptz[], not_listed text[], offline_after_misses integer, notify boolean,
    OUT applied twitch_sync.applied, OUT error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    continuing text[] := '{}';
    rest twitch_sync.observation[];
    state text;
    message text;
BEGIN
    PERFORM twitch_sync.mark_rollups_stale(observed_at, observed_at);  -- a poll of the past (else one read)
    IF cardinality(broadcaster_id) > 0 THEN
        continuing := twitch_sync.continue_broadcasts('poll', observed_at, broadcaster_id,
            stream_id, viewer_count, title, game_id, game_name, language, started_at);
        IF EXISTS (SELECT 1 FROM unnest(login) l WHERE l IS NOT NULL) THEN
            PERFORM twitch_sync.update_logins(ARRAY(
                SELECT ROW('poll', observed_at, l.broadcaster_id, 'live', NULL, l.login, NULL,
                           NULL, NULL, NULL, NULL, NULL)::twitch_sync.observation
                  FROM unnest(broadcaster_id, login) AS l(broadcaster_id, login)
                 WHERE l.login IS NOT NULL
                   AND l.broadcaster_id IN (SELECT c FROM unnest(continuing) c)));
        END IF;
    END IF;
    IF cardinality(continuing) = cardinality(broadcaster_id) THEN
        rest := CASE WHEN cardinality(not_listed) = 0 THEN '{}'
                     ELSE twitch_sync.poll_observations(observed_at, '{}', '{}', '{}', '{}', '{}',
                              '{}', '{}', '{}', '{}', not_listed, '{}') END;
    ELSE
        rest := twitch_sync.poll_observations(observed_at, broadcaster_id, stream_id, login,
                                              viewer_count, title, game_id, game_name, language,
                                              started_at, not_listed, continuing);
    END IF;
    IF cardinality(rest) > 0 THEN
        applied := twitch_sync.apply_observations(rest, offline_after_misses, notify);
    ELSE
        applied := ROW(0, 0, 0, 0, '{}', 0)::twitch_sync.applied;
    END IF;
    applied.live := applied.live + cardinality(continuing);
    applied.updated := applied.updated + cardinality(continuing);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
    applied := NULL;
    error := pg_catalog.format('writing %s observations failed (SQLSTATE %s): %s',
                               coalesce(cardinality(broadcaster_id), 0)
                                   + coalesce(cardinality(not_listed), 0), state,
                               pg_catalog.left(message, 500));
END
$$;

-- Ends the live broadcasts of channels nobody will check any more (untracked,
-- disabled, deleted): an 'offline' observation each (source 'untrack'), all in
-- one apply_observations call, with their events. `logins` (one per id, or
-- NULL): the channels' logins, for channels whose rows are already gone (the
-- delete trigger), so that their events still carry them. Channels without a
-- live broadcast cost one probe of streams_one_live_per_broadcaster.
CREATE FUNCTION twitch_sync.end_live_broadcasts(broadcaster_ids text[], logins text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obs twitch_sync.observation[];
BEGIN
    obs := ARRAY(SELECT DISTINCT ON (s.broadcaster_id)
                        ROW('untrack', pg_catalog.now(), s.broadcaster_id, 'offline', NULL, i.login,
                            NULL, NULL, NULL, NULL, NULL, NULL)::twitch_sync.observation
                   FROM unnest(broadcaster_ids, logins) AS i(broadcaster_id, login)
                   JOIN twitch_sync.streams s ON s.broadcaster_id = i.broadcaster_id AND s.is_live
                  ORDER BY s.broadcaster_id, i.login);
    IF cardinality(obs) > 0 THEN
        PERFORM twitch_sync.apply_observations(obs, 1,
            twitch_sync.setting('twitch_sync.notify_events')::boolean);
    END IF;
END
$$;

-- A channel disabled (enabled set to false), deleted or truncated away is not
-- checked any more: its live broadcast ends now, as untrack() ends it.
-- Statement triggers with transition tables: one statement disabling or
-- deleting many channels ends all their live broadcasts in one
-- end_live_broadcasts call (a channel's id cannot change: channels_validate,
-- so old and new rows pair by it). The delete trigger runs after the rows
-- are gone, so it passes their logins for the 'offline' events; the truncate
-- trigger runs before, and reads them. PostgreSQL allows no transition
-- tables on a trigger with a column list (UPDATE OF enabled): the update
-- trigger fires for every UPDATE of channels, and looks for a disabled row
-- first (run()'s updates of checked_at and logins touch enabled channels
-- only). SECURITY DEFINER: a role allowed to update channels need not write
-- streams and events.
CREATE FUNCTION twitch_sync.channels_end_live() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
    logins text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(o.broadcaster_id), array_agg(o.login) INTO ids, logins
          FROM old_channels o;
        PERFORM twitch_sync.end_live_broadcasts(ids, logins);
    ELSIF TG_OP = 'TRUNCATE' THEN  -- before the rows go: no channel is left
        SELECT array_agg(s.broadcaster_id), array_agg(c.login) INTO ids, logins
          FROM twitch_sync.streams s
          LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = s.broadcaster_id
         WHERE s.is_live;
        PERFORM twitch_sync.end_live_broadcasts(ids, logins);
    ELSIF EXISTS (SELECT 1 FROM new_channels n WHERE NOT n.enabled) THEN
        PERFORM twitch_sync.end_live_broadcasts(ARRAY(
            SELECT o.broadcaster_id
              FROM old_channels o JOIN new_channels n ON n.broadcaster_id = o.broadcaster_id
             WHERE o.enabled AND NOT n.enabled));
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER channels_end_live_disabled AFTER UPDATE
    ON twitch_sync.channels REFERENCING OLD TABLE AS old_channels NEW TABLE AS new_channels
    FOR EACH STATEMENT
    EXECUTE FUNCTION twitch_sync.channels_end_live();
CREATE TRIGGER channels_end_live_deleted AFTER DELETE
    ON twitch_sync.channels REFERENCING OLD TABLE AS old_channels
    FOR EACH STATEMENT
    EXECUTE FUNCTION twitch_sync.channels_end_live();
CREATE TRIGGER channels_end_live_truncated BEFORE TRUNCATE
    ON twitch_sync.channels FOR EACH STATEMENT
    EXECUTE FUNCTION twitch_sync.channels_end_live();
