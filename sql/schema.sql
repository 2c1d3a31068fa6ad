-- twitch_sync: tables, validation, and the SQL-side functions.
-- The schema is a member of the extension: DROP EXTENSION twitch_sync CASCADE
-- removes it and everything below. (run() is created in it by pgrx, src/api.rs.)
--
-- Privileges: nothing here is readable or executable by PUBLIC. Grant on purpose
-- (README, "Privileges"). Functions that must read the credentials are
-- SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp, and every
-- object they touch is schema-qualified.

CREATE SCHEMA twitch_sync;
REVOKE ALL ON SCHEMA twitch_sync FROM PUBLIC;

-- Channels to keep current. Bulk-tracking with INSERT ... SELECT goes through
-- the same validation as track() (trigger below).
CREATE TABLE twitch_sync.channels (
    broadcaster_id  text PRIMARY KEY,
    login           text,
    enabled         boolean NOT NULL DEFAULT true,
    added_at        timestamptz NOT NULL DEFAULT now(),
    last_checked_at timestamptz,
    last_live_at    timestamptz,
    -- consecutive successful checks that did not list this channel's live stream
    missed_polls    integer NOT NULL DEFAULT 0,
    CONSTRAINT channels_broadcaster_id_format CHECK (broadcaster_id ~ '^[1-9][0-9]{0,19}$'),
    CONSTRAINT channels_login_format CHECK (login ~ '^[a-z0-9_]{1,25}$')
) WITH (fillfactor = 50);  -- every run updates every checked row: room for HOT updates
COMMENT ON TABLE twitch_sync.channels IS 'Twitch channels twitch_sync keeps current (twitch_sync.track / untrack).';

-- One row per broadcast (Twitch's stream id); at most one live row per broadcaster.
CREATE TABLE twitch_sync.streams (
    stream_id         text PRIMARY KEY,
    broadcaster_id    text NOT NULL,
    is_live           boolean NOT NULL DEFAULT true,
    viewer_count      integer NOT NULL DEFAULT 0 CHECK (viewer_count >= 0),
    peak_viewer_count integer NOT NULL DEFAULT 0,
    title             text NOT NULL DEFAULT '',
    game_id           text NOT NULL DEFAULT '',
    game_name         text NOT NULL DEFAULT '',
    language          text NOT NULL DEFAULT '',
    started_at        timestamptz,
    ended_at          timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT streams_peak_at_least_current CHECK (peak_viewer_count >= viewer_count),
    CONSTRAINT streams_ended_iff_not_live CHECK (is_live = (ended_at IS NULL))
) WITH (fillfactor = 70);  -- live rows are updated every run: room for HOT updates
CREATE UNIQUE INDEX streams_one_live_per_broadcaster ON twitch_sync.streams (broadcaster_id) WHERE is_live;
CREATE INDEX streams_broadcaster_started ON twitch_sync.streams (broadcaster_id, started_at DESC);
COMMENT ON TABLE twitch_sync.streams IS 'One row per Twitch broadcast; is_live rows are live now.';

-- One sample per live stream per run: the raw material for trends.
CREATE TABLE twitch_sync.viewer_samples (
    stream_id      text NOT NULL,
    broadcaster_id text NOT NULL,
    sampled_at     timestamptz NOT NULL,
    viewer_count   integer NOT NULL,
    PRIMARY KEY (stream_id, sampled_at)
);
CREATE INDEX viewer_samples_sampled_at ON twitch_sync.viewer_samples USING brin (sampled_at);

-- Every run() call, including skipped ones.
CREATE TABLE twitch_sync.runs (
    run_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL,
    status               text NOT NULL CHECK (status IN ('ok', 'partial', 'failed', 'skipped')),
    channels_checked     integer NOT NULL DEFAULT 0,
    live                 integer NOT NULL DEFAULT 0,
    updated              integer NOT NULL DEFAULT 0,
    started              integer NOT NULL DEFAULT 0,
    ended                integer NOT NULL DEFAULT 0,
    errors               integer NOT NULL DEFAULT 0,
    helix_requests       integer NOT NULL DEFAULT 0,
    retries              integer NOT NULL DEFAULT 0,
    rate_limited         integer NOT NULL DEFAULT 0,
    rate_limit_remaining integer,
    error                text
);
CREATE INDEX runs_started_at ON twitch_sync.runs (started_at);
CREATE INDEX runs_ok ON twitch_sync.runs (started_at) WHERE status = 'ok';

-- The app's credentials and its cached app access token. Readable only by the
-- extension's owner and superusers.
CREATE TABLE twitch_sync.credentials (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    client_id          text NOT NULL,
    client_secret      text NOT NULL,
    access_token       text,
    token_expires_at   timestamptz,
    token_validated_at timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- The last Ratelimit-* headers Helix sent, so the next run starts informed.
CREATE TABLE twitch_sync.rate_limit (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    bucket_limit integer NOT NULL,
    remaining   integer NOT NULL,
    reset_at    timestamptz NOT NULL,
    observed_at timestamptz NOT NULL
);

REVOKE ALL ON ALL TABLES IN SCHEMA twitch_sync FROM PUBLIC;

-- pg_dump keeps the data of these tables (they are the user's data, not the extension's).
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.channels', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.streams', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.viewer_samples', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs', '');
-- The sequence too: without it a restored database restarts run ids at 1 and
-- collides with the restored rows.
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.credentials', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.rate_limit', '');

