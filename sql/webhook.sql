-- twitch_sync: EventSub's webhook transport (issue 14; README "Webhook
-- transport"). The receiver itself, twitch_sync.eventsub_webhook(body, ...),
-- is written in Rust (src/webhook.rs: the signature check and the body's
-- parsing are the core's); this file stores the secret it checks against.
--
-- The secret lives in twitch_sync.credentials.webhook_secret (sql/schema.sql),
-- next to the client secret and guarded like it: the table is readable only
-- by the extension's owner and superusers, and nothing else shows it
-- (status(), metrics(), the dashboard, events, errors, the server log).

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
