//! The queue of rolled-back runs: runs whose transaction aborted (a cancel,
//! `statement_timeout`, `pg_terminate_backend`, an error) and so took their
//! own `runs` row with them. The extension keeps them in shared memory
//! (src/rolled_back.rs) until the next run in the same database records
//! them. Plain old data of a fixed size, so that it can live there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rolled-back runs kept at most (over all databases of the server).
pub const CAPACITY: usize = 8;
/// Databases whose dropped runs are counted at once; beyond, the tally with
/// the oldest drops gives way (its database, perhaps dropped itself, may
/// never run again to take it).
pub const DROP_TALLIES: usize = 16;
/// Bytes of the ending error kept (cut at a character boundary).
pub const MESSAGE_BYTES: usize = 400;
/// The prefix of a recorded rolled-back run's error (`alert_hint` matches it).
pub const ERROR_PREFIX: &str = "rolled back: ";

/// One rolled-back run.
#[derive(Copy, Clone)]
pub struct Entry {
    database: u32,
    started_us: i64,
    ended_us: i64,
    len: u16,
    message: [u8; MESSAGE_BYTES],
}

impl Entry {
    /// A run of `database` that started at `started_at`, ended now by `message`.
    pub fn new(database: u32, started_at: SystemTime, message: &str) -> Entry {
        let mut len = message.len().min(MESSAGE_BYTES);
        while !message.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; MESSAGE_BYTES];
        bytes[..len].copy_from_slice(&message.as_bytes()[..len]);
        Entry {
            database,
            started_us: micros(started_at),
            ended_us: micros(SystemTime::now()),
            len: len as u16,
            message: bytes,
        }
    }

    fn message(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.message[..usize::from(self.len)])
    }
}

/// Runs of one database dropped because the queue was full: how many, the
/// first one's start and the last one's end.
#[derive(Copy, Clone, Default, Debug, PartialEq)]
pub struct Dropped {
    database: u32,
    count: u32,
    first_started_us: i64,
    last_ended_us: i64,
}

impl Dropped {
    fn add(&mut self, other: Dropped) {
        if self.count == 0 {
            *self = other;
        } else {
            self.count = self.count.saturating_add(other.count);
            self.first_started_us = self.first_started_us.min(other.first_started_us);
            self.last_ended_us = self.last_ended_us.max(other.last_ended_us);
        }
    }
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn at(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0).unsigned_abs())
}

/// The rolled-back runs waiting to be recorded, oldest first, and per
/// database the runs dropped while the queue was full.
#[derive(Copy, Clone)]
pub struct Queue {
    entries: [Entry; CAPACITY],
    len: usize,
    dropped: [Dropped; DROP_TALLIES],
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            entries: [Entry::new(0, UNIX_EPOCH, ""); CAPACITY],
            len: 0,
            dropped: [Dropped::default(); DROP_TALLIES],
        }
    }
}

/// What a run took from the queue for its database, to record (or to give
/// back if its own transaction is rolled back too).
#[derive(Clone, Default)]
pub struct Taken {
    entries: Vec<Entry>,
    dropped: Option<Dropped>,
}

impl Queue {
    /// Adds a run; a full queue drops its oldest, counted for that run's database.
    pub fn push(&mut self, e: Entry) {
        if self.len == CAPACITY {
            let oldest = self.entries[0];
            self.entries.copy_within(1.., 0);
            self.len -= 1;
            self.count_dropped(Dropped {
                database: oldest.database,
                count: 1,
                first_started_us: oldest.started_us,
                last_ended_us: oldest.ended_us,
            });
        }
        self.entries[self.len] = e;
        self.len += 1;
    }

    fn count_dropped(&mut self, d: Dropped) {
        let same = self
            .dropped
            .iter()
            .position(|t| t.count > 0 && t.database == d.database);
        let slot = same.unwrap_or_else(|| {
            // a free tally (count 0) first, else the one whose drops are oldest
            let (i, _) = self
                .dropped
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| (t.count > 0, t.last_ended_us))
                .expect("DROP_TALLIES > 0");
            self.dropped[i] = Dropped::default();
            i
        });
        self.dropped[slot].add(d);
    }

    /// Removes and returns `database`'s runs (oldest first) and its tally of dropped runs.
    pub fn take(&mut self, database: u32) -> Taken {
        let (mine, rest): (Vec<Entry>, Vec<Entry>) = self.entries[..self.len]
            .iter()
            .partition(|e| e.database == database);
        self.entries[..rest.len()].copy_from_slice(&rest);
        self.len = rest.len();
        let dropped = self
            .dropped
            .iter_mut()
            .find(|t| t.count > 0 && t.database == database)
            .map(std::mem::take);
        Taken {
            entries: mine,
            dropped,
        }
    }

    /// Puts back what a run took, when its writes were undone too: in the
    /// order of the runs' ends among the others, so that a full queue still
    /// drops the oldest runs.
    pub fn give_back(&mut self, taken: Taken) {
        if let Some(d) = taken.dropped {
            self.count_dropped(d);
        }
        let mut all: Vec<Entry> = taken.entries;
        all.extend_from_slice(&self.entries[..self.len]);
        all.sort_by_key(|e| e.ended_us);
        self.len = 0;
        for e in all {
            self.push(e);
        }
    }
}