-- Validation of channels, for track() and direct INSERT/UPDATE alike: SQLSTATE
-- 22023 with a message that says what a valid value looks like.
CREATE FUNCTION twitch_sync.channels_validate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.broadcaster_id IS NULL OR NEW.broadcaster_id !~ '^[1-9][0-9]{0,19}$' THEN
        RAISE EXCEPTION 'invalid broadcaster id: %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(NEW.broadcaster_id, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A broadcaster id is Twitch''s numeric user id as text: 1 to 20 digits, no '
                      || 'leading zero, no spaces, such as ''141981764''. Helix Get Users returns it.';
    END IF;
    IF NEW.login IS NOT NULL THEN
        NEW.login := pg_catalog.lower(NEW.login);
        IF NEW.login !~ '^[a-z0-9_]{1,25}$' THEN
            RAISE EXCEPTION 'invalid login: %', pg_catalog.quote_literal(pg_catalog.left(NEW.login, 40))
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A Twitch login is 1 to 25 letters, digits or underscores, such as '
                          || '''twitchdev''; pass NULL when you do not know it.';
        END IF;
    END IF;
    IF NEW.enabled IS NULL THEN
        NEW.enabled := true;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER channels_validate_insert BEFORE INSERT
    ON twitch_sync.channels FOR EACH ROW EXECUTE FUNCTION twitch_sync.channels_validate();
-- Only when a validated column really changes: run() stamps every checked channel
-- each pass, and a per-row trigger call there would cost more than the update itself.
CREATE TRIGGER channels_validate_update BEFORE UPDATE OF broadcaster_id, login, enabled
    ON twitch_sync.channels FOR EACH ROW
    WHEN (NEW.broadcaster_id IS DISTINCT FROM OLD.broadcaster_id OR NEW.login IS DISTINCT FROM OLD.login
          OR NEW.enabled IS DISTINCT FROM OLD.enabled)
    EXECUTE FUNCTION twitch_sync.channels_validate();

-- track(): start keeping a channel current. Idempotent; returns true when the
-- channel was not tracked (or was disabled) before. A login given later replaces
-- the stored one; NULL keeps it.
CREATE FUNCTION twitch_sync.track(broadcaster_id text, login text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was_new boolean;
BEGIN
    SELECT NOT c.enabled INTO was_new FROM twitch_sync.channels c
     WHERE c.broadcaster_id = track.broadcaster_id;
    INSERT INTO twitch_sync.channels AS c (broadcaster_id, login)
    VALUES (track.broadcaster_id, track.login)
    ON CONFLICT ON CONSTRAINT channels_pkey DO UPDATE
        SET login = coalesce(EXCLUDED.login, c.login), enabled = true;
    RETURN coalesce(was_new, true);
END
$$;

-- untrack(): stop keeping a channel current. Idempotent; returns true when it
-- was tracked. Its streams and samples stay as history; a stream still marked
-- live is ended now, since nobody will check it again.
CREATE FUNCTION twitch_sync.untrack(broadcaster_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_it boolean;
BEGIN
    IF untrack.broadcaster_id IS NULL OR untrack.broadcaster_id !~ '^[1-9][0-9]{0,19}$' THEN
        RAISE EXCEPTION 'invalid broadcaster id: %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(untrack.broadcaster_id, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A broadcaster id is Twitch''s numeric user id as text, such as ''141981764''.';
    END IF;
    DELETE FROM twitch_sync.channels c WHERE c.broadcaster_id = untrack.broadcaster_id;
    found_it := FOUND;
    UPDATE twitch_sync.streams s
       SET is_live = false, ended_at = pg_catalog.now(), updated_at = pg_catalog.now()
     WHERE s.broadcaster_id = untrack.broadcaster_id AND s.is_live;
    RETURN found_it;
END
$$;

-- set_credentials(): the Twitch app's client id and secret. Replacing them
-- drops the cached token, so the next run mints one for the new app.
CREATE FUNCTION twitch_sync.set_credentials(client_id text, client_secret text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF set_credentials.client_id IS NULL OR pg_catalog.btrim(set_credentials.client_id) = ''
       OR set_credentials.client_id ~ '[[:space:][:cntrl:]]' OR pg_catalog.length(set_credentials.client_id) > 256 THEN
        RAISE EXCEPTION 'invalid client id'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the Client ID of your app from the Twitch developer console '
                      || '(dev.twitch.tv/console/apps): a non-empty string without spaces.';
    END IF;
    IF set_credentials.client_secret IS NULL OR pg_catalog.btrim(set_credentials.client_secret) = ''
       OR set_credentials.client_secret ~ '[[:space:][:cntrl:]]' OR pg_catalog.length(set_credentials.client_secret) > 256 THEN
        RAISE EXCEPTION 'invalid client secret'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a Client Secret generated for your app in the Twitch developer console: '
                      || 'a non-empty string without spaces.';
    END IF;
    INSERT INTO twitch_sync.credentials AS c (singleton, client_id, client_secret)
    VALUES (true, set_credentials.client_id, set_credentials.client_secret)
    ON CONFLICT (singleton) DO UPDATE
        SET client_id = EXCLUDED.client_id,
            client_secret = EXCLUDED.client_secret,
            access_token = NULL, token_expires_at = NULL, token_validated_at = NULL,
            updated_at = pg_catalog.now();
END
$$;

-- apply_sync(): writes the answers of some checked channels with a handful of
-- set-based statements. Called by run() (a few times per run, as answers
-- arrive); p_checked are channels whose batch got a complete answer (with
-- p_listed: whether Helix listed them live, and p_login: their login, if
-- listed), the other arrays describe their live streams (one per broadcaster). Lookups go through
-- indexes with the given ids, so a call costs about what its own channels cost.
-- Returns the counts and the events: `online` (a new broadcast, or an ended one
-- whose stream id came back: "reopened": true), `restart` (a channel ended one
-- broadcast and started another: "previous_stream_id"), `offline`. With
-- p_notify, each event is also sent with NOTIFY twitch_sync (delivered only if
-- the run's transaction commits).
CREATE FUNCTION twitch_sync.apply_sync(
    p_checked text[], p_listed boolean[], p_login text[],
    p_offline_after_misses integer,
    p_notify boolean,
    p_stream_id text[], p_broadcaster_id text[], p_viewer_count integer[],
    p_title text[], p_game_id text[], p_game_name text[], p_language text[], p_started_at text[]
) RETURNS jsonb
-- jit off: these are short OLTP statements; JIT compilation cost 250 ms for 10,000 channels.
-- No hash or merge joins: a call covers a few thousand channels of a table that may
-- hold 100,000; index probes for those beat scanning the whole table on every call
-- (measured: 20 ms instead of 130 ms per call of 6,250 channels).
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
    SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    ts timestamptz := pg_catalog.clock_timestamp();
    misses integer := greatest(p_offline_after_misses, 1);
    n_updated integer; n_started integer; n_reopened integer;
    n_restart_ended integer; n_missed_ended integer;
    reopened text[];  -- stream ids that were ended and are listed live again
    previous jsonb;   -- broadcaster id -> stream id it restarted from
    events jsonb;
    offline jsonb;
BEGIN
    reopened := ARRAY(SELECT s.stream_id FROM twitch_sync.streams s
                       WHERE s.stream_id = ANY (p_stream_id) AND NOT s.is_live);

    -- The previous broadcast of a channel that restarted under a new stream id ends.
    WITH ended AS (
        UPDATE twitch_sync.streams s
           SET is_live = false, ended_at = ts, updated_at = ts
          FROM unnest(p_stream_id, p_broadcaster_id) AS i(stream_id, broadcaster_id)
         WHERE s.broadcaster_id = i.broadcaster_id AND s.is_live AND s.stream_id <> i.stream_id
        RETURNING s.stream_id, s.broadcaster_id
    )
    SELECT count(*), coalesce(jsonb_object_agg(e.broadcaster_id, e.stream_id), '{}')
      INTO n_restart_ended, previous
      FROM ended e;

    -- Live streams: update known rows (reopening one that was ended, same stream id),
    -- insert new broadcasts.
    WITH upserted AS (
        INSERT INTO twitch_sync.streams AS s
            (stream_id, broadcaster_id, is_live, viewer_count, peak_viewer_count, title,
             game_id, game_name, language, started_at, ended_at, updated_at)
        SELECT i.stream_id, i.broadcaster_id, true, i.viewer_count, i.viewer_count, i.title,
               i.game_id, i.game_name, i.language, i.started_at::timestamptz, NULL, ts
          FROM unnest(p_stream_id, p_broadcaster_id, p_viewer_count, p_title,
                      p_game_id, p_game_name, p_language, p_started_at)
            AS i(stream_id, broadcaster_id, viewer_count, title, game_id, game_name, language, started_at)
        ON CONFLICT (stream_id) DO UPDATE
           SET is_live = true, ended_at = NULL, viewer_count = EXCLUDED.viewer_count,
               peak_viewer_count = greatest(s.peak_viewer_count, EXCLUDED.viewer_count),
               title = EXCLUDED.title, game_id = EXCLUDED.game_id, game_name = EXCLUDED.game_name,
               language = EXCLUDED.language, updated_at = ts
        RETURNING s.stream_id, s.broadcaster_id, s.viewer_count, s.title, s.game_name, s.started_at,
                  s.xmax = 0 AS inserted, s.stream_id = ANY (reopened) AS came_back
    )
    SELECT count(*) FILTER (WHERE NOT u.inserted AND NOT u.came_back),
           count(*) FILTER (WHERE u.inserted),
           count(*) FILTER (WHERE u.came_back),
           coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'event', CASE WHEN previous ? u.broadcaster_id THEN 'restart' ELSE 'online' END,
               'reopened', CASE WHEN u.came_back THEN true END,
               'previous_stream_id', previous ->> u.broadcaster_id,
               'stream_id', u.stream_id, 'broadcaster_id', u.broadcaster_id,
               'viewer_count', u.viewer_count, 'title', pg_catalog.left(u.title, 300),
               'game_name', pg_catalog.left(u.game_name, 200), 'started_at', u.started_at, 'at', ts)))
               FILTER (WHERE u.inserted OR u.came_back), '[]')
      INTO n_updated, n_started, n_reopened, events
      FROM upserted u;

    INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
    SELECT i.stream_id, i.broadcaster_id, ts, i.viewer_count
      FROM unnest(p_stream_id, p_broadcaster_id, p_viewer_count) AS i(stream_id, broadcaster_id, viewer_count);

    -- Checked channels: stamp them and count a miss where a live row was not listed;
    -- a live row missed `misses` times in a row ends (and the count starts over).
    WITH checked AS (
        SELECT k.broadcaster_id, k.login, coalesce(k.listed, false) AS listed,
               r.stream_id IS NOT NULL AS has_live_row
          FROM unnest(p_checked, p_login, p_listed) AS k(broadcaster_id, login, listed)
          LEFT JOIN twitch_sync.streams r ON r.broadcaster_id = k.broadcaster_id AND r.is_live
    ), stamped AS (
        UPDATE twitch_sync.channels c
           SET last_checked_at = ts,
               last_live_at = CASE WHEN x.listed THEN ts ELSE c.last_live_at END,
               login = coalesce(x.login, c.login),
               missed_polls = CASE WHEN x.has_live_row AND NOT x.listed AND c.missed_polls + 1 < misses
                                   THEN c.missed_polls + 1 ELSE 0 END
          FROM checked x
         WHERE c.broadcaster_id = x.broadcaster_id
        RETURNING c.broadcaster_id, x.has_live_row AND NOT x.listed AND c.missed_polls = 0 AS ends
    ), ended AS (
        UPDATE twitch_sync.streams s
           SET is_live = false, ended_at = ts, updated_at = ts
          FROM stamped st
         WHERE st.ends AND s.broadcaster_id = st.broadcaster_id AND s.is_live
        RETURNING s.stream_id, s.broadcaster_id, s.viewer_count, s.title, s.game_name,
                  s.started_at, s.ended_at, s.peak_viewer_count
    )
    SELECT count(*), coalesce(jsonb_agg(jsonb_build_object(
               'event', 'offline', 'stream_id', e.stream_id, 'broadcaster_id', e.broadcaster_id,
               'viewer_count', e.viewer_count, 'peak_viewer_count', e.peak_viewer_count,
               'title', pg_catalog.left(e.title, 300), 'game_name', pg_catalog.left(e.game_name, 200),
               'started_at', e.started_at, 'ended_at', e.ended_at, 'at', ts)), '[]')
      INTO n_missed_ended, offline
      FROM ended e;
    events := events || offline;

    -- Events carry the channel's login; sent at commit, never from a rolled-back run.
    IF jsonb_array_length(events) > 0 THEN
        SELECT coalesce(jsonb_agg(ev || jsonb_build_object('login', c.login)), '[]')
          INTO events
          FROM jsonb_array_elements(events) ev
          LEFT JOIN twitch_sync.channels c ON c.broadcaster_id = ev ->> 'broadcaster_id';
        IF p_notify THEN
            PERFORM pg_catalog.pg_notify('twitch_sync', ev::text) FROM jsonb_array_elements(events) ev;
        END IF;
    END IF;

    RETURN jsonb_build_object(
        'updated', n_updated, 'started', n_started + n_reopened,
        'ended', n_restart_ended + n_missed_ended,
        'live', coalesce(array_length(p_stream_id, 1), 0),
        'changes', events);
END
$$;
