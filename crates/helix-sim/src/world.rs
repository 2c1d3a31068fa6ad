//! The simulated Twitch: channels, which of them are live, and how that
//! changes between polls.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A tiny deterministic PRNG (xorshift64*), so a seed reproduces a world.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

const TITLES: &[&str] = &[
    "Ranked grind until diamond",
    "chill stream — just chatting ☕",
    "\"Speedrun\" attempts: any% (no glitches)",
    "",
    "日本語でゲーム配信 🎮",
    "O'Brien's café: Ça va? ¿Qué tal?",
    "Bobby'); DROP TABLE streams;--",
    "backslash \\ and tab\tin a title",
];

const GAMES: &[(&str, &str)] = &[
    ("509658", "Just Chatting"),
    ("21779", "League of Legends"),
    ("32982", "Grand Theft Auto V"),
    ("", ""),
    ("27471", "Minecraft"),
    ("516575", "VALORANT"),
];

const LANGUAGES: &[&str] = &["en", "de", "ja", "es", "fr", "other"];

#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub id: String,
    pub title: String,
    pub game_id: String,
    pub game_name: String,
    pub language: String,
    pub viewer_count: i64,
    pub started_at: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub login: String,
    pub display_name: String,
    pub live: Option<Stream>,
    /// Listings in which this live stream is left out (Helix's "missing for a minute").
    pub hidden_polls: u32,
}

#[derive(Debug, Clone)]
pub struct WorldConfig {
    pub channels: usize,
    /// First broadcaster id; channel i has id `first_id + i`.
    pub first_id: u64,
    pub live_fraction: f64,
    pub seed: u64,
    /// Per tick, the chance that a live channel ends, an offline one goes
    /// live, or a live one restarts under a new stream id (each).
    pub churn: f64,
    /// Per tick, the chance that a live stream is left out of the next listing.
    pub flicker: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            channels: 100,
            first_id: 100_000_001,
            live_fraction: 0.2,
            seed: 42,
            churn: 0.0,
            flicker: 0.0,
        }
    }
}

pub struct World {
    pub channels: Vec<Channel>,
    by_id: HashMap<String, usize>,
    by_login: HashMap<String, usize>,
    rng: Rng,
    next_stream_id: u64,
    churn: f64,
    flicker: f64,
    /// EventSub hook: live-state changes, recorded only while Some (the
    /// EventSub server turns it on and drains it, see `crate::eventsub`).
    pub changes: Option<ChangeLog>,
}

/// A channel's live state changed: it went live with `stream_id`
/// (`online: true`) or its broadcast `stream_id` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveChange {
    pub broadcaster_id: String,
    pub login: String,
    pub display_name: String,
    pub online: bool,
    pub stream_id: String,
    pub started_at: SystemTime,
}

/// Changes not yet taken, and a wake-up for whoever takes them.
#[derive(Debug, Default)]
pub struct ChangeLog {
    pub changes: Vec<LiveChange>,
    pub notify: std::sync::Arc<tokio::sync::Notify>,
}

pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl World {
    pub fn new(cfg: &WorldConfig) -> Self {
        let mut w = World {
            channels: Vec::with_capacity(cfg.channels),
            by_id: HashMap::with_capacity(cfg.channels),
            by_login: HashMap::with_capacity(cfg.channels),
            rng: Rng::new(cfg.seed),
            next_stream_id: 40_000_000_000 + cfg.seed % 1000 * 1_000_000,
            churn: cfg.churn,
            flicker: cfg.flicker,
            changes: None,
        };
        let live_count = (cfg.channels as f64 * cfg.live_fraction).round() as usize;
        for i in 0..cfg.channels {
            let id = (cfg.first_id + i as u64).to_string();
            let login = format!("sim_channel_{i}");
            let display_name = format!("Sim_Channel_{i}");
            w.by_id.insert(id.clone(), i);
            w.by_login.insert(login.clone(), i);
            w.channels.push(Channel {
                id,
                login,
                display_name,
                live: None,
                hidden_polls: 0,
            });
        }
        // Spread the live channels evenly so every batch of ids has some.
        for k in 0..live_count {
            let i = k * cfg.channels / live_count.max(1);
            w.go_live_at(i);
        }
        w
    }

    pub fn index_of_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
    pub fn index_of_login(&self, login: &str) -> Option<usize> {
        self.by_login.get(&login.to_ascii_lowercase()).copied()
    }

    fn new_stream(&mut self) -> Stream {
        self.next_stream_id += 1 + self.rng.below(7);
        let (game_id, game_name) = GAMES[self.rng.below(GAMES.len() as u64) as usize];
        // Heavy-tailed audience: most streams are small, a few are huge.
        let u = self.rng.unit();
        let viewer_count = (2.0 / (1.0 - u * 0.9999)).powf(1.6) as i64;
        Stream {
            id: self.next_stream_id.to_string(),
            title: TITLES[self.rng.below(TITLES.len() as u64) as usize].to_string(),
            game_id: game_id.to_string(),
            game_name: game_name.to_string(),
            language: LANGUAGES[self.rng.below(LANGUAGES.len() as u64) as usize].to_string(),
            viewer_count,
            started_at: SystemTime::now() - Duration::from_secs(self.rng.below(7200)),
        }
    }

    fn go_live_at(&mut self, i: usize) {
        if self.channels[i].live.is_none() {
            let mut s = self.new_stream();
            s.started_at = SystemTime::now();
            self.channels[i].live = Some(s);
            self.record(i, true);
        }
    }

    /// Ends channel i's broadcast, if any.
    fn end_at(&mut self, i: usize) {
        if self.channels[i].live.is_some() {
            self.record(i, false);
            self.channels[i].live = None;
        }
    }

    /// EventSub hook: notes a live-state change of channel i while recording.
    fn record(&mut self, i: usize, online: bool) {
        let Some(log) = self.changes.as_mut() else {
            return;
        };
        let c = &self.channels[i];
        let Some(s) = c.live.as_ref() else { return };
        log.changes.push(LiveChange {
            broadcaster_id: c.id.clone(),
            login: c.login.clone(),
            display_name: c.display_name.clone(),
            online,
            stream_id: s.id.clone(),
            started_at: s.started_at,
        });
        log.notify.notify_one();
    }

    /// Makes a channel live (no-op if it already is). Returns false for an unknown id.
    pub fn go_live(&mut self, id: &str) -> bool {
        match self.index_of_id(id) {
            Some(i) => {
                self.go_live_at(i);
                true
            }
            None => false,
        }
    }

    pub fn go_offline(&mut self, id: &str) -> bool {
        match self.index_of_id(id) {
            Some(i) => {
                self.end_at(i);
                true
            }
            None => false,
        }
    }

    /// Ends the current broadcast and starts a new one (new stream id and start time),
    /// as a short connection drop does on Twitch.
    pub fn restart(&mut self, id: &str) -> bool {
        match self.index_of_id(id) {
            Some(i) => {
                self.end_at(i);
                self.go_live_at(i);
                true
            }
            None => false,
        }
    }

    pub fn set_viewers(&mut self, id: &str, n: i64) -> bool {
        match self
            .index_of_id(id)
            .and_then(|i| self.channels[i].live.as_mut())
        {
            Some(s) => {
                s.viewer_count = n;
                true
            }
            None => false,
        }
    }

    pub fn set_title(&mut self, id: &str, title: &str) -> bool {
        match self
            .index_of_id(id)
            .and_then(|i| self.channels[i].live.as_mut())
        {
            Some(s) => {
                s.title = title.to_string();
                true
            }
            None => false,
        }
    }

    /// Moves a live stream to another category (game). Returns false when the
    /// channel is unknown or not live.
    pub fn set_game(&mut self, id: &str, game_id: &str, game_name: &str) -> bool {
        match self
            .index_of_id(id)
            .and_then(|i| self.channels[i].live.as_mut())
        {
            Some(s) => {
                s.game_id = game_id.to_string();
                s.game_name = game_name.to_string();
                true
            }
            None => false,
        }
    }

    /// Sets a live stream's language. Returns false when the channel is
    /// unknown or not live.
    pub fn set_language(&mut self, id: &str, language: &str) -> bool {
        match self
            .index_of_id(id)
            .and_then(|i| self.channels[i].live.as_mut())
        {
            Some(s) => {
                s.language = language.to_string();
                true
            }
            None => false,
        }
    }

    /// Live streams in a category (and, if given, a language).
    pub fn live_in(&self, game_id: &str, language: Option<&str>) -> usize {
        self.channels
            .iter()
            .filter_map(|c| c.live.as_ref())
            .filter(|s| s.game_id == game_id && language.is_none_or(|l| s.language == l))
            .count()
    }

    /// Leaves a live stream out of the next `polls` listings that would include it.
    pub fn hide(&mut self, id: &str, polls: u32) -> bool {
        match self.index_of_id(id) {
            Some(i) => {
                self.channels[i].hidden_polls = polls;
                true
            }
            None => false,
        }
    }

    pub fn stream_of(&self, id: &str) -> Option<&Stream> {
        self.index_of_id(id)
            .and_then(|i| self.channels[i].live.as_ref())
    }

    pub fn live_count(&self) -> usize {
        self.channels.iter().filter(|c| c.live.is_some()).count()
    }

    /// Time passes: viewer counts drift, and with churn broadcasts end, start and restart.
    pub fn tick(&mut self) {
        for i in 0..self.channels.len() {
            let (churn, flicker) = (self.churn, self.flicker);
            if self.channels[i].live.is_some() {
                if self.rng.chance(churn) {
                    self.end_at(i);
                    continue;
                }
                if self.rng.chance(churn) {
                    self.end_at(i);
                    self.go_live_at(i);
                    continue;
                }
                if self.rng.chance(flicker) {
                    self.channels[i].hidden_polls = 1;
                }
                let r = self.rng.unit();
                let s = self.channels[i].live.as_mut().expect("checked live");
                let delta = ((s.viewer_count as f64) * (r - 0.5) * 0.2).round() as i64;
                s.viewer_count = (s.viewer_count + delta + if r > 0.5 { 1 } else { -1 }).max(0);
            } else if self.rng.chance(churn) {
                self.go_live_at(i);
            }
        }
    }

    pub fn stream_json(&self, i: usize) -> Value {
        let c = &self.channels[i];
        let s = c.live.as_ref().expect("only live channels are listed");
        json!({
            "id": s.id,
            "user_id": c.id,
            "user_login": c.login,
            "user_name": c.display_name,
            "game_id": s.game_id,
            "game_name": s.game_name,
            "type": "live",
            "title": s.title,
            "tags": ["English"],
            "viewer_count": s.viewer_count,
            "started_at": rfc3339(s.started_at),
            "language": s.language,
            "thumbnail_url": format!("https://static-cdn.jtvnw.net/previews-ttv/live_user_{}-{{width}}x{{height}}.jpg", c.login),
            "tag_ids": [],
            "is_mature": false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_with_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn world_has_requested_live_fraction_and_is_reproducible() {
        let cfg = WorldConfig {
            channels: 1000,
            live_fraction: 0.2,
            ..Default::default()
        };
        let a = World::new(&cfg);
        let b = World::new(&cfg);
        assert_eq!(a.live_count(), 200);
        let ids_a: Vec<_> = a
            .channels
            .iter()
            .filter_map(|c| c.live.clone())
            .map(|s| s.id)
            .collect();
        let ids_b: Vec<_> = b
            .channels
            .iter()
            .filter_map(|c| c.live.clone())
            .map(|s| s.id)
            .collect();
        assert_eq!(ids_a, ids_b);
    }

    #[test]
    fn restart_changes_stream_id_and_tick_drifts_counts() {
        let mut w = World::new(&WorldConfig {
            channels: 10,
            live_fraction: 1.0,
            ..Default::default()
        });
        let id = w.channels[0].id.clone();
        let before = w.stream_of(&id).unwrap().id.clone();
        assert!(w.restart(&id));
        assert_ne!(w.stream_of(&id).unwrap().id, before);
        let counts: Vec<i64> = w
            .channels
            .iter()
            .map(|c| c.live.as_ref().unwrap().viewer_count)
            .collect();
        w.tick();
        let after: Vec<i64> = w
            .channels
            .iter()
            .map(|c| c.live.as_ref().unwrap().viewer_count)
            .collect();
        assert_ne!(counts, after);
        assert!(after.iter().all(|&n| n >= 0));
    }

    #[test]
    fn churn_changes_who_is_live() {
        let mut w = World::new(&WorldConfig {
            channels: 1000,
            live_fraction: 0.5,
            churn: 0.2,
            ..Default::default()
        });
        let before: Vec<bool> = w.channels.iter().map(|c| c.live.is_some()).collect();
        w.tick();
        let after: Vec<bool> = w.channels.iter().map(|c| c.live.is_some()).collect();
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!(changed > 50, "changed {changed}");
    }
}
