//! `twitch_sync.dashboard()` end to end: a database filled by real runs
//! against the simulator, the page rendered by a real headless Chromium
//! (Debian's `chromium`, installed by scripts/setup), and
//! `dashboards/grafana.json`'s SQL run as Grafana would run it.
//!
//! Screenshots are written to target/dashboard/ for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twitch_sync_e2e::helix_sim::{Fault, FaultKind};
use twitch_sync_e2e::postgres::Client;
use twitch_sync_e2e::serde_json::{self, Value};
use twitch_sync_e2e::{error_text, sqlstate, world, TestDb};

const SCRIPT_TITLE: &str = "<script>alert(1)</script>";
const IMG_TITLE: &str = "\"><img src=x onerror=alert(1)>";
const GAME: &str = "<b>Bold</b> & \"Quoted\" 'Game'";

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TWITCH_SYNC_CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("Chromium not found: install Debian's chromium package (scripts/setup does) or set TWITCH_SYNC_CHROMIUM");
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&d).expect("create target/dashboard");
    d
}

/// Runs Chromium headless on `file` with `args`, within 90 s; returns its
/// stderr (where `--enable-logging=stderr` puts the page's console messages).
fn run_chromium(file: &Path, width: u32, height: u32, args: &[String]) -> (bool, String) {
    let profile = std::env::temp_dir().join(format!(
        "twitch_sync_chromium_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},{height}"))
        .args(args)
        .arg(format!("file://{}", file.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let end = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    (status.success(), format!("{stdout}\u{0}{stderr}"))
}

/// A page as a browser saw it.
struct Rendered {
    /// The DOM after parsing, serialized (`--dump-dom`).
    dom: String,
    /// The console messages of both loads (CSP violations, errors, logs).
    console: Vec<String>,
    /// Luminance standard deviation of the screenshot.
    pixel_stddev: f64,
}

fn console_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect()
}

/// Renders `html` at `width`×`height`: a screenshot saved as `name`.png in
/// target/dashboard/, the serialized DOM, and the console messages.
fn render(html: &str, name: &str, width: u32, height: u32) -> Rendered {
    let dir = out_dir();
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).expect("write the page");
    let png_path = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png_path);
    let (ok, log1) = run_chromium(
        &page,
        width,
        height,
        &[format!("--screenshot={}", png_path.display())],
    );
    assert!(ok, "chromium --screenshot failed:\n{log1}");
    let (ok, log2) = run_chromium(&page, width, height, &["--dump-dom".to_string()]);
    assert!(ok, "chromium --dump-dom failed:\n{log2}");
    let dom = log2.split('\u{0}').next().unwrap_or_default().to_string();
    let mut console = console_lines(&log1);
    console.extend(console_lines(&log2));
    Rendered {
        dom,
        console,
        pixel_stddev: luminance_stddev(&png_path),
    }
}

/// The standard deviation of the luminance of a PNG's pixels: 0 for a blank image.
fn luminance_stddev(png_path: &Path) -> f64 {
    let file = std::fs::File::open(png_path)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png_path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a PNG screenshot");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("decode the screenshot");
    let channels = info.color_type.samples();
    assert!(
        info.width > 100 && info.height > 100,
        "screenshot size {}x{}",
        info.width,
        info.height
    );
    let px = &buf[..info.buffer_size()];
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0f64);
    for p in px.chunks_exact(channels) {
        let y = if channels >= 3 {
            0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
        } else {
            p[0] as f64
        };
        sum += y;
        sum2 += y * y;
        n += 1.0;
    }
    let mean = sum / n;
    (sum2 / n - mean * mean).max(0.0).sqrt()
}

/// The text of the element with this id in a serialized DOM (its content up
/// to the next tag).
fn text_of_id(dom: &str, id: &str) -> String {
    let key = format!("id=\"{id}\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no element with {key} in the page"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("end of the tag") + 1;
    let end = rest[start..].find('<').expect("the element's text ends");
    rest[start..start + end].trim().to_string()
}

/// The tags of a serialized DOM, without their angle brackets.
fn tags(dom: &str) -> Vec<&str> {
    dom.split('<')
        .skip(1)
        .filter_map(|s| s.split_once('>').map(|(t, _)| t))
        .collect()
}

fn number_of_id(dom: &str, id: &str) -> i64 {
    let text = text_of_id(dom, id);
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("#{id} holds {text:?}, not a number: {e}"))
}

