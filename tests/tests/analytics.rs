//! History and analytics (issue 12): random, seeded histories go through
//! `twitch_sync.apply_observations` with their own timestamps (flaps, restarts,
//! reopened broadcasts, gaps longer than the gap limit, failed batches, a
//! history crossing midnight), `twitch_sync.maintain()` rolls them up (three
//! times on the way, each adding what was written since, and at the end),
//! and every figure is compared with a
//! recomputation from the raw rows (`viewer_samples`, `streams`) done here,
//! from the rules README "Analytics" documents, not from the SQL:
//!
//! - a sample's count holds until the broadcast's next sample when that comes
//!   within the gap limit; longer gaps count nothing;
//! - hours watched = sum of viewers x seconds / 3600; average = viewers x
//!   seconds / seconds covered; airtime = started_at (else first seen) to
//!   ended_at, a channel's overlapping broadcasts counted once; days split at
//!   midnight (UTC, or the time zone asked for).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};
use twitch_sync_core::rng::SplitMix64 as Rng;
use twitch_sync_e2e::postgres::{Client, Transaction};
use twitch_sync_e2e::{error_text, sqlstate, world, TestDb};

const GAP_SECS: f64 = 900.0;
const GAMES: &[(&str, &str)] = &[
    ("11", "Chess"),
    ("22", "Fortnite"),
    ("33", "Minecraft"),
    ("", ""),
];
const TITLES: &[&str] = &["Morning", "Ranked", "Chill", "Finals"];
const DAY: i64 = 86_400;

/// One observation as sent.
struct Obs {
    bid: String,
    state: &'static str,
    sid: Option<String>,
    viewers: Option<i32>,
    title: Option<String>,
    game: Option<usize>,
    started: Option<i64>,
}

struct Live {
    sid: String,
    title: String,
    game: usize,
    started: Option<i64>,
}

fn send(client: &mut Client, at: i64, obs: &[Obs]) {
    let col =
        |f: &dyn Fn(&Obs) -> Option<String>| -> Vec<Option<String>> { obs.iter().map(f).collect() };
    let bid = col(&|o| Some(o.bid.clone()));
    let state = col(&|o| Some(o.state.to_string()));
    let sid = col(&|o| o.sid.clone());
    let title = col(&|o| o.title.clone());
    let game_id = col(&|o| o.game.map(|g| GAMES[g].0.to_string()));
    let game_name = col(&|o| o.game.map(|g| GAMES[g].1.to_string()));
    let viewers: Vec<Option<i32>> = obs.iter().map(|o| o.viewers).collect();
    let started: Vec<Option<f64>> = obs.iter().map(|o| o.started.map(|s| s as f64)).collect();
    // the channels are tracked (the transition layer writes nothing a poll
    // saw of a channel that is not)
    client
        .execute(
            "INSERT INTO twitch_sync.channels (broadcaster_id) SELECT DISTINCT unnest($1::text[])
             ON CONFLICT DO NOTHING",
            &[&bid],
        )
        .expect("track the channels");
    client
        .execute(
            "SELECT twitch_sync.apply_observations(ARRAY(
                 SELECT ROW('poll', to_timestamp($1::float8), o.bid, o.state, o.sid, NULL, o.viewers,
                            o.title, o.game_id, o.game_name, 'en', to_timestamp(o.started))::twitch_sync.observation
                   FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[],
                               $8::text[], $9::float8[])
                     WITH ORDINALITY AS o(bid, state, sid, viewers, title, game_id, game_name, started, n)
                  ORDER BY o.n), 1, false)",
            &[&(at as f64), &bid, &state, &sid, &viewers, &title, &game_id, &game_name, &started],
        )
        .expect("apply_observations");
}

/// A random history of `channels` channels over `steps` steps from `t0`;
/// calls `between` every 40 steps. Every broadcast has ended at the end.
fn history(
    client: &mut Client,
    seed: u64,
    t0: i64,
    steps: usize,
    between: &mut dyn FnMut(&mut Client),
) -> BTreeMap<String, Vec<String>> {
    let mut rng = Rng(seed);
    let ids: Vec<String> = (1..=6).map(|i| format!("{}", 9000 + i)).collect();
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    let mut last_ended: BTreeMap<String, Live> = BTreeMap::new();
    let mut titles: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut next_stream = 1u64;
    let mut t = t0;
    for step in 0..steps {
        if step > 0 && step % 40 == 0 {
            between(client);
        }
        t += [30, 60, 300, 600, 600, 850, 1000, 1300][rng.below(8)];
        let mut obs = Vec::new();
        for bid in &ids {
            if rng.chance(0.10) {
                continue; // its batch failed: not observed
            }
            let viewers = |rng: &mut Rng| Some(rng.below(5000) as i32);
            match live.remove(bid) {
                Some(mut l) => {
                    let roll = rng.below(100);
                    if roll < 72 {
                        if rng.chance(0.10) {
                            l.title = TITLES[rng.below(TITLES.len())].to_string();
                        }
                        if rng.chance(0.10) {
                            l.game = rng.below(GAMES.len());
                        }
                        if l.started.is_none() && rng.chance(0.25) {
                            // Helix gives the start time it lacked (up to 12 hours back)
                            l.started = Some(t - rng.below(12 * 3600) as i64);
                        }
                        obs.push(live_obs(bid, &l, viewers(&mut rng)));
                        live.insert(bid.clone(), l);
                    } else if roll < 80 {
                        let l = new_live(&mut rng, &mut next_stream, t);
                        obs.push(live_obs(bid, &l, viewers(&mut rng)));
                        live.insert(bid.clone(), l);
                    } else if roll < 92 {
                        obs.push(ended_obs(bid, "not_listed"));
                        last_ended.insert(bid.clone(), l);
                    } else {
                        obs.push(ended_obs(bid, "offline"));
                        last_ended.insert(bid.clone(), l);
                    }
                }
                None => {
                    if rng.chance(0.25) {
                        // a flap: the ended broadcast is listed again (reopened)
                        let l = match last_ended.remove(bid) {
                            Some(l) if rng.chance(0.30) => l,
                            _ => new_live(&mut rng, &mut next_stream, t),
                        };
                        // an EventSub-style online event has no count
                        let v = if rng.chance(0.15) {
                            None
                        } else {
                            viewers(&mut rng)
                        };
                        obs.push(live_obs(bid, &l, v));
                        live.insert(bid.clone(), l);
                    } else {
                        obs.push(ended_obs(bid, "not_listed"));
                    }
                }
            }
        }
        for o in &obs {
            if let (Some(sid), Some(title)) = (&o.sid, &o.title) {
                let seen = titles.entry(format!("{}/{sid}", o.bid)).or_default();
                if !title.is_empty() && !seen.contains(title) {
                    seen.push(title.clone());
                }
            }
        }
        send(client, t, &obs);
    }
    t += 60;
    let end: Vec<Obs> = live.keys().map(|bid| ended_obs(bid, "offline")).collect();
    send(client, t, &end);
    titles
}

fn new_live(rng: &mut Rng, next_stream: &mut u64, t: i64) -> Live {
    *next_stream += 1;
    Live {
        sid: format!("{}", 500_000 + *next_stream),
        title: TITLES[rng.below(TITLES.len())].to_string(),
        game: rng.below(GAMES.len()),
        started: if rng.chance(0.20) {
            None
        } else {
            Some(t - rng.below(900) as i64)
        },
    }
}

fn live_obs(bid: &str, l: &Live, viewers: Option<i32>) -> Obs {
    Obs {
        bid: bid.to_string(),
        state: "live",
        sid: Some(l.sid.clone()),
        viewers,
        title: viewers.map(|_| l.title.clone()),
        game: viewers.map(|_| l.game),
        started: l.started,
    }
}

fn ended_obs(bid: &str, state: &'static str) -> Obs {
    Obs {
        bid: bid.to_string(),
        state,
        sid: None,
        viewers: None,
        title: None,
        game: None,
        started: None,
    }
}

struct Sample {
    bid: String,
    sid: String,
    t: f64,
    v: i64,
    game: String,
}

struct Broadcast {
    bid: String,
    start: f64,
    end: f64,
}

