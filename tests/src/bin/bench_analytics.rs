//! The analytics benchmark (issue 12): a dataset generated in SQL, never
//! committed — 1,000 channels x 90 days of 10-minute samples, about 13 million
//! rows, in day partitions — rolled up by maintain(), then the queries apps
//! run, each timed as the median of 5 after a warm-up. `scripts/bench` runs it
//! (`BENCH_ONLY=analytics`); `BENCH_ANALYTICS_CHANNELS` / `_DAYS` shrink it.

use std::time::Instant;
use twitch_sync_e2e::{world, TestDb};

fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median_ms(db: &mut TestDb, sql: &str) -> f64 {
    db.client.batch_execute(sql).unwrap();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            db.client.batch_execute(sql).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[2]
}

/// Samples of every stream in `streams`: the `first`-th to the `last`-th from
/// its `started_at`, one every `step`, those before `until` (SQL), written as
/// the transition layer writes them: each with the interval it closes (the
/// previous sample's time, count and category).
fn samples_of_every_stream(step: &str, first: i64, last: i64, until: &str) -> String {
    format!(
        "INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count, game_id,
                 prev_sampled_at, prev_viewer_count, prev_game_id)
         SELECT s.stream_id, s.broadcaster_id, s.started_at + k * interval '{step}',
                (100 + (hashint4(k + s.stream_id::int) & 1023))::int, s.game_id,
                CASE WHEN k > 0 THEN s.started_at + (k - 1) * interval '{step}' END,
                CASE WHEN k > 0 THEN (100 + (hashint4(k - 1 + s.stream_id::int) & 1023))::int END,
                CASE WHEN k > 0 THEN s.game_id END
           FROM twitch_sync.streams s, generate_series({first}, {last}) k
          WHERE s.started_at + k * interval '{step}' < {until};"
    )
}