/// A rolled-back run as recorded: `failed`, from its start to its end.
#[derive(Debug, PartialEq)]
pub struct RolledBackRun {
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
    /// `rolled back: <the error that ended it>`
    pub error: String,
}

impl Taken {
    /// The rows to record, oldest first: one for the runs dropped while the
    /// queue was full (if any), then one per kept run.
    pub fn to_record(&self) -> Vec<RolledBackRun> {
        let dropped = self.dropped.map(|d| RolledBackRun {
            started_at: at(d.first_started_us),
            finished_at: at(d.last_ended_us),
            error: if d.count == 1 {
                format!(
                    "{ERROR_PREFIX}1 run of this database was rolled back and not kept (at most \
                     {CAPACITY} wait, over all databases)"
                )
            } else {
                format!(
                    "{ERROR_PREFIX}{} runs of this database between these times were rolled back \
                     and not kept (at most {CAPACITY} wait, over all databases)",
                    d.count
                )
            },
        });
        dropped
            .into_iter()
            .chain(self.entries.iter().map(|e| RolledBackRun {
                started_at: at(e.started_us),
                finished_at: at(e.ended_us),
                error: format!("{ERROR_PREFIX}{}", e.message()),
            }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(t: &Taken) -> Vec<String> {
        t.to_record().into_iter().map(|r| r.error).collect()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it_for_its_database() {
        let mut q = Queue::default();
        // two of database 1's runs, then eight of database 2's: both of 1's dropped
        for (db, m) in [(1, "a"), (1, "b")]
            .into_iter()
            .chain((0..CAPACITY).map(|_| (2, "c")))
        {
            q.push(Entry::new(db, UNIX_EPOCH + Duration::from_secs(7), m));
        }
        let one = q.take(1);
        assert_eq!(
            errors(&one),
            ["rolled back: 2 runs of this database between these times were rolled back and not \
              kept (at most 8 wait, over all databases)"]
        );
        assert_eq!(
            one.to_record()[0].started_at,
            UNIX_EPOCH + Duration::from_secs(7)
        );
        let two = q.take(2);
        assert_eq!(
            errors(&two),
            vec!["rolled back: c"; CAPACITY],
            "nothing of 2's dropped"
        );
        assert!(q.take(1).to_record().is_empty(), "reported once");
    }

    #[test]
    fn what_a_rolled_back_run_took_is_given_back_whole() {
        let mut q = Queue::default();
        for i in 0..CAPACITY + 2 {
            q.push(Entry::new(1, UNIX_EPOCH, &i.to_string()));
        }
        let taken = q.take(1);
        let before = errors(&taken);
        assert_eq!(before.len(), 1 + CAPACITY);
        assert!(before[0].starts_with("rolled back: 2 runs"), "{before:?}");
        q.give_back(taken);
        assert_eq!(errors(&q.take(1)), before);
    }

    #[test]
    fn given_back_runs_keep_their_age_and_a_full_queue_still_drops_the_oldest() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut q = Queue::default();
        for i in 0..3 {
            q.push(Entry::new(1, at(i), &format!("old {i}")));
        }
        let taken = q.take(1);
        // while database 1's run is out with them, database 2 fills the queue
        for i in 0..CAPACITY {
            let mut e = Entry::new(2, at(10 + i as u64), "new");
            e.ended_us += 10_000_000; // ended after database 1's runs
            q.push(e);
        }
        q.give_back(taken);
        assert_eq!(
            errors(&q.take(1)),
            [
                "rolled back: 3 runs of this database between these times were rolled back and \
              not kept (at most 8 wait, over all databases)"
            ],
            "database 1's runs are the oldest: they are the ones dropped"
        );
        assert_eq!(errors(&q.take(2)), vec!["rolled back: new"; CAPACITY]);
        q.push(Entry::new(3, at(0), "x"));
        for _ in 0..CAPACITY {
            q.push(Entry::new(4, at(1), "y"));
        }
        assert_eq!(
            errors(&q.take(3)),
            ["rolled back: 1 run of this database was rolled back and not kept (at most 8 wait, \
              over all databases)"]
        );
    }

    #[test]
    fn with_every_tally_taken_the_oldest_drops_give_way() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut q = Queue::default();
        // databases 100.. each lose one run, the oldest first
        for db in 100..100 + DROP_TALLIES as u32 + 1 {
            q.push(Entry::new(db, at(u64::from(db)), "lost"));
            for _ in 0..CAPACITY {
                q.push(Entry::new(1, at(1_000), "filler"));
            }
            q.take(1);
        }
        assert!(
            q.take(100).to_record().is_empty(),
            "the oldest tally gave way"
        );
        for db in 101..100 + DROP_TALLIES as u32 + 1 {
            assert_eq!(q.take(db).to_record().len(), 1, "database {db}");
        }
    }

    #[test]
    fn a_run_keeps_its_times_and_a_long_message_is_cut_between_characters() {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = Entry::new(7, started, &format!("x{}", "é".repeat(MESSAGE_BYTES)));
        assert_eq!(usize::from(e.len), MESSAGE_BYTES - 1);
        let mut q = Queue::default();
        q.push(e);
        let r = &q.take(7).to_record()[0];
        assert_eq!(r.started_at, started);
        assert!(r.finished_at >= started);
        assert!(r.error.ends_with('é'));
    }
}
