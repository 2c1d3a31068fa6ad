//! Twitch's rate limit: a token bucket per client id that refills
//! continuously, `limit` points per `period`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Bucket {
    limit: u32,
    points: f64,
    per_second: f64,
    last: Instant,
}

/// What the three `Ratelimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub limit: u32,
    pub remaining: u32,
    /// Unix epoch seconds when the bucket is full again.
    pub reset: u64,
}

impl Bucket {
    pub fn new(limit: u32, period: Duration) -> Self {
        Bucket {
            limit,
            points: limit as f64,
            per_second: limit as f64 / period.as_secs_f64().max(0.001),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.points = (self.points + dt * self.per_second).min(self.limit as f64);
    }

    /// Takes `cost` points if the bucket holds them.
    pub fn try_take(&mut self, cost: u32) -> bool {
        self.refill();
        if self.points + 1e-9 >= cost as f64 {
            self.points = (self.points - cost as f64).max(0.0);
            true
        } else {
            false
        }
    }

    /// Empties the bucket (for tests that start from a drained state).
    pub fn drain(&mut self) {
        self.refill();
        self.points = 0.0;
    }

    pub fn snapshot(&mut self) -> Snapshot {
        self.refill();
        let missing = self.limit as f64 - self.points;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Snapshot {
            limit: self.limit,
            remaining: self.points.floor() as u32,
            reset: (now + missing / self.per_second).ceil() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_empty_then_refills_continuously() {
        let mut b = Bucket::new(5, Duration::from_millis(500));
        for _ in 0..5 {
            assert!(b.try_take(1));
        }
        assert!(!b.try_take(1));
        let s = b.snapshot();
        assert_eq!(s.remaining, 0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            s.reset >= now && s.reset <= now + 2,
            "reset {} now {now}",
            s.reset
        );
        std::thread::sleep(Duration::from_millis(120)); // 10 points/s → one point per 100 ms
        assert!(b.try_take(1));
        assert!(!b.try_take(1));
    }
}
