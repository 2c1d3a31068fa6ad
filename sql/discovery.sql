-- twitch_sync: discovery by category (issue 15). A tracked category's
-- directory (Helix Get Streams by game_id, optionally one language) is walked
-- by every run(); channels live in it that are not tracked are tracked
-- automatically, up to the category's cap, and marked as discovered
-- (channels.discovered_via / discovered_at). The live streams a directory lists
-- are observations like any other: run() applies them through the transition
-- layer (twitch_sync.apply_poll). Absence from a directory never ends a
-- stream: the channel may have ended, or switched category or language; only
-- id checks end streams. The rules of the walk are in crates/core/src/discovery.rs.

-- The categories whose live streams are discovered. game_id is the key: one
-- filter and one cap per category (track_category again replaces them).
CREATE TABLE twitch_sync.tracked_categories (
    game_id       text PRIMARY KEY,
    -- NULL: every language; else an ISO 639-1 code ('en'), a region form ('zh-hk'), 'asl' or 'other'
    language      text,
    -- at most this many tracked channels may have been added by this category
    max_channels  integer NOT NULL DEFAULT 1000,
    added_at      timestamptz NOT NULL DEFAULT now(),
    -- its last walk: when, how many pages and live streams, how it ended, its error
    last_paged_at timestamptz,
    last_pages    integer,
    last_streams  integer,
    last_end      text,
    last_error    text,
    -- its last walk's floor when it ended 'truncated' (its page allowance ran
    -- out): the lowest viewer count on its last page; NULL otherwise. Adaptive
    -- polling leaves a live channel to the next walk only if its count is at
    -- or above it (a 'complete' walk listed every live stream).
    last_floor_viewers integer,
    -- channels it has added, in all (untracked ones included)
    discovered    integer NOT NULL DEFAULT 0,
    CONSTRAINT tracked_categories_game_id_format CHECK (twitch_sync.is_game_id(game_id)),
    CONSTRAINT tracked_categories_language_format CHECK (twitch_sync.is_language(language)),
    CONSTRAINT tracked_categories_max_channels CHECK (max_channels BETWEEN 1 AND 100000),
    CONSTRAINT tracked_categories_last_end
        CHECK (last_end IN ('complete', 'truncated', 'empty_page', 'cursor_loop', 'failed'))
);
COMMENT ON TABLE twitch_sync.tracked_categories IS 'Categories whose live streams run() discovers and tracks (twitch_sync.track_category / untrack_category).';
REVOKE ALL ON twitch_sync.tracked_categories FROM PUBLIC;
-- pg_dump keeps it: which categories to discover is the user's configuration.
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.tracked_categories', '');

-- The cap counts the channels a category added that are still in channels.
CREATE INDEX channels_discovered_via ON twitch_sync.channels (discovered_via)
    WHERE discovered_via IS NOT NULL;

-- track_category(): discover the live streams of a category. Idempotent;
-- returns true when the category was not tracked. Called again, it replaces
-- the language filter and the cap. SQLSTATE 22023 for bad arguments.
CREATE FUNCTION twitch_sync.track_category(game_id text, language text DEFAULT NULL,
                                           max_channels integer DEFAULT 1000) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lang text := pg_catalog.lower(track_category.language);
    was_new boolean;
BEGIN
    IF NOT coalesce(twitch_sync.is_game_id(track_category.game_id), false) THEN
        RAISE EXCEPTION 'invalid game id: %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(track_category.game_id, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A game (category) id is Twitch''s numeric id as text: 1 to 20 digits, no leading zero, such as '
                      || '''509658'' (Just Chatting). Helix Get Games returns it; twitch_sync.categories '
                      || 'lists the ones seen so far.';
    END IF;
    IF lang IS NOT NULL AND NOT twitch_sync.is_language(lang) THEN
        RAISE EXCEPTION 'invalid language: %', pg_catalog.quote_literal(pg_catalog.left(track_category.language, 40))
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass an ISO 639-1 two-letter code as Twitch uses them (''en'', ''de'', ''zh-hk''), '
                      || '''asl'' (American Sign Language), ''other'', or NULL for every language.';
    END IF;
    IF track_category.max_channels IS NULL OR track_category.max_channels NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'invalid max_channels: %', coalesce(track_category.max_channels::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass 1 to 100000: how many channels this category may add to the tracked set '
                      || '(each run reads ceil(max_channels / 100) pages of its directory at most).';
    END IF;
    SELECT false INTO was_new FROM twitch_sync.tracked_categories t
     WHERE t.game_id = track_category.game_id;
    INSERT INTO twitch_sync.tracked_categories AS t (game_id, language, max_channels)
    VALUES (track_category.game_id, lang, track_category.max_channels)
    ON CONFLICT ON CONSTRAINT tracked_categories_pkey DO UPDATE
        SET language = EXCLUDED.language, max_channels = EXCLUDED.max_channels,
            -- the last walk listed another language: what it reached says
            -- nothing of the new filter's directory (adaptive polling's cover)
            last_pages = CASE WHEN t.language IS NOT DISTINCT FROM EXCLUDED.language THEN t.last_pages END,
            last_end = CASE WHEN t.language IS NOT DISTINCT FROM EXCLUDED.language THEN t.last_end END,
            last_floor_viewers = CASE WHEN t.language IS NOT DISTINCT FROM EXCLUDED.language
                                      THEN t.last_floor_viewers END;
    RETURN coalesce(was_new, true);
