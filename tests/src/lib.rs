//! End-to-end harness: a real PostgreSQL 15 cluster (run as the `postgres`
//! user, pg_cron and twitch_sync preloaded, on a private port), a fresh
//! database per test with the installed extension, and a Helix simulator per
//! test on 127.0.0.1.
//!
//! The extension must be installed into the system PostgreSQL first
//! (`scripts/test` does `cargo pgrx install`). One cluster serves a whole test
//! binary; a watchdog process stops it and removes its directory when the test
//! process ends, however it ends.

use helix_sim::{Config as SimConfig, Simulator};
use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod catalog;

pub use helix_sim;
pub use postgres;
pub use serde_json;

/// Where Debian's PostgreSQL 15 binaries are; override with TWITCH_SYNC_PG_BIN.
pub fn pg_bin() -> PathBuf {
    std::env::var_os("TWITCH_SYNC_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn as_postgres(program: &Path) -> Command {
    let mut c = if unsafe { libc_geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.env_remove("PGDATA");
    c
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn run_checked(mut c: Command, what: &str) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A loopback port nothing listens on, below the kernel's ephemeral range:
/// a port the kernel hands out (port 0) can be taken as the local port of any
/// client socket on the machine before the server binds it, and the package
/// test once failed that way. [`Cluster::start`] still tries another port if
/// the server cannot bind this one.
fn free_port() -> u16 {
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(20_000).max(1_000);
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let port = (20_000 + (x >> 8) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running PostgreSQL cluster.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| Cluster::start("pg_cron,twitch_sync"))
    }

    /// A second cluster of this test binary, with only pg_cron preloaded: its
    /// backends load twitch_sync's library when they first call into it, as on
    /// a server where README's optional preload was skipped.
    pub fn without_preload() -> &'static Cluster {
        static CLUSTER: OnceLock<Cluster> = OnceLock::new();
        CLUSTER.get_or_init(|| Cluster::start("pg_cron"))
    }

    fn start(preload: &str) -> Cluster {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("twitch_sync_e2e_{}_{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if unsafe { libc_geteuid() } == 0 {
            run_checked(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let mut initdb = as_postgres(&pg_bin().join("initdb"));
        initdb
            .args([
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&data);
        run_checked(initdb, "initdb");
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             shared_preload_libraries = '{preload}'\ncron.database_name = 'postgres'\n\
             cron.use_background_workers = on\nmax_worker_processes = 32\n\
             max_connections = 100\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             log_min_messages = info\nlog_line_prefix = '%m [%p] %d '\nlogging_collector = off\n",
            dir = dir.display()
        );
        let conf_path = data.join("postgresql.auto.conf");
        let mut auto = std::fs::read_to_string(&conf_path).unwrap_or_default();
        auto.push_str(&conf);
        std::fs::write(&conf_path, auto).expect("write postgresql.auto.conf");

        // The port last in postgresql.auto.conf wins; a port taken meanwhile
        // (the server cannot bind it) is replaced by another.
        let mut port = port;
        for attempt in 1..=5 {
            let mut auto = std::fs::read_to_string(&conf_path).unwrap_or_default();
            auto.push_str(&format!("port = {port}\n"));
            std::fs::write(&conf_path, auto).expect("write postgresql.auto.conf");
            let mut start = as_postgres(&pg_bin().join("pg_ctl"));
            // As some servers run: errors must still reach users without a Rust backtrace.
            start.env("RUST_BACKTRACE", "1");
            start
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .arg("start");
            if attempt == 5 {
                run_checked(start, "pg_ctl start");
                break;
            }
            let out = start.output().expect("run pg_ctl start");
            if out.status.success() {
                break;
            }
            port = free_port();
        }

        // The watchdog: when this process ends, stop the cluster and remove its files.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             {runas}{pg_ctl} -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            runas = if unsafe { libc_geteuid() } == 0 {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = pg_bin().join("pg_ctl").display(),
            data = data.display(),
            dir = dir.display(),
        );
        // setsid + & : the watchdog outlives the shell that starts it and this process.
        let status = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "setsid sh -c \"{}\" </dev/null >/dev/null 2>&1 &",
                    script.replace('"', "\\\"")
                ),
            ])
            .status()
            .expect("start the cluster watchdog");
        assert!(status.success(), "cluster watchdog");
        Cluster { dir, port }
    }

    /// How to reach `dbname` as `user`.
    fn conninfo(&self, dbname: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    pub fn connect(&self, dbname: &str) -> Client {
        self.connect_as(dbname, "postgres")
    }

    /// A connection that keeps every notice and warning the server sends it
    /// (`SEVERITY: message (HINT: hint)`), in the order they came.
    pub fn connect_keeping_notices(
        &self,
        dbname: &str,
    ) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = kept.clone();
        let client = self
            .conninfo(dbname, "postgres")
            .parse::<postgres::Config>()
            .unwrap()
            .notice_callback(move |n| {
                sink.lock().unwrap().push(format!(
                    "{}: {} (HINT: {})",
                    n.severity(),
                    n.message(),
                    n.hint().unwrap_or("")
                ))
            })
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname}: {e}"));
        (client, kept)
    }

    /// A connection, or None while the server does not accept one.
    pub fn connect_opt(&self, dbname: &str) -> Option<Client> {
        Client::connect(&self.conninfo(dbname, "postgres"), NoTls).ok()
    }

    pub fn connect_as(&self, dbname: &str, user: &str) -> Client {
        Client::connect(&self.conninfo(dbname, user), NoTls)
            .unwrap_or_else(|e| panic!("connect to {dbname} as {user}: {e}"))
    }

    /// Restarts the server (fast shutdown): every connection is closed.
    pub fn restart(&self) {
        let mut c = as_postgres(&pg_bin().join("pg_ctl"));
        c.env("RUST_BACKTRACE", "1");
        c.args(["-w", "-t", "60", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("restart");
        run_checked(c, "pg_ctl restart");
    }

    /// The server log so far. Panics when it cannot be read: a check that
    /// something is absent from the log must never pass on an empty string.
    /// (Bytes that are not UTF-8 are replaced, not an error.)
    pub fn log(&self) -> String {
        let path = self.dir.join("server.log");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read the server log {}: {e}", path.display()));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The database a server log line names, when the line starts a message:
/// log_line_prefix '%m [%p] %d ' writes `2026-01-02 03:04:05.678 UTC [123] dbname LOG:  ...`
/// (the name is empty for a process without a database). None for a line that
/// continues a message or was written to the log without the prefix (such as
/// what a Rust panic hook prints to stderr).
pub fn log_line_database(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let timestamp = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b' ')
        && digits(11..13)
        && b.get(13) == Some(&b':');
    if !timestamp {
        return None;
    }
    let (_, rest) = line.split_once(" [")?;
    let (pid, rest) = rest.split_once("] ")?;
    if pid.is_empty() || !pid.bytes().all(|d| d.is_ascii_digit()) {
        return None;
    }
    rest.split(' ').next()
}

/// The messages of a server log written for database `db`: each its prefixed
/// line followed by its continuation lines (see `log_line_database`).
pub fn log_messages(log: &str, db: &str) -> Vec<String> {
    let mut messages: Vec<String> = vec![];
    let mut ours = false;
    for line in log.lines() {
        match log_line_database(line) {
            Some(name) => {
                ours = name == db;
                if ours {
                    messages.push(line.to_string());
                }
            }
            None if ours => {
                let last = messages.last_mut().expect("a message precedes");
                last.push('\n');
                last.push_str(line);
            }
            None => {}
        }
    }
    messages
}

/// A fresh database with twitch_sync created and pointed at its own simulator.
pub struct TestDb {
    pub name: String,
    pub sim: Simulator,
    pub client: Client,
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A database with the extension, a simulator with `cfg`, the URL settings
    /// pointing at it, and credentials set.
    pub fn new(cfg: SimConfig) -> TestDb {
        Self::bare(cfg).with_credentials()
    }

    /// Sets the simulator's credentials.
    fn with_credentials(mut self) -> TestDb {
        let (id, secret) = (self.sim.client_id(), self.sim.client_secret());
        self.client
            .execute(
                "SELECT twitch_sync.set_credentials($1, $2)",
                &[&id, &secret],
            )
            .expect("set_credentials");
        self
    }

    /// Like `new`, without credentials.
    pub fn bare(cfg: SimConfig) -> TestDb {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Cluster::shared()
            .connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        Self::in_database(&name, cfg)
    }

    /// The extension in an existing database (such as `postgres`, where the
    /// cluster's pg_cron runs), pointed at a new simulator, with credentials set.
    pub fn existing(name: &str, cfg: SimConfig) -> TestDb {
        Self::in_database(name, cfg).with_credentials()
    }

    fn in_database(name: &str, cfg: SimConfig) -> TestDb {
        let cluster = Cluster::shared();
        let sim = Simulator::start(cfg).expect("start simulator");
        // Over https, trust the simulator's CA (the file is readable by the server).
        // (Set only then: an older library may not know the setting.)
        let trust = sim
            .ca_file()
            .map(|p| {
                format!(
                    "ALTER DATABASE {name} SET twitch_sync.extra_ca_file = '{}';",
                    p.display()
                )
            })
            .unwrap_or_default();
        cluster
            .connect("postgres")
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET twitch_sync.helix_url = '{}';
                 ALTER DATABASE {name} SET twitch_sync.auth_url = '{}'; {trust}",
                sim.helix_url(),
                sim.auth_url()
            ))
            .expect("point the database at the simulator");
        let mut client = cluster.connect(name);
        client
            .batch_execute("CREATE EXTENSION twitch_sync")
            .expect("create extension");
        TestDb {
            name: name.to_string(),
            sim,
            client,
        }
    }

    pub fn cluster(&self) -> &'static Cluster {
        Cluster::shared()
    }

    /// The server log's messages for this database so far (see `log_messages`).
    pub fn own_log(&self) -> Vec<String> {
        log_messages(&self.cluster().log(), &self.name)
    }

    /// Another connection to this database.
    pub fn connect(&self) -> Client {
        self.cluster().connect(&self.name)
    }

    /// Tracks the first `n` channels of the simulated world.
    pub fn track_first(&mut self, n: usize) -> Vec<String> {
        let ids: Vec<String> = self
            .sim
            .world(|w| w.channels.iter().take(n).map(|c| c.id.clone()).collect());
        self.client
            .execute(
                "INSERT INTO twitch_sync.channels (broadcaster_id) SELECT unnest($1::text[])",
                &[&ids],
            )
            .expect("track channels");
        ids
    }

    /// `SELECT twitch_sync.run()`, as a JSON document.
    pub fn run(&mut self) -> serde_json::Value {
        let row = self
            .client
            .query_one("SELECT twitch_sync.run()", &[])
            .expect("twitch_sync.run()");
        row.get::<_, serde_json::Value>(0)
    }

    /// `run()` on a connection of its own, on a thread: join it for the
    /// run's document (while this connection does something else).
    pub fn run_in_background(&self) -> std::thread::JoinHandle<serde_json::Value> {
        let mut other = self.connect();
        std::thread::spawn(move || {
            other
                .query_one("SELECT twitch_sync.run()", &[])
                .expect("twitch_sync.run()")
                .get::<_, serde_json::Value>(0)
        })
    }

    /// Asserts that the live streams stored are exactly the simulator's, with the same counts.
    pub fn assert_matches_world(&mut self) {
        let mut want: Vec<(String, i32)> = self.sim.world(|w| {
            w.channels
                .iter()
                .filter_map(|c| {
                    c.live
                        .as_ref()
                        .map(|s| (s.id.clone(), s.viewer_count as i32))
                })
                .collect()
        });
        want.sort();
        let got: Vec<(String, i32)> = self
            .client
            .query("SELECT stream_id, viewer_count FROM twitch_sync.streams WHERE is_live ORDER BY stream_id", &[])
            .expect("read live streams")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, want, "the live streams stored are the simulator's");
    }

    /// The process id of this database's main connection's backend.
    pub fn backend_pid(&mut self) -> i32 {
        self.client
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pg_backend_pid")
            .get(0)
    }

    /// `status().run_in_progress`.
    pub fn run_in_progress(&mut self) -> bool {
        self.client
            .query_one("SELECT run_in_progress FROM twitch_sync.status()", &[])
            .expect("status()")
            .get(0)
    }

    /// Points this database's EventSub worker at the simulator's EventSub
    /// server (started here) and names the database in
    /// `twitch_sync.eventsub_database` (ALTER SYSTEM, reload): the cluster's
    /// worker serves it from then on. `settings` are more `ALTER DATABASE
    /// ... SET` pairs.
    pub fn serve_eventsub(&mut self, settings: &[(&str, &str)]) {
        if self.sim.eventsub_url().is_none() {
            self.sim
                .start_eventsub(helix_sim::eventsub::EventSubConfig::default())
                .expect("start the EventSub server");
        }
        let mut admin = self.cluster().connect("postgres");
        let url = self.sim.eventsub_url().expect("EventSub server");
        let mut sqls = vec![format!(
            "ALTER DATABASE {} SET twitch_sync.eventsub_url = '{url}'",
            self.name
        )];
        for (k, v) in settings {
            sqls.push(format!("ALTER DATABASE {} SET {k} = '{v}'", self.name));
        }
        sqls.push(format!(
            "ALTER SYSTEM SET twitch_sync.eventsub_database = '{}'",
            self.name
        ));
        sqls.push("SELECT pg_reload_conf()".into());
        // one statement at a time: ALTER SYSTEM cannot run in a transaction block
        for sql in sqls {
            admin.batch_execute(&sql).expect(&sql);
        }
    }

    /// The EventSub worker's (state, conduit id, pid), once it has a row.
    pub fn eventsub_worker(&mut self) -> Option<(String, Option<String>, i32)> {
        self.client
            .query_opt(
                "SELECT state, conduit_id, pid FROM twitch_sync.eventsub_worker",
                &[],
            )
            .expect("read twitch_sync.eventsub_worker")
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    pub fn scalar_i64(&mut self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).expect(sql).get::<_, i64>(0)
    }

    /// `twitch_sync.metrics()`, as a scraper reads it.
    pub fn metrics(&mut self) -> String {
        self.client
            .query_one("SELECT twitch_sync.metrics()", &[])
            .expect("twitch_sync.metrics()")
            .get(0)
    }
}