fn dashboard(client: &mut Client, range: &str) -> String {
    client
        .query_one(
            "SELECT twitch_sync.dashboard($1::text::interval)",
            &[&range],
        )
        .expect("twitch_sync.dashboard()")
        .get(0)
}

/// The probes themselves: a blank page is blank, and a CSP violation shows
/// as a console message. Without this, "not blank" and "no console errors"
/// could pass for a browser that renders nothing and logs nothing.
#[test]
fn the_browser_probes_can_fail() {
    let blank = render(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body></body></html>",
        "probe-blank",
        800,
        600,
    );
    assert!(
        blank.pixel_stddev < 1.0,
        "a blank page measures as blank: stddev {}",
        blank.pixel_stddev
    );
    assert!(blank.console.is_empty(), "{:?}", blank.console);

    let bad = render(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         </head><body><h1>x</h1><img src=\"http://127.0.0.1:1/x.png\"><script>document.title='ran'</script></body></html>",
        "probe-csp",
        800,
        600,
    );
    assert!(
        bad.console
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "a CSP violation reaches the console probe: {:?}",
        bad.console
    );
    assert!(
        bad.dom.contains("<img"),
        "the DOM probe sees elements: {}",
        bad.dom
    );
}

#[test]
fn dashboard_shows_what_the_database_holds() {
    let mut db = TestDb::new(world(300, 0.3));
    db.track_first(300);
    for _ in 0..4 {
        db.sim.tick();
        let doc = db.run();
        assert_eq!(doc["status"], "ok", "{doc}");
    }
    // Titles and a category from "Twitch" that try to be markup (set after
    // the ticks, so that no restart replaces them).
    let live: Vec<String> = db.sim.world(|w| {
        w.channels
            .iter()
            .filter(|c| c.live.is_some())
            .map(|c| c.id.clone())
            .collect()
    });
    assert!(live.len() > 20, "enough live channels: {}", live.len());
    db.sim.world(|w| {
        // the biggest audiences, so they are in the top 20
        w.set_viewers(&live[0], 5_000_000);
        w.set_title(&live[0], SCRIPT_TITLE);
        w.set_viewers(&live[1], 4_000_000);
        w.set_title(&live[1], IMG_TITLE);
        let i = w.index_of_id(&live[2]).unwrap();
        w.set_viewers(&live[2], 3_000_000);
        w.channels[i].live.as_mut().unwrap().game_name = GAME.to_string();
    });
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    // a partial run: one batch answers 503 until its retries run out
    db.sim.add_fault(
        Fault::new(FaultKind::Status { status: 503 })
            .for_user(&live[5])
            .times(10),
    );
    let doc = db.run();
    assert_eq!(doc["status"], "partial", "{doc}");
    db.sim.clear_faults();
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    // and an error text that tries to be markup, recorded the one way runs are
    db.client
        .execute(
            "SELECT twitch_sync.record_run(clock_timestamp(), 'failed', 0, 0, 0, 0, 0, 300, 1, 0, 0,
                     NULL, $1, 0, 0, NULL, NULL)",
            &[&"Get Streams: <script>alert(2)</script> & <img src=x onerror=alert(3)>"],
        )
        .expect("record a failed run");

    let html = dashboard(&mut db.client, "24 hours");

    // What the database says.
    let live_n = db.scalar_i64("SELECT count(*) FROM twitch_sync.streams WHERE is_live");
    let runs_n = db.scalar_i64(
        "SELECT count(*) FROM twitch_sync.runs WHERE started_at >= now() - interval '24 hours'",
    );
    let top: i64 =
        db.scalar_i64("SELECT max(viewer_count)::bigint FROM twitch_sync.streams WHERE is_live");
    assert_eq!(top, 5_000_000);
    assert!(runs_n >= 8, "the runs of this test: {runs_n}");

    // Secrets: neither the client secret nor the token, anywhere in the page.
    let row = db
        .client
        .query_one(
            "SELECT client_id, client_secret, access_token FROM twitch_sync.credentials",
            &[],
        )
        .unwrap();
    let (id, secret, token): (String, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let token = token.expect("a cached token after runs");
    for (what, s) in [
        ("client id", &id),
        ("client secret", &secret),
        ("access token", &token),
    ] {
        assert!(s.len() >= 8, "{what} long enough to search for");
        assert!(!html.contains(s.as_str()), "the page shows the {what}");
    }

    // The raw page: no markup from Twitch.
    assert!(!html.contains("<script"), "no script element in the page");
    assert!(!html.contains("<img"), "no img element in the page");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    for (name, w, h) in [("dashboard-1366", 1366, 768), ("dashboard-390", 390, 844)] {
        let page = render(&html, name, w, h);
        assert!(
            page.console.is_empty(),
            "no console messages at {w}px (CSP violations, errors): {:?}",
            page.console
        );
        assert!(
            page.pixel_stddev > 10.0,
            "the {w}px screenshot is not blank: luminance stddev {}",
            page.pixel_stddev
        );
        let dom = &page.dom;
        assert_eq!(number_of_id(dom, "live-count"), live_n, "live count");
        assert_eq!(number_of_id(dom, "runs-in-range"), runs_n, "runs in range");
        assert_eq!(
            number_of_id(dom, "top-viewers"),
            top,
            "top stream's viewers"
        );
        assert_eq!(
            number_of_id(dom, "tracked-count"),
            db.scalar_i64("SELECT count(*) FROM twitch_sync.channels WHERE enabled")
        );
        // The hostile strings are text: escaped in the serialized DOM, and no
        // element was made of them.
        assert!(
            dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "the script title shows as text"
        );
        assert!(
            dom.contains("\"&gt;&lt;img src=x onerror=alert(1)&gt;"),
            "the img title shows as text"
        );
        assert!(
            dom.contains("&lt;b&gt;Bold&lt;/b&gt; &amp; \"Quoted\" 'Game'"),
            "the category shows as text"
        );
        assert!(
            dom.contains(
                "&lt;script&gt;alert(2)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(3)&gt;"
            ),
            "the error text shows as text: {}",
            text_of_id(dom, "last-error")
        );
        // In a serialized DOM every literal '<' opens a tag (text has &lt;).
        let tags = tags(dom);
        assert!(tags.len() > 100, "the DOM has the page's elements");
        for t in &tags {
            let name = t
                .trim_start_matches('/')
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            assert!(
                !["script", "img", "iframe", "object", "embed", "link", "a", "form", "base"]
                    .contains(&name.as_str()),
                "no <{name}> element in the DOM: <{t}>"
            );
            assert!(
                !t.split_whitespace()
                    .skip(1)
                    .any(|a| a.to_ascii_lowercase().starts_with("on") && a.contains('=')),
                "no event handler attribute: <{t}>"
            );
        }
        assert!(!dom.contains("<b>Bold"), "the category made no element");
        // one row per live stream shown (up to 20), plus the header
        let table = &dom[dom.find("id=\"live-table\"").unwrap()..];
        let table = &table[..table.find("</table>").unwrap()];
        assert_eq!(
            table.matches("<tr>").count() as i64,
            live_n.min(20) + 1,
            "the live table has exactly its rows"
        );
        // the sections and charts are there, with axis labels and units
        for needle in [
            "Sync health",
            "Runs by status",
            "runs per",
            "duration (ms)",
            "requests per run",
            "Live now",
            "Viewers of the top channels",
            "Hours watched per day",
            "hours watched",
            "time (UTC)",
            "Rate-limit bucket",
            "App token expires",
        ] {
            assert!(dom.contains(needle), "the page has {needle:?}");
        }
        assert_eq!(dom.matches("<svg").count(), 5, "five charts");
    }

    // A reader role granted only EXECUTE on dashboard() opens the same page,
    // and still cannot read the credentials.
    db.client
        .batch_execute(
            "CREATE ROLE dash_reader LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO dash_reader;
             GRANT EXECUTE ON FUNCTION twitch_sync.dashboard(interval) TO dash_reader;",
        )
        .unwrap();
    let mut reader = db.cluster().connect_as(&db.name, "dash_reader");
    let as_reader: String = reader
        .query_one("SELECT twitch_sync.dashboard()", &[])
        .expect("the reader opens the dashboard")
        .get(0);
    assert!(as_reader.contains(&format!("id=\"live-count\">{}<", fmt_num(live_n))));
    assert!(!as_reader.contains(secret.as_str()) && !as_reader.contains(token.as_str()));
    let err = reader
        .query_one("SELECT client_secret FROM twitch_sync.credentials", &[])
        .expect_err("the reader cannot read credentials");
    assert_eq!(sqlstate(&err), "42501");
    let err = reader
        .query_one(
            "SELECT twitch_sync.dashboard_chart('a', 'b', 'c', now(), now(), '[]')",
            &[],
        )
        .expect_err("the helpers are not granted");
    assert_eq!(sqlstate(&err), "42501");
    db.client
        .batch_execute("DROP OWNED BY dash_reader; DROP ROLE dash_reader")
        .ok();

    // Other ranges render too, and bad ones are refused with what to do.
    for range in ["30 minutes", "7 days", "90 days"] {
        let page = dashboard(&mut db.client, range);
        assert!(page.contains("id=\"live-count\""), "{range}");
    }
    for bad in ["-1 hour", "0", "11 years"] {
        let err = db
            .client
            .query_one("SELECT twitch_sync.dashboard($1::text::interval)", &[&bad])
            .expect_err(bad);
        assert_eq!(sqlstate(&err), "22023", "{bad}: {}", error_text(&err));
        assert!(
            error_text(&err).contains("positive interval"),
            "{}",
            error_text(&err)
        );
    }
    let err = db
        .client
        .query_one("SELECT twitch_sync.dashboard(NULL)", &[])
        .expect_err("NULL");
    assert_eq!(sqlstate(&err), "22023");
}