END
$$;

-- untrack_category(): stop discovering a category; true when it was tracked.
-- The channels it discovered stay tracked, unless untrack_channels: then they
-- are untracked as untrack() does (a stream still live is ended, with its
-- 'offline' event, through the transition layer; history stays).
CREATE FUNCTION twitch_sync.untrack_category(game_id text, untrack_channels boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_it boolean;
BEGIN
    IF NOT coalesce(twitch_sync.is_game_id(untrack_category.game_id), false) THEN
        RAISE EXCEPTION 'invalid game id: %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(untrack_category.game_id, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A game (category) id is Twitch''s numeric id as text (no leading zero), such as ''509658''.';
    END IF;
    IF untrack_channels IS NULL THEN
        RAISE EXCEPTION 'untrack_channels must be true or false'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass false (the default) to keep the channels the category discovered, true to untrack them.';
    END IF;
    DELETE FROM twitch_sync.tracked_categories t WHERE t.game_id = untrack_category.game_id;
    found_it := FOUND;
    IF untrack_channels THEN
        PERFORM twitch_sync.end_live_broadcasts(ARRAY(
            SELECT c.broadcaster_id FROM twitch_sync.channels c
             WHERE c.discovered_via = untrack_category.game_id));
        DELETE FROM twitch_sync.channels c WHERE c.discovered_via = untrack_category.game_id;
    END IF;
    RETURN found_it;
END
$$;

-- What run() does with one directory walk's live streams (broadcaster ids and
-- logins, checked in Rust, in directory order: viewer count, most first):
-- tracks those not in channels, in that order, while the category's cap
-- allows (channels that exist — tracked, or disabled — are never touched),
-- and records the walk on the category (floor_viewers: the walk's floor, NULL
-- unless it ended 'truncated'). A category untracked meanwhile adds
-- nothing. Returns the channels added, how many new ones the cap left out,
-- and, instead of raising, the error of a write that failed (nothing of it is
-- kept; the run goes on and records itself).
CREATE FUNCTION twitch_sync.discover_channels(
    game_id text, broadcaster_ids text[], logins text[], pages integer, streams integer,
    walk_end text, walk_error text, floor_viewers integer,
    OUT added text[], OUT capped integer, OUT error text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cap integer;
    have integer;
    candidates integer;
    state text;
    message text;
BEGIN
    added := '{}';
    capped := 0;
    SELECT t.max_channels INTO cap FROM twitch_sync.tracked_categories t
     WHERE t.game_id = discover_channels.game_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) INTO have FROM twitch_sync.channels c WHERE c.discovered_via = discover_channels.game_id;
    WITH candidate AS (
        SELECT u.id, u.login, u.ord
          FROM unnest(broadcaster_ids, logins) WITH ORDINALITY AS u(id, login, ord)
         WHERE NOT EXISTS (SELECT 1 FROM twitch_sync.channels c WHERE c.broadcaster_id = u.id)
    ), inserted AS (
        INSERT INTO twitch_sync.channels AS c (broadcaster_id, login, discovered_via, discovered_at)
        SELECT k.id, k.login, discover_channels.game_id, pg_catalog.now()
          FROM candidate k ORDER BY k.ord LIMIT greatest(cap - have, 0)
        ON CONFLICT DO NOTHING
        RETURNING c.broadcaster_id
    )
    SELECT coalesce((SELECT array_agg(i.broadcaster_id) FROM inserted i), '{}'),
           (SELECT count(*) FROM candidate)
      INTO added, candidates;
    capped := greatest(candidates - cardinality(added), 0);
    UPDATE twitch_sync.tracked_categories t
       SET last_paged_at = pg_catalog.now(), last_pages = pages, last_streams = streams,
           last_end = walk_end, last_error = walk_error, last_floor_viewers = floor_viewers,
           discovered = t.discovered + cardinality(added)
     WHERE t.game_id = discover_channels.game_id;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
    added := '{}';
    capped := 0;
    error := pg_catalog.format('discovering channels of category %s failed (SQLSTATE %s): %s',
                               discover_channels.game_id, state, pg_catalog.left(message, 500));
END
$$;
