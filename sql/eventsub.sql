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
--   'superseded' an offline event naming a stream id that is not the live one
--                (a late offline of an earlier broadcast must not end the current one),
--                or an online event of a broadcast that was ended at or after the
--                online's own timestamp (a late online must not reopen it)
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
    IF NOT EXISTS (SELECT 1 FROM twitch_sync.channels c
                    WHERE c.broadcaster_id = apply_eventsub.broadcaster_id AND c.enabled) THEN
        outcome := 'untracked';
    ELSIF event = 'offline' AND stream_id IS NOT NULL THEN
        SELECT s.stream_id INTO live_id FROM twitch_sync.streams s
         WHERE s.broadcaster_id = apply_eventsub.broadcaster_id AND s.is_live;
        outcome := CASE WHEN live_id IS NOT NULL AND live_id <> stream_id THEN 'superseded' END;
    ELSIF event = 'online' AND EXISTS (
            SELECT 1 FROM twitch_sync.streams s
             WHERE s.broadcaster_id = apply_eventsub.broadcaster_id
               AND s.stream_id = apply_eventsub.stream_id
               AND NOT s.is_live AND s.ended_at >= message_at) THEN
        -- a late online of a broadcast that an event after it already ended
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
COMMENT ON FUNCTION twitch_sync.apply_eventsub(text, timestamptz, text, text, text, text, timestamptz, boolean) IS 'Applies one EventSub stream.online/stream.offline notification (deduplicated by message id) as one observation of the transition layer; returns applied, duplicate, stale, untracked or superseded.';