fn read_raw(client: &mut Client) -> (Vec<Sample>, Vec<Broadcast>) {
    let samples = client
        .query(
            "SELECT broadcaster_id, stream_id, extract(epoch FROM sampled_at)::float8, viewer_count::int8,
                    coalesce(game_id, '')
               FROM twitch_sync.viewer_samples ORDER BY broadcaster_id, stream_id, sampled_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| Sample { bid: r.get(0), sid: r.get(1), t: r.get(2), v: r.get(3), game: r.get(4) })
        .collect();
    let broadcasts = client
        .query(
            "SELECT broadcaster_id, extract(epoch FROM coalesce(started_at, first_seen_at))::float8,
                    extract(epoch FROM ended_at)::float8
               FROM twitch_sync.streams",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| Broadcast { bid: r.get(0), start: r.get(1), end: r.get(2) })
        .collect();
    (samples, broadcasts)
}

/// Intervals (index of the opening sample, its end) by the gap rule.
fn intervals(samples: &[Sample]) -> Vec<(usize, f64)> {
    let mut out = Vec::new();
    for i in 0..samples.len().saturating_sub(1) {
        let (a, b) = (&samples[i], &samples[i + 1]);
        if a.bid == b.bid && a.sid == b.sid && b.t - a.t <= GAP_SECS {
            out.push((i, b.t));
        }
    }
    out
}

#[derive(Debug, Default, Clone, PartialEq)]
struct ChannelDay {
    airtime: f64,
    hours: f64,
    peak: Option<i64>,
    avg: Option<f64>,
    broadcasts: i64,
    categories: Vec<String>,
}

type ChannelDays = BTreeMap<(String, i64), ChannelDay>;
type CategoryDays = BTreeMap<(String, i64), CategoryDay>;
/// Per broadcast: samples, peak, peak time, viewer seconds, covered seconds.
type BroadcastFigures = BTreeMap<(String, String), (i64, i64, Option<f64>, f64, f64)>;

#[derive(Debug, Default, Clone, PartialEq)]
struct CategoryDay {
    hours: f64,
    peak: i64,
    channels: i64,
}

fn name_of(game: &str) -> String {
    GAMES
        .iter()
        .find(|g| g.0 == game)
        .map(|g| g.1.to_string())
        .unwrap_or_default()
}

/// The reference: per (broadcaster, day) and (category, day), days of
/// `offset` seconds east of UTC (a fixed offset), from `first` to `last`
/// (day numbers since the epoch in that zone).
fn reference(
    samples: &[Sample],
    broadcasts: &[Broadcast],
    offset: i64,
    first: i64,
    last: i64,
) -> (ChannelDays, CategoryDays) {
    let day_of = |t: f64| (t as i64 + offset).div_euclid(DAY);
    let bounds = |d: i64| ((d * DAY - offset) as f64, ((d + 1) * DAY - offset) as f64);
    let mut ch: BTreeMap<(String, i64), ChannelDay> = BTreeMap::new();
    let mut cat: BTreeMap<(String, i64), CategoryDay> = BTreeMap::new();
    let mut covered: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut cat_channels: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    let mut ch_games: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
    // airtime: a channel's broadcasts merged where they overlap (no instant
    // counts twice); broadcasts: each one on the air that day
    let mut spans: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for b in broadcasts {
        spans
            .entry(b.bid.clone())
            .or_default()
            .push((b.start, b.end));
        for d in first..=last {
            let (ds, de) = bounds(d);
            if b.end.min(de) > b.start.max(ds) {
                ch.entry((b.bid.clone(), d)).or_default().broadcasts += 1;
            }
        }
    }
    for (bid, mut list) in spans {
        list.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for (a, z) in list {
            match merged.last_mut() {
                Some(m) if a <= m.1 => m.1 = m.1.max(z),
                _ => merged.push((a, z)),
            }
        }
        for (a, z) in merged {
            for d in first..=last {
                let (ds, de) = bounds(d);
                if z.min(de) > a.max(ds) {
                    ch.entry((bid.clone(), d)).or_default().airtime += z.min(de) - a.max(ds);
                }
            }
        }
    }
    for (i, end) in intervals(samples) {
        let s = &samples[i];
        for d in first..=last {
            let (ds, de) = bounds(d);
            let secs = end.min(de) - s.t.max(ds);
            if s.t < de && end > ds && secs > 0.0 {
                let e = ch.entry((s.bid.clone(), d)).or_default();
                e.hours += s.v as f64 * secs / 3600.0;
                *covered.entry((s.bid.clone(), d)).or_default() += secs;
                if !s.game.is_empty() {
                    cat.entry((s.game.clone(), d)).or_default().hours += s.v as f64 * secs / 3600.0;
                }
            }
        }
    }
    for s in samples {
        let d = day_of(s.t);
        if d < first || d > last {
            continue;
        }
        let e = ch.entry((s.bid.clone(), d)).or_default();
        e.peak = Some(e.peak.map_or(s.v, |p| p.max(s.v)));
        if !s.game.is_empty() {
            ch_games
                .entry((s.bid.clone(), d))
                .or_default()
                .insert(name_of(&s.game));
            let c = cat.entry((s.game.clone(), d)).or_default();
            c.peak = c.peak.max(s.v);
            cat_channels
                .entry((s.game.clone(), d))
                .or_default()
                .insert(s.bid.clone());
        }
    }
    for (k, e) in ch.iter_mut() {
        let cs = covered.get(k).copied().unwrap_or(0.0);
        e.avg = (cs > 0.0).then(|| e.hours * 3600.0 / cs);
        e.categories = ch_games
            .get(k)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
    }
    for (k, c) in cat.iter_mut() {
        c.channels = cat_channels.get(k).map_or(0, |s| s.len() as i64);
    }
    (ch, cat)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

fn same_channel_day(a: &ChannelDay, b: &ChannelDay) -> bool {
    close(a.airtime, b.airtime)
        && close(a.hours, b.hours)
        && a.peak == b.peak
        && match (a.avg, b.avg) {
            (Some(x), Some(y)) => close(x, y),
            (None, None) => true,
            _ => false,
        }
        && a.broadcasts == b.broadcasts
        && a.categories == b.categories
}

const CHANNEL_DAY_COLUMNS: &str =
    "broadcaster_id, (day - date '1970-01-01')::int8, extract(epoch FROM airtime)::float8,
     hours_watched, peak_viewers::int8, avg_viewers, broadcasts::int8, categories";

fn channel_days(client: &mut Client, sql: &str) -> BTreeMap<(String, i64), ChannelDay> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                ChannelDay {
                    airtime: r.get(2),
                    hours: r.get(3),
                    peak: r.get(4),
                    avg: r.get(5),
                    broadcasts: r.get(6),
                    categories: r.get(7),
                },
            )
        })
        .collect()
}

fn compare_channel_days(
    what: &str,
    seed: u64,
    db: &BTreeMap<(String, i64), ChannelDay>,
    want: &BTreeMap<(String, i64), ChannelDay>,
) {
    let keys: BTreeSet<_> = db.keys().chain(want.keys()).collect();
    for k in keys {
        match (db.get(k), want.get(k)) {
            (Some(a), Some(b)) if same_channel_day(a, b) => {}
            (a, b) => panic!("seed {seed}: {what} {k:?}: database {a:?}, reference {b:?}"),
        }
    }
}

fn run_seed(seed: u64) {
    let mut db = TestDb::bare(world(1, 0.0));
    let client = &mut db.client;
    client
        .batch_execute(&format!("SET twitch_sync.max_sample_gap_secs = {GAP_SECS}"))
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // from 18:00 UTC two days ago: the history crosses midnight and ends in the past
    let t0 = (now.div_euclid(DAY) - 2) * DAY + 18 * 3600;
    let mut maintain = |c: &mut Client| {
        c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    };
    let titles = history(client, seed, t0, 160, &mut maintain);
    maintain(client);
    // all samples left the default partition for their days' partitions
    let in_default: i64 = client
        .query_one(
            "SELECT count(*) FROM twitch_sync.viewer_samples_default",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        in_default, 0,
        "seed {seed}: samples left in the default partition"
    );

    let (samples, broadcasts) = read_raw(client);
    assert!(
        samples.len() > 100,
        "seed {seed}: only {} samples",
        samples.len()
    );
    let first = t0.div_euclid(DAY) - 1;
    let last = now.div_euclid(DAY);

    // per broadcast
    let mut want: BroadcastFigures = BTreeMap::new();
    for s in &samples {
        let e = want
            .entry((s.bid.clone(), s.sid.clone()))
            .or_insert((0, -1, None, 0.0, 0.0));
        e.0 += 1;
        if s.v > e.1 {
            e.1 = s.v;
            e.2 = Some(s.t);
        }
    }
    for (i, end) in intervals(&samples) {
        let s = &samples[i];
        let e = want.get_mut(&(s.bid.clone(), s.sid.clone())).unwrap();
        e.3 += s.v as f64 * (end - s.t);
        e.4 += end - s.t;
    }
    let rows = client
        .query(
            "SELECT b.broadcaster_id, b.stream_id, b.samples::int8, b.peak_viewers::int8,
                    extract(epoch FROM b.peak_at)::float8, b.hours_watched, b.avg_viewers, b.titles,
                    extract(epoch FROM b.airtime)::float8,
                    extract(epoch FROM coalesce(s.started_at, s.first_seen_at))::float8,
                    extract(epoch FROM s.ended_at)::float8
               FROM twitch_sync.broadcasts b JOIN twitch_sync.streams s USING (broadcaster_id, stream_id)",
            &[],
        )
        .unwrap();
    assert!(
        rows.len() > 10,
        "seed {seed}: only {} broadcasts",
        rows.len()
    );
    // The view has one row per stream, no more, no fewer (the checks below
    // only look at the rows it returns), and every sampled broadcast is one.
    let stream_keys: BTreeSet<(String, String)> = client
        .query(
            "SELECT broadcaster_id, stream_id FROM twitch_sync.streams",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let view_keys: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        view_keys.iter().cloned().collect::<BTreeSet<_>>(),
        stream_keys,
        "seed {seed}: the broadcasts listed and the streams"
    );
    assert_eq!(
        view_keys.len(),
        stream_keys.len(),
        "seed {seed}: a broadcast listed twice"
    );
    let unlisted: Vec<_> = want.keys().filter(|k| !stream_keys.contains(k)).collect();
    assert!(
        unlisted.is_empty(),
        "seed {seed}: sampled, not listed: {unlisted:?}"
    );
    for r in &rows {
        let key: (String, String) = (r.get(0), r.get(1));
        let (n, peak, peak_at, vs, cs) = want.get(&key).cloned().unwrap_or((0, 0, None, 0.0, 0.0));
        let got_hours: f64 = r.get(5);
        let got_avg: Option<f64> = r.get(6);
        assert_eq!(r.get::<_, i64>(2), n, "seed {seed}: samples of {key:?}");
        assert_eq!(
            r.get::<_, Option<i64>>(3),
            (n > 0).then_some(peak),
            "seed {seed}: peak of {key:?} (NULL without samples)"
        );
        assert_eq!(
            r.get::<_, Option<f64>>(4),
            peak_at,
            "seed {seed}: peak_at of {key:?}"
        );
        assert!(
            close(got_hours, vs / 3600.0),
            "seed {seed}: hours of {key:?}: {got_hours} vs {}",
            vs / 3600.0
        );
        match (got_avg, cs > 0.0) {
            (Some(a), true) => assert!(close(a, vs / cs), "seed {seed}: avg of {key:?}"),
            (None, false) => {}
            other => panic!("seed {seed}: avg of {key:?}: {other:?}"),
        }
        let airtime: f64 = r.get(8);
        let (start, end): (f64, f64) = (r.get(9), r.get(10));
        assert!(
            close(airtime, end - start),
            "seed {seed}: airtime of {key:?}"
        );
        let got_titles: Vec<String> = r.get(7);
        let want_titles = titles
            .get(&format!("{}/{}", key.0, key.1))
            .cloned()
            .unwrap_or_default();
        assert_eq!(got_titles, want_titles, "seed {seed}: titles of {key:?}");
    }

    // per channel per UTC day: the rollup table, and the function for UTC
    let (want_ch, want_cat) = reference(&samples, &broadcasts, 0, first, last);
    let rolled = channel_days(
        client,
        &format!("SELECT {CHANNEL_DAY_COLUMNS} FROM twitch_sync.channel_days"),
    );
    compare_channel_days("channel_days", seed, &rolled, &want_ch);
    // per channel per day in New York (UTC-5 all through these days: no DST change in late November)
    let ny = channel_days(
        client,
        &format!(
            "SELECT {CHANNEL_DAY_COLUMNS} FROM twitch_sync.channel_days_in('America/New_York',
                 date '1970-01-01' + {first}, date '1970-01-01' + {last})"
        ),
    );
    let (want_ny, _) = reference(&samples, &broadcasts, -5 * 3600, first, last);
    compare_channel_days("channel_days_in(America/New_York)", seed, &ny, &want_ny);

    // per category per UTC day
    let cats: BTreeMap<(String, i64), (CategoryDay, String)> = client
        .query(
            "SELECT game_id, (day - date '1970-01-01')::int8, hours_watched, peak_viewers::int8,
                    channels_live::int8, game_name FROM twitch_sync.category_days",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                (
                    CategoryDay {
                        hours: r.get(2),
                        peak: r.get(3),
                        channels: r.get(4),
                    },
                    r.get(5),
                ),
            )
        })
        .collect();
    let keys: BTreeSet<_> = cats.keys().chain(want_cat.keys()).collect();
    for k in keys {
        match (cats.get(k), want_cat.get(k)) {
            (Some((a, name)), Some(b))
                if close(a.hours, b.hours)
                    && a.peak == b.peak
                    && a.channels == b.channels
                    && *name == name_of(&k.0) => {}
            (a, b) => panic!("seed {seed}: category_days {k:?}: database {a:?}, reference {b:?}"),
        }
    }
    assert!(!cats.is_empty(), "seed {seed}: no category days");

    // the day-ranked list agrees with the rollups
    let top: Vec<(String, f64)> = client
        .query(
            &format!(
                "SELECT broadcaster_id, hours_watched FROM twitch_sync.top_channels(
                     date '1970-01-01' + {first}, date '1970-01-01' + {last}, 'hours_watched', 3)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    for ((bid, _), d) in &want_ch {
        *totals.entry(bid.clone()).or_default() += d.hours;
    }
    let mut ranked: Vec<(String, f64)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    assert_eq!(top.len(), 3);
    for (got, want) in top.iter().zip(&ranked) {
        assert_eq!(got.0, want.0, "seed {seed}: top_channels order");
        assert!(close(got.1, want.1), "seed {seed}: top_channels hours");
    }
}

