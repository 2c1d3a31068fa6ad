//! The queue of rolled-back runs: runs whose transaction aborted (a cancel,
//! `statement_timeout`, `pg_terminate_backend`, a shutdown, an error) and so
//! took their own `runs` row with them. The extension keeps them in shared
//! memory (src/rolled_back.rs) until the next run in the same database
//! records them. Plain old data of a fixed size, so that it can live there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rolled-back runs kept at most (over all databases of the server).
pub const CAPACITY: usize = 8;
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

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn at(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0).unsigned_abs())
}

/// The rolled-back runs waiting to be recorded, oldest first.
#[derive(Copy, Clone)]
pub struct Queue {
    entries: [Entry; CAPACITY],
    len: usize,
    /// Runs dropped because the queue was full (over the server), reported
    /// once, by the next database that takes any.
    dropped: u32,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            entries: [Entry::new(0, UNIX_EPOCH, ""); CAPACITY],
            len: 0,
            dropped: 0,
        }
    }
}

impl Queue {
    /// Adds a run; a full queue drops its oldest.
    pub fn push(&mut self, e: Entry) {
        if self.len == CAPACITY {
            self.entries.copy_within(1.., 0);
            self.len -= 1;
            self.dropped = self.dropped.saturating_add(1);
        }
        self.entries[self.len] = e;
        self.len += 1;
    }

    /// Removes and returns `database`'s runs, oldest first, and the count of
    /// runs dropped while the queue was full (0 unless any are returned).
    pub fn take(&mut self, database: u32) -> (Vec<Entry>, u32) {
        let (mine, rest): (Vec<Entry>, Vec<Entry>) = self.entries[..self.len]
            .iter()
            .partition(|e| e.database == database);
        self.entries[..rest.len()].copy_from_slice(&rest);
        self.len = rest.len();
        let dropped = if mine.is_empty() {
            0
        } else {
            std::mem::take(&mut self.dropped)
        };
        (mine, dropped)
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

/// The rows to record for `entries` (from [`Queue::take`]); the last one
/// also says how many were dropped.
pub fn to_record(entries: &[Entry], dropped: u32) -> Vec<RolledBackRun> {
    let last = entries.len().saturating_sub(1);
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let dropped = if i == last && dropped > 0 {
                format!(" ({dropped} more rolled-back runs were not kept: at most {CAPACITY} wait)")
            } else {
                String::new()
            };
            RolledBackRun {
                started_at: at(e.started_us),
                finished_at: at(e.ended_us),
                error: format!("{ERROR_PREFIX}{}{dropped}", e.message()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it_once() {
        let mut q = Queue::default();
        for i in 0..CAPACITY + 2 {
            q.push(Entry::new(
                if i % 2 == 0 { 1 } else { 2 },
                UNIX_EPOCH,
                &i.to_string(),
            ));
        }
        let (mine, dropped) = q.take(1);
        let errors: Vec<String> = to_record(&mine, dropped)
            .into_iter()
            .map(|r| r.error)
            .collect();
        assert_eq!(
            errors,
            [
                "rolled back: 2",
                "rolled back: 4",
                "rolled back: 6",
                "rolled back: 8 (2 more rolled-back runs were not kept: at most 8 wait)"
            ]
        );
        let (theirs, dropped) = q.take(2);
        assert_eq!((theirs.len(), dropped), (CAPACITY / 2, 0));
        assert!(q.take(1).0.is_empty() && q.take(2).0.is_empty());
    }

    #[test]
    fn a_run_keeps_its_times_and_a_long_message_is_cut_between_characters() {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = Entry::new(7, started, &format!("x{}", "é".repeat(MESSAGE_BYTES)));
        assert_eq!(usize::from(e.len), MESSAGE_BYTES - 1);
        let r = &to_record(&[e], 0)[0];
        assert_eq!(r.started_at, started);
        assert!(r.finished_at >= started);
        assert!(r.error.ends_with('é'));
    }
}