fn fmt_num(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn empty_state_before_the_first_run() {
    let mut db = TestDb::new(world(10, 0.5));
    let html = dashboard(&mut db.client, "24 hours");
    assert!(html.contains("id=\"empty-state\""), "{html}");
    assert!(html.contains("No data yet"));
    assert!(
        html.len() < 8000,
        "the empty state is short: {} bytes",
        html.len()
    );
    assert!(!html.contains("id=\"live-count\""));
    let page = render(&html, "dashboard-empty", 1366, 768);
    assert!(page.console.is_empty(), "{:?}", page.console);
    assert!(page.pixel_stddev > 5.0, "not blank: {}", page.pixel_stddev);
    assert!(
        page.dom.contains("twitch_sync.track("),
        "it says what to do next"
    );

    // Channels tracked but no run yet: still the empty state, with the count.
    db.track_first(10);
    let html = dashboard(&mut db.client, "24 hours");
    assert!(html.contains("id=\"empty-state\""));
    assert!(html.contains("Tracked channels: <b>10</b>"), "{html}");
}

/// Stores one stream's samples, `(minutes ago, viewers)` oldest first, as
/// the transition layer writes them: each with the interval it closes (the
/// previous sample's time and count, when not over the 20-minute gap limit).
fn insert_samples(tx: &mut postgres::Transaction, samples: &[(i32, i32)]) {
    let (minutes, viewers): (Vec<i32>, Vec<i32>) = samples.iter().copied().unzip();
    tx.execute(
        "INSERT INTO twitch_sync.viewer_samples
             (stream_id, broadcaster_id, sampled_at, viewer_count, prev_sampled_at, prev_viewer_count)
         SELECT '1', '100000001', now() - x.m * interval '1 minute', x.v,
                CASE WHEN x.pm - x.m <= 20 THEN now() - x.pm * interval '1 minute' END,
                CASE WHEN x.pm - x.m <= 20 THEN x.pv END
           FROM (SELECT m, v, lag(m) OVER (ORDER BY n) AS pm, lag(v) OVER (ORDER BY n) AS pv
                   FROM unnest($1::int[], $2::int[]) WITH ORDINALITY AS u(m, v, n)) x",
        &[&minutes, &viewers],
    )
    .unwrap();
}

fn hours_in_the_last_hour(tx: &mut postgres::Transaction) -> f64 {
    tx.query_one(
        "SELECT sum(hours_watched)::float8 FROM twitch_sync.dashboard_hours_per_day('1 hour')",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Hours watched: viewers × time between consecutive samples, nothing across
/// gaps longer than twitch_sync.max_sample_gap_secs (the analytics rules).
#[test]
fn hours_watched_per_day_from_samples() {
    let mut db = TestDb::new(world(10, 0.5));
    let mut tx = db.client.transaction().unwrap();
    tx.batch_execute("SET LOCAL twitch_sync.max_sample_gap_secs = 1200")
        .unwrap();
    // one stream sampled every 10 minutes with a 30-minute hole, and one
    // sample before the range (its segment is cut at the range's start)
    tx.batch_execute("SAVEPOINT with_hole").unwrap();
    insert_samples(
        &mut tx,
        &[
            (70, 100),
            (60, 100),
            (50, 100),
            (40, 200),
            (10, 200),
            (0, 100),
        ],
    );
    // within now() of this transaction: exact
    let total = hours_in_the_last_hour(&mut tx);
    // a sample's count holds until the next one (README "Analytics"):
    // (60→50) 100 × 10 min + (50→40) 100 × 10 min + (10→0) 200 × 10 min; the
    // 30-minute gap (over the 20-minute limit) counts nothing; (70→60) ends at
    // the range's start
    let want = (100.0 + 100.0 + 200.0) * 10.0 / 60.0;
    assert!((total - want).abs() < 0.02, "{total} hours, want {want}");
    let days: i64 = tx
        .query_one(
            "SELECT count(*) FROM twitch_sync.dashboard_hours_per_day('3 days')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        (3..=4).contains(&days),
        "one row per UTC day in the range: {days}"
    );
    // a range the dashboard refuses is refused here too, not an empty answer
    for bad in [
        "-1 day",
        "0 seconds",
        "11 years",
        "121 months",
        "1000000 years",
    ] {
        tx.batch_execute("SAVEPOINT bad_range").unwrap();
        let e = tx
            .query(
                "SELECT * FROM twitch_sync.dashboard_hours_per_day($1::text::interval)",
                &[&bad],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{bad}: {e}");
        tx.batch_execute("ROLLBACK TO SAVEPOINT bad_range").unwrap();
    }
    // the same data with the gap closed counts it
    tx.batch_execute("ROLLBACK TO SAVEPOINT with_hole").unwrap();
    insert_samples(
        &mut tx,
        &[
            (70, 100),
            (60, 100),
            (50, 100),
            (40, 200),
            (30, 200),
            (20, 200),
            (10, 200),
            (0, 100),
        ],
    );
    let total = hours_in_the_last_hour(&mut tx);
    let want = want + 3.0 * 200.0 * 10.0 / 60.0;
    assert!((total - want).abs() < 0.02, "{total} hours, want {want}");
    tx.rollback().unwrap();
}

/// The top channels' lines are drawn from samples: a channel whose samples
/// retention dropped (its rollups keep its peak) yields its place to the
/// next channel that has samples, so the chart keeps five lines.
#[test]
fn the_top_channels_chart_draws_five_channels_that_have_samples() {
    let mut db = TestDb::new(world(10, 0.5));
    // a run on record: the page shows its charts, not its empty state
    let doc = db.run();
    assert_eq!(doc["status"], "ok", "{doc}");
    let c = &mut db.client;
    let sample = "INSERT INTO twitch_sync.viewer_samples
                      (stream_id, broadcaster_id, sampled_at, viewer_count, prev_sampled_at, prev_viewer_count)
                  VALUES ($1, $1, now() - $2::int * interval '1 minute', $3, now() - ($2::int + 1) * interval '1 minute', $3),
                         ($1, $1, now() - ($2::int + 1) * interval '1 minute', $3, NULL, NULL)";
    // the biggest peak, five days ago: rolled up (final: samples came after
    // it), then its samples dropped; six channels with samples in the last
    // hour, 990001 the biggest
    c.execute(sample, &[&"990009", &(5 * 1440), &100_000i32])
        .unwrap();
    for k in 1..=6i32 {
        c.execute(sample, &[&format!("99000{k}"), &10, &(700 - 100 * k)])
            .unwrap();
    }
    c.batch_execute("SELECT twitch_sync.maintain()").unwrap();
    let rolled: i64 = c
        .query_one(
            "SELECT count(*) FROM twitch_sync.channel_days WHERE broadcaster_id = '990009'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rolled, 1, "its day is rolled up");
    c.batch_execute("DELETE FROM twitch_sync.viewer_samples WHERE broadcaster_id = '990009'")
        .unwrap();
    let html = dashboard(c, "30 days");
    for k in 1..=5 {
        assert!(html.contains(&format!("99000{k}")), "99000{k} has a line");
    }
    assert!(!html.contains("990006"), "only five lines");
}

/// A range is the span it covers up to now (a month is not 30 days), and
/// that span is what the page says and what the limit applies to; a chart
/// over a year is labelled by month, with its bars clipped to the plot.
#[test]
fn ranges_are_spans_and_long_charts_are_labelled_by_month() {
    let mut db = TestDb::new(world(10, 0.5));
    let row = db
        .client
        .query_one(
            "SELECT twitch_sync.dashboard_range('1 month')
                      = (now() AT TIME ZONE 'UTC') - ((now() AT TIME ZONE 'UTC') - interval '1 month'),
                    extract(month FROM twitch_sync.dashboard_range('1 month'))::int8,
                    twitch_sync.dashboard_range('1 month -30 days 1 hour') < interval '2 days'",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0), "the span up to now");
    assert_eq!(row.get::<_, i64>(1), 0, "in days and time");
    assert!(row.get::<_, bool>(2));
    let chart: String = db
        .client
        .query_one(
            "SELECT twitch_sync.dashboard_chart('runs', 'time', 'n', now() - interval '365 days', now(),
                        jsonb_build_array(jsonb_build_object('name', 'ok', 'kind', 'bar', 'color', '#16a34a',
                            'points', jsonb_build_array(
                                jsonb_build_array(extract(epoch FROM now() - interval '368 days'), 5, 0),
                                jsonb_build_array(extract(epoch FROM now() - interval '2 days'), 3, 0)))),
                        true, 604800)",
            &[],
        )
        .unwrap()
        .get(0);
    let labels: Vec<&str> = chart
        .split("text-anchor=\"middle\">")
        .skip(1)
        .map(|t| t.split('<').next().unwrap_or_default())
        .filter(|t| t.len() == 7 && t.as_bytes()[4] == b'-')
        .collect();
    assert!(
        (2..=4).contains(&labels.len()),
        "year-month ticks: {labels:?}\n{chart}"
    );
    assert!(labels.windows(2).all(|w| w[0] < w[1]), "{labels:?}");
    assert!(
        chart.contains("<g clip-path=\"url(#plot-"),
        "bars are clipped to the plot: {chart}"
    );
}

/// Expands Grafana's PostgreSQL macros as Grafana does.
fn expand_macros(sql: &str, from: &str, to: &str) -> String {
    let mut s = sql.replace("$__timeFrom()", &format!("'{from}'"));
    s = s.replace("$__timeTo()", &format!("'{to}'"));
    // $__timeFilter(col) -> col BETWEEN 'from' AND 'to'
    while let Some(at) = s.find("$__timeFilter(") {
        let open = at + "$__timeFilter(".len();
        let close = open + s[open..].find(')').expect("closing parenthesis");
        let col = s[open..close].trim().to_string();
        s.replace_range(at..=close, &format!("{col} BETWEEN '{from}' AND '{to}'"));
    }
    // $__timeGroupAlias(col, '10m') -> floor(extract(epoch from col)/600)*600 AS "time"
    while let Some(at) = s.find("$__timeGroupAlias(") {
        let open = at + "$__timeGroupAlias(".len();
        let close = open + s[open..].find(')').expect("closing parenthesis");
        let args: Vec<&str> = s[open..close].split(',').map(str::trim).collect();
        let interval = args[1].trim_matches('\'');
        let (n, unit) = interval.split_at(interval.len() - 1);
        let secs: u64 = n.parse::<u64>().expect("interval number")
            * match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86400,
                _ => panic!("interval unit {unit}"),
            };
        s.replace_range(
            at..=close,
            &format!(
                "floor(extract(epoch from {})/{secs})*{secs} AS \"time\"",
                args[0]
            ),
        );
    }
    assert!(!s.contains("$__"), "a macro this test does not know: {s}");
    s
}

fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(panels(p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn grafana_panels_run_against_a_populated_database() {
    let model: Value = serde_json::from_str(include_str!("../../dashboards/grafana.json"))
        .expect("dashboards/grafana.json is JSON");
    // What each panel must return: its columns, in order ("time" first for time series).
    let expected: &[(&str, &[&str])] = &[
        ("Live now", &["live"]),
        ("Tracked channels", &["tracked"]),
        ("Runs in range", &["runs"]),
        ("Failed or partial runs", &["failed_or_partial"]),
        (
            "Rate-limit bucket (points left)",
            &["remaining", "bucket_limit"],
        ),
        ("App token expires in", &["seconds_left"]),
        (
            "Runs by status",
            &["time", "ok", "partial", "failed", "skipped"],
        ),
        ("Run duration", &["time", "duration_ms"]),
        ("Requests and 429s per run", &["time", "requests", "429s"]),
        (
            "Schedule, last run and token",
            &[
                "last_run_status",
                "last_run_at",
                "last_run_duration_ms",
                "schedule",
                "schedule_active",
                "next_run_at",
                "token_expires_at",
                "rate_limit_remaining",
                "rate_limit_reset_at",
            ],
        ),
        ("Last error", &["run_id", "time", "error", "hint"]),
        (
            "Live now (table)",
            &["channel", "viewers", "uptime_seconds", "category", "title"],
        ),
        (
            "Viewers of the top channels",
            &["time", "metric", "viewers"],
        ),
        ("Hours watched per day", &["time", "hours_watched"]),
    ];

    let mut db = TestDb::new(world(200, 0.3));
    db.track_first(200);
    for _ in 0..3 {
        db.sim.tick();
        assert_eq!(db.run()["status"], "ok");
    }
    db.sim
        .add_fault(Fault::new(FaultKind::Status { status: 503 }).times(100));
    assert_eq!(db.run()["status"], "failed");
    db.sim.clear_faults();
    assert_eq!(db.run()["status"], "ok");

    // The grants the README gives Grafana's role, and nothing more.
    db.client
        .batch_execute(
            "CREATE ROLE grafana_reader LOGIN;
             GRANT USAGE ON SCHEMA twitch_sync TO grafana_reader;
             GRANT SELECT ON twitch_sync.runs, twitch_sync.streams, twitch_sync.channels,
                             twitch_sync.viewer_samples, twitch_sync.rate_limit,
                             twitch_sync.channel_days, twitch_sync.rollup_state TO grafana_reader;
             GRANT EXECUTE ON FUNCTION twitch_sync.status(), twitch_sync.alert_hint(text),
                                       twitch_sync.dashboard_hours_per_day(interval),
                                       twitch_sync.dashboard_range(interval),
                                       twitch_sync.final_rollup_days(timestamptz, timestamptz),
                                       twitch_sync.rollups_final_before(),
                                       twitch_sync.sample_intervals(timestamptz, timestamptz, interval),
                                       twitch_sync.sample_gap() TO grafana_reader;",
        )
        .unwrap();
    let mut grafana = db.cluster().connect_as(&db.name, "grafana_reader");
    let row = db
        .client
        .query_one(
            "SELECT to_char((now() - interval '24 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char((now() + interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
            &[],
        )
        .unwrap();
    let (from, to): (String, String) = (row.get(0), row.get(1));

    let all = panels(&model);
    let mut seen = Vec::new();
    for p in &all {
        let mut title = p["title"].as_str().expect("panel title").to_string();
        if title == "Live now" && p["type"] == "table" {
            title = "Live now (table)".into();
        }
        let want = expected
            .iter()
            .find(|(t, _)| *t == title)
            .unwrap_or_else(|| panic!("a panel this test does not know: {title}"))
            .1;
        assert_eq!(
            p["datasource"]["type"], "grafana-postgresql-datasource",
            "{title}: PostgreSQL data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 1, "{title}");
        let t = &targets[0];
        let sql = expand_macros(t["rawSql"].as_str().expect("rawSql"), &from, &to);
        let rows = grafana
            .query(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{title}: {}\n{sql}", error_text(&e)));
        assert!(
            !rows.is_empty(),
            "{title}: rows on a populated database\n{sql}"
        );
        let cols: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
        assert_eq!(cols, want, "{title}: columns");
        if t["format"] == "time_series" {
            assert_eq!(cols[0], "time", "{title}: a time series starts with time");
            let ty = rows[0].columns()[0].type_().name().to_string();
            assert!(
                ["timestamptz", "numeric", "float8"].contains(&ty.as_str()),
                "{title}: time column type {ty}"
            );
            // every value column is numeric (a "metric" column names series)
            for c in &rows[0].columns()[1..] {
                if c.name() == "metric" {
                    assert_eq!(c.type_().name(), "text");
                } else {
                    assert!(
                        ["int8", "int4", "numeric", "float8"].contains(&c.type_().name()),
                        "{title}: {} is {}",
                        c.name(),
                        c.type_().name()
                    );
                }
            }
        }
        seen.push(title);
    }
    for (t, _) in expected {
        assert!(seen.iter().any(|s| s == t), "panel {t} is in grafana.json");
    }
}