#[test]
fn rollups_equal_a_recomputation_from_raw_samples() {
    for seed in [1, 7, 20261125] {
        run_seed(seed);
    }
}

#[test]
fn viewer_trend_buckets_one_channel_and_bad_arguments_are_clear_errors() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let t0 = 1_795_000_000i64 - 1_795_000_000i64 % 3600;
    for (i, v) in [10, 30, 20, 50, 40].iter().enumerate() {
        let obs = [Obs {
            bid: "77".into(),
            state: "live",
            sid: Some("700".into()),
            viewers: Some(*v),
            title: Some("t".into()),
            game: Some(0),
            started: Some(t0),
        }];
        send(c, t0 + 600 * i as i64 + 60, &obs);
    }
    let rows: Vec<(i32, f64, i32, i32)> = c
        .query(
            "SELECT min_viewers, avg_viewers, max_viewers, samples
               FROM twitch_sync.viewer_trend('77', to_timestamp($1::float8), to_timestamp($1::float8) + interval '1 day', '30 minutes')",
            &[&(t0 as f64)],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // samples at +1, +11, +21 min (bucket 1), +31, +41 min (bucket 2)
    assert_eq!(rows, vec![(10, 20.0, 30, 3), (40, 45.0, 50, 2)]);
    for (sql, what) in [
        ("SELECT * FROM twitch_sync.viewer_trend('77', now(), now() - interval '1 hour', '1 hour')", "range"),
        ("SELECT * FROM twitch_sync.viewer_trend('77', now() - interval '1 day', now(), '0 seconds')", "bucket"),
        ("SELECT * FROM twitch_sync.viewer_trend('77', now() - interval '1 day', now(), '1 month')", "month bucket"),
        ("SELECT * FROM twitch_sync.top_channels(current_date, current_date, 'followers')", "ranking"),
        ("SELECT * FROM twitch_sync.top_channels(current_date, current_date, 'airtime', 0)", "limit"),
        ("SELECT * FROM twitch_sync.channel_days_in('Mars/Olympus', current_date, current_date)", "time zone"),
        ("SELECT * FROM twitch_sync.channel_days_in('UTC', current_date, current_date - 1)", "days"),
        ("SELECT * FROM twitch_sync.viewer_trend('abc', now() - interval '1 day', now())", "id"),
        ("SELECT * FROM twitch_sync.viewer_trend(NULL, now() - interval '1 day', now())", "NULL id"),
        ("SELECT * FROM twitch_sync.viewer_trend('77', '-infinity', 'infinity')", "infinite range"),
        // (the difference overflowed to a negative interval: no bucket limit)
        ("SELECT * FROM twitch_sync.viewer_trend('77', '4713-01-01 BC', '294276-12-31', '1 second')", "every timestamp"),
        ("SELECT * FROM twitch_sync.channel_days_in('UTC', '-infinity', 'infinity')", "infinite days"),
        ("SELECT * FROM twitch_sync.category_days_in('UTC', current_date, 'infinity')", "infinite day"),
        ("SELECT * FROM twitch_sync.top_channels('-infinity', 'infinity')", "infinite top days"),
        ("SELECT twitch_sync.set_priority('abc', 1)", "priority of no broadcaster id"),
    ] {
        let e = c.query(sql, &[]).expect_err(what);
        assert_eq!(sqlstate(&e), "22023", "{what}: {e}");
        assert!(
            e.as_db_error().and_then(|d| d.hint()).is_some(),
            "{what}: says what to pass: {e}"
        );
    }

    // A role with exactly the README's grants for an app that reads analytics.
    c.batch_execute(
        "CREATE ROLE analytics_reader LOGIN;
         GRANT USAGE ON SCHEMA twitch_sync TO analytics_reader;
         GRANT SELECT ON twitch_sync.streams, twitch_sync.channels, twitch_sync.viewer_samples,
                         twitch_sync.channel_status, twitch_sync.events,
                         twitch_sync.broadcasts, twitch_sync.live_now, twitch_sync.categories,
                         twitch_sync.stream_changes, twitch_sync.channel_days, twitch_sync.category_days
                      TO analytics_reader;
         GRANT EXECUTE ON FUNCTION twitch_sync.viewer_trend(text, timestamptz, timestamptz, interval),
                                   twitch_sync.top_channels(date, date, text, integer),
                                   twitch_sync.channel_days_in(text, date, date),
                                   twitch_sync.category_days_in(text, date, date),
                                   twitch_sync.sample_intervals(timestamptz, timestamptz, interval),
                                   twitch_sync.sample_pieces(timestamptz, timestamptz, text, interval),
                                   twitch_sync.check_time_range(timestamptz, timestamptz, interval),
                                   twitch_sync.day_parts(timestamptz, timestamptz, text, interval, timestamptz),
                                   twitch_sync.broadcast_days(text, date, date),
                                   twitch_sync.day_start(date, text),
                                   twitch_sync.check_days_in(text, date, date),
                                   twitch_sync.check_broadcaster_id(text),
                                   twitch_sync.is_broadcaster_id(text),
                                   twitch_sync.sample_gap() TO analytics_reader;",
    )
    .unwrap();
    let mut reader = db.cluster().connect_as(&db.name, "analytics_reader");
    let samples: i64 = reader
        .query_one(
            "SELECT sum(samples)::int8 FROM twitch_sync.viewer_trend('77', to_timestamp($1::float8), to_timestamp($1::float8) + interval '1 day')",
            &[&(t0 as f64)],
        )
        .unwrap()
        .get(0);
    assert_eq!(samples, 5);
    for call in [
        "channel_days_in('UTC', x.d, x.d)",
        "category_days_in('UTC', x.d, x.d)",
        "top_channels(x.d, x.d)",
    ] {
        let sql = format!(
            "SELECT count(*) FROM (SELECT (to_timestamp($1::float8) AT TIME ZONE 'UTC')::date AS d) x,
                                 twitch_sync.{call}"
        );
        reader
            .query_one(&sql, &[&(t0 as f64)])
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    }
    let e = reader
        .query(
            "SELECT * FROM twitch_sync.viewer_trend('abc', now() - interval '1 day', now())",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", error_text(&e));
    // the rules a reader is granted refuse infinite times at once (they made
    // an endless series of days that filled the disk), and a gap limit that
    // is no gap limit
    reader
        .batch_execute("SET statement_timeout = '20s'")
        .unwrap();
    for call in [
        "sample_pieces('-infinity', 'infinity', 'UTC', '1 hour')",
        "sample_pieces(now(), 'infinity', 'Nowhere', '1 hour')",
        "sample_pieces(now() - interval '1 day', now(), 'UTC', '1000000 days')",
        "sample_pieces(now() - interval '1 day', now(), 'UTC', '-1 hour')",
        "day_parts('-infinity', 'infinity', 'UTC', '1 hour', now())",
        "broadcast_days('UTC', '-infinity', 'infinity')",
    ] {
        let e = reader
            .query(&format!("SELECT count(*) FROM twitch_sync.{call}"), &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{call}: {}", error_text(&e));
    }
    // and still answer for finite ones
    let pieces: i64 = reader
        .query_one(
            "SELECT count(*) FROM twitch_sync.sample_pieces(to_timestamp($1::float8) - interval '1 day',
                                                          to_timestamp($1::float8) + interval '1 day',
                                                          'UTC', twitch_sync.sample_gap())",
            &[&(t0 as f64)],
        )
        .unwrap()
        .get(0);
    assert!(pieces > 0);
}

/// A live observation of `bid` under stream `sid` with `viewers`, Helix's
/// `started_at` being `started`.
fn live(bid: &str, sid: &str, viewers: Option<i32>, started: Option<i64>) -> Obs {
    Obs {
        bid: bid.to_string(),
        state: "live",
        sid: Some(sid.to_string()),
        viewers,
        title: Some("t".into()),
        game: Some(0),
        started,
    }
}

/// `bid` live under `sid` from `a` to `b` (epoch seconds), a sample every
/// `step` seconds, counts from `viewers`; not listed one step after `b` when
/// `end`.
fn broadcast(
    c: &mut Client,
    bid: &str,
    sid: &str,
    (a, b, step): (i64, i64, i64),
    viewers: &dyn Fn(i64) -> i32,
    end: bool,
) {
    let mut t = a;
    while t <= b {
        send(c, t, &[live(bid, sid, Some(viewers(t)), Some(a))]);
        t += step;
    }
    if end {
        send(c, t, &[ended_obs(bid, "not_listed")]);
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// channel_days as text rows, for days before `before` (days since the epoch).
fn rollup_rows(c: &mut Client, before: i64) -> Vec<String> {
    c.query(
        "SELECT format('%s %s %s %s %s %s %s %s', d.broadcaster_id, d.day, d.airtime,
                       round(d.hours_watched::numeric, 6), d.peak_viewers, round(d.avg_viewers::numeric, 6),
                       d.broadcasts, d.categories)
           FROM twitch_sync.channel_days d WHERE d.day < date '1970-01-01' + $1::int
         UNION ALL
         SELECT format('%s %s %s %s %s', g.game_id, g.day, round(g.hours_watched::numeric, 6),
                       g.peak_viewers, g.channels_live)
           FROM twitch_sync.category_days g WHERE g.day < date '1970-01-01' + $1::int
          ORDER BY 1",
        &[&(before as i32)],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A broadcast already live when it is first observed (Helix's started_at two
/// days back): its airtime on the days before, which never had a sample nor
/// a partition, is rolled up as channel_days_in computes it.
#[test]
fn airtime_before_the_first_sample_is_rolled_up() {
    let mut db = TestDb::bare(world(1, 0.0));
    let now = now_secs();
    let today = now.div_euclid(DAY);
    let started = (today - 2) * DAY + 20 * 3_600;
    let c = &mut db.client;
    // and one live for eight years: no partition per day of it (a lock each,
    // in maintain()'s one transaction, ran out of shared memory), and its
    // airtime rolled up only within samples_retention_days (90 by default)
    let long_ago = now - 3_000 * DAY;
    for at in [now - 120, now - 60] {
        send(
            c,
            at,
            &[
                live("705", "7051", Some(40), Some(started)),
                live("706", "7061", Some(2), Some(long_ago)),
            ],
        );
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let partitions: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'twitch_sync.viewer_samples'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(partitions <= 12, "{partitions} partitions");
    let days_of_706: i64 = c
        .query_one(
            "SELECT count(*) FROM twitch_sync.channel_days WHERE broadcaster_id = '706'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(days_of_706, 90, "today and the 89 days before");
    assert_rolled_up_as_computed(c, &[today - 2, today - 1]);
    let airtime: Vec<String> = c
        .query(
            "SELECT format('%s %s', day - date '1970-01-01', extract(epoch FROM airtime)::int8) FROM twitch_sync.channel_days
              WHERE broadcaster_id = '705' AND day < current_date ORDER BY day",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        airtime,
        [
            format!("{} 14400", today - 2),
            format!("{} 86400", today - 1)
        ]
    );
}

/// A day whose samples wait in the default partition, because a reader held
/// it when maintain() tried to attach the day's partition, is rolled up all
/// the same (it was skipped for good: the watermark moved past it).
#[test]
fn a_day_left_in_the_default_partition_is_rolled_up() {
    let mut db = TestDb::bare(world(1, 0.0));
    let today = now_secs().div_euclid(DAY);
    // day -2 has no partition: its samples land in viewer_samples_default
    broadcast(
        &mut db.client,
        "70",
        "7001",
        ((today - 2) * DAY + 3_600, (today - 2) * DAY + 7_200, 600),
        &|t| (40 + t % 7) as i32,
        true,
    );
    assert!(db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples_default") > 0);
    let want = rollup_rows_of(&mut db.client, "channel_days_in('UTC', x, x)", today - 2);
    assert!(!want.is_empty());
    let mut reader = db.connect();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM twitch_sync.viewer_samples_default;")
        .unwrap();
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    assert!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples_default") > 0,
        "the reader kept the day in the default partition"
    );
    assert_eq!(
        rollup_rows_of(&mut db.client, "channel_days", today - 2),
        want
    );
    reader.batch_execute("COMMIT").unwrap();
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples_default"),
        0,
        "attached once the reader is done"
    );
    assert_eq!(
        rollup_rows_of(&mut db.client, "channel_days", today - 2),
        want
    );
}

/// Retention drops the samples of old days; maintain() must not recompute
/// those days from what is left (it wiped their rollups: a channel live since
/// before them pulled every day back into the recomputation). A day whose
/// samples go before maintain() rolled it up is rolled up first.
#[test]
fn retention_never_costs_rollups() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let today = now_secs().div_euclid(DAY);
    // 20: two hours three days ago; 10: live since four days ago (still live)
    broadcast(
        c,
        "20",
        "2001",
        ((today - 3) * DAY + 36_000, (today - 3) * DAY + 43_200, 600),
        &|t| (500 + t % 97) as i32,
        true,
    );
    broadcast(
        c,
        "10",
        "1001",
        ((today - 4) * DAY + 72_000, (today - 4) * DAY + 75_600, 600),
        &|t| (50 + t % 89) as i32,
        false,
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let before = rollup_rows(c, today - 2);
    assert!(before.len() >= 4, "rollups of days -4 and -3: {before:?}");
    // retention of 2 days drops days -4 and -3 (prune() drops the same way)
    let dropped = db.scalar_i64("SELECT twitch_sync.drop_sample_partitions(2)");
    assert!(dropped > 0, "samples dropped");
    let c = &mut db.client;
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(
        rollup_rows(c, today - 2),
        before,
        "maintain() after retention"
    );

    // Samples of day -6 written after the rollups (a backfill), dropped before
    // any maintain(): rolled up on the way out, as a recomputation says.
    c.batch_execute(&format!(
        "SELECT twitch_sync.create_sample_partitions(date '1970-01-01' + {0}, date '1970-01-01' + {0})",
        today - 6
    ))
    .unwrap();
    broadcast(
        c,
        "30",
        "3001",
        ((today - 6) * DAY + 3_600, (today - 6) * DAY + 7_200, 600),
        &|t| (70 + t % 13) as i32,
        true,
    );
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", today - 6);
    assert!(!want.is_empty());
    db.scalar_i64("SELECT twitch_sync.drop_sample_partitions(2)");
    let c = &mut db.client;
    assert_eq!(
        rollup_rows_of(c, "channel_days", today - 6),
        want,
        "day -6 rolled up before its samples went"
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(
        rollup_rows_of(c, "channel_days", today - 6),
        want,
        "and kept"
    );
}

/// `bid` live two hours on each of the last four days, rolled up, then
/// samples kept two days (the first two days' partitions dropped).
fn four_days_then_retention(bid: &str) -> (TestDb, i64) {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let today = now_secs().div_euclid(DAY);
    for day in (today - 4)..today {
        let sid = format!("{bid}{}", today - day);
        broadcast(
            c,
            bid,
            &sid,
            (day * DAY + 43_200, day * DAY + 50_400, 600),
            &|_| 100,
            true,
        );
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert!(db.scalar_i64("SELECT twitch_sync.drop_sample_partitions(2)") > 0);
    (db, today)
}

/// The day after one whose samples retention dropped is whole in its own
/// samples (each carries the interval it closes): a backfill into it is
/// rolled up like any other day's, as a recomputation says.
#[test]
fn a_backfill_after_dropped_days_is_rolled_up() {
    let (mut db, today) = four_days_then_retention("91");
    let c = &mut db.client;
    let day = today - 2;
    broadcast(
        c,
        "92",
        "9201",
        (day * DAY + 57_600, day * DAY + 61_200, 600),
        &|_| 500,
        true,
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    assert_eq!(want.len(), 2, "both channels that day: {want:?}");
    assert_eq!(rollup_rows_of(c, "channel_days", day), want);
}

/// Days whose samples retention dropped keep their rollups: a backfill into
/// them later is past retention too (no partition is made for it, it is not
/// rolled up, and the next drop deletes it), instead of replacing the day's
/// rollups with itself.
#[test]
fn a_backfill_into_days_past_retention_keeps_their_rollups() {
    let (mut db, today) = four_days_then_retention("93");
    let c = &mut db.client;
    let day = today - 4;
    let want = rollup_rows_of(c, "channel_days", day);
    assert_eq!(want.len(), 1, "{want:?}");
    broadcast(
        c,
        "95",
        "9501",
        (day * DAY + 57_600, day * DAY + 61_200, 600),
        &|_| 10,
        true,
    );
    // nothing to recompute: those samples are never rolled up
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.rollup_state WHERE samples_stale_from IS NOT NULL"
        ),
        0
    );
    let c = &mut db.client;
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(
        rollup_rows_of(c, "channel_days", day),
        want,
        "the day's rollups"
    );
    assert!(
        db.scalar_i64("SELECT twitch_sync.drop_sample_partitions(2)") >= 7,
        "the backfill's samples are dropped"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.viewer_samples WHERE broadcaster_id = '95'"
        ),
        0
    );
}

/// One day of channel_days or category_days, or of channel_days_in or
/// category_days_in (`src` names x, the day), as text rows.
fn rollup_rows_of(c: &mut Client, src: &str, day: i64) -> Vec<String> {
    let row = if src.starts_with("category_days") {
        "format('%s %s %s %s %s', d.game_id, d.game_name, round(d.hours_watched::numeric, 6),
                d.peak_viewers, d.channels_live)"
    } else {
        "format('%s %s %s %s %s %s', d.broadcaster_id, d.airtime, round(d.hours_watched::numeric, 6),
                d.peak_viewers, round(d.avg_viewers::numeric, 6), d.broadcasts)"
    };
    c.query(
        &format!(
            "SELECT {row} FROM (SELECT date '1970-01-01' + $1::int AS x) x, twitch_sync.{src} d
              WHERE d.day = x.x ORDER BY 1"
        ),
        &[&(day as i32)],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// channel_days of each of `days` (days since the epoch) equals what
/// channel_days_in('UTC') computes from the raw samples.
fn assert_rolled_up_as_computed(c: &mut Client, days: &[i64]) {
    for &d in days {
        assert_eq!(
            rollup_rows_of(c, "channel_days", d),
            rollup_rows_of(c, "channel_days_in('UTC', x, x)", d),
            "day {d}"
        );
    }
}

/// The dashboard's hours watched on `day` (days since the epoch), over its last 5 days.
fn dashboard_hours(c: &mut Client, day: i64) -> f64 {
    c.query_one(
        "SELECT hours_watched::float8 FROM twitch_sync.dashboard_hours_per_day('5 days')
          WHERE day = date '1970-01-01' + $1::int",
        &[&(day as i32)],
    )
    .unwrap()
    .get(0)
}

/// Disabling a live channel (`enabled = false`), or deleting its row, ends its
/// broadcast now, as untrack() does: through the transition layer, with its
/// 'offline' event. (It stayed live for good, with 24 hours of airtime a day.)
#[test]
fn disabling_a_live_channel_ends_its_broadcast() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let t = now_secs() - 3_600;
    c.batch_execute(
        "INSERT INTO twitch_sync.channels (broadcaster_id, login) VALUES ('41', 'fortyone'), ('42', 'fortytwo')",
    )
    .unwrap();
    send(
        c,
        t,
        &[
            live("41", "4101", Some(10), Some(t)),
            live("42", "4201", Some(20), Some(t)),
        ],
    );
    c.batch_execute(
        "UPDATE twitch_sync.channels SET enabled = false WHERE broadcaster_id = '41';
         DELETE FROM twitch_sync.channels WHERE broadcaster_id = '42';",
    )
    .unwrap();
    let rows: Vec<(String, bool, bool)> = c
        .query(
            "SELECT broadcaster_id, is_live, ended_at > now() - interval '1 minute' FROM twitch_sync.streams ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![("41".into(), false, true), ("42".into(), false, true)]
    );
    let events: Vec<(String, String, Option<String>)> = c
        .query(
            "SELECT broadcaster_id, event, payload->>'login' FROM twitch_sync.events
              WHERE event = 'offline' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        events,
        vec![
            ("41".into(), "offline".into(), Some("fortyone".into())),
            ("42".into(), "offline".into(), Some("fortytwo".into()))
        ]
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.live_now"),
        0
    );
    // enabled again and listed: the broadcast is reopened
    let c = &mut db.client;
    c.batch_execute("UPDATE twitch_sync.channels SET enabled = true WHERE broadcaster_id = '41'")
        .unwrap();
    send(c, now_secs(), &[live("41", "4101", Some(12), Some(t))]);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.events WHERE event = 'online' AND (payload->>'reopened')::boolean"),
        1
    );
}

/// One statement disabling (or deleting) many channels, some live, some not,
/// ends exactly the live broadcasts among them, as disabling one does: each
/// with one 'offline' event carrying its channel's login (a deleted row's too:
/// the trigger runs after the delete, and a truncated one's: before) and its NOTIFY, in a single pass through
/// the transition layer (one apply_observations call per statement, not one
/// per row). Run by a role that may only edit channels (the trigger is
/// SECURITY DEFINER). Channels re-enabled, never live or already ended by
/// that statement get nothing.
#[test]
fn disabling_or_deleting_many_channels_ends_the_live_ones_at_once() {
    let mut db = TestDb::bare(world(1, 0.0));
    let editor = format!("{}_editor", db.name);
    let t = now_secs() - 3_600;
    let c = &mut db.client;
    c.batch_execute(&format!(
        "INSERT INTO twitch_sync.channels (broadcaster_id, login) VALUES
             ('61', 'a61'), ('62', 'a62'), ('63', 'a63'), ('64', 'a64'), ('65', NULL), ('66', 'a66'),
             ('71', 'b71'), ('72', 'b72'), ('73', 'b73');
         INSERT INTO twitch_sync.channels (broadcaster_id, login, enabled) VALUES ('74', 'b74', false);
         CREATE ROLE {editor};
         GRANT USAGE ON SCHEMA twitch_sync TO {editor};
         GRANT SELECT, UPDATE, DELETE ON twitch_sync.channels TO {editor};
         -- channels' validation (its trigger and CHECKs) calls these as the editor
         GRANT EXECUTE ON FUNCTION twitch_sync.check_broadcaster_id(text),
                                   twitch_sync.is_broadcaster_id(text), twitch_sync.is_login(text)
            TO {editor};"
    ))
    .unwrap();
    // 73 had a broadcast that ended; 61-66 are live
    send(c, t - 600, &[live("73", "7301", Some(5), Some(t - 600))]);
    send(c, t - 300, &[ended_obs("73", "not_listed")]);
    let lives: Vec<Obs> = (61..=66)
        .map(|b| live(&b.to_string(), &format!("{b}01"), Some(b), Some(t)))
        .collect();
    send(c, t, &lives);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        6
    );
    let mut listener = db.connect();
    listener.batch_execute("LISTEN twitch_sync").unwrap();

    // (broadcaster, is_live, ended by this transaction from source 'untrack')
    let streams = |tx: &mut Transaction| -> Vec<(String, bool, bool)> {
        tx.query(
            "SELECT broadcaster_id, is_live,
                    coalesce(ended_at = now() AND state_source = 'untrack', false)
               FROM twitch_sync.streams ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    // the calls of apply_observations this backend has not reported yet (its
    // count within one transaction is the difference of two readings)
    let calls = |tx: &mut Transaction| -> i64 {
        tx.query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions
              WHERE schemaname = 'twitch_sync' AND funcname = 'apply_observations'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let row = |b: &str, live: bool, ended_now: bool| (b.to_string(), live, ended_now);
    let c = &mut db.client;
    c.batch_execute("SET track_functions = 'pl'").unwrap();

    // One statement as the editor, in a transaction of its own: the rows it
    // changed, after it has passed through the transition layer exactly once.
    let as_editor = |tx: &mut Transaction, sql: &str| -> u64 {
        let before = calls(tx);
        tx.batch_execute(&format!("SET LOCAL ROLE {editor}"))
            .unwrap();
        let n = tx.execute(sql, &[]).unwrap();
        tx.batch_execute("RESET ROLE").unwrap();
        assert_eq!(
            calls(tx) - before,
            1,
            "one pass through the transition layer: {sql}"
        );
        n
    };

    // disables 61, 62 (live) and 71 (never live), enables 74 again
    let mut tx = c.transaction().unwrap();
    let n = as_editor(
        &mut tx,
        "UPDATE twitch_sync.channels SET enabled = NOT enabled
          WHERE broadcaster_id IN ('61', '62', '71', '74')",
    );
    assert_eq!(n, 4);
    let rows = streams(&mut tx);
    assert_eq!(
        rows,
        vec![
            row("61", false, true),
            row("62", false, true),
            row("63", true, false),
            row("64", true, false),
            row("65", true, false),
            row("66", true, false),
            row("73", false, false),
        ]
    );
    tx.commit().unwrap();

    // deletes 62 (disabled, ended above), 63 and 65 (live; 65 has no login),
    // 72 (never live), 73 (ended before), 74 (enabled again, never live)
    let mut tx = c.transaction().unwrap();
    let n = as_editor(
        &mut tx,
        "DELETE FROM twitch_sync.channels
          WHERE broadcaster_id IN ('62', '63', '65', '72', '73', '74')",
    );
    assert_eq!(n, 6);
    let rows = streams(&mut tx);
    assert_eq!(
        rows,
        vec![
            row("61", false, false),
            row("62", false, false),
            row("63", false, true),
            row("64", true, false),
            row("65", false, true),
            row("66", true, false),
            row("73", false, false),
        ]
    );
    tx.commit().unwrap();

    // one 'offline' event per ended broadcast (73's: its miss, before), with
    // its channel's login (none for 65, which had none), ending the broadcast
    // where its row says
    let events: Vec<(i64, String, String, Option<String>, bool)> = c
        .query(
            "SELECT e.event_id, e.broadcaster_id, e.stream_id, e.payload->>'login',
                    (e.payload->>'ended_at')::timestamptz = s.ended_at
               FROM twitch_sync.events e
               JOIN twitch_sync.streams s USING (broadcaster_id, stream_id)
              WHERE e.event = 'offline' ORDER BY e.event_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let shape: Vec<(&str, &str, Option<&str>, bool)> = events
        .iter()
        .map(|(_, b, s, l, at)| (b.as_str(), s.as_str(), l.as_deref(), *at))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("73", "7301", Some("b73"), true),
            ("61", "6101", Some("a61"), true),
            ("62", "6201", Some("a62"), true),
            ("63", "6301", Some("a63"), true),
            ("65", "6501", None, true),
        ]
    );
    // 73's own end (a miss, before LISTEN) aside, each event was notified
    let mut notified = Vec::new();
    let mut notes = listener.notifications();
    let mut it = notes.timeout_iter(std::time::Duration::from_secs(2));
    while let Some(note) =
        twitch_sync_e2e::postgres::fallible_iterator::FallibleIterator::next(&mut it)
            .expect("the LISTEN connection")
    {
        notified.push(note.payload().parse::<i64>().unwrap());
    }
    let ids: Vec<i64> = events[1..].iter().map(|e| e.0).collect();
    assert_eq!(notified, ids);

    // a channel's id cannot change (its broadcast would be left live under
    // an id nobody checks): refused, and 64 stays live
    let e = c
        .batch_execute(
            "UPDATE twitch_sync.channels SET broadcaster_id = '99' WHERE broadcaster_id = '64'",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", error_text(&e));
    // TRUNCATE leaves no channel: the live broadcasts (64, 66) end, with
    // their events and logins (read before the rows go)
    c.batch_execute("TRUNCATE twitch_sync.channels").unwrap();
    let ended: Vec<(String, bool, Option<String>)> = c
        .query(
            "SELECT s.broadcaster_id, s.is_live OR s.state_source <> 'untrack', e.payload->>'login'
               FROM twitch_sync.streams s
               JOIN twitch_sync.events e USING (broadcaster_id, stream_id)
              WHERE s.broadcaster_id IN ('64', '66') AND e.event = 'offline'
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        ended,
        vec![
            ("64".to_string(), false, Some("a64".to_string())),
            ("66".to_string(), false, Some("a66".to_string()))
        ]
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live"),
        0
    );
    db.client
        .batch_execute(&format!("DROP OWNED BY {editor}; DROP ROLE {editor}"))
        .unwrap();
}

/// `categories` is each category's latest name (by `seen_at`; rows without a
/// category left out), and reads it from the index one category at a time
/// instead of sorting every row of stream_changes (maintain() reads it on
/// every call).
#[test]
fn categories_are_the_latest_names_read_without_a_sort() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    // 4,000 changes of 60 categories (every tenth without one), renamed as
    // time goes on, written in an order unrelated to time
    let mut rng = Rng(12);
    let mut rows: Vec<(String, i64, String)> = Vec::new();
    for i in 0..4_000i64 {
        let game = if i % 10 == 0 {
            String::new()
        } else {
            (1_000 + rng.below(60)).to_string()
        };
        let seen = (i * 7_919) % 4_000;
        let name = if game.is_empty() {
            String::new()
        } else {
            format!("name {game} v{}", seen / 500)
        };
        rows.push((game, seen, name));
    }
    let (games, seens, names): (Vec<String>, Vec<i64>, Vec<String>) =
        rows.iter()
            .cloned()
            .fold((vec![], vec![], vec![]), |mut a, r| {
                a.0.push(r.0);
                a.1.push(r.1);
                a.2.push(r.2);
                a
            });
    c.execute(
        "INSERT INTO twitch_sync.stream_changes (broadcaster_id, stream_id, seen_at, source, title, game_id, game_name)
         SELECT '7', 's' || r.n, timestamptz '2026-01-01 00:00Z' + r.seen * interval '1 minute', 'poll', 't',
                r.game, r.name
           FROM unnest($1::text[], $2::int8[], $3::text[]) WITH ORDINALITY AS r(game, seen, name, n)",
        &[&games, &seens, &names],
    )
    .unwrap();
    c.batch_execute("ANALYZE twitch_sync.stream_changes")
        .unwrap();
    let mut want: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for (game, seen, name) in rows.into_iter().filter(|r| !r.0.is_empty()) {
        match want.get(&game) {
            Some((s, _)) if *s > seen => {}
            _ => {
                want.insert(game, (seen, name));
            }
        }
    }
    let want: Vec<(String, String)> = want.into_iter().map(|(g, (_, n))| (g, n)).collect();
    assert_eq!(want.len(), 60);
    let got: Vec<(String, String)> = c
        .query(
            "SELECT game_id, game_name FROM twitch_sync.categories ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, want);
    let plan: Vec<String> = c
        .query(
            "EXPLAIN (COSTS OFF) SELECT * FROM twitch_sync.categories",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("stream_changes_game_latest") && !plan.contains("Sort"),
        "{plan}"
    );
}

/// A restart: Helix lists the new stream id at 12:10, its started_at 12:00.
/// The old broadcast ends at 12:00, and a channel's airtime never counts an
/// instant twice (also when the old one was seen after the new one started):
/// a day of restarts is 24 hours of airtime, not more.
#[test]
fn a_restart_never_counts_airtime_twice() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let day = now_secs().div_euclid(DAY) - 3;
    let d0 = day * DAY;
    // 30: 3001 from midnight, 3002 started 12:00 listed 12:10
    send(c, d0, &[live("30", "3001", Some(100), Some(d0))]);
    send(
        c,
        d0 + 43_800,
        &[live("30", "3002", Some(100), Some(d0 + 43_200))],
    );
    send(c, d0 + DAY, &[ended_obs("30", "not_listed")]);
    // 31: 3101 last seen 12:05, then 3102 started 12:00 listed 12:10
    send(c, d0, &[live("31", "3101", Some(100), Some(d0))]);
    send(c, d0 + 43_500, &[live("31", "3101", Some(100), Some(d0))]);
    send(
        c,
        d0 + 43_800,
        &[live("31", "3102", Some(100), Some(d0 + 43_200))],
    );
    send(c, d0 + DAY, &[ended_obs("31", "not_listed")]);
    let ended: f64 = c
        .query_one(
            "SELECT extract(epoch FROM ended_at)::float8 FROM twitch_sync.streams WHERE stream_id = '3001'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended as i64, d0 + 43_200, "3001 ends when 3002 started");
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    for src in [
        "channel_days",
        "channel_days_in('UTC', x, x)",
        "channel_days_in('Asia/Tokyo', x, x)",
    ] {
        let rows: Vec<(String, f64, i32)> = c
            .query(
                &format!(
                    "SELECT d.broadcaster_id, extract(epoch FROM d.airtime)::float8, d.broadcasts
                       FROM (SELECT date '1970-01-01' + $1::int AS x) x, twitch_sync.{src} d
                      WHERE d.day = x.x ORDER BY 1"
                ),
                &[&(day as i32)],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if src.contains("Tokyo") {
            // the day in Tokyo is 15:00 UTC the day before to 15:00 UTC: both
            // channels on the air from 09:00 (00:00 UTC) to its end, in both
            // of their broadcasts (the second started at 21:00, 12:00 UTC)
            assert_eq!(
                rows,
                vec![
                    ("30".into(), 15.0 * 3600.0, 2),
                    ("31".into(), 15.0 * 3600.0, 2)
                ],
                "{src}"
            );
        } else {
            assert_eq!(
                rows,
                vec![("30".into(), 86_400.0, 2), ("31".into(), 86_400.0, 2)],
                "{src}"
            );
        }
    }
    let top: f64 = c
        .query_one(
            "SELECT extract(epoch FROM airtime)::float8 FROM twitch_sync.top_channels(
                 date '1970-01-01' + $1::int, date '1970-01-01' + $1::int, 'airtime', 1)",
            &[&(day as i32)],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, 86_400.0);
}

/// Observations written at past times (a backfill through apply_observations)
/// after maintain() has rolled up later days are rolled up by the next
/// maintain(); a poll of now marks nothing.
#[test]
fn maintain_rolls_up_a_backfill() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let now = now_secs();
    let today = now.div_euclid(DAY);
    broadcast(
        c,
        "50",
        "5001",
        (now - 7_200, now - 3_600, 600),
        &|t| (40 + t % 7) as i32,
        true,
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    send(c, now, &[ended_obs("50", "not_listed")]);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.rollup_state WHERE stale_from IS NOT NULL"),
        0,
        "a poll of now marks nothing"
    );
    let c = &mut db.client;
    let day = today - 10;
    broadcast(
        c,
        "50",
        "5000",
        (day * DAY + 36_000, day * DAY + 39_600, 600),
        &|t| (60 + t % 11) as i32,
        true,
    );
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    assert_eq!(want.len(), 1);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(
        rollup_rows_of(c, "channel_days", day),
        want,
        "the backfilled day"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.rollup_state WHERE stale_from IS NOT NULL"),
        0,
        "cleared"
    );
}

/// maintain() adds to the rollups only what was written after the latest
/// sample it rolled up. Samples written at or before it on the same day (a
/// backfill the day-level stale mark does not move back) make the next call
/// recompute their days from the samples: counted once, not missed, and a
/// call with nothing new changes nothing.
#[test]
fn maintain_rolls_up_a_backfill_into_the_day_it_rolled_up() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let day = now_secs().div_euclid(DAY) - 1;
    let at = |h: i64| day * DAY + h * 3_600;
    broadcast(
        c,
        "60",
        "6001",
        (at(10), at(14), 300),
        &|t| (50 + t % 13) as i32,
        true,
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    // another channel, from 11:00 to 13:00: before the latest sample rolled up
    broadcast(
        c,
        "61",
        "6101",
        (at(11), at(13), 300),
        &|t| (70 + t % 5) as i32,
        true,
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.rollup_state WHERE samples_stale_from IS NOT NULL"
        ),
        1,
        "the backfill is marked"
    );
    let c = &mut db.client;
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    let want_categories = rollup_rows_of(c, "category_days_in('UTC', x, x)", day);
    assert_eq!(want.len(), 2, "{want:?}");
    for call in ["after the backfill", "with nothing new"] {
        c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
        assert_eq!(rollup_rows_of(c, "channel_days", day), want, "{call}");
        assert_eq!(
            rollup_rows_of(c, "category_days", day),
            want_categories,
            "{call}"
        );
    }
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM twitch_sync.rollup_state WHERE samples_stale_from IS NOT NULL"
        ),
        0,
        "cleared"
    );
}

/// Waits (up to 10 s) until a backend of this database waits for a table
/// lock (the rollup lock: on twitch_sync.rollup_state); fails if none does.
fn wait_for_rollup_lock_waiter(c: &mut Client) {
    for _ in 0..200 {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND wait_event = 'relation'",
                &[],
            )
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no backend waits for the rollup lock");
}

/// The rollup lock queues: a writer that comes while maintain() waits for
/// writers in flight waits behind it, so writers that keep overlapping
/// cannot hold maintain() off for good.
#[test]
fn a_waiting_maintain_is_not_overtaken_by_later_writers() {
    let db = TestDb::bare(world(1, 0.0));
    let connect = || db.connect();
    let mut first = connect();
    first
        .batch_execute("BEGIN; SELECT twitch_sync.rollup_lock(false)")
        .unwrap();
    let took = |mut c: Client, exclusive: bool| {
        std::thread::spawn(move || {
            c.batch_execute("BEGIN").unwrap();
            c.execute("SELECT twitch_sync.rollup_lock($1)", &[&exclusive])
                .unwrap();
            let at: SystemTime = c.query_one("SELECT clock_timestamp()", &[]).unwrap().get(0);
            std::thread::sleep(std::time::Duration::from_millis(300));
            c.batch_execute("COMMIT").unwrap();
            at
        })
    };
    let maintain = took(connect(), true);
    let mut watch = connect();
    wait_for_rollup_lock_waiter(&mut watch);
    let later = took(connect(), false);
    // the later writer waits too (behind maintain), although only a shared
    // lock is held
    let mut both = false;
    for _ in 0..100 {
        let n: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'relation'",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 2 {
            both = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        both,
        "the later writer queues behind the waiting maintain()"
    );
    first.batch_execute("COMMIT").unwrap();
    let (m, w) = (maintain.join().unwrap(), later.join().unwrap());
    assert!(m < w, "maintain() got the lock first");
}

/// maintain() and the writers of samples take turns (the rollup lock). A
/// maintain() waits for a writer in flight, so a sample that commits after it
/// started is not left behind its watermark (it lost its interval for good);
/// and of two maintain() calls at once, the second waits and adds nothing
/// the first added (it counted the same samples twice).
#[test]
fn maintain_waits_for_writers_in_flight_and_for_itself() {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - 1;
    let at = |m: i64| day * DAY + 10 * 3_600 + m * 60;
    let both = |m: i64| {
        [
            live("201", "2011", Some(100), Some(at(0))),
            live("202", "2021", Some(1000), Some(at(0))),
        ]
        .map(|o| (m, o))
    };
    for (m, o) in both(0).into_iter().chain(both(10)) {
        send(&mut db.client, at(m), &[o]);
    }
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    // another writer's sample at 10:20, committed only after maintain() began
    let mut writer = db.connect();
    writer.batch_execute("BEGIN").unwrap();
    send(
        &mut writer,
        at(20),
        &[live("202", "2021", Some(1000), Some(at(0)))],
    );
    send(
        &mut db.client,
        at(20),
        &[live("201", "2011", Some(100), Some(at(0)))],
    );
    let mut other = db.connect();
    let maintain = std::thread::spawn(move || {
        other
            .batch_execute("SELECT twitch_sync.maintain()")
            .unwrap();
    });
    wait_for_rollup_lock_waiter(&mut db.client);
    writer.batch_execute("COMMIT").unwrap();
    maintain.join().unwrap();
    // two maintain() calls at once, with new samples to add
    for (m, o) in both(30) {
        send(&mut db.client, at(m), &[o]);
    }
    send(
        &mut db.client,
        at(40),
        &[
            ended_obs("201", "not_listed"),
            ended_obs("202", "not_listed"),
        ],
    );
    let mut first = db.connect();
    first
        .batch_execute("BEGIN; SELECT twitch_sync.maintain()")
        .unwrap();
    let mut second = db.connect();
    let maintain = std::thread::spawn(move || {
        second
            .batch_execute("SELECT twitch_sync.maintain()")
            .unwrap();
    });
    wait_for_rollup_lock_waiter(&mut db.client);
    first.batch_execute("COMMIT").unwrap();
    maintain.join().unwrap();

    let c = &mut db.client;
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    assert_eq!(rollup_rows_of(c, "channel_days", day), want);
    assert_eq!(
        rollup_rows_of(c, "category_days", day),
        rollup_rows_of(c, "category_days_in('UTC', x, x)", day)
    );
    // 30 minutes at 100 and at 1,000 viewers
    let hours: Vec<f64> = c
        .query(
            "SELECT hours_watched FROM twitch_sync.channel_days ORDER BY broadcaster_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hours, vec![50.0, 500.0], "{want:?}");
}

/// A changed gap limit applies to the days the next maintain() rolls up:
/// they are recomputed from their samples with it. (The intervals already
/// added stayed counted under the old limit.)
#[test]
fn maintain_applies_a_changed_gap_limit_to_the_days_it_rolls_up() {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - 1;
    let at = |m: i64| day * DAY + 10 * 3_600 + m * 60;
    let c = &mut db.client;
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 900")
        .unwrap();
    for m in [0, 10] {
        send(c, at(m), &[live("301", "3011", Some(100), Some(at(0)))]);
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 300")
        .unwrap();
    send(c, at(12), &[live("301", "3011", Some(100), Some(at(0)))]);
    send(c, at(20), &[ended_obs("301", "not_listed")]);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    assert_eq!(rollup_rows_of(c, "channel_days", day), want);
    assert_eq!(
        rollup_rows_of(c, "category_days", day),
        rollup_rows_of(c, "category_days_in('UTC', x, x)", day)
    );
    // only 10:10 to 10:12 counts: the 10-minute interval is over the limit
    let hours: f64 = c
        .query_one("SELECT hours_watched FROM twitch_sync.channel_days", &[])
        .unwrap()
        .get(0);
    assert!(
        (hours - 200.0 / 60.0).abs() < 1e-9,
        "{hours} hours: {want:?}"
    );
}

/// A database whose samples are kept 3 days, with one sample 10 days ago in
/// its own day partition (what the next prune() drops).
fn with_a_day_past_retention() -> TestDb {
    let mut db = TestDb::bare(world(1, 0.0));
    db.client
        .batch_execute(
            "SET twitch_sync.samples_retention_days = 3;
             SELECT twitch_sync.create_sample_partitions(current_date - 10, current_date - 10);
             INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
             VALUES ('5010', '501', now() - interval '10 days', 3);",
        )
        .unwrap();
    db
}

/// A prune() by hand while a run() is in flight neither waits for it nor
/// deadlocks with it: it leaves the sample partition it would drop for a
/// later call, and the run's own prune() goes through. (It waited for the
/// rollup lock after deleting old events, the run's prune() waited for those
/// rows, and the run was rolled back.)
#[test]
fn prune_by_hand_during_a_run_leaves_the_drop_for_later() {
    let mut db = with_a_day_past_retention();
    let t = now_secs() - 600;
    db.client
        .batch_execute(
            "INSERT INTO twitch_sync.events (broadcaster_id, event, payload, created_at)
             SELECT '501', 'offline', '{}', now() - interval '40 days' FROM generate_series(1, 5);",
        )
        .unwrap();
    // the run: its samples take the rollup lock shared until it commits
    db.client.batch_execute("BEGIN").unwrap();
    send(&mut db.client, t, &[live("501", "5011", Some(7), Some(t))]);
    let mut other = db.connect();
    let prune = |c: &mut Client| -> (i64, i64) {
        // a wait for the run would end in an error here, not hang the test
        c.batch_execute("SET twitch_sync.samples_retention_days = 3; SET lock_timeout = '5s'")
            .unwrap();
        let r = c
            .query_one(
                "SELECT samples_deleted, events_deleted FROM twitch_sync.prune()",
                &[],
            )
            .unwrap_or_else(|e| panic!("prune(): {}", error_text(&e)));
        (r.get(0), r.get(1))
    };
    // by hand: the old events go, the day of samples stays
    assert_eq!(prune(&mut other), (0, 5));
    // the run's own prune(): nothing in its way
    assert_eq!(prune(&mut db.client), (1, 0));
    db.client.batch_execute("COMMIT").unwrap();
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM twitch_sync.viewer_samples WHERE sampled_at < now() - interval '5 days'"),
        0
    );
}

/// A session reading another day's partition (a report, Grafana, or an
/// autovacuum of it) holds up no drop of an old day: prune() locks only the
/// parent and the partition it drops. (It locked every partition, waited a
/// second per old day, and dropped nothing while any partition was read.)
#[test]
fn prune_drops_an_old_day_while_another_day_is_being_read() {
    let mut db = with_a_day_past_retention();
    let t = now_secs() - 600;
    send(&mut db.client, t, &[live("501", "5011", Some(7), Some(t))]);
    db.client
        .batch_execute("SELECT twitch_sync.maintain()")
        .unwrap();
    let today: String = db
        .client
        .query_one(
            "SELECT twitch_sync.sample_partition((now() AT TIME ZONE 'UTC')::date)",
            &[],
        )
        .unwrap()
        .get(0);
    let mut reader = db.connect();
    reader
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM twitch_sync.{today}"))
        .unwrap();
    let r = db
        .client
        .query_one("SELECT samples_deleted FROM twitch_sync.prune()", &[])
        .unwrap();
    assert_eq!(
        r.get::<_, i64>(0),
        1,
        "the old day went while {today} was read"
    );
    reader.batch_execute("COMMIT").unwrap();
}

/// A gap limit lowered after a backfill of samples, before the next
/// maintain(): the backfill's days are still rolled up again (the day before
/// midnight kept its old figures: maintain() looked back by the new, shorter
/// limit).
#[test]
fn a_backfill_then_a_lowered_gap_limit_rolls_up_the_backfills_days() {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - 2;
    let at = |m: i64| (day + 1) * DAY + m * 60; // minutes from the next midnight
    let c = &mut db.client;
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 1200")
        .unwrap();
    send(c, at(-3), &[live("301", "3011", Some(100), Some(at(-3)))]);
    for m in [0, 10, 15] {
        send(c, at(m), &[live("302", "3021", Some(10), Some(at(0)))]);
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    // 301's next sample, written late (at 00:05, before 00:15 rolled up)
    send(c, at(5), &[live("301", "3011", Some(100), Some(at(-3)))]);
    send(c, at(6), &[ended_obs("301", "not_listed")]);
    send(c, at(20), &[ended_obs("302", "not_listed")]);
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 600; SELECT twitch_sync.maintain()")
        .unwrap();
    assert_rolled_up_as_computed(c, &[day, day + 1]);
    // 301: 100 viewers from 23:57 to midnight
    assert_eq!(
        rollup_rows_of(c, "channel_days", day),
        vec!["301 00:03:00 5.000000 100 100.000000 1".to_string()]
    );
}

/// A broadcast reopened after the day it ended was rolled up gets that day
/// rolled up again: its airtime runs on from its old end (it kept the airtime
/// up to the old end).
#[test]
fn a_reopened_broadcasts_earlier_day_is_rolled_up_again() {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - 2;
    let at = |m: i64| (day + 1) * DAY + m * 60; // minutes from the next midnight
    let c = &mut db.client;
    for m in [-30, -20] {
        send(c, at(m), &[live("401", "4011", Some(10), Some(at(-30)))]);
    }
    send(c, at(-10), &[ended_obs("401", "not_listed")]);
    for m in [20, 30] {
        send(c, at(m), &[live("402", "4021", Some(10), Some(at(20)))]);
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    send(c, at(40), &[live("402", "4021", Some(10), Some(at(20)))]);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    send(c, at(45), &[live("401", "4011", Some(10), Some(at(-30)))]); // reopened
    send(
        c,
        at(55),
        &[
            ended_obs("401", "not_listed"),
            ended_obs("402", "not_listed"),
        ],
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let want = rollup_rows_of(c, "channel_days_in('UTC', x, x)", day);
    assert_eq!(rollup_rows_of(c, "channel_days", day), want);
    assert!(want[0].starts_with("401 00:30:00 "), "{want:?}");
}

/// A live broadcast first listed without Twitch's `started_at` (missing or
/// refused: stored as NULL) takes it from a later listing, and its airtime
/// then starts there: on a day `maintain()` had already rolled up, which it
/// rolls up again. (That day kept no airtime for it.)
#[test]
fn a_start_time_learned_later_rolls_up_the_earlier_day_again() {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - 2;
    let at = |m: i64| (day + 1) * DAY + m * 60; // minutes from the next midnight
    let c = &mut db.client;
    // run() creates each day's partition of the samples (the day before
    // had runs, which found nothing live)
    c.batch_execute(&format!(
        "SELECT twitch_sync.create_sample_partitions(date '1970-01-01' + {day}, date '1970-01-01' + {day})"
    ))
    .unwrap();
    for m in [120, 130, 140] {
        send(c, at(m), &[live("501", "5011", Some(10), None)]);
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(rollup_rows_of(c, "channel_days", day), Vec::<String>::new());
    // Helix now says it started at 23:00 the day before
    send(c, at(150), &[live("501", "5011", Some(10), Some(at(-60)))]);
    send(c, at(160), &[ended_obs("501", "not_listed")]);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_rolled_up_as_computed(c, &[day, day + 1]);
    let rows = rollup_rows_of(c, "channel_days", day);
    assert!(
        rows.len() == 1 && rows[0].starts_with("501 01:00:00 0.000000 "),
        "an hour of airtime from 23:00, no samples: {rows:?}"
    );
}

/// Broadcaster `bid` live with 60 viewers through the last hour of the day
/// `days_ago` days back and into the next (samples 40 and 20 minutes apart
/// before midnight, then every 10 minutes), rolled up with a one-hour gap
/// limit (set for the session); the database and that day.
fn an_hour_to_midnight_rolled_up_at_a_one_hour_gap(bid: &str, days_ago: i64) -> (TestDb, i64) {
    let mut db = TestDb::bare(world(1, 0.0));
    let day = now_secs().div_euclid(DAY) - days_ago;
    let at = |m: i64| (day + 1) * DAY + m * 60; // minutes from the next midnight
    let c = &mut db.client;
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 3600")
        .unwrap();
    let sid = format!("{bid}1");
    for m in [-60, -20, 0, 10, 20, 30] {
        send(c, at(m), &[live(bid, &sid, Some(60), Some(at(-60)))]);
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    (db, day)
}

/// After the gap limit is lowered, the dashboard does not read from the
/// rollups a day the next `maintain()` recomputes (it looks back by the
/// longer, old limit): the day reads the same before and after that call.
/// (It read the old rollup, 1 hour, then 0.)
#[test]
fn the_dashboard_reads_no_day_maintain_recomputes_after_a_lowered_gap_limit() {
    let (mut db, day) = an_hour_to_midnight_rolled_up_at_a_one_hour_gap("601", 2);
    let c = &mut db.client;
    assert_eq!(dashboard_hours(c, day), 60.0, "60 viewers for an hour");
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 600")
        .unwrap();
    let before = dashboard_hours(c, day);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(
        dashboard_hours(c, day),
        0.0,
        "no interval before midnight is within 10 minutes"
    );
    assert_eq!(
        before, 0.0,
        "before maintain(), the day was read from its samples"
    );
}

/// Retention rolls a day up from its samples before it drops them unless its
/// rollups are final by the rule the dashboard and maintain() use: after a
/// lowered gap limit, a day within the old (longer) limit of the latest
/// rollup is not final, and it is dropped with the figures the new limit
/// gives (as maintain() would have recomputed them), not the old ones.
#[test]
fn retention_after_a_lowered_gap_limit_rolls_up_the_day_first() {
    let (mut db, day) = an_hour_to_midnight_rolled_up_at_a_one_hour_gap("602", 3);
    let c = &mut db.client;
    let hours = |c: &mut Client| -> f64 {
        c.query_one(
            "SELECT hours_watched::float8 FROM twitch_sync.channel_days
              WHERE broadcaster_id = '602' AND day = date '1970-01-01' + $1::int",
            &[&(day as i32)],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(hours(c), 60.0, "60 viewers for an hour");
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 600")
        .unwrap();
    assert!(db.scalar_i64("SELECT twitch_sync.drop_sample_partitions(2)") >= 2);
    assert_eq!(
        hours(&mut db.client),
        0.0,
        "no interval before midnight is within 10 minutes"
    );
}

/// A sample written by hand (not through apply_observations, which refuses
/// such times) at an infinite time is refused by the table; one dated far
/// ahead waits for its time: maintain() neither fails nor moves its watermark
/// past the clock, and the samples written since are rolled up as usual.
#[test]
fn a_sample_dated_ahead_by_hand_does_not_move_the_rollups_past_now() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let insert = "INSERT INTO twitch_sync.viewer_samples (stream_id, broadcaster_id, sampled_at, viewer_count)
                  VALUES ('7031', '703', $1::text::timestamptz, 5)";
    for t in ["infinity", "-infinity"] {
        let e = c.execute(insert, &[&t]).unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{t}: {}", error_text(&e));
    }
    // an interval closed by a sample must lie before it
    for prev in ["2026-01-01 00:00:00+00", "2026-01-01 00:00:30+00"] {
        let e = c
            .execute(
                "INSERT INTO twitch_sync.viewer_samples
                        (stream_id, broadcaster_id, sampled_at, viewer_count, prev_sampled_at, prev_viewer_count)
                 VALUES ('7031', '703', '2026-01-01 00:00:00+00', 5, $1::text::timestamptz, 1000)",
                &[&prev],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{prev}: {}", error_text(&e));
    }
    c.execute(insert, &[&"3026-01-01 00:00:00+00"]).unwrap();
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let now = now_secs();
    let day = now.div_euclid(DAY) - 1;
    broadcast(
        c,
        "704",
        "7041",
        (day * DAY + 3_600, day * DAY + 7_200, 600),
        &|_| 30,
        true,
    );
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let ahead = db.scalar_i64(
        "SELECT (rolled_up_to > now() + interval '1 day')::int::int8 FROM twitch_sync.rollup_state",
    );
    assert_eq!(ahead, 0, "the rollups' watermark is not ahead of the clock");
    assert_rolled_up_as_computed(&mut db.client, &[day]);
    let hours: f64 = db
        .client
        .query_one(
            "SELECT hours_watched::float8 FROM twitch_sync.channel_days
              WHERE broadcaster_id = '704' AND day = date '1970-01-01' + $1::int",
            &[&(day as i32)],
        )
        .unwrap()
        .get(0);
    assert_eq!(hours, 30.0, "30 viewers for an hour");
}

/// Samples count in the order they are written. A sample written into the
/// past of a live broadcast (at 10:15, after 10:20 was written) is kept and
/// is its peak, but closes no interval and splits none: the broadcast's hours
/// and its day's rollup agree (100 viewers for 30 minutes = 50 hours), and
/// every sample carries the interval it closes.
#[test]
fn a_sample_written_into_a_broadcasts_past_counts_once_everywhere() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let day = now_secs().div_euclid(DAY) - 3;
    let t0 = day * DAY + 36_000;
    for (t, v) in [(0, 100), (600, 100), (1_200, 100), (900, 500), (1_800, 100)] {
        send(c, t0 + t, &[live("70", "7001", Some(v), Some(t0))]);
    }
    send(c, t0 + 2_400, &[ended_obs("70", "not_listed")]);
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let row = c
        .query_one(
            "SELECT b.hours_watched, b.peak_viewers, d.hours_watched, d.peak_viewers
               FROM twitch_sync.broadcasts b
               JOIN twitch_sync.channel_days d ON d.broadcaster_id = b.broadcaster_id
              WHERE b.stream_id = '7001' AND d.day = date '1970-01-01' + $1::int",
            &[&(day as i32)],
        )
        .unwrap();
    let (b_hours, b_peak, d_hours, d_peak): (f64, i32, f64, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!((b_hours - 50.0).abs() < 1e-9, "broadcast: {b_hours} hours");
    assert!((d_hours - 50.0).abs() < 1e-9, "its day: {d_hours} hours");
    assert_eq!((b_peak, d_peak), (500, 500));
    // the intervals as the samples carry them: (closing sample, previous one, its count)
    let carried: Vec<(i64, Option<i64>, Option<i32>)> = c
        .query(
            "SELECT extract(epoch FROM sampled_at)::int8 - $1, extract(epoch FROM prev_sampled_at)::int8 - $1,
                    prev_viewer_count
               FROM twitch_sync.viewer_samples WHERE stream_id = '7001' ORDER BY sampled_at",
            &[&t0],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        carried,
        vec![
            (0, None, None),
            (600, Some(0), Some(100)),
            (900, None, None),
            (1_200, Some(600), Some(100)),
            (1_800, Some(1_200), Some(100)),
        ]
    );
}

/// A day is [its first instant, the next day's first instant) everywhere, and
/// an instant's day is its local date: where midnight happens twice
/// (America/Havana, 2026-11-01: 04:00 and 05:00 UTC) the day starts at the
/// first. An interval may cover three days (a gap limit of a day across a
/// 23-hour day: Europe/Berlin, 2026-03-29).
#[test]
fn days_are_bounded_by_their_first_instant() {
    let mut db = TestDb::bare(world(1, 0.0));
    // a day the zone skipped (Samoa, 2011-12-30) is empty, not unbounded
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM (SELECT twitch_sync.day_start('2011-12-30', 'Pacific/Apia') a,
                                          twitch_sync.day_start('2011-12-31', 'Pacific/Apia') b) x
              WHERE a = b AND a = timestamptz '2011-12-31 00:00 +14'"
        ),
        1
    );
    let c = &mut db.client;
    c.batch_execute("SET twitch_sync.max_sample_gap_secs = 86400")
        .unwrap();
    // Havana: samples every 10 minutes from 02:00 to 08:00 UTC, 100 viewers
    // before 04:00 UTC, 300 from then; not listed at 08:10
    let h = 1_793_498_400i64; // 2026-11-01 02:00 UTC
    broadcast(
        c,
        "60",
        "6001",
        (h, h + 6 * 3_600, 600),
        &|t| if t < h + 7_200 { 100 } else { 300 },
        true,
    );
    let rows: Vec<(String, f64, f64, i32)> = c
        .query(
            "SELECT day::text, extract(epoch FROM airtime)::float8, hours_watched, peak_viewers
               FROM twitch_sync.channel_days_in('America/Havana', '2026-10-31', '2026-11-01') ORDER BY day",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2026-10-31".into(), 7_200.0, 200.0, 100),
            ("2026-11-01".into(), 4.0 * 3_600.0 + 600.0, 1_200.0, 300)
        ]
    );
    // Berlin: samples at 2026-03-28 23:30 and 2026-03-30 00:10 local, 60 viewers
    let b = 1_774_737_000i64; // 2026-03-28 22:30 UTC
    send(c, b, &[live("61", "6101", Some(60), Some(b))]);
    send(c, b + 85_200, &[live("61", "6101", Some(60), Some(b))]);
    let rows: Vec<(String, f64)> = c
        .query(
            "SELECT day::text, hours_watched FROM twitch_sync.channel_days_in('Europe/Berlin', '2026-03-28', '2026-03-30')
              WHERE broadcaster_id = '61' ORDER BY day",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("2026-03-28".into(), 30.0),
            ("2026-03-29".into(), 23.0 * 60.0),
            ("2026-03-30".into(), 10.0)
        ]
    );
}

/// A broadcast seen only without a count (an EventSub online, then offline)
/// has no samples and no peak: NULL, as channel_days says, not 0.
#[test]
fn a_broadcast_without_samples_has_no_peak() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let t = now_secs() - 7_200;
    send(c, t, &[live("70", "7001", None, Some(t))]);
    send(c, t + 3_600, &[ended_obs("70", "offline")]);
    let row = c
        .query_one(
            "SELECT samples, peak_viewers, peak_at IS NULL FROM twitch_sync.broadcasts WHERE stream_id = '7001'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, Option<i32>>(1),
            row.get::<_, bool>(2)
        ),
        (0, None, true)
    );
}

/// Hours per day on the dashboard: a whole day whose rollups are final is
/// read from channel_days — the same hours its samples give, and still there
/// once retention has dropped those samples; a day whose rollups retention
/// deleted is read from its samples again.
#[test]
fn the_dashboard_reads_final_days_from_the_rollups() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    let now = now_secs();
    let today = now.div_euclid(DAY);
    // live all of two days with 60 viewers: 24 hours x 60 = 1,440 hours each
    for (bid, day) in [("81", today - 4), ("83", today - 2)] {
        let sid = format!("{bid}01");
        broadcast(
            c,
            bid,
            &sid,
            (day * DAY, (day + 1) * DAY, 600),
            &|_| 60,
            true,
        );
    }
    // sampled up to now, so that maintain() rolls up past those days' ends
    broadcast(c, "82", "8201", (now - 600, now, 600), &|_| 10, false);
    let both = |c: &mut Client| (dashboard_hours(c, today - 4), dashboard_hours(c, today - 2));
    assert_eq!(both(c), (1_440.0, 1_440.0), "from the samples");
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    assert_eq!(both(c), (1_440.0, 1_440.0), "from the rollups");
    // rollups kept 3 days: the older day's go, its samples stay
    c.batch_execute(
        "SET twitch_sync.rollups_retention_days = 3;
         SELECT twitch_sync.maintain();",
    )
    .unwrap();
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM twitch_sync.channel_days WHERE day = date '1970-01-01' + {}",
            today - 4
        )),
        0,
        "the older day's rollups are deleted"
    );
    let c = &mut db.client;
    assert_eq!(
        both(c),
        (1_440.0, 1_440.0),
        "the older day from its samples again"
    );
    // samples kept 1 day: both days' samples go, the later day's rollups stay
    let dropped: i64 = c
        .query_one("SELECT twitch_sync.drop_sample_partitions(1)", &[])
        .unwrap()
        .get(0);
    assert!(dropped >= 2 * 144, "both days' samples are gone: {dropped}");
    assert_eq!(
        both(c),
        (0.0, 1_440.0),
        "after retention dropped their samples, the later day from its rollups"
    );
}