/// A user's data, table by table, as text rows (tables separated by `--`):
/// what an upgrade or a dump and restore must keep exactly.
pub fn user_data(client: &mut Client) -> Vec<String> {
    let queries = [
        "SELECT broadcaster_id || ' ' || coalesce(login, '-') || ' ' || enabled || ' ' || added_at
           FROM twitch_sync.channels ORDER BY 1",
        "SELECT stream_id || ' ' || broadcaster_id || ' ' || is_live || ' ' || viewer_count || ' '
                || peak_viewer_count || ' ' || title || ' ' || coalesce(started_at::text, '-') || ' '
                || coalesce(ended_at::text, '-')
           FROM twitch_sync.streams ORDER BY 1",
        "SELECT stream_id || ' ' || broadcaster_id || ' ' || sampled_at || ' ' || viewer_count
           FROM twitch_sync.viewer_samples ORDER BY 1",
        "SELECT run_id || ' ' || status || ' ' || started_at || ' ' || channels_checked || ' ' || live
                || ' ' || coalesce(error, '-')
           FROM twitch_sync.runs ORDER BY run_id",
        "SELECT client_id || ' ' || client_secret || ' ' || coalesce(access_token, '-')
           FROM twitch_sync.credentials",
        "SELECT runs_ok || ' ' || runs_partial || ' ' || runs_failed || ' '
                || helix_requests || ' ' || streams_started || ' ' || streams_ended
           FROM twitch_sync.counters",
        // runs by status as metrics() counts them (0.1.0 kept skipped runs in
        // counters; 0.2.0 counts their rows and keeps only pruned ones there)
        "SELECT line FROM regexp_split_to_table(twitch_sync.metrics(), '\n') AS line
          WHERE line LIKE 'twitch\\_sync\\_runs\\_total{%' ORDER BY 1",
        "SELECT bucket_limit || ' ' || remaining || ' ' || reset_at FROM twitch_sync.rate_limit",
    ];
    let mut out = Vec::new();
    for q in queries {
        for row in client.query(q, &[]).unwrap_or_else(|e| panic!("{q}: {e}")) {
            out.push(row.get::<_, String>(0));
        }
        out.push("--".into());
    }
    out
}

