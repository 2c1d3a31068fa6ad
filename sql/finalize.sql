-- Runs after every object of the extension exists (pgrx "finalize").

-- run() reads the credentials: it runs as the extension's owner, with a pinned
-- search_path (it schema-qualifies everything it touches).
ALTER FUNCTION twitch_sync.run() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Nothing is executable by PUBLIC; grant on purpose (README, "Privileges").
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA twitch_sync FROM PUBLIC;