/// The dashboard's range is that much time, whatever the session's TimeZone:
/// '30 days' across a DST change was 721 (or 719) hours in Los Angeles.
#[test]
fn the_dashboard_range_is_the_same_length_in_every_time_zone() {
    let mut db = TestDb::bare(world(1, 0.0));
    let c = &mut db.client;
    // a number of days whose range crosses a DST change in Los Angeles now
    let days: i32 = c
        .query_one(
            "SELECT min(n)::int FROM generate_series(1, 400) n
              WHERE (now() AT TIME ZONE 'America/Los_Angeles' - make_interval(days => n))
                    AT TIME ZONE 'America/Los_Angeles' <> now() - make_interval(hours => 24 * n)",
            &[],
        )
        .unwrap()
        .get(0);
    // 10-minute intervals of 60 viewers ending 25 minutes before and starting
    // 25 minutes after the range's start: only the second is in it (each
    // stream's second sample carries the interval it closes, as the
    // transition layer writes it)
    c.execute(
        "INSERT INTO twitch_sync.viewer_samples
             (stream_id, broadcaster_id, sampled_at, viewer_count, game_id,
              prev_sampled_at, prev_viewer_count, prev_game_id)
         SELECT x.s, '80', r.t + make_interval(mins => x.m), 60, '',
                r.t + make_interval(mins => x.p), CASE WHEN x.p IS NOT NULL THEN 60 END,
                CASE WHEN x.p IS NOT NULL THEN '' END
           FROM (SELECT now() - make_interval(hours => 24 * $1) AS t) r,
                (VALUES ('8001', -35, NULL), ('8001', -25, -35), ('8002', 25, NULL), ('8002', 35, 25))
                    x(s, m, p)",
        &[&days],
    )
    .unwrap();
    for tz in ["UTC", "America/Los_Angeles", "Australia/Lord_Howe"] {
        c.batch_execute(&format!("SET TimeZone = '{tz}'")).unwrap();
        let hours: f64 = c
            .query_one(
                "SELECT sum(hours_watched)::float8 FROM twitch_sync.dashboard_hours_per_day(make_interval(days => $1))",
                &[&days],
            )
            .unwrap()
            .get(0);
        // (10 exactly, but for rounding when the interval crosses midnight)
        assert!((hours - 10.0).abs() < 0.02, "{tz}: {days} days: {hours}");
    }
}
