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

-- The rules for Twitch ids and logins: written once, here. (The Rust core
-- applies the same rules to what Helix sends, before anything reaches SQL.)
-- No SET clause, so they inline; the operator is schema-qualified instead.
CREATE FUNCTION twitch_sync.is_broadcaster_id(id text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT id OPERATOR(pg_catalog.~) '^[1-9][0-9]{0,19}$'
$$;
COMMENT ON FUNCTION twitch_sync.is_broadcaster_id(text) IS 'Twitch''s numeric user id as text: 1 to 20 digits, no leading zero.';
CREATE FUNCTION twitch_sync.is_game_id(id text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT id OPERATOR(pg_catalog.~) '^[1-9][0-9]{0,19}$'
$$;
COMMENT ON FUNCTION twitch_sync.is_game_id(text) IS 'Twitch''s numeric game (category) id as text: 1 to 20 digits, no leading zero.';
CREATE FUNCTION twitch_sync.is_login(login text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT login OPERATOR(pg_catalog.~) '^[a-z0-9_]{1,25}$'
$$;
COMMENT ON FUNCTION twitch_sync.is_login(text) IS 'A Twitch login: 1 to 25 lowercase letters, digits or underscores.';
-- A stream language as Twitch uses them: an ISO 639-1 code ('en'), with a
-- region ('zh-hk'), 'asl' (American Sign Language) or 'other'; lowercase.
CREATE FUNCTION twitch_sync.is_language(code text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT code OPERATOR(pg_catalog.=) ANY ('{asl,other}'::text[])
        OR code OPERATOR(pg_catalog.~) '^[a-z]{2}(-[a-z]{2})?$'
           AND pg_catalog.left(code, 2) OPERATOR(pg_catalog.=) ANY (
'{aa,ab,ae,af,ak,am,an,ar,as,av,ay,az,ba,be,bg,bh,bi,bm,bn,bo,br,bs,ca,ce,ch,co,cr,
       cs,cu,cv,cy,da,de,dv,dz,ee,el,en,eo,es,et,eu,fa,ff,fi,fj,fo,fr,fy,ga,gd,gl,
       gn,gu,gv,ha,he,hi,ho,hr,ht,hu,hy,hz,ia,id,ie,ig,ii,ik,io,is,it,iu,ja,jv,ka,
       kg,ki,kj,kk,kl,km,kn,ko,kr,ks,ku,kv,kw,ky,la,lb,lg,li,ln,lo,lt,lu,lv,mg,mh,
       mi,mk,ml,mn,mr,ms,mt,my,na,nb,nd,ne,ng,nl,nn,no,nr,nv,ny,oc,oj,om,or,os,pa,
       pi,pl,ps,pt,qu,rm,rn,ro,ru,rw,sa,sc,sd,se,sg,si,sk,sl,sm,sn,so,sq,sr,ss,st,
       su,sv,sw,ta,te,tg,th,ti,tk,tl,tn,to,tr,ts,tt,tw,ty,ug,uk,ur,uz,ve,vi,vo,wa,
       wo,xh,yi,yo,za,zh,zu}'::text[])
$$;
COMMENT ON FUNCTION twitch_sync.is_language(text) IS 'A stream language as Twitch uses them: an ISO 639-1 code, optionally with a region (''zh-hk''), ''asl'' or ''other''.';
-- A type for apps that store broadcaster ids themselves.
CREATE DOMAIN twitch_sync.broadcaster_id AS text
    CONSTRAINT broadcaster_id_format CHECK (twitch_sync.is_broadcaster_id(VALUE));
COMMENT ON DOMAIN twitch_sync.broadcaster_id IS 'Twitch''s numeric user id as text: 1 to 20 digits, no leading zero.';
-- Raises SQLSTATE 22023, saying what a broadcaster id looks like, unless id is one.
CREATE FUNCTION twitch_sync.check_broadcaster_id(id text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT coalesce(twitch_sync.is_broadcaster_id(id), false) THEN
        RAISE EXCEPTION 'invalid broadcaster id: %',
                coalesce(pg_catalog.quote_literal(pg_catalog.left(id, 40)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A broadcaster id is Twitch''s numeric user id as text: 1 to 20 digits, no '
                      || 'leading zero, no spaces, such as ''141981764''. Helix Get Users returns it.';
    END IF;
END
$$;

-- Channels to keep current. Bulk-tracking with INSERT ... SELECT goes through
-- the same validation as track() (trigger below).
CREATE TABLE twitch_sync.channels (
    broadcaster_id  text PRIMARY KEY,
    login           text,
    enabled         boolean NOT NULL DEFAULT true,
    added_at        timestamptz NOT NULL DEFAULT now() CHECK (isfinite(added_at)),
    -- adaptive polling (twitch_sync.adaptive_polling): intervals are divided
    -- by 1 + priority (twitch_sync.set_priority), and its last successful check
    priority        smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 10),
    checked_at      timestamptz CHECK (isfinite(checked_at)),
    -- discovery (sql/discovery.sql): the category whose directory added this
    -- channel, and when; NULL for channels tracked otherwise (track() adopts a
    -- discovered channel: discovered_via becomes NULL, discovered_at stays)
    discovered_via  text,
    discovered_at   timestamptz,
    CONSTRAINT channels_broadcaster_id_format CHECK (twitch_sync.is_broadcaster_id(broadcaster_id)),
    CONSTRAINT channels_login_format CHECK (twitch_sync.is_login(login))
);
COMMENT ON TABLE twitch_sync.channels IS 'Twitch channels twitch_sync keeps current (twitch_sync.track / untrack).';

-- One row per broadcast (Twitch's stream id); at most one live row per broadcaster.
CREATE TABLE twitch_sync.streams (
    stream_id         text NOT NULL,
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
    -- when a source last saw this broadcast live
    last_seen_at      timestamptz,
    -- live rows: consecutive successful checks that did not list this broadcast
    -- (it ends at twitch_sync.offline_after_misses); kept on the row that is
    -- written anyway, so a listing resets it for free
    missed_polls      integer NOT NULL DEFAULT 0,
    -- Analytics of the broadcast, kept as its samples are recorded (the same
    -- rules as a recomputation from viewer_samples; README "Analytics"):
    first_seen_at     timestamptz,  -- when a source first saw it live
    peak_at           timestamptz,  -- the first sample at peak_viewer_count
    sample_count      integer NOT NULL DEFAULT 0,
    viewer_seconds    double precision NOT NULL DEFAULT 0,  -- sum of viewers x seconds
    covered_seconds   double precision NOT NULL DEFAULT 0,  -- seconds between samples not further apart than the gap limit
    last_sampled_at   timestamptz,
    changed_at        timestamptz,  -- its title or category last changed (twitch_sync.stream_changes)
    -- its latest sample's category, and the interval that sample closed (the
    -- previous sample's time, count and category; NULL when none within the
    -- gap limit), which the sample carries (viewer_samples.prev_*)
    sampled_game_id   text,
    prev_sampled_at   timestamptz,
    prev_viewer_count integer,
    prev_game_id      text,
    -- the source ('poll', 'eventsub') and time of its last start or end, for
    -- the grace rule between polling and events (twitch_sync.held_by_events)
    state_source      text,
    state_at          timestamptz,
    -- the broadcaster leads every key: the table can be distributed by it
    CONSTRAINT streams_pkey PRIMARY KEY (broadcaster_id, stream_id),
    CONSTRAINT streams_peak_at_least_current CHECK (peak_viewer_count >= viewer_count),
    CONSTRAINT streams_ended_iff_not_live CHECK (is_live = (ended_at IS NULL)),
    -- the times maintain() and the dashboard count days from are finite
    CONSTRAINT streams_times_finite
        CHECK (isfinite(started_at) AND isfinite(ended_at) AND isfinite(first_seen_at) AND isfinite(last_seen_at))
) WITH (fillfactor = 70);  -- live rows are updated every run: room for HOT updates
CREATE UNIQUE INDEX streams_one_live_per_broadcaster ON twitch_sync.streams (broadcaster_id) WHERE is_live;
CREATE INDEX streams_broadcaster_started ON twitch_sync.streams (broadcaster_id, started_at DESC);
-- a stream id belongs to one broadcaster: the transition layer checks with this
CREATE INDEX streams_stream_id ON twitch_sync.streams (stream_id);
-- live broadcasts without Twitch's started_at (it was missing or refused):
-- usually none, so a poll learns there is nothing to fill in from an empty
-- index (twitch_sync.continue_broadcasts)
CREATE INDEX streams_live_without_start ON twitch_sync.streams (broadcaster_id)
    WHERE is_live AND started_at IS NULL;
COMMENT ON TABLE twitch_sync.streams IS 'One row per Twitch broadcast; is_live rows are live now.';

-- One sample per live stream per run: the raw material for trends.
-- Partitioned by UTC day (twitch_sync.viewer_samples_YYYYMMDD, created ahead
-- by twitch_sync.maintain() and, for today and tomorrow, by run()); retention
-- drops whole days. The day partitions are not members of the extension, so
-- pg_dump keeps them and their rows like any table. A sample of a day without
-- a partition lands in viewer_samples_default, and maintain() moves it into
-- its day's partition.
CREATE TABLE twitch_sync.viewer_samples (
    stream_id      text NOT NULL,
    broadcaster_id text NOT NULL,
    sampled_at     timestamptz NOT NULL CHECK (isfinite(sampled_at)),
    viewer_count   integer NOT NULL CHECK (viewer_count >= 0),
    game_id        text,  -- the category at the time of the sample
    -- The interval this sample closes: the broadcast's previous sample (its
    -- time, count and category) when that came within the gap limit, else
    -- NULL. Written with the sample, so analytics read intervals without
    -- sorting samples (twitch_sync.sample_intervals). Always before the
    -- sample (a row written by hand with a later one would count a negative
    -- interval).
    prev_sampled_at   timestamptz CHECK (isfinite(prev_sampled_at) AND prev_sampled_at < sampled_at),
    prev_viewer_count integer CHECK (prev_viewer_count >= 0),
    prev_game_id      text
) PARTITION BY RANGE (sampled_at);
-- Each partition has its own primary key (broadcaster_id, sampled_at,
-- stream_id): led by the broadcaster (distribution), serving "one channel over
-- a range", and unique overall since the partition key is in it. None on the
-- parent, so that pg_restore can attach the dumped day partitions.
CREATE TABLE twitch_sync.viewer_samples_default PARTITION OF twitch_sync.viewer_samples DEFAULT;
ALTER TABLE twitch_sync.viewer_samples_default
    ADD CONSTRAINT viewer_samples_default_pkey PRIMARY KEY (broadcaster_id, sampled_at, stream_id);

-- Every run() call, including skipped ones.
CREATE TABLE twitch_sync.runs (
    run_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at           timestamptz NOT NULL CHECK (isfinite(started_at)),
    finished_at          timestamptz NOT NULL CHECK (isfinite(finished_at)),
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
    error                text,
    -- channels left as they were because an entry about them was dropped
    unknown              integer NOT NULL DEFAULT 0,
    -- entries of Helix answers dropped as bad (ids, conflicts, malformed)
    bad_entries          integer NOT NULL DEFAULT 0,
    -- adaptive polling: budget, due and chosen channels, staleness per class
    polling              jsonb
);
CREATE INDEX runs_started_at ON twitch_sync.runs (started_at);
CREATE INDEX runs_ok ON twitch_sync.runs (started_at) WHERE status = 'ok';
-- The runs that checked every enabled channel (fixed polling): channel_status
-- finds a channel's last check among them without reading adaptive runs.
CREATE INDEX runs_fixed_polling ON twitch_sync.runs (started_at)
    WHERE polling IS NULL AND status IN ('ok', 'partial');
-- Skipped runs are counted from their rows (metrics(); record_run does not
-- add them to counters): an index-only count.
CREATE INDEX runs_skipped ON twitch_sync.runs (started_at) WHERE status = 'skipped';

-- Channels a run could not check (their batch failed, or an entry about them
-- was dropped as bad): the only per-channel bookkeeping a run writes, so its
-- cost grows with failures, not with tracked channels. A channel's last
-- successful check is derived from runs and this (view channel_status).
CREATE TABLE twitch_sync.run_unchecked (
    broadcaster_id text NOT NULL,
    run_id         bigint NOT NULL,
    reason         text NOT NULL CHECK (reason IN ('failed', 'unknown')),
    CONSTRAINT run_unchecked_pkey PRIMARY KEY (broadcaster_id, run_id)
);
CREATE INDEX run_unchecked_run_id ON twitch_sync.run_unchecked (run_id);

-- The run lock is a row lock on this table's one row
-- (twitch_sync.try_run_lock). Not an advisory lock: any role that can
-- connect may take any advisory key, and one holding twitch_sync's would
-- skip every run. Locking a row here takes UPDATE on this table, which no
-- role has but the extension's owner. Row locks are transaction-level too:
-- they end with the transaction, however its backend ends. (The rollup lock
-- is a table lock: twitch_sync.rollup_lock.)
CREATE TABLE twitch_sync.locks (
    name text PRIMARY KEY CHECK (name IN ('run'))
);
INSERT INTO twitch_sync.locks (name) VALUES ('run');

-- The event outbox: one row per state change (online, restart, offline).
-- NOTIFY twitch_sync carries only event_id; consumers read the event here, so
-- a forged NOTIFY leads nowhere, and a consumer that was away catches up with
-- twitch_sync.events_after(last_seen) (sql/operations.sql: it never passes
-- an event an open transaction still writes). Readable only by roles granted SELECT.
CREATE TABLE twitch_sync.events (
    broadcaster_id text NOT NULL,
    event_id       bigint GENERATED ALWAYS AS IDENTITY,
    event          text NOT NULL CHECK (event IN ('online', 'restart', 'offline')),
    stream_id      text,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (broadcaster_id, event_id)
);
CREATE INDEX events_event_id ON twitch_sync.events (event_id);
CREATE INDEX events_created_at ON twitch_sync.events USING brin (created_at);
COMMENT ON TABLE twitch_sync.events IS 'Outbox of stream events; NOTIFY twitch_sync carries the event_id.';

-- Alerts about runs (run_failed, run_partial, repeated_failures); NOTIFY
-- twitch_sync_alerts carries only alert_id.
CREATE TABLE twitch_sync.alerts (
    alert_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     bigint NOT NULL,
    alert      text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE twitch_sync.alerts IS 'Outbox of run alerts; NOTIFY twitch_sync_alerts carries the alert_id.';

-- The app's credentials and its cached app access token. Readable only by the
-- extension's owner and superusers.
CREATE TABLE twitch_sync.credentials (
    singleton          boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    client_id          text NOT NULL,
    client_secret      text NOT NULL,
    access_token       text,
    token_expires_at   timestamptz CHECK (isfinite(token_expires_at)),
    token_validated_at timestamptz CHECK (isfinite(token_validated_at)),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- EventSub's webhook transport: the secret Twitch signs requests with
    -- (set_webhook_secret(), sql/webhook.sql); Twitch's rule, as the core's.
    webhook_secret     text CHECK (webhook_secret ~ '^[ -~]{10,100}$')
);

-- The last Ratelimit-* headers Helix sent, so the next run starts informed.
CREATE TABLE twitch_sync.rate_limit (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    bucket_limit integer NOT NULL,
    remaining   integer NOT NULL,
    reset_at    timestamptz NOT NULL CHECK (isfinite(reset_at)),
    observed_at timestamptz NOT NULL CHECK (isfinite(observed_at))
);

REVOKE ALL ON ALL TABLES IN SCHEMA twitch_sync FROM PUBLIC;

-- pg_dump keeps the data of these tables (they are the user's data, not the extension's).
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.channels', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.streams', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.viewer_samples_default', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs', '');
-- The sequence too: without it a restored database restarts run ids at 1 and
-- collides with the restored rows.
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.credentials', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.rate_limit', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.run_unchecked', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.events', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.events_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.alerts_alert_id_seq', '');

-- Validation of channels, for track() and direct INSERT/UPDATE alike: SQLSTATE
-- 22023 with a message that says what a valid value looks like.
CREATE FUNCTION twitch_sync.channels_validate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM twitch_sync.check_broadcaster_id(NEW.broadcaster_id);
    -- a Twitch user id never changes: another id is another channel (and the
    -- old one's broadcasts, samples and events stay under the old id)
    IF TG_OP = 'UPDATE' AND NEW.broadcaster_id IS DISTINCT FROM OLD.broadcaster_id THEN
        RAISE EXCEPTION 'a tracked channel''s broadcaster_id cannot change (% to %)',
                        OLD.broadcaster_id, pg_catalog.left(NEW.broadcaster_id, 40)
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Untrack the old id (untrack() or DELETE) and track the new one.';
    END IF;
    IF NEW.login IS NOT NULL THEN
        -- ASCII letters only: lower() folds some other letters into ASCII
        -- ones (the Kelvin sign into 'k'), which would store another login
        NEW.login := pg_catalog.translate(NEW.login, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                                          'abcdefghijklmnopqrstuvwxyz');
        IF NOT twitch_sync.is_login(NEW.login) THEN
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
-- Only when a validated column really changes: the transition layer updates
-- channel rows (logins, miss counts) without going through validation again.
CREATE TRIGGER channels_validate_update BEFORE UPDATE OF broadcaster_id, login, enabled
    ON twitch_sync.channels FOR EACH ROW
    WHEN (NEW.broadcaster_id IS DISTINCT FROM OLD.broadcaster_id OR NEW.login IS DISTINCT FROM OLD.login
          OR NEW.enabled IS DISTINCT FROM OLD.enabled)
    EXECUTE FUNCTION twitch_sync.channels_validate();

-- set_priority(): 0 (the default) to 10; with adaptive polling a channel's
-- interval is divided by 1 + priority. Returns false for an untracked channel
-- (22023 for what cannot be a broadcaster id, as track()).
CREATE FUNCTION twitch_sync.set_priority(broadcaster_id text, priority integer) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM twitch_sync.check_broadcaster_id(set_priority.broadcaster_id);
    IF priority IS NULL OR priority NOT BETWEEN 0 AND 10 THEN
        RAISE EXCEPTION 'invalid priority: %', coalesce(priority::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass 0 (the default) to 10: with adaptive polling the interval is divided by 1 + priority.';
    END IF;
    UPDATE twitch_sync.channels c SET priority = set_priority.priority
     WHERE c.broadcaster_id = set_priority.broadcaster_id;
    RETURN FOUND;
END
$$;

-- track(): start keeping a channel current. Idempotent; returns true when the
-- channel was not tracked (or was disabled) before. A login given later replaces
-- the stored one; NULL keeps it. A channel a category discovered is adopted:
-- it no longer counts against that category's cap, and untrack_category(...,
-- true) leaves it tracked.
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
        SET login = coalesce(EXCLUDED.login, c.login), enabled = true, discovered_via = NULL;
    RETURN coalesce(was_new, true);
END
$$;

-- untrack(): stop keeping a channel current. Idempotent; returns true when it
-- was tracked. Its streams and samples stay as history; a stream still marked
-- live is ended now, since nobody will check it again: an 'offline' observation
-- (source 'untrack') through the transition layer, with its event
-- (twitch_sync.end_live_broadcasts; disabling a channel does the same).
CREATE FUNCTION twitch_sync.untrack(broadcaster_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_it boolean;
BEGIN
    PERFORM twitch_sync.check_broadcaster_id(untrack.broadcaster_id);
    PERFORM twitch_sync.end_live_broadcasts(ARRAY[untrack.broadcaster_id]);
    DELETE FROM twitch_sync.channels c WHERE c.broadcaster_id = untrack.broadcaster_id;
    found_it := FOUND;
    RETURN found_it;
END
$$;

-- set_credentials(): the Twitch app's client id and secret. Replacing them
-- drops the cached token, so the next run mints one for the new app.
-- log_min_error_statement = panic: a refused call does not write its
-- statement (with the secret in it) to the server log.
CREATE FUNCTION twitch_sync.set_credentials(client_id text, client_secret text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET log_min_error_statement = panic AS $$
BEGIN
    IF set_credentials.client_id IS NULL OR pg_catalog.btrim(set_credentials.client_id) = ''
       -- visible ASCII (it goes into a header or a form): no space, no no-break space
       OR set_credentials.client_id !~ '^[!-~]+$' OR pg_catalog.length(set_credentials.client_id) > 256 THEN
        RAISE EXCEPTION 'invalid client id'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the Client ID of your app from the Twitch developer console '
                      || '(dev.twitch.tv/console/apps): visible ASCII characters, no spaces.';
    END IF;
    IF set_credentials.client_secret IS NULL OR pg_catalog.btrim(set_credentials.client_secret) = ''
       -- visible ASCII (it goes into a header or a form): no space, no no-break space
       OR set_credentials.client_secret !~ '^[!-~]+$' OR pg_catalog.length(set_credentials.client_secret) > 256 THEN
        RAISE EXCEPTION 'invalid client secret'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a Client Secret generated for your app in the Twitch developer console: '
                      || 'visible ASCII characters, no spaces.';
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
