-- twitch_sync 0.1.0 -> 0.2.0 (ALTER EXTENSION twitch_sync UPDATE runs it).
-- Hand-written: it carries every schema change of 0.2.0, so that an upgraded
-- database equals a fresh install of 0.2.0 (tests/tests/upgrade.rs compares
-- their catalogs and data). Functions new in 0.2.0 are created as in sql/*.sql;
-- changed ones are replaced (CREATE OR REPLACE keeps grants a user added) or,
-- where their result type changed (prune, status), renamed, created again, and
-- the grants users had on the old one copied to the new one; the same for
-- viewer_samples, which becomes a partitioned table.
\echo Use "ALTER EXTENSION twitch_sync UPDATE" to load this file. \quit

-- The update creates functions and tables the extension's own functions
-- call: they must belong to the extension's owner, as in a fresh install. A
-- superuser other than the owner would own them, and an owner that is not a
-- superuser (any more) could not call them: run() would fail with 42501.
DO $$
DECLARE
    owner name := (SELECT r.rolname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_roles r ON r.oid = e.extowner
                    WHERE e.extname = 'twitch_sync');
BEGIN
    IF owner IS DISTINCT FROM current_user THEN
        RAISE EXCEPTION 'twitch_sync can only be updated by its owner, %, not by %', owner, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('Run ALTER EXTENSION twitch_sync UPDATE; as %1$I (SET ROLE %1$I; first, as a superuser), '
                      || 'which must be a superuser while it does (if it no longer is: ALTER ROLE %1$I SUPERUSER; '
                      || 'then, after the update, ALTER ROLE %1$I NOSUPERUSER;).', owner);
    END IF;
END
$$;

-- For this script only (dropped at its end): grants roles other than the
-- old object's owner held on it (its ACL) are given on `target` too. PUBLIC
-- is left out: what PUBLIC may do is this script's decision (the REVOKEs at
-- its end). Column privileges are not carried.
CREATE FUNCTION twitch_sync.carry_grants_0_2_0(acl aclitem[], owner oid, target text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT a.privilege_type, a.is_grantable, r.rolname
               FROM pg_catalog.aclexplode(acl) a
               JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
              WHERE a.grantee <> owner
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON %s TO %I%s', g.privilege_type, target, g.rolname,
                                  CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

-- run(): SECURITY DEFINER and the pinned search_path are now part of its
-- declaration (0.1.0 set them with an ALTER that an upgrade could lose).
CREATE OR REPLACE FUNCTION twitch_sync."run"() RETURNS jsonb
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_wrapper';

-- cron_next_run(): evaluated with a maintained cron crate; takes the job's last
-- start for pg_cron's '[1-59] seconds' schedules, and never raises.
DROP FUNCTION twitch_sync.cron_next_run(text, timestamptz);
CREATE FUNCTION twitch_sync."cron_next_run"(
	"schedule" TEXT,
	"after" timestamp with time zone,
	"last_start" timestamp with time zone DEFAULT NULL
) RETURNS timestamp with time zone
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'cron_next_run_wrapper';

-- setting(): how the SQL parts read twitch_sync's settings (it loads the
-- library, so a placeholder a non-superuser set is never used).
CREATE FUNCTION twitch_sync."setting"(
	"name" TEXT
) RETURNS TEXT
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'setting_wrapper';

---------------------------------------------------------------------------
-- Tables
---------------------------------------------------------------------------

-- 0.2.0's tables refuse times no run can use (infinity, written by hand or
-- restored): a row holding one stops the update here, with the fix, before
-- the constraints below would stop it with a bare check violation.
DO $$
DECLARE
    c record;
    bad boolean;
BEGIN
    FOR c IN SELECT * FROM (VALUES
            ('channels', 'added_at'), ('channels', 'last_live_at'), ('channels', 'last_checked_at'),
            ('runs', 'started_at'), ('runs', 'finished_at'),
            ('credentials', 'token_expires_at'), ('credentials', 'token_validated_at'),
            ('rate_limit', 'reset_at'), ('rate_limit', 'observed_at'),
            ('streams', 'started_at'), ('streams', 'ended_at'), ('streams', 'updated_at')) AS x(tab, col)
    LOOP
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM twitch_sync.%I WHERE NOT pg_catalog.isfinite(%I))',
                                  c.tab, c.col) INTO bad;
        IF bad THEN
            RAISE EXCEPTION 'twitch_sync.%.% holds an infinite time', c.tab, c.col
                USING ERRCODE = 'check_violation',
                      HINT = pg_catalog.format('Nothing was changed. Correct those rows (for example UPDATE twitch_sync.%I SET %I = now() WHERE NOT isfinite(%I);), then run ALTER EXTENSION twitch_sync UPDATE again.',
                                               c.tab, c.col, c.col);
        END IF;
    END LOOP;
END
$$;

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

-- channels checks its ids and logins with the functions above.
ALTER TABLE twitch_sync.channels
    DROP CONSTRAINT channels_broadcaster_id_format,
    DROP CONSTRAINT channels_login_format,
    ADD CONSTRAINT channels_broadcaster_id_format CHECK (twitch_sync.is_broadcaster_id(broadcaster_id)),
    ADD CONSTRAINT channels_login_format CHECK (twitch_sync.is_login(login));
-- Validation of channels, for track() and direct INSERT/UPDATE alike: SQLSTATE
-- 22023 with a message that says what a valid value looks like.
CREATE OR REPLACE FUNCTION twitch_sync.channels_validate() RETURNS trigger
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
-- (The update trigger's comment changed with 0.2.0; the trigger is the same.)

-- channels: runs no longer stamp every checked channel (view channel_status
-- derives the last check); the last time a channel was seen live moves to
-- streams.last_seen_at (filled below from these columns before they go).
ALTER TABLE twitch_sync.streams ADD COLUMN last_seen_at timestamptz;
UPDATE twitch_sync.streams s SET last_seen_at = s.updated_at WHERE s.is_live;
UPDATE twitch_sync.streams s SET last_seen_at = c.last_live_at
  FROM twitch_sync.channels c
 WHERE s.broadcaster_id = c.broadcaster_id AND NOT s.is_live AND c.last_live_at IS NOT NULL
   AND s.stream_id = (SELECT x.stream_id FROM twitch_sync.streams x
                       WHERE x.broadcaster_id = s.broadcaster_id
                       ORDER BY x.started_at DESC NULLS LAST, x.updated_at DESC LIMIT 1);
-- A live broadcast's miss count moves from its channel to its row (written
-- anyway when it is listed, so a listing resets the count for free).
ALTER TABLE twitch_sync.streams ADD COLUMN missed_polls integer NOT NULL DEFAULT 0;
UPDATE twitch_sync.streams s SET missed_polls = c.missed_polls
  FROM twitch_sync.channels c
 WHERE s.broadcaster_id = c.broadcaster_id AND s.is_live AND c.missed_polls <> 0;
ALTER TABLE twitch_sync.channels DROP COLUMN last_checked_at, DROP COLUMN last_live_at,
    DROP COLUMN missed_polls;
-- adaptive polling: a channel's priority and its last successful check
ALTER TABLE twitch_sync.channels
    ADD COLUMN priority smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 10),
    ADD COLUMN checked_at timestamptz CHECK (isfinite(checked_at)),
    -- times a run can use (an infinite one, written by hand, broke status()
    -- and metrics(), or kept a channel from ever being due)
    ADD CONSTRAINT channels_added_at_check CHECK (isfinite(added_at));
ALTER TABLE twitch_sync.runs
    ADD CONSTRAINT runs_started_at_check CHECK (isfinite(started_at)),
    ADD CONSTRAINT runs_finished_at_check CHECK (isfinite(finished_at));
ALTER TABLE twitch_sync.credentials
    ADD CONSTRAINT credentials_token_expires_at_check CHECK (isfinite(token_expires_at)),
    ADD CONSTRAINT credentials_token_validated_at_check CHECK (isfinite(token_validated_at));
ALTER TABLE twitch_sync.rate_limit
    ADD CONSTRAINT rate_limit_reset_at_check CHECK (isfinite(reset_at)),
    ADD CONSTRAINT rate_limit_observed_at_check CHECK (isfinite(observed_at));
-- runs no longer rewrite every channel row: no room kept for HOT updates
ALTER TABLE twitch_sync.channels RESET (fillfactor);

-- Keys led by the broadcaster, so the tables can be distributed by it.
ALTER TABLE twitch_sync.streams DROP CONSTRAINT streams_pkey,
    ADD CONSTRAINT streams_pkey PRIMARY KEY (broadcaster_id, stream_id);
CREATE INDEX streams_stream_id ON twitch_sync.streams (stream_id);
-- live broadcasts without Twitch's started_at (it was missing or refused):
-- usually none, so a poll learns there is nothing to fill in from an empty
-- index (twitch_sync.continue_broadcasts)
CREATE INDEX streams_live_without_start ON twitch_sync.streams (broadcaster_id)
    WHERE is_live AND started_at IS NULL;

-- The gap limit, in seconds. No SET clause, so it inlines (everything in it
-- is schema-qualified or a keyword).
CREATE FUNCTION twitch_sync.sample_gap() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.make_interval(secs => greatest(twitch_sync.setting('twitch_sync.max_sample_gap_secs')::integer, 1))
$$;

-- viewer_samples: partitioned by UTC day, keyed (broadcaster_id, sampled_at,
-- stream_id), with each sample's category. 0.1.0's samples move into the
-- default partition; the first twitch_sync.maintain() (or run(), for today)
-- moves them on into their days' partitions.
ALTER TABLE twitch_sync.viewer_samples RENAME TO viewer_samples_0_1_0;
ALTER INDEX twitch_sync.viewer_samples_pkey RENAME TO viewer_samples_0_1_0_pkey;
ALTER INDEX twitch_sync.viewer_samples_sampled_at RENAME TO viewer_samples_0_1_0_sampled_at;
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
-- 0.2.0's samples have finite times (run() never wrote another; a hand-written
-- one would stop the copy below with a bare constraint error).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM twitch_sync.viewer_samples_0_1_0 v WHERE NOT pg_catalog.isfinite(v.sampled_at)) THEN
        RAISE EXCEPTION 'twitch_sync.viewer_samples holds samples at an infinite time'
            USING ERRCODE = 'check_violation',
                  HINT = 'Nothing was changed. Delete them (DELETE FROM twitch_sync.viewer_samples WHERE NOT isfinite(sampled_at);), then run ALTER EXTENSION twitch_sync UPDATE again.';
    END IF;
    IF EXISTS (SELECT 1 FROM twitch_sync.viewer_samples_0_1_0 v WHERE v.viewer_count < 0) THEN
        RAISE EXCEPTION 'twitch_sync.viewer_samples holds samples with a negative viewer count'
            USING ERRCODE = 'check_violation',
                  HINT = 'Nothing was changed. Delete or correct them (DELETE FROM twitch_sync.viewer_samples WHERE viewer_count < 0;), then run ALTER EXTENSION twitch_sync UPDATE again.';
    END IF;
END
$$;
-- Each sample with the interval it closes (the analytics rules, as 0.2.0
-- writes them): its broadcast's previous sample, when within the gap limit.
INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count, game_id,
                                        prev_sampled_at, prev_viewer_count, prev_game_id)
SELECT v.stream_id, v.broadcaster_id, v.sampled_at, v.viewer_count, v.game_id,
       CASE WHEN v.sampled_at - v.prev_at <= g.gap THEN v.prev_at END,
       CASE WHEN v.sampled_at - v.prev_at <= g.gap THEN v.prev_count END,
       CASE WHEN v.sampled_at - v.prev_at <= g.gap THEN v.game_id END
  FROM (SELECT twitch_sync.sample_gap() AS gap) g,
       (SELECT v.stream_id, v.broadcaster_id, v.sampled_at, v.viewer_count, NULLIF(s.game_id, '') AS game_id,
               pg_catalog.lag(v.sampled_at) OVER w AS prev_at, pg_catalog.lag(v.viewer_count) OVER w AS prev_count
          FROM twitch_sync.viewer_samples_0_1_0 v
          LEFT JOIN twitch_sync.streams s ON s.broadcaster_id = v.broadcaster_id AND s.stream_id = v.stream_id
        WINDOW w AS (PARTITION BY v.broadcaster_id, v.stream_id ORDER BY v.sampled_at)) v;
SELECT twitch_sync.carry_grants_0_2_0(c.relacl, c.relowner, 'TABLE twitch_sync.viewer_samples')
  FROM pg_catalog.pg_class c WHERE c.oid = 'twitch_sync.viewer_samples_0_1_0'::regclass;
ALTER EXTENSION twitch_sync DROP TABLE twitch_sync.viewer_samples_0_1_0;  -- and from pg_dump's list
DROP TABLE twitch_sync.viewer_samples_0_1_0;
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.viewer_samples_default', '');

-- streams: each broadcast's analytics, filled from its samples by the rules of
-- sql/analytics.sql (0.1.0 kept no title or category changes: the current ones
-- become each broadcast's first stream_changes row, below).
ALTER TABLE twitch_sync.streams
    ADD COLUMN first_seen_at timestamptz,
    ADD COLUMN peak_at timestamptz,
    ADD COLUMN sample_count integer NOT NULL DEFAULT 0,
    ADD COLUMN viewer_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN covered_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN last_sampled_at timestamptz,
    ADD COLUMN changed_at timestamptz,
    ADD COLUMN sampled_game_id text,
    ADD COLUMN prev_sampled_at timestamptz,
    ADD COLUMN prev_viewer_count integer,
    ADD COLUMN prev_game_id text;

---------------------------------------------------------------------------
-- History and analytics (new): sql/analytics.sql
---------------------------------------------------------------------------
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

-- 0.1.0's broadcasts get their analytics from their samples, and their current
-- title and category as their first stream_changes row.
WITH v AS (
    SELECT x.broadcaster_id, x.stream_id, x.sampled_at, x.viewer_count,
           pg_catalog.lead(x.sampled_at) OVER w - x.sampled_at AS dt,
           pg_catalog.row_number() OVER (PARTITION BY x.broadcaster_id, x.stream_id
                                         ORDER BY x.viewer_count DESC, x.sampled_at) AS peak_rank
      FROM twitch_sync.viewer_samples x
    WINDOW w AS (PARTITION BY x.broadcaster_id, x.stream_id ORDER BY x.sampled_at)
), agg AS (
    SELECT v.broadcaster_id, v.stream_id, count(*)::int AS n, min(v.sampled_at) AS first_at,
           max(v.sampled_at) AS last_at,
           min(v.sampled_at) FILTER (WHERE v.peak_rank = 1) AS peak_at,
           coalesce(sum(v.viewer_count * extract(epoch FROM v.dt)::float8)
                    FILTER (WHERE v.dt <= twitch_sync.sample_gap()), 0) AS vs,
           coalesce(sum(extract(epoch FROM v.dt)::float8)
                    FILTER (WHERE v.dt <= twitch_sync.sample_gap()), 0) AS cs
      FROM v GROUP BY 1, 2
)
UPDATE twitch_sync.streams s
   SET first_seen_at = a.first_at, peak_at = a.peak_at, sample_count = a.n,
       viewer_seconds = a.vs, covered_seconds = a.cs, last_sampled_at = a.last_at,
       sampled_game_id = NULLIF(s.game_id, '')  -- as its samples got it, above
  FROM agg a
 WHERE s.broadcaster_id = a.broadcaster_id AND s.stream_id = a.stream_id;
UPDATE twitch_sync.streams s
   SET first_seen_at = coalesce(s.first_seen_at, s.started_at, s.updated_at),
       changed_at = coalesce(s.first_seen_at, s.started_at, s.updated_at);
-- the times maintain() and the dashboard count days from are finite
ALTER TABLE twitch_sync.streams ADD CONSTRAINT streams_times_finite
    CHECK (isfinite(started_at) AND isfinite(ended_at) AND isfinite(first_seen_at) AND isfinite(last_seen_at));
INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
SELECT s.broadcaster_id, s.stream_id, s.first_seen_at, 'poll', s.title, s.game_id, s.game_name
  FROM twitch_sync.streams s;


ALTER TABLE twitch_sync.runs
    ADD COLUMN unknown integer NOT NULL DEFAULT 0,
    ADD COLUMN bad_entries integer NOT NULL DEFAULT 0,
    ADD COLUMN polling jsonb;
-- "Consecutive failures" and "last run" go by time, not by id.
DROP INDEX twitch_sync.runs_ok;
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

-- pg_dump keeps these too: the id sequences (restored ids must not collide
-- with new ones), the rate-limit state, the counters and the new tables.
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.runs_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.rate_limit', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.run_unchecked', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.events', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.events_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.alerts', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.alerts_alert_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('twitch_sync.counters', '');
-- 0.2.0 counts skipped runs from their rows in runs (prune() adds those it
-- deletes to counters): 0.1.0's total must not count the kept ones twice.
UPDATE twitch_sync.counters
   SET runs_skipped = greatest(runs_skipped - (SELECT count(*) FROM twitch_sync.runs
                                                WHERE status = 'skipped'), 0);

---------------------------------------------------------------------------
-- The transition layer (new; replaces apply_sync)
---------------------------------------------------------------------------
DROP FUNCTION twitch_sync.apply_sync(text[], boolean[], text[], integer, boolean, text[], text[],
                                     integer[], text[], text[], text[], text[], text[]);

-- The grace rule between polling and events (sql/transitions.sql,
-- twitch_sync.held_by_events): the source and time of a broadcast's last
-- start or end. Unknown (NULL) for broadcasts of 0.1.0.
ALTER TABLE twitch_sync.streams ADD COLUMN state_source text, ADD COLUMN state_at timestamptz;

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


---------------------------------------------------------------------------
-- Operations
---------------------------------------------------------------------------

-- Runs are recorded by record_run(), not counted and alerted by a trigger:
-- a restore re-inserts historical runs, which must not count or alert again.
DROP TRIGGER runs_after_insert ON twitch_sync.runs;
DROP FUNCTION twitch_sync.runs_after_insert();

-- untrack(): stop keeping a channel current. Idempotent; returns true when it
-- was tracked. Its streams and samples stay as history; a stream still marked
-- live is ended now, since nobody will check it again: an 'offline' observation
-- (source 'untrack') through the transition layer, with its event
-- (twitch_sync.end_live_broadcasts; disabling a channel does the same).
CREATE OR REPLACE FUNCTION twitch_sync.untrack(broadcaster_id text) RETURNS boolean
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
CREATE OR REPLACE FUNCTION twitch_sync.cron_job()
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
CREATE OR REPLACE FUNCTION twitch_sync.require_pg_cron() RETURNS void
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

-- What an operator should check, from a run's error text (0.2.0: the
-- network, the deadline, the bucket and server errors before credentials).
CREATE OR REPLACE FUNCTION twitch_sync.alert_hint(error text) RETURNS text
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

-- prune() also reports events and alerts deleted: a new result type (the old
-- one's grants are carried over once the new one exists).
ALTER FUNCTION twitch_sync.prune(integer) RENAME TO prune_0_1_0;
-- prune(): deletes runs (with their run_unchecked rows), events, alerts and
-- viewer samples older than their retention (twitch_sync.runs_retention_days
-- for the first four, twitch_sync.samples_retention_days for samples; 0 keeps
-- them), at most max_rows of each per call so no call holds locks long.
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

-- schedule(): creates or updates the pg_cron job (twitch_sync.cron_job_name())
-- that runs SELECT twitch_sync.run() in this database; returns its job id.
-- pg_cron itself validates the schedule, so whatever the installed pg_cron
-- accepts works (five cron fields, @hourly-style macros, and from pg_cron 1.5
-- '[1-59] seconds'); its refusal reaches the caller as SQLSTATE 22023 with a
-- hint (pg_cron 1.4 gives none).
-- SECURITY INVOKER: the caller needs pg_cron's privileges, and the job runs as
-- the caller (who then needs EXECUTE on twitch_sync.run()).
CREATE OR REPLACE FUNCTION twitch_sync.schedule(schedule text DEFAULT 'auto') RETURNS bigint
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
CREATE OR REPLACE FUNCTION twitch_sync.unschedule() RETURNS boolean
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

---------------------------------------------------------------------------
-- The dashboard (new in 0.2.0): sql/dashboard.sql, as it is.
---------------------------------------------------------------------------

-- twitch_sync.dashboard(): one self-contained HTML page (inline CSS and inline
-- SVG, no script, no font or image from anywhere) with sync health, the
-- streams live now and viewer trends. Rendered entirely in SQL.
--
-- Escaping rule: every string that is not written in this file — titles,
-- logins, category names, error texts, pg_cron's schedule and messages — goes
-- through twitch_sync.html_escape() before it reaches format(). Numbers and
-- times are formatted here (dashboard_num, dashboard_time, dashboard_ago).
-- The page also declares its own strict Content-Security-Policy, so even a
-- missed escape could not run a script or load anything.
--
-- Secrets: the page reads credentials.token_expires_at and nothing else of
-- that table; no other column of it appears in this file.

-- &, <, >, " and ' as entities: safe in element content and in quoted
-- attribute values. NULL stays NULL (format's %s prints it as '').
-- No SET clause, so it inlines.
CREATE FUNCTION twitch_sync.html_escape(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
               t, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'), '"', '&quot;'), '''', '&#39;')
$$;
COMMENT ON FUNCTION twitch_sync.html_escape(text) IS 'Text as HTML: & < > " and '' replaced by entities.';

-- A number with thousands separators and a fixed number of decimals; '–' for NULL.
CREATE FUNCTION twitch_sync.dashboard_num(v numeric, decimals integer DEFAULT 0) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN v IS NULL THEN '–'
                WHEN decimals <= 0 THEN pg_catalog.to_char(pg_catalog.round(v), 'FM999,999,999,999,990')
                ELSE pg_catalog.to_char(pg_catalog.round(v, decimals),
                                        'FM999,999,999,999,990.' || pg_catalog.repeat('0', decimals)) END
$$;

-- A number for an axis tick: 950, 1.5k, 15k, 2.5M.
CREATE FUNCTION twitch_sync.dashboard_tick(v numeric, decimals integer DEFAULT 0) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN pg_catalog.abs(v) >= 1000000
                    THEN pg_catalog.rtrim(pg_catalog.to_char(v / 1000000, 'FM999,990.99'), '.') || 'M'
                WHEN pg_catalog.abs(v) >= 1000
                    THEN pg_catalog.rtrim(pg_catalog.to_char(v / 1000, 'FM999,990.99'), '.') || 'k'
                ELSE twitch_sync.dashboard_num(v, decimals) END
$$;

-- A timestamp as 'YYYY-MM-DD HH24:MI:SS UTC'; '–' for NULL.
CREATE FUNCTION twitch_sync.dashboard_time(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(pg_catalog.to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', '–')
$$;

-- A length of time in words: '2 d 4 h', '3 h 12 min', '45 s'. Negative: '–'.
CREATE FUNCTION twitch_sync.dashboard_span(i interval) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s IS NULL OR s < 0 THEN '–'
                WHEN s < 60 THEN s::bigint || ' s'
                WHEN s < 3600 THEN (s / 60)::bigint || ' min'
                WHEN s < 172800 THEN pg_catalog.floor(s / 3600)::bigint || ' h'
                                    || coalesce(' ' || nullif(pg_catalog.floor(s::numeric % 3600 / 60)::bigint, 0) || ' min', '')
                ELSE pg_catalog.floor(s / 86400)::bigint || ' d'
                     || coalesce(' ' || nullif(pg_catalog.floor(s::numeric % 86400 / 3600)::bigint, 0) || ' h', '') END
      FROM (SELECT pg_catalog.date_part('epoch', i) AS s) x
$$;

-- A round step (1, 2, 2.5 or 5 times a power of ten) at least v.
CREATE FUNCTION twitch_sync.dashboard_nice(v float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN v IS NULL OR v <= 0 THEN 1 ELSE (
        SELECT min(m * p) FROM (SELECT 10 ^ pg_catalog.floor(pg_catalog.log(v)) AS p) q,
               unnest(ARRAY[1, 2, 2.5, 5, 10]::float8[]) m
         WHERE m * p >= v * (1 - 1e-9)) END
$$;

-- The range of the dashboard and its panels, as the time it spans up to now
-- in UTC (days and time: '1 month' back from 27 November is 31 days, and a
-- month never counts as 30 days): a positive span of at most 3660 days
-- (SQLSTATE 22023 otherwise). Returns the span.
CREATE FUNCTION twitch_sync.dashboard_range("range" interval) RETURNS interval
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    now_utc timestamp := pg_catalog.now() AT TIME ZONE 'UTC';
    span interval;
BEGIN
    BEGIN
        span := now_utc - (now_utc - dashboard_range.range);
    EXCEPTION WHEN datetime_field_overflow THEN
        span := NULL;  -- (reaches before 4713 BC: refused below)
    END;
    IF span IS NULL OR span <= interval '0' OR span > interval '3660 days' THEN
        RAISE EXCEPTION 'invalid dashboard range: %', coalesce(dashboard_range.range::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a positive interval of at most 3660 days (about ten years), such as ''24 hours'' or ''7 days'': '
                      || 'the page covers that much time up to now.';
    END IF;
    RETURN span;
END
$$;

-- The whole UTC days within [t0, t1) whose rollups are final, as the span
-- [r0, r1) of their midnights (r0 = r1 when there are none): maintain() has
-- rolled up every sample that can close an interval on them (up to a gap
-- after the day), no backfill has been written since at an earlier time, and
-- twitch_sync.rollups_retention_days has not deleted them. Their channel_days
-- rows hold what their raw samples would give (and stay when retention drops
-- those samples).
CREATE FUNCTION twitch_sync.final_rollup_days(t0 timestamptz, t1 timestamptz, OUT r0 timestamptz,
                                              OUT r1 timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT x.r0, greatest(x.r0, coalesce(x.r1, x.r0))
      FROM (SELECT least(t1, greatest(
                       -- the first midnight at or after t0
                       pg_catalog.date_trunc('day', t0 AT TIME ZONE 'UTC' - interval '1 microsecond')
                           AT TIME ZONE 'UTC' + interval '1 day',
                       -- the first day whose rollups retention keeps
                       CASE WHEN k.keep > 0
                            THEN ((pg_catalog.now() AT TIME ZONE 'UTC')::date - k.keep)::timestamp AT TIME ZONE 'UTC'
                       END)) AS r0,
                   -- the midnight before which rollups are final (none before the first rollup)
                   CASE WHEN f.before IS NOT NULL
                        THEN pg_catalog.date_trunc('day', least(t1, f.before) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   END AS r1
              FROM (SELECT twitch_sync.setting('twitch_sync.rollups_retention_days')::integer AS keep) k,
                   (SELECT twitch_sync.rollups_final_before() AS before) f) x
$$;

-- Hours watched per UTC day over the last `range`, by the analytics rules
-- (README "Analytics"; twitch_sync.sample_intervals): a sample's count holds
-- until the broadcast's next sample within twitch_sync.max_sample_gap_secs;
-- longer gaps count nothing; intervals are cut at the range's start and at
-- midnight. Days without samples are 0. Whole days whose rollups are final
-- (final_rollup_days) are read from channel_days, the rest from the samples
-- (values for bounds and gap: the planner estimates the samples they hold).
-- The dashboard and the Grafana panel call it.
CREATE FUNCTION twitch_sync.dashboard_hours_per_day("range" interval DEFAULT '24 hours')
RETURNS TABLE (day date, hours_watched numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    -- in UTC: the same length whatever the session's TimeZone ('30 days'
    -- across a DST change)
    t0 timestamptz := (pg_catalog.now() AT TIME ZONE 'UTC' - twitch_sync.dashboard_range($1)) AT TIME ZONE 'UTC';
    t1 timestamptz := pg_catalog.now();
    gap interval := twitch_sync.sample_gap();
    r0 timestamptz;
    r1 timestamptz;
BEGIN
    SELECT f.r0, f.r1 INTO r0, r1 FROM twitch_sync.final_rollup_days(t0, t1) f;
    RETURN QUERY
    WITH seg AS (  -- from the samples: [t0, r0) and [r1, t1)
        SELECT greatest(i.sampled_at, t0) AS a, least(i.next_at, r0) AS z, i.viewer_count::float8 AS viewers
          FROM twitch_sync.sample_intervals(t0, r0, gap) i
        UNION ALL
        SELECT greatest(i.sampled_at, r1), least(i.next_at, t1), i.viewer_count::float8
          FROM twitch_sync.sample_intervals(r1, t1, gap) i
    ), rolled AS (  -- from the final rollups: [r0, r1)
        SELECT c.day, sum(c.hours_watched) AS hours
          FROM twitch_sync.channel_days c
         WHERE c.day >= (r0 AT TIME ZONE 'UTC')::date AND c.day < (r1 AT TIME ZONE 'UTC')::date
         GROUP BY c.day
    ), days AS (
        SELECT d AS day_start
          FROM pg_catalog.generate_series(pg_catalog.date_trunc('day', t0 AT TIME ZONE 'UTC'),
                                          pg_catalog.date_trunc('day', t1 AT TIME ZONE 'UTC'),
                                          interval '1 day') d
    ), pieces AS (  -- each interval cut at UTC midnight: one row per day it touches
        SELECT p.day::date AS day,
               sum(seg.viewers * pg_catalog.date_part('epoch',
                   least(seg.z, (p.day + interval '1 day') AT TIME ZONE 'UTC')
                   - greatest(seg.a, p.day AT TIME ZONE 'UTC'))) AS viewer_seconds
          FROM seg, pg_catalog.generate_series(pg_catalog.date_trunc('day', seg.a AT TIME ZONE 'UTC'),
                                               pg_catalog.date_trunc('day', seg.z AT TIME ZONE 'UTC'),
                                               interval '1 day') p(day)
         WHERE seg.a < seg.z
         GROUP BY 1
    )
    SELECT d.day_start::date,
           pg_catalog.round((coalesce(p.viewer_seconds, 0) / 3600 + coalesce(r.hours, 0))::numeric, 2)
      FROM days d
      LEFT JOIN pieces p ON p.day = d.day_start::date
      LEFT JOIN rolled r ON r.day = d.day_start::date
     ORDER BY d.day_start;
END
$$;
COMMENT ON FUNCTION twitch_sync.dashboard_hours_per_day(interval) IS 'Hours watched per UTC day over the last range by the analytics rules (gaps over twitch_sync.max_sample_gap_secs count nothing): from channel_days for whole days whose rollups are final, else from viewer_samples.';

-- One SVG chart with labelled axes. `series` is a JSON array of
--   {"name": text, "kind": "line" | "bar", "color": "#rrggbb",
--    "points": [[epoch seconds, y, z], ...]}
-- where z is, for a line, 1 when the line breaks before the point (a gap),
-- and for a bar, the bottom of the bar (stacked bars); bars are bar_secs wide.
-- Names are escaped here. x is time (UTC); labels at bar centres when bars
-- are a day or more wide.
CREATE FUNCTION twitch_sync.dashboard_chart(
    title text, x_label text, y_label text, x_from timestamptz, x_to timestamptz,
    series jsonb, integer_y boolean DEFAULT true, bar_secs float8 DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w CONSTANT float8 := 560;
    h CONSTANT float8 := 270;
    ml CONSTANT float8 := 80;
    mr CONSTANT float8 := 30;  -- room for half the last tick label
    mt CONSTANT float8 := 14;
    mb CONSTANT float8 := 54;
    pw CONSTANT float8 := w - ml - mr;
    ph CONSTANT float8 := h - mt - mb;
    x0 float8 := pg_catalog.date_part('epoch', x_from);
    x1 float8 := pg_catalog.date_part('epoch', x_to);
    span float8;
    ymax float8;
    ystep float8;
    xstep float8;
    decimals integer;
    grid text;
    marks text;
    legend text;
BEGIN
    IF x1 <= x0 THEN
        x1 := x0 + 1;
    END IF;
    span := x1 - x0;
    SELECT max((p ->> 1)::float8) INTO ymax
      FROM pg_catalog.jsonb_array_elements(series) s, pg_catalog.jsonb_array_elements(s -> 'points') p;
    ymax := coalesce(ymax, 0);
    ystep := twitch_sync.dashboard_nice(greatest(ymax, CASE WHEN integer_y THEN 1 ELSE 1e-9 END) / 4);
    IF integer_y THEN
        ystep := greatest(ystep, 1);
    END IF;
    ymax := greatest(pg_catalog.ceil(ymax / ystep), 1) * ystep;
    decimals := CASE WHEN ystep >= 1 THEN 0 ELSE greatest(0, -pg_catalog.floor(pg_catalog.log(ystep)))::integer + 1 END;
    SELECT coalesce(min(c), pg_catalog.ceil(span / 6 / 86400) * 86400) INTO xstep
      FROM unnest(ARRAY[60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
                        172800, 604800, 1209600, 2592000]::float8[]) c
     WHERE span / c <= 6;
    IF bar_secs >= 86400 THEN
        xstep := greatest(xstep, bar_secs);
    END IF;

    -- Grid lines and y tick labels.
    SELECT pg_catalog.string_agg(pg_catalog.format(
               '<line x1="%s" x2="%s" y1="%s" y2="%s" class="grid"/><text x="%s" y="%s" text-anchor="end" dominant-baseline="middle">%s</text>',
               ml, ml + pw, pg_catalog.round((mt + ph - v / ymax * ph)::numeric, 1),
               pg_catalog.round((mt + ph - v / ymax * ph)::numeric, 1),
               ml - 8, pg_catalog.round((mt + ph - v / ymax * ph)::numeric, 1),
               twitch_sync.dashboard_tick(v::numeric, decimals)), '' ORDER BY v)
      INTO grid
      FROM pg_catalog.generate_series(0::numeric, ymax::numeric, ystep::numeric) v;
    -- x ticks: times of day, or dates at midnight and for steps of a day or
    -- more; over about two months, the first of every 1, 2, 3, 6, 12, 24 or
    -- 60 months (at most 4: year-month labels are wide), labelled year-month.
    IF span <= 5184000 THEN
        SELECT grid || coalesce(pg_catalog.string_agg(pg_catalog.format(
                   '<line x1="%1$s" x2="%1$s" y1="%2$s" y2="%3$s" class="tick"/><text x="%1$s" y="%4$s" text-anchor="middle">%5$s</text>',
                   pg_catalog.round((ml + (t::float8 - x0) / span * pw)::numeric, 1), mt + ph, mt + ph + 5, mt + ph + 20,
                   pg_catalog.to_char(pg_catalog.to_timestamp(lbl::float8) AT TIME ZONE 'UTC',
                                      CASE WHEN xstep >= 86400 OR lbl::numeric % 86400 = 0 THEN 'MM-DD' ELSE 'HH24:MI' END)),
                   '' ORDER BY t), '')
          INTO grid
          FROM (SELECT g + CASE WHEN bar_secs >= 86400 THEN bar_secs / 2 ELSE 0 END AS t, g AS lbl
                  FROM pg_catalog.generate_series((pg_catalog.ceil(x0 / xstep) * xstep)::numeric, x1::numeric, xstep::numeric) g) ticks
         WHERE t >= x0 AND t <= x1;
    ELSE
        SELECT grid || coalesce(pg_catalog.string_agg(pg_catalog.format(
                   '<line x1="%1$s" x2="%1$s" y1="%2$s" y2="%3$s" class="tick"/><text x="%1$s" y="%4$s" text-anchor="middle">%5$s</text>',
                   pg_catalog.round((ml + (pg_catalog.date_part('epoch', m AT TIME ZONE 'UTC') - x0) / span * pw)::numeric, 1),
                   mt + ph, mt + ph + 5, mt + ph + 20, pg_catalog.to_char(m, 'YYYY-MM')), '' ORDER BY m), '')
          INTO grid
          FROM (SELECT min(k) AS k FROM unnest(ARRAY[1, 2, 3, 6, 12, 24, 60]) k
                 WHERE span / (k * 2629800) <= 4) step,
               pg_catalog.generate_series(
                   pg_catalog.date_trunc('month', pg_catalog.to_timestamp(x0) AT TIME ZONE 'UTC'),
                   pg_catalog.to_timestamp(x1) AT TIME ZONE 'UTC', interval '1 month') m
         WHERE (pg_catalog.date_part('year', m) * 12 + pg_catalog.date_part('month', m) - 1)::integer % coalesce(step.k, 60) = 0
           AND pg_catalog.date_part('epoch', m AT TIME ZONE 'UTC') BETWEEN x0 AND x1;
    END IF;

    -- Bars and lines, in series order (later series drawn on top).
    SELECT coalesce(pg_catalog.string_agg(m, '' ORDER BY si), '') INTO marks
      FROM (
        SELECT si, CASE WHEN s ->> 'kind' = 'bar' THEN (
                   SELECT pg_catalog.format('<g fill="%s"><title>%s</title>%s</g>',
                              twitch_sync.html_escape(s ->> 'color'), twitch_sync.html_escape(s ->> 'name'),
                              coalesce(pg_catalog.string_agg(pg_catalog.format('<rect x="%s" y="%s" width="%s" height="%s"/>',
                                  pg_catalog.round((ml + ((p ->> 0)::float8 - x0) / span * pw)::numeric, 1),
                                  pg_catalog.round((mt + ph - (p ->> 1)::float8 / ymax * ph)::numeric, 1),
                                  pg_catalog.round(greatest(coalesce(bar_secs, 60) / span * pw - 1, 1)::numeric, 1),
                                  pg_catalog.round(greatest(((p ->> 1)::float8 - coalesce((p ->> 2)::float8, 0)) / ymax * ph, 0)::numeric, 1)),
                                  ''), ''))
                     FROM pg_catalog.jsonb_array_elements(s -> 'points') p)
               ELSE (
                   SELECT pg_catalog.format('<g><title>%s</title><path d="%s" fill="none" stroke="%s" stroke-width="2" stroke-linejoin="round"/>%s</g>',
                              twitch_sync.html_escape(s ->> 'name'),
                              pg_catalog.string_agg(CASE WHEN o = 1 OR coalesce((p ->> 2)::float8, 0) = 1 THEN 'M' ELSE 'L' END
                                  || pg_catalog.round((ml + ((p ->> 0)::float8 - x0) / span * pw)::numeric, 1) || ' '
                                  || pg_catalog.round((mt + ph - (p ->> 1)::float8 / ymax * ph)::numeric, 1), ' ' ORDER BY o),
                              twitch_sync.html_escape(s ->> 'color'),
                              -- dots where there are few points, so lone points show
                              CASE WHEN count(*) <= 60 THEN pg_catalog.string_agg(pg_catalog.format(
                                  '<circle cx="%s" cy="%s" r="3" fill="%s"/>',
                                  pg_catalog.round((ml + ((p ->> 0)::float8 - x0) / span * pw)::numeric, 1),
                                  pg_catalog.round((mt + ph - (p ->> 1)::float8 / ymax * ph)::numeric, 1),
                                  twitch_sync.html_escape(s ->> 'color')), '') ELSE '' END)
                     FROM pg_catalog.jsonb_array_elements(s -> 'points') WITH ORDINALITY AS e(p, o)
                   HAVING count(*) > 0)
               END AS m
          FROM pg_catalog.jsonb_array_elements(series) WITH ORDINALITY AS q(s, si)
      ) drawn;

    SELECT coalesce(pg_catalog.string_agg(pg_catalog.format(
               '<li><i style="background:%s"></i>%s</li>',
               twitch_sync.html_escape(s ->> 'color'), twitch_sync.html_escape(s ->> 'name')), '' ORDER BY si), '')
      INTO legend
      FROM pg_catalog.jsonb_array_elements(series) WITH ORDINALITY AS q(s, si);

    -- (bars and lines are clipped to the plot: a bar of a bucket the range
    -- cuts, or a line's dot at its edge, does not spill over the axes)
    RETURN pg_catalog.format(
        '<figure class="chart"><figcaption>%1$s</figcaption>'
        '<svg class="chart" viewBox="0 0 %2$s %3$s" role="img" aria-label="%1$s" preserveAspectRatio="xMidYMid meet">'
        '<defs><clipPath id="%16$s"><rect x="%6$s" y="0" width="%17$s" height="%8$s"/></clipPath></defs>'
        '%4$s<g clip-path="url(#%16$s)">%5$s</g>'
        '<line x1="%6$s" x2="%6$s" y1="%7$s" y2="%8$s" class="axis"/><line x1="%6$s" x2="%9$s" y1="%8$s" y2="%8$s" class="axis"/>'
        '<text class="label" x="%10$s" y="%11$s" text-anchor="middle">%12$s</text>'
        '<text class="label" transform="translate(16 %13$s) rotate(-90)" text-anchor="middle">%14$s</text>'
        '</svg><ul class="legend">%15$s</ul></figure>',
        twitch_sync.html_escape(title), w, h, grid, marks,
        ml, mt, mt + ph, ml + pw,
        ml + pw / 2, h - 8, twitch_sync.html_escape(x_label),
        mt + ph / 2, twitch_sync.html_escape(y_label), legend,
        'plot-' || pg_catalog.left(pg_catalog.md5(coalesce(title, '') || series::text), 12), pw);
END
$$;

-- dashboard(): the page. SECURITY DEFINER, so a role granted EXECUTE on it
-- (and USAGE on the schema) sees the page without any table grant; it shows
-- when the token expires, never the token or the credentials.
CREATE FUNCTION twitch_sync.dashboard("range" interval DEFAULT '24 hours') RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    t1 timestamptz := pg_catalog.now();
    t0 timestamptz;
    r0 timestamptz;
    r1 timestamptz;
    span float8;
    bucket float8;
    st record;
    last_err record;
    rl record;
    live_n bigint;
    runs_n bigint;
    any_data boolean;
    run_gap float8;
    sample_gap float8;
    top_ids text[] := '{}';
    ranked record;
    day0 date;
    day1 date;
    vbucket float8;
    head text;
    kpis text;
    health text;
    charts text;
    live text;
    trends text;
    series jsonb;
    series2 jsonb;
    c1 text;
    c2 text;
    c3 text;
    c4 text;
    c5 text;
BEGIN
    -- in UTC: the same length whatever the session's TimeZone (and labelled
    -- as the span it is)
    dashboard.range := twitch_sync.dashboard_range(dashboard.range);
    t0 := (t1 AT TIME ZONE 'UTC' - dashboard.range) AT TIME ZONE 'UTC';
    span := pg_catalog.date_part('epoch', t1 - t0);
    -- run histogram bars: a round width giving at most 60 bars
    SELECT coalesce(min(c), pg_catalog.ceil(span / 60 / 86400) * 86400) INTO bucket
      FROM unnest(ARRAY[60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800]::float8[]) c
     WHERE span / c <= 60;

    SELECT * INTO st FROM twitch_sync.status();
    SELECT r.run_id, r.started_at, r.error INTO last_err
      FROM twitch_sync.runs r WHERE r.error IS NOT NULL
     ORDER BY r.started_at DESC, r.run_id DESC LIMIT 1;
    SELECT l.bucket_limit, l.remaining, l.reset_at, l.observed_at INTO rl FROM twitch_sync.rate_limit l;
    SELECT count(*) INTO live_n FROM twitch_sync.streams s WHERE s.is_live;
    SELECT count(*) INTO runs_n FROM twitch_sync.runs r WHERE r.started_at >= t0;
    any_data := EXISTS (SELECT 1 FROM twitch_sync.runs) OR EXISTS (SELECT 1 FROM twitch_sync.streams);

    head := pg_catalog.format(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;; style-src &#39;unsafe-inline&#39;">'
        '<meta name="referrer" content="no-referrer">'
        '<title>twitch_sync · %1$s</title><style>%2$s</style></head><body>'
        '<header><h1>twitch_sync</h1><p>Database <b>%1$s</b> · last %3$s, up to %4$s · times in UTC</p></header><main>',
        twitch_sync.html_escape(pg_catalog.current_database()),
        ':root{--fg:#1f2937;--muted:#5b6472;--line:#e5e7eb;--bg:#f5f7fa;--card:#fff}'
        '*{box-sizing:border-box}'
        'body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}'
        'header{padding:14px 24px;background:#1e1b2e;color:#fafafa}header h1{margin:0;font-size:20px}'
        'header p{margin:2px 0 0;color:#d4d4d8;font-size:13px}'
        'main{max-width:1320px;margin:0 auto;padding:16px 24px}'
        'section{margin:0 0 22px}h2{font-size:17px;margin:0 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line)}'
        'h3{margin:0 0 8px;font-size:14px}'
        '.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:0 0 18px}'
        '.kpi{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px}'
        '.kpi b{display:block;font-size:24px;font-variant-numeric:tabular-nums}'
        '.kpi span{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}'
        '.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr));gap:14px}'
        '.grid3{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,340px),1fr));gap:14px}'
        '.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;min-width:0}'
        'figure{margin:0}figcaption{font-weight:600;margin:0 0 4px}'
        'svg.chart{display:block;width:100%;height:auto}'
        'svg text{font-size:14px;fill:#4b5563}svg text.label{font-size:14px;fill:#1f2937;font-weight:600}'
        'svg .grid{stroke:#e5e7eb}svg .axis,svg .tick{stroke:#6b7280}'
        '.legend{list-style:none;margin:4px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px}'
        '.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}'
        '.table-wrap{overflow-x:auto}table{border-collapse:collapse;width:100%;background:var(--card)}'
        'th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}'
        'th{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}'
        '.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}'
        'td.cat,td.title{overflow-wrap:anywhere}td.title{max-width:420px}'
        '.badge{display:inline-block;padding:0 8px;border-radius:10px;font-weight:600;font-size:12px}'
        '.ok{background:#dcfce7;color:#166534}.partial{background:#fef3c7;color:#92400e}'
        '.failed{background:#fee2e2;color:#991b1b}.skipped,.none{background:#eef0f3;color:#374151}'
        'dl{display:grid;grid-template-columns:max-content 1fr;gap:5px 14px;margin:0}dt{color:var(--muted)}'
        'dd{margin:0;overflow-wrap:anywhere}'
        '.error{background:#fef2f2;border-left:4px solid #dc2626;padding:8px 10px;margin:0 0 6px;overflow-wrap:anywhere;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}'
        '.hint{margin:0;color:var(--muted)}'
        'meter{width:100%;height:14px}'
        '.empty{color:var(--muted);padding:18px;text-align:center;border:1px dashed #cbd5e1;border-radius:8px;background:var(--card)}'
        'footer{color:var(--muted);font-size:12px;text-align:center;padding:8px 0 20px}'
        '.three svg text,.three svg text.label{font-size:19px}'
        '@media (max-width:640px){main{padding:10px}header{padding:10px 12px}.card{padding:10px}'
        'svg text,svg text.label{font-size:20px}.kpi b{font-size:20px}td.title,th.title,.rank{display:none}th,td{padding:5px 4px;font-size:13px}th{font-size:11px}}',
        twitch_sync.dashboard_span(dashboard.range), twitch_sync.dashboard_time(t1));

    IF NOT any_data THEN
        -- The empty state: what is set up, and the next step.
        RETURN head || pg_catalog.format(
            '<section class="empty" id="empty-state"><h2>No data yet</h2>'
            '<p>twitch_sync has not recorded a run yet. Tracked channels: <b>%s</b> · credentials %s · schedule: %s.</p>'
            '<p>Track channels with <code>SELECT twitch_sync.track(&#39;&lt;broadcaster id&gt;&#39;)</code>, '
            'then run <code>SELECT twitch_sync.run()</code> or <code>SELECT twitch_sync.schedule()</code>.</p></section>'
            '</main><footer>twitch_sync.dashboard() · %s</footer></body></html>',
            twitch_sync.dashboard_num(st.tracked_channels),
            CASE WHEN st.credentials_set THEN 'set' ELSE '<b>not set</b> (twitch_sync.set_credentials)' END,
            coalesce(twitch_sync.html_escape(st.schedule), 'none'),
            twitch_sync.dashboard_time(t1));
    END IF;

    kpis := pg_catalog.format(
        '<div class="kpis">'
        '<div class="kpi"><span>Live now</span><b id="live-count">%s</b></div>'
        '<div class="kpi"><span>Tracked channels</span><b id="tracked-count">%s</b></div>'
        '<div class="kpi"><span>Runs, last %s</span><b id="runs-in-range">%s</b></div>'
        '<div class="kpi"><span>Failed or partial</span><b id="failures-in-range">%s</b></div>'
        '<div class="kpi"><span>Last run</span><b><span class="badge %s" id="last-status">%s</span></b></div>'
        '</div>',
        twitch_sync.dashboard_num(live_n), twitch_sync.dashboard_num(st.tracked_channels),
        twitch_sync.dashboard_span(dashboard.range), twitch_sync.dashboard_num(runs_n),
        twitch_sync.dashboard_num((SELECT count(*) FROM twitch_sync.runs r
                                    WHERE r.started_at >= t0 AND r.status IN ('failed', 'partial'))),
        coalesce(twitch_sync.html_escape(st.last_run_status), 'none'),
        coalesce(twitch_sync.html_escape(st.last_run_status), 'none'));

    -- Sync health: the facts.
    health := pg_catalog.format(
        '<section id="health"><h2>Sync health</h2><div class="grid3">'
        '<div class="card"><h3>Last run</h3><dl>'
        '<dt>Status</dt><dd><span class="badge %s">%s</span> run #%s</dd>'
        '<dt>Started</dt><dd>%s (%s ago)</dd><dt>Duration</dt><dd>%s ms</dd>'
        '<dt>Schedule</dt><dd>%s</dd><dt>Next run</dt><dd>%s</dd><dt>Last job</dt><dd>%s</dd>'
        '</dl></div>'
        '<div class="card"><h3>Last error</h3>%s</div>'
        '<div class="card"><h3>Twitch limits and token</h3><dl>'
        '<dt>Rate-limit bucket</dt><dd id="rate-limit">%s</dd>'
        '<dt>Bucket resets</dt><dd>%s</dd>'
        '<dt>Credentials</dt><dd>%s</dd><dt>App token expires</dt><dd>%s</dd>'
        '</dl></div></div></section>',
        coalesce(twitch_sync.html_escape(st.last_run_status), 'none'),
        coalesce(twitch_sync.html_escape(st.last_run_status), 'none'),
        coalesce(st.last_run_id::text, '–'),
        twitch_sync.dashboard_time(st.last_run_at), twitch_sync.dashboard_span(t1 - st.last_run_at),
        twitch_sync.dashboard_num(st.last_run_duration_ms),
        CASE WHEN st.schedule IS NULL THEN 'not scheduled (<code>SELECT twitch_sync.schedule()</code>)'
             ELSE '<code>' || twitch_sync.html_escape(st.schedule) || '</code>'
                  || CASE WHEN st.schedule_active THEN ' (active)' ELSE ' (<b>inactive</b>)' END END,
        CASE WHEN st.next_run_at IS NULL THEN '–'
             ELSE twitch_sync.dashboard_time(st.next_run_at) || ' (in ' || twitch_sync.dashboard_span(st.next_run_at - t1) || ')' END,
        CASE WHEN st.last_job_status IS NULL THEN '–'
             ELSE twitch_sync.html_escape(st.last_job_status) || ' at ' || twitch_sync.dashboard_time(st.last_job_at)
                  || coalesce(': ' || twitch_sync.html_escape(pg_catalog.left(st.last_job_message, 300)), '') END,
        CASE WHEN last_err.run_id IS NULL THEN '<p class="hint">No run has reported an error.</p>'
             ELSE pg_catalog.format('<p>Run #%s at %s (%s ago)</p><p class="error" id="last-error">%s</p><p class="hint">%s</p>',
                      last_err.run_id, twitch_sync.dashboard_time(last_err.started_at),
                      twitch_sync.dashboard_span(t1 - last_err.started_at),
                      twitch_sync.html_escape(pg_catalog.left(last_err.error, 2000)),
                      twitch_sync.html_escape(twitch_sync.alert_hint(last_err.error))) END,
        CASE WHEN rl.bucket_limit IS NULL THEN 'not seen yet'
             ELSE pg_catalog.format('%s of %s points left<br><meter min="0" max="%s" value="%s"></meter>',
                      twitch_sync.dashboard_num(rl.remaining), twitch_sync.dashboard_num(rl.bucket_limit),
                      rl.bucket_limit, rl.remaining) END,
        CASE WHEN rl.reset_at IS NULL THEN '–'
             ELSE twitch_sync.dashboard_time(rl.reset_at) || ' (seen ' || twitch_sync.dashboard_span(t1 - rl.observed_at) || ' ago)' END,
        CASE WHEN st.credentials_set THEN 'set' ELSE '<b>not set</b> (<code>twitch_sync.set_credentials()</code>)' END,
        CASE WHEN st.token_expires_at IS NULL THEN 'no token cached yet'
             WHEN st.token_expires_at <= t1 THEN 'expired ' || twitch_sync.dashboard_time(st.token_expires_at) || ' (renewed by the next run)'
             ELSE twitch_sync.dashboard_time(st.token_expires_at) || ' (in ' || twitch_sync.dashboard_span(st.token_expires_at - t1) || ')' END);

    -- Runs over time, by status: stacked bars.
    WITH b AS (
        SELECT pg_catalog.floor(pg_catalog.date_part('epoch', r.started_at) / bucket) * bucket AS x,
               count(*) FILTER (WHERE r.status = 'ok') AS ok,
               count(*) FILTER (WHERE r.status = 'partial') AS partial,
               count(*) FILTER (WHERE r.status = 'failed') AS failed,
               count(*) FILTER (WHERE r.status = 'skipped') AS skipped
          FROM twitch_sync.runs r WHERE r.started_at >= t0 AND r.started_at <= t1
         GROUP BY 1)
    SELECT pg_catalog.jsonb_build_array(
        pg_catalog.jsonb_build_object('name', 'ok', 'kind', 'bar', 'color', '#16a34a', 'points',
            coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, ok, 0)) FILTER (WHERE ok > 0), '[]')),
        pg_catalog.jsonb_build_object('name', 'partial', 'kind', 'bar', 'color', '#d97706', 'points',
            coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, ok + partial, ok)) FILTER (WHERE partial > 0), '[]')),
        pg_catalog.jsonb_build_object('name', 'failed', 'kind', 'bar', 'color', '#dc2626', 'points',
            coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, ok + partial + failed, ok + partial)) FILTER (WHERE failed > 0), '[]')),
        pg_catalog.jsonb_build_object('name', 'skipped', 'kind', 'bar', 'color', '#9ca3af', 'points',
            coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, ok + partial + failed + skipped, ok + partial + failed)) FILTER (WHERE skipped > 0), '[]')))
      INTO series FROM b;
    c1 := twitch_sync.dashboard_chart('Runs by status', 'time (UTC)',
              'runs per ' || twitch_sync.dashboard_span(pg_catalog.make_interval(secs => bucket)),
              t0, t1, series, true, bucket);

    -- Per run (or, past 400 runs, the maximum per histogram bar): duration,
    -- requests and 429s. A line breaks where runs stopped for more than twice
    -- their usual interval.
    SELECT coalesce(pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY g), 600) INTO run_gap
      FROM (SELECT pg_catalog.date_part('epoch', r.started_at - pg_catalog.lag(r.started_at) OVER (ORDER BY r.started_at)) AS g
              FROM twitch_sync.runs r WHERE r.started_at >= t0 AND r.status <> 'skipped') x
     WHERE g IS NOT NULL;
    WITH per AS (
        SELECT CASE WHEN runs_n > 400 THEN pg_catalog.floor(pg_catalog.date_part('epoch', r.started_at) / bucket) * bucket
                    ELSE pg_catalog.date_part('epoch', r.started_at) END AS x,
               max(pg_catalog.date_part('epoch', r.finished_at - r.started_at) * 1000) AS ms,
               max(r.helix_requests) AS requests, max(r.rate_limited) AS limited
          FROM twitch_sync.runs r WHERE r.started_at >= t0 AND r.started_at <= t1 AND r.status <> 'skipped'
         GROUP BY 1
    ), gaps AS (
        SELECT per.*, (x - pg_catalog.lag(x) OVER (ORDER BY x)) > 2 * run_gap + CASE WHEN runs_n > 400 THEN bucket ELSE 0 END AS brk
          FROM per
    )
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('name', 'run duration', 'kind', 'line', 'color', '#2563eb',
               'points', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, pg_catalog.round(ms::numeric, 1), coalesce(brk, false)::int) ORDER BY x), '[]'))),
           pg_catalog.jsonb_build_array(
               pg_catalog.jsonb_build_object('name', 'Get Streams requests', 'kind', 'line', 'color', '#2563eb',
                   'points', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, requests, coalesce(brk, false)::int) ORDER BY x), '[]')),
               pg_catalog.jsonb_build_object('name', '429 answers', 'kind', 'line', 'color', '#dc2626',
                   'points', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(x, limited, coalesce(brk, false)::int) ORDER BY x), '[]')))
      INTO series, series2 FROM gaps;
    c2 := twitch_sync.dashboard_chart(CASE WHEN runs_n > 400 THEN 'Run duration (longest per bar)' ELSE 'Run duration' END,
              'time (UTC)', 'duration (ms)', t0, t1, series, false, NULL);
    c3 := twitch_sync.dashboard_chart(CASE WHEN runs_n > 400 THEN 'Requests and 429s per run (most per bar)' ELSE 'Requests and 429s per run' END,
              'time (UTC)', 'requests per run', t0, t1, series2, true, NULL);
    IF runs_n = 0 THEN
        charts := pg_catalog.format('<div class="card" style="grid-column:1/-1"><p class="empty">No runs in the last %s.</p></div>',
                      twitch_sync.dashboard_span(dashboard.range));
    ELSE
        charts := '<div class="card">' || c1 || '</div><div class="card">' || c2 || '</div><div class="card">' || c3 || '</div>';
    END IF;
    health := health || '<section id="runs"><h2>Runs</h2><div class="grid3 three">' || charts || '</div></section>';

    -- Live now: the biggest streams.
    SELECT coalesce(pg_catalog.string_agg(pg_catalog.format(
               '<tr><td class="num rank">%s</td><td>%s</td><td class="num"%s>%s</td><td class="num">%s</td><td class="cat">%s</td><td class="title">%s</td></tr>',
               n, coalesce(twitch_sync.html_escape(l.login), twitch_sync.html_escape(l.broadcaster_id)),
               CASE WHEN n = 1 THEN ' id="top-viewers"' ELSE '' END,
               twitch_sync.dashboard_num(l.viewer_count), twitch_sync.dashboard_span(t1 - l.started_at),
               coalesce(twitch_sync.html_escape(nullif(l.game_name, '')), '–'),
               twitch_sync.html_escape(l.title)), '' ORDER BY n), '')
      INTO live
      FROM (SELECT s.*, c.login, pg_catalog.row_number() OVER (ORDER BY s.viewer_count DESC, s.broadcaster_id) AS n
              FROM twitch_sync.streams s LEFT JOIN twitch_sync.channels c USING (broadcaster_id)
             WHERE s.is_live ORDER BY s.viewer_count DESC, s.broadcaster_id LIMIT 20) l;
    IF live = '' THEN
        live := '<p class="empty" id="live-empty">No tracked channel is live.</p>';
    ELSE
        live := pg_catalog.format('<div class="table-wrap card"><table id="live-table"><thead><tr><th class="num rank">#</th><th>Channel</th>'
                    '<th class="num">Viewers</th><th class="num">Uptime</th><th>Category</th><th class="title">Title</th></tr></thead>'
                    '<tbody>%s</tbody></table></div><p class="hint">The %s biggest of %s live streams, as of the last run.</p>',
                    live, least(live_n, 20), twitch_sync.dashboard_num(live_n));
    END IF;
    live := '<section id="live"><h2>Live now</h2>' || live || '</section>';

    -- Trends: viewers of the five channels with the highest peak in the range,
    -- averaged per step of about 1/200 of the range (a line breaks over gaps
    -- longer than twice the sampling interval, plus a step for the rounding);
    -- and hours watched per day.
    -- (the peaks of whole days with final rollups from channel_days, as for
    -- hours watched; the rest from the samples). A line is drawn from
    -- samples: of the channels by peak, the first five with samples in the
    -- range (retention may have dropped a channel's samples and kept its
    -- rollups; it would leave its line out and a place empty).
    SELECT f.r0, f.r1 INTO r0, r1 FROM twitch_sync.final_rollup_days(t0, t1) f;
    FOR ranked IN
        SELECT p.broadcaster_id, max(p.peak) AS peak
              FROM (SELECT v.broadcaster_id, v.viewer_count AS peak
                      FROM twitch_sync.viewer_samples v WHERE v.sampled_at >= t0 AND v.sampled_at < r0
                    UNION ALL
                    SELECT v.broadcaster_id, v.viewer_count
                      FROM twitch_sync.viewer_samples v WHERE v.sampled_at >= r1 AND v.sampled_at <= t1
                    UNION ALL
                    SELECT c.broadcaster_id, c.peak_viewers
                      FROM twitch_sync.channel_days c
                     WHERE c.day >= (r0 AT TIME ZONE 'UTC')::date AND c.day < (r1 AT TIME ZONE 'UTC')::date
                       AND c.peak_viewers IS NOT NULL) p
             GROUP BY p.broadcaster_id ORDER BY peak DESC, p.broadcaster_id
    LOOP
        IF EXISTS (SELECT 1 FROM twitch_sync.viewer_samples v
                    WHERE v.broadcaster_id = ranked.broadcaster_id AND v.sampled_at >= t0 AND v.sampled_at <= t1) THEN
            top_ids := top_ids || ranked.broadcaster_id;
            EXIT WHEN pg_catalog.cardinality(top_ids) = 5;
        END IF;
    END LOOP;
    -- their sampling interval (the median time between consecutive samples)
    SELECT coalesce(pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY g), 600) INTO sample_gap
      FROM (SELECT pg_catalog.date_part('epoch', v.sampled_at - pg_catalog.lag(v.sampled_at)
                       OVER (PARTITION BY v.broadcaster_id COLLATE "C", v.stream_id COLLATE "C" ORDER BY v.sampled_at)) AS g
              FROM twitch_sync.viewer_samples v
             WHERE v.broadcaster_id = ANY (top_ids) AND v.sampled_at >= t0 AND v.sampled_at <= t1) x
     WHERE g IS NOT NULL;
    vbucket := greatest(span / 200, 1);
    WITH top AS (
        SELECT v.broadcaster_id, max(v.viewer_count) AS peak
          FROM twitch_sync.viewer_samples v
         WHERE v.broadcaster_id = ANY (top_ids) AND v.sampled_at >= t0 AND v.sampled_at <= t1
         GROUP BY v.broadcaster_id
    ), pts AS (
        SELECT t.broadcaster_id, t.peak,
               pg_catalog.floor(pg_catalog.date_part('epoch', v.sampled_at) / vbucket) * vbucket AS x,
               avg(v.viewer_count) AS y
          FROM top t JOIN twitch_sync.viewer_samples v ON v.broadcaster_id = t.broadcaster_id
         -- (the five ids again: read through each partition's key, not by a
         -- join the planner may hash against every sample of the range)
         WHERE v.broadcaster_id = ANY (top_ids) AND v.sampled_at >= t0 AND v.sampled_at <= t1
         GROUP BY 1, 2, 3
    ), brk AS (
        SELECT pts.*, coalesce(x - pg_catalog.lag(x) OVER (PARTITION BY broadcaster_id ORDER BY x)
                                > 2 * sample_gap + vbucket, false)::int AS b
          FROM pts
    ), per AS (
        SELECT b.broadcaster_id, b.peak,
               pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(b.x, pg_catalog.round(b.y), b.b) ORDER BY b.x) AS points
          FROM brk b GROUP BY 1, 2
    )
    SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'name', coalesce(c.login, per.broadcaster_id), 'kind', 'line',
               'color', (ARRAY['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed'])[o],
               'points', per.points) ORDER BY o), '[]')
      INTO series
      FROM (SELECT per.*, pg_catalog.row_number() OVER (ORDER BY per.peak DESC, per.broadcaster_id) AS o FROM per) per
      LEFT JOIN twitch_sync.channels c USING (broadcaster_id);
    IF pg_catalog.jsonb_array_length(series) = 0 THEN
        c4 := pg_catalog.format('<p class="empty">No viewer samples in the last %s.</p>', twitch_sync.dashboard_span(dashboard.range));
    ELSE
        c4 := twitch_sync.dashboard_chart('Viewers of the top channels', 'time (UTC)', 'viewers', t0, t1, series, true, NULL);
    END IF;

    -- Hours watched per day (twitch_sync.dashboard_hours_per_day: one source).
    SELECT pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('name', 'hours watched', 'kind', 'bar', 'color', '#7c3aed',
               'points', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(
                   pg_catalog.date_part('epoch', d.day::timestamp AT TIME ZONE 'UTC'), d.hours_watched, 0) ORDER BY d.day), '[]'))),
           bool_or(d.hours_watched > 0), min(d.day), max(d.day) + 1
      INTO series, any_data, day0, day1
      FROM twitch_sync.dashboard_hours_per_day(dashboard.range) d;
    IF coalesce(any_data, false) THEN
        c5 := twitch_sync.dashboard_chart('Hours watched per day', 'day (UTC)', 'hours watched',
                  day0::timestamp AT TIME ZONE 'UTC', day1::timestamp AT TIME ZONE 'UTC', series, false, 86400);
    ELSE
        c5 := pg_catalog.format('<p class="empty">No hours watched in the last %s, to two decimals '
                                '(a stream counts from its second sample).</p>',
                                twitch_sync.dashboard_span(dashboard.range));
    END IF;
    trends := '<section id="trends"><h2>Trends</h2><div class="grid"><div class="card">' || c4
           || '</div><div class="card">' || c5 || '</div></div></section>';

    -- EventSub: when it exists, its connection state goes here (a section
    -- after "Live now": connected or not, since when, subscriptions).

    RETURN head || kpis || health || live || trends
        || pg_catalog.format('</main><footer>twitch_sync.dashboard() · last %s · %s</footer></body></html>',
               twitch_sync.dashboard_span(dashboard.range), twitch_sync.dashboard_time(t1));
END
$$;
COMMENT ON FUNCTION twitch_sync.dashboard(interval) IS 'A self-contained HTML page (inline CSS and SVG, no script): sync health, live streams and viewer trends over the last range.';

-- sql/eventsub.sql (EventSub into the transition layer), as on a fresh install.
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

---------------------------------------------------------------------------
-- status() and metrics(), as in sql/finalize.sql (after everything they read).
---------------------------------------------------------------------------

-- status(): one row an operator reads at psql. Says whether credentials are
-- set and when the token expires, never the credentials themselves.
-- status() gained the columns polling and eventsub: a new result type (the old
-- one's grants are carried over once the new one exists).
ALTER FUNCTION twitch_sync.status() RENAME TO status_0_1_0;
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
CREATE OR REPLACE FUNCTION twitch_sync.metrics() RETURNS text
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

---------------------------------------------------------------------------
-- EventSub's webhook transport (sql/webhook.sql, src/webhook.rs)

-- The webhook secret, stored with the client secret (sql/schema.sql).
ALTER TABLE twitch_sync.credentials
    ADD COLUMN webhook_secret text CHECK (webhook_secret ~ '^[ -~]{10,100}$');

-- set_webhook_secret(): the secret given to Twitch as transport.secret when
-- the webhook subscriptions (or conduit webhook shards) were created. Twitch's
-- rule: 10 to 100 ASCII characters (here: visible ones, no spaces, as the
-- core's check_secret). NULL removes it (the receiver then refuses every
-- request with 55000). Needs set_credentials() first (one row holds both).
-- log_min_error_statement = panic: a refused call does not write its
-- statement (with the candidate secret in it) to the server log.
CREATE FUNCTION twitch_sync.set_webhook_secret(secret text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET log_min_error_statement = panic AS $$
BEGIN
    IF secret IS NOT NULL AND secret !~ '^[ -~]{10,100}$' THEN
        RAISE EXCEPTION 'invalid webhook secret: it must be 10 to 100 printable ASCII characters (spaces included), it has %',
                CASE WHEN pg_catalog.length(secret) NOT BETWEEN 10 AND 100
                     THEN pg_catalog.length(secret)::text || ' characters'
                     ELSE 'a control or a non-ASCII character' END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use the same secret as the transport.secret of your webhook subscriptions; '
                      || 'Twitch requires 10 to 100 ASCII characters.';
    END IF;
    UPDATE twitch_sync.credentials c SET webhook_secret = secret, updated_at = pg_catalog.now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'twitch_sync has no Twitch credentials'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run SELECT twitch_sync.set_credentials(''<client id>'', ''<client secret>''); first: '
                      || 'the webhook secret is stored with them.';
    END IF;
END
$$;
COMMENT ON FUNCTION twitch_sync.set_webhook_secret(text) IS 'Stores the EventSub webhook secret (10 to 100 printable ASCII characters, spaces included; NULL removes it) that twitch_sync.eventsub_webhook checks signatures with.';

-- The receiver (src/webhook.rs), as pgrx declares it.
CREATE FUNCTION twitch_sync."eventsub_webhook"(
	"body" TEXT,
	"message_id" TEXT DEFAULT NULL,
	"message_timestamp" TEXT DEFAULT NULL,
	"message_signature" TEXT DEFAULT NULL,
	"message_type" TEXT DEFAULT NULL,
	"subscription_type" TEXT DEFAULT NULL,
	"subscription_version" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'eventsub_webhook_wrapper';

-- ---------------------------------------------------------------------------
-- Discovery by category (issue 15): channels record the category that
-- discovered them; tracked_categories, track_category, untrack_category and
-- discover_channels as in sql/discovery.sql; track() adopts discovered channels.
ALTER TABLE twitch_sync.channels
    ADD COLUMN discovered_via text,
    ADD COLUMN discovered_at timestamptz;
-- track(): start keeping a channel current. Idempotent; returns true when the
-- channel was not tracked (or was disabled) before. A login given later replaces
-- the stored one; NULL keeps it. A channel a category discovered is adopted:
-- it no longer counts against that category's cap, and untrack_category(...,
-- true) leaves it tracked.
CREATE OR REPLACE FUNCTION twitch_sync.track(broadcaster_id text, login text DEFAULT NULL) RETURNS boolean
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

-- 0.1.0 kept a disabled channel's live broadcast live for good (nobody checks
-- it): it ends now, as disabling ends it from 0.2.0 on, with its event.
SELECT twitch_sync.end_live_broadcasts(ARRAY(
    SELECT c.broadcaster_id FROM twitch_sync.channels c WHERE NOT c.enabled));

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

-- As on a fresh install: nothing is readable or executable by PUBLIC.
REVOKE ALL ON ALL TABLES IN SCHEMA twitch_sync FROM PUBLIC;
-- set_credentials(): a refused call does not write its statement (with the
-- secret in it) to the server log
-- set_credentials(): visible ASCII only (a no-break space passed the old check)
CREATE OR REPLACE FUNCTION twitch_sync.set_credentials(client_id text, client_secret text) RETURNS void
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
ALTER FUNCTION twitch_sync.set_credentials(text, text) SET log_min_error_statement = panic;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twitch_sync FROM PUBLIC;
-- ... except setting(): SQL functions a reader is granted (sample_gap(), the
-- analytics) read settings through it, and every setting is readable by
-- anyone with SHOW anyway. It still takes USAGE on the schema to reach it.
GRANT EXECUTE ON FUNCTION twitch_sync.setting(text) TO PUBLIC;

-- The grants users had on prune() and status() of 0.1.0.
SELECT twitch_sync.carry_grants_0_2_0(p.proacl, p.proowner, 'FUNCTION twitch_sync.prune(integer)')
  FROM pg_catalog.pg_proc p WHERE p.oid = 'twitch_sync.prune_0_1_0(integer)'::regprocedure;
SELECT twitch_sync.carry_grants_0_2_0(p.proacl, p.proowner, 'FUNCTION twitch_sync.status()')
  FROM pg_catalog.pg_proc p WHERE p.oid = 'twitch_sync.status_0_1_0()'::regprocedure;
DROP FUNCTION twitch_sync.prune_0_1_0(integer);
DROP FUNCTION twitch_sync.status_0_1_0();


-- 0.1.0's schedule() made one pg_cron job, run(); from 0.2.0 on it also
-- schedules maintain() hourly (sample partitions, rollups). Where pg_cron
-- runs in this database, each owner of a job here that runs
-- SELECT twitch_sync.run() (schedule()'s, or one made by hand under any name)
-- gets the maintenance job (twitch_sync.cron_maintain_job_name()) beside it,
-- owned like it, as schedule() makes it (unschedule() removes both); an owner
-- that may not call maintain() is granted EXECUTE on it (it runs the sync
-- already), with a WARNING. Where pg_cron runs in another database the jobs
-- are out of reach: a WARNING gives the call to make there (README
-- "Upgrades"). WARNINGs, because PostgreSQL raises client_min_messages and
-- log_min_messages to WARNING while an extension's script runs: a NOTICE
-- would reach nobody. A failure never stops the upgrade. Before the initial
-- privileges are set straight below, so that such a grant stays the user's.
DO $$
DECLARE
    j record;
    cron_db text := pg_catalog.current_setting('cron.database_name', true);
    here text := pg_catalog.current_database();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        IF cron_db IS NOT NULL AND cron_db <> here THEN
            RAISE WARNING 'twitch_sync: from 0.2.0 on, maintain() runs hourly beside run(); pg_cron runs in database %', cron_db
                USING HINT = pg_catalog.format('Connect to %I and run: SELECT cron.schedule_in_database(%L, %L, %L, %L);',
                    cron_db, twitch_sync.cron_job_name() || '-' || here || '-maintain',
                    twitch_sync.cron_maintain_schedule(), 'SELECT twitch_sync.maintain()', here);
        END IF;
        RETURN;
    END IF;
    FOR j IN EXECUTE $q$
        SELECT DISTINCT r.username
          FROM cron.job r
         WHERE r.database = pg_catalog.current_database()
           AND twitch_sync.cron_command_is(r.command, 'SELECT twitch_sync.run()')
           AND NOT EXISTS (SELECT 1 FROM cron.job m
                            WHERE m.jobname = twitch_sync.cron_maintain_job_name()
                              AND m.username = r.username) $q$
    LOOP
        BEGIN
            IF NOT pg_catalog.has_function_privilege(j.username, 'twitch_sync.maintain()', 'EXECUTE') THEN
                EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION twitch_sync.maintain() TO %I', j.username);
                RAISE WARNING 'twitch_sync: granted EXECUTE on twitch_sync.maintain() to %, which owns a run() job, for its maintain() job',
                    j.username;
            END IF;
            EXECUTE 'SELECT cron.schedule_in_database($1, $2, $3, $4, $5)'
              USING twitch_sync.cron_maintain_job_name(), twitch_sync.cron_maintain_schedule(),
                    'SELECT twitch_sync.maintain()', here, j.username;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'twitch_sync: could not schedule % for % (%): run SELECT twitch_sync.schedule(); as that role',
                twitch_sync.cron_maintain_job_name(), j.username, SQLERRM;
        END;
    END LOOP;
END
$$;

-- Users' grants are the users', not the extension's: every GRANT and REVOKE
-- of this script (the REVOKEs above touch every table and function, the
-- carried grants three more) recorded the object's whole ACL, users' grants
-- included, as the extension's initial privileges (pg_init_privs), and
-- pg_dump dumps only grants that differ from those: a dump of the upgraded
-- database would lose them. Every member's initial privileges are put back to
-- what a fresh install records: the owner's and PUBLIC's entries only, and
-- none for columns.
DELETE FROM pg_catalog.pg_init_privs i
 USING pg_catalog.pg_depend d, pg_catalog.pg_extension e
 WHERE e.extname = 'twitch_sync' AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
   AND d.refobjid = e.oid AND d.deptype = 'e'
   AND i.classoid = d.classid AND i.objoid = d.objid AND i.objsubid > 0 AND i.privtype = 'e';
UPDATE pg_catalog.pg_init_privs i
   SET initprivs = ARRAY(SELECT x FROM pg_catalog.unnest(i.initprivs) x
                          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(ARRAY[x]) a
                                             WHERE a.grantee <> 0 AND a.grantee <> o.owner))
  FROM (SELECT d.classid, d.objid,
               CASE d.classid
                   WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass
                       THEN (SELECT p.proowner FROM pg_catalog.pg_proc p WHERE p.oid = d.objid)
                   WHEN 'pg_catalog.pg_class'::pg_catalog.regclass
                       THEN (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = d.objid)
                   WHEN 'pg_catalog.pg_namespace'::pg_catalog.regclass
                       THEN (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.oid = d.objid)
                   WHEN 'pg_catalog.pg_type'::pg_catalog.regclass
                       THEN (SELECT t.typowner FROM pg_catalog.pg_type t WHERE t.oid = d.objid)
                   ELSE e.extowner END AS owner
          FROM pg_catalog.pg_depend d, pg_catalog.pg_extension e
         WHERE e.extname = 'twitch_sync' AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
           AND d.refobjid = e.oid AND d.deptype = 'e') o
 WHERE i.classoid = o.classid AND i.objoid = o.objid AND i.objsubid = 0 AND i.privtype = 'e';
DROP FUNCTION twitch_sync.carry_grants_0_2_0(aclitem[], oid, text);