fn main() {
    let channels = env("BENCH_ANALYTICS_CHANNELS", 1_000);
    let days = env("BENCH_ANALYTICS_DAYS", 90);
    let mut db = TestDb::bare(world(1, 0.0));
    println!("twitch_sync analytics benchmark: {channels} channels x {days} days of 10-minute samples; release build");

    // The dataset: every channel live all day (one 24-hour broadcast a day), a
    // sample every 10 minutes, in the day partitions maintain() keeps.
    let t = Instant::now();
    let samples = samples_of_every_stream("10 minutes", 0, 143, "now()");
    db.client
        .batch_execute(&format!(
            "SET twitch_sync.max_sample_gap_secs = 1200;
             SELECT twitch_sync.create_sample_partitions(current_date - {days}, current_date);
             INSERT INTO twitch_sync.channels (broadcaster_id, login)
             SELECT (100000000 + c)::text, 'channel_' || c FROM generate_series(1, {channels}) c;
             INSERT INTO twitch_sync.streams (stream_id, broadcaster_id, is_live, viewer_count, peak_viewer_count,
                     title, game_id, game_name, started_at, ended_at, updated_at, first_seen_at)
             SELECT (c * 1000 + d)::text, (100000000 + c)::text, false, 0, 0, 'day ' || d, (c % 20)::text,
                    'Game ' || (c % 20), s, s + interval '24 hours', s + interval '24 hours', s
               FROM generate_series(1, {channels}) c, generate_series(1, {days}) d,
                    LATERAL (SELECT (current_date - d)::timestamp AT TIME ZONE 'UTC' + (c % 16) * interval '1 hour' AS s) x;
             INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
             SELECT broadcaster_id, stream_id, first_seen_at, 'poll', title, game_id, game_name FROM twitch_sync.streams;
             {samples}
             ANALYZE twitch_sync.viewer_samples;"
        ))
        .unwrap();
    let rows = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples");
    println!(
        "generated {rows} samples in {:.0} s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    let first_maintain = t.elapsed().as_secs_f64();
    let t = Instant::now();
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    let hourly_maintain = t.elapsed().as_secs_f64() * 1000.0;

    let one = "100000001";
    let results = [
        (
            "one channel's hourly trend over 90 days (viewer_trend)",
            median_ms(
                &mut db,
                &format!(
                    "SELECT * FROM twitch_sync.viewer_trend('{one}', now() - interval '{days} days', now(), '1 hour')"
                ),
            ),
            20.0,
        ),
        (
            "top 100 channels by hours watched over 7 days (top_channels)",
            median_ms(
                &mut db,
                "SELECT * FROM twitch_sync.top_channels(current_date - 7, current_date, 'hours_watched', 100)",
            ),
            50.0,
        ),
        (
            "the per-day report for all channels on one day (channel_days)",
            median_ms(
                &mut db,
                "SELECT * FROM twitch_sync.channel_days WHERE day = current_date - 3",
            ),
            100.0,
        ),
        (
            "the dashboard over 30 days (dashboard('30 days'))",
            median_ms(&mut db, "SELECT twitch_sync.dashboard('30 days')"),
            f64::NAN,
        ),
        (
            "the same day in another time zone, from raw samples (channel_days_in)",
            median_ms(
                &mut db,
                "SELECT * FROM twitch_sync.channel_days_in('America/New_York', current_date - 3, current_date - 3)",
            ),
            f64::NAN,
        ),
    ];
    // Dropping one day: keep all but the oldest day's partition.
    let before = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples");
    // The drop measured 3.6 and 5.9 s in two runs out of many (20 ms
    // otherwise; not reproduced by hand): if it is slow, show what else the
    // server did meanwhile (lock waits, autovacuum, checkpoints).
    for setting in [
        "ALTER SYSTEM SET log_lock_waits = on",
        "ALTER SYSTEM SET log_autovacuum_min_duration = 0",
        "ALTER SYSTEM SET log_checkpoints = on",
        "SELECT pg_reload_conf()",
    ] {
        db.client.batch_execute(setting).unwrap();
    }
    let activity: Vec<String> = db
        .client
        .query(
            "SELECT format('%s: %s (%s)', backend_type, left(query, 80), wait_event)
               FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let log_before = db.cluster().log().len();
    let t = Instant::now();
    let dropped = db.scalar_i64(&format!(
        "SELECT twitch_sync.drop_sample_partitions({})",
        days - 1
    ));
    let drop_ms = t.elapsed().as_secs_f64() * 1000.0;
    if drop_ms >= 50.0 {
        eprintln!(
            "the drop was slow ({drop_ms:.0} ms). Server activity before it:\n{}\nServer log since:\n{}",
            activity.join("\n"),
            &db.cluster().log()[log_before..]
        );
    }
    assert!(
        dropped > 0 && dropped < before,
        "dropped {dropped} of {before}"
    );

    println!("\n| query | median | target | met |\n|---|---|---|---|");
    for (name, ms, target) in &results {
        let (t, met) = if target.is_nan() {
            ("-".to_string(), "-")
        } else {
            (
                format!("< {target:.0} ms"),
                if ms < target { "yes" } else { "NO" },
            )
        };
        println!("| {name} | {ms:.1} ms | {t} | {met} |");
    }
    println!(
        "| dropping one day of samples ({dropped} rows) | {drop_ms:.1} ms | < 50 ms | {} |",
        if drop_ms < 50.0 { "yes" } else { "NO" }
    );
    println!(
        "| maintain(), first call: rolls up all {days} days | {first_maintain:.1} s | - | - |"
    );
    println!(
        "| maintain(), next call (hourly): today and yesterday | {hourly_maintain:.0} ms | - | - |"
    );

    let mut per_million = |sql: &str| -> f64 {
        db.scalar_i64(sql) as f64 / 1_048_576.0 / (rows as f64 / 1_000_000.0)
    };
    println!(
        "\ntable sizes per million samples: viewer_samples (heap + primary keys) {:.1} MiB; \
         rollups channel_days {:.2} MiB, category_days {:.2} MiB (per million samples rolled up)",
        per_million(
            "SELECT sum(pg_total_relation_size(inhrelid))::int8 FROM pg_inherits
              WHERE inhparent = 'twitch_sync.viewer_samples'::regclass"
        ),
        per_million("SELECT pg_total_relation_size('twitch_sync.channel_days')"),
        per_million("SELECT pg_total_relation_size('twitch_sync.category_days')"),
    );
    drop(db);
    many_live_streams();
}

/// The raw-sample paths at many live streams: `BENCH_ANALYTICS_LIVE` (20,000)
/// broadcasts live for the last 2 hours, a sample a minute (2.4 million
/// samples, written as the transition layer writes them), then today's
/// figures from raw samples, the dashboard, and maintain(). Each timed once
/// after a warm-up call; `work_mem` 16 MB.
fn many_live_streams() {
    let live = env("BENCH_ANALYTICS_LIVE", 20_000);
    if live <= 0 {
        return;
    }
    let mut db = TestDb::bare(world(1, 0.0));
    let t = Instant::now();
    let samples = samples_of_every_stream("1 minute", 0, 119, "now()");
    db.client
        .batch_execute(&format!(
            "SET work_mem = '16MB';
             SET twitch_sync.max_sample_gap_secs = 1200;
             SELECT twitch_sync.create_sample_partitions(current_date - 1, current_date + 1);
             INSERT INTO twitch_sync.channels (broadcaster_id, login)
             SELECT (100000000 + c)::text, 'channel_' || c FROM generate_series(1, {live}) c;
             INSERT INTO twitch_sync.streams (stream_id, broadcaster_id, is_live, viewer_count, peak_viewer_count,
                     title, game_id, game_name, started_at, updated_at, first_seen_at, last_sampled_at,
                     sample_count)
             SELECT (5000000 + c)::text, (100000000 + c)::text, true, 100, 2000, 'live ' || c, (c % 50)::text,
                    'Game ' || (c % 50), now() - interval '2 hours', now(), now() - interval '2 hours', now(), 120
               FROM generate_series(1, {live}) c;
             {samples}
             INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
             SELECT broadcaster_id, stream_id, first_seen_at, 'poll', title, game_id, game_name FROM twitch_sync.streams;"
        ))
        .unwrap();
    db.client.batch_execute("VACUUM ANALYZE").unwrap();
    let rows = db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples");
    println!(
        "\n{live} live streams, 2 hours of a sample a minute: {rows} samples (generated in {:.0} s)",
        t.elapsed().as_secs_f64()
    );
    println!("\n| call | time |\n|---|---|");
    for (name, sql) in [
        (
            "dashboard_hours_per_day('24 hours')",
            "SELECT * FROM twitch_sync.dashboard_hours_per_day('24 hours')",
        ),
        (
            "dashboard('24 hours')",
            "SELECT twitch_sync.dashboard('24 hours')",
        ),
        (
            "dashboard('1 hour')",
            "SELECT twitch_sync.dashboard('1 hour')",
        ),
        (
            "channel_days_in('UTC', today, today)",
            "SELECT * FROM twitch_sync.channel_days_in('UTC', current_date, current_date)",
        ),
        (
            "category_days_in('UTC', today, today)",
            "SELECT * FROM twitch_sync.category_days_in('UTC', current_date, current_date)",
        ),
    ] {
        db.client.batch_execute(sql).unwrap();
        let t = Instant::now();
        db.client.batch_execute(sql).unwrap();
        println!("| {name} | {:.2} s |", t.elapsed().as_secs_f64());
    }
    // maintain(): its first call rolls up today from the samples; later calls
    // add only what was written since (here: ten more minutes of samples,
    // 10 x BENCH_ANALYTICS_LIVE, the next ten runs' worth).
    let ten_more = samples_of_every_stream("1 minute", 120, 129, "'infinity'");
    for name in [
        "maintain(), first call (rolls up today's samples)",
        "maintain() after ten more minutes of samples (adds them)",
        "maintain() with nothing new",
    ] {
        if name.contains("ten more") {
            db.client.batch_execute(&ten_more).unwrap();
        }
        let t = Instant::now();
        db.client
            .batch_execute("SELECT twitch_sync.maintain()")
            .unwrap();
        println!("| {name} | {:.2} s |", t.elapsed().as_secs_f64());
    }
}