/// A backend's private memory in KiB (RssAnon): VmRSS would also count the
/// shared buffers it touches, which grow with the tables, not with leaks.
///
/// Panics when it cannot be read (no /proc, the backend gone, a kernel
/// without RssAnon): a memory check must fail then, not pass on a zero.
pub fn backend_private_memory_kib(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot measure backend {pid}'s memory: reading {path} failed: {e}")
    });
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .unwrap_or_else(|| {
            panic!("cannot measure backend {pid}'s memory: {path} has no RssAnon line")
        });
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!("cannot measure backend {pid}'s memory: unexpected line in {path}: {line:?}")
        });
    assert!(
        kib > 0,
        "backend {pid} reports no private memory at all ({line:?}): not a live backend?"
    );
    kib
}

/// Like [`world`], served over HTTPS (HTTP/2 and HTTP/1.1 by ALPN, or
/// HTTP/1.1 only) with a certificate of the simulator's own CA.
pub fn https_world(channels: usize, live_fraction: f64, alpn: helix_sim::tls::Alpn) -> SimConfig {
    SimConfig {
        tls: Some(alpn),
        ..world(channels, live_fraction)
    }
}

/// A simulator config with `channels` channels, `live_fraction` of them live.
pub fn world(channels: usize, live_fraction: f64) -> SimConfig {
    SimConfig {
        world: helix_sim::world::WorldConfig {
            channels,
            live_fraction,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// The message, detail and hint of a failed statement, in one string.
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!(
            "{} | {} | {}",
            d.message(),
            d.detail().unwrap_or_default(),
            d.hint().unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_attributed_by_their_prefix() {
        let log = "2026-11-26 13:27:09.828 UTC [26264] t_1_2 ERROR:  refused\n\
                   \tcontinued\n\
                   2026-11-26 13:27:09.829 UTC [26265]  LOG:  a worker without a database\n\
                   thread '<unnamed>' panicked at src/api.rs:1:1:\n\
                   2026-11-26 13:27:09.830 UTC [26266] t_1_20 LOG:  another database\n\
                   2026-11-26 13:27:09.831 UTC [26264] t_1_2 LOG:  again\n";
        let dbs: Vec<Option<&str>> = log.lines().map(log_line_database).collect();
        assert_eq!(
            dbs,
            vec![
                Some("t_1_2"),
                None,
                Some(""),
                None,
                Some("t_1_20"),
                Some("t_1_2")
            ]
        );
        assert_eq!(
            log_messages(log, "t_1_2"),
            vec![
                "2026-11-26 13:27:09.828 UTC [26264] t_1_2 ERROR:  refused\n\tcontinued",
                "2026-11-26 13:27:09.831 UTC [26264] t_1_2 LOG:  again",
            ]
        );
        assert_eq!(log_messages(log, "t_1").len(), 0);
    }
}
