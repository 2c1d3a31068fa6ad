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
