//! Discovery by category: which directories (`GET /helix/streams?game_id=…`)
//! a run walks and how many pages each may take, and how a walk's pages are
//! merged into observations.
//!
//! Rules, written once here:
//! - A tracked category is walked with `game_id`, its language filter if any,
//!   `type=live` and `first=100`, following `pagination.cursor`. A walk takes at
//!   most `ceil(max_channels / 100)` pages (its category's `max_channels`
//!   most-watched live streams: Helix lists by viewer count, most first), never
//!   more than [`MAX_WALK_PAGES`]. It stops early on the last page (no
//!   cursor), an empty page, a cursor seen before in the walk, or a failed
//!   page (after the usual retries); the pages read before a failure are kept.
//! - Without a budget (fixed polling) a category whose cap is reached is not
//!   walked: every tracked channel is checked by id anyway, so the walk could
//!   add nothing.
//! - With a budget (adaptive polling) every category is walked — its pages
//!   refresh tracked channels that are live in it — and its pages count
//!   against the run's budget like id batches: directories get at most half
//!   of it, shared out one page at a time across categories (fair when short),
//!   each at most its estimate: twice its last walk's pages plus one (a growing
//!   category doubles its allowance per run), or its cap's pages when it was
//!   never walked. The id batches get what the directories do not reserve.
//! - A directory entry is an observation of a live stream, nothing more:
//!   absence from a directory is **not** "offline" (the channel may have ended
//!   or switched category or language). Only id batches end streams.
//! - Directories instead of id batches (adaptive polling): a directory's
//!   listing is a complete check of a *live* channel (live, its stream id,
//!   count, title, category), so it counts as the channel's check. A live
//!   channel whose stream is in a category this run walks (in the walk's
//!   language) is left out of the id batches while its last check is younger
//!   than its interval (or the run period, if longer) plus half a run period
//!   ([`covered_by_walks`]) — but only
//!   if the walk can be expected to list it ([`Reach`], from the category's
//!   last walk): a walk that ended `complete` saw the whole directory, so it
//!   reaches every live stream in it; one that ended `truncated` (its page
//!   allowance ran out) listed only the streams down to its *floor*, the
//!   lowest viewer count on its last page (Helix lists by viewer count, most
//!   first), so it reaches the channels whose stored count is above that
//!   floor (not at it: Twitch orders equal counts as it likes, so a channel
//!   tied with the last page's least watched may rank on the next page, or
//!   below the cap); a category never walked, or whose last walk stopped early
//!   (`failed`, `empty_page`, `cursor_loop`: it stopped at no predictable
//!   rank), or that this run may walk in fewer pages than its last walk took
//!   (a short budget), reaches nothing. A channel below the floor is checked
//!   by id at its interval, as without discovery. If the walk does not list a
//!   channel it reaches (it ended, switched category or language, or its
//!   count fell below the walk's pages), its last check ages past that bound
//!   and the next run checks it by id — which ends it if it is offline. A
//!   stream's end is thus seen at most one run period later than with id
//!   batches alone (which check it from its interval less half a period on:
//!   the bound is one period later; a whole period made it two, on a
//!   regular schedule by a tie).
//! - Entries of broadcasters that this run checks by id are dropped (the id
//!   batch is the authority for them this run: one observation per channel);
//!   entries outside the asked category or language are dropped and counted
//!   (`off_filter`); a broadcaster listed twice keeps its later-started stream;
//!   a stream id listed by an earlier directory entry of this run for another
//!   broadcaster is dropped (`stream_id_conflict`); a broadcaster named by an
//!   entry dropped for a bad stream id is left as it was.

use crate::adaptive::{PollPolicy, PolledChannel};
use crate::config::PAGE_SIZE;
use crate::streams::{EntryStats, LiveStream, StreamClaims, StreamsPage};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The most pages one walk may take, whatever its cap (100,000 streams).
pub const MAX_WALK_PAGES: u32 = 1000;

/// A tracked category as a run reads it (`twitch_sync.categories`).
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// 1–20 ASCII digits.
    pub game_id: String,
    /// An ISO 639-1 code (`en`), or `other`; None: every language.
    pub language: Option<String>,
    /// How many tracked channels this category may have added.
    pub max_channels: u32,
    /// How many more it may add now (`max_channels` minus the channels it added
    /// that are still in `twitch_sync.channels`).
    pub room: u32,
    /// Pages its last walk took (None: never walked).
    pub last_pages: Option<u32>,
    /// How its last walk ended (None: never walked).
    pub last_end: Option<WalkEnd>,
    /// Its last walk's floor: the lowest viewer count on its last page, when
    /// it ended [`WalkEnd::Truncated`] (None otherwise).
    pub last_floor: Option<u32>,
}

/// Which live streams of its category a walk can be expected to list, judged
/// from the category's last walk (see the module's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// None can be counted on: never walked, the last walk stopped early, or
    /// this walk may take fewer pages than the last one did.
    Nothing,
    /// Every live stream: the last walk saw the whole directory.
    All,
    /// Live streams with more viewers than this (the last walk's floor: a
    /// stream tied with it may rank past the walk's pages).
    Above(u32),
}

impl Reach {
    /// What a walk of `max_pages` pages of `c` can be expected to list.
    pub fn of(c: &Category, max_pages: u32) -> Reach {
        let Some(last_pages) = c.last_pages else {
            return Reach::Nothing;
        };
        if max_pages < last_pages {
            // A shorter walk than the one measured: its floor is higher, unknown.
            return Reach::Nothing;
        }
        match (c.last_end, c.last_floor) {
            (Some(WalkEnd::Complete), _) => Reach::All,
            (Some(WalkEnd::Truncated), Some(floor)) => Reach::Above(floor),
            _ => Reach::Nothing,
        }
    }

    /// Whether a live stream with `viewers` viewers is within reach.
    pub fn includes(self, viewers: u32) -> bool {
        match self {
            Reach::Nothing => false,
            Reach::All => true,
            Reach::Above(floor) => viewers > floor,
        }
    }
}

/// One directory walk of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryWalk {
    pub game_id: String,
    pub language: Option<String>,
    /// Pages this walk may take (at least 1).
    pub max_pages: u32,
    /// The live streams it can be expected to list ([`covered_by_walks`]).
    pub reach: Reach,
}

/// Pages that list a category's `max_channels` most-watched streams.
pub fn pages_for_cap(max_channels: u32) -> u32 {
    max_channels
        .div_ceil(PAGE_SIZE as u32)
        .clamp(1, MAX_WALK_PAGES)
}

/// The walks of a run and the pages they reserve.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WalkPlan {
    pub walks: Vec<DirectoryWalk>,
    /// Pages reserved for the walks (the sum of their `max_pages`).
    pub pages: usize,
    /// Categories not walked this run: cap reached (fixed polling) or no
    /// budget left for them (adaptive polling).
    pub skipped: usize,
    /// Live channels left to the walks instead of id batches (set by the
    /// caller from [`covered_by_walks`]).
    pub covered: usize,
}

/// Which categories a run walks and how many pages each may take.
/// `budget`: the run's request budget under adaptive polling (None: fixed
/// polling, no budget but the rate limiter). See the module's rules.
pub fn plan_walks(categories: &[Category], budget: Option<usize>) -> WalkPlan {
    let walk = |c: &Category, max_pages: u32| DirectoryWalk {
        game_id: c.game_id.clone(),
        language: c.language.clone(),
        max_pages,
        reach: Reach::of(c, max_pages),
    };
    let Some(budget) = budget else {
        let walks: Vec<DirectoryWalk> = categories
            .iter()
            .filter(|c| c.room > 0)
            .map(|c| walk(c, pages_for_cap(c.max_channels)))
            .collect();
        return WalkPlan {
            pages: walks.iter().map(|w| w.max_pages as usize).sum(),
            skipped: categories.len() - walks.len(),
            walks,
            covered: 0,
        };
    };
    let share = budget / 2;
    let estimate = |c: &Category| -> u32 {
        let cap = pages_for_cap(c.max_channels);
        c.last_pages
            .map_or(cap, |p| p.saturating_mul(2).saturating_add(1).min(cap))
            .max(1)
    };
    let wants: Vec<u32> = categories.iter().map(estimate).collect();
    let mut got = vec![0u32; categories.len()];
    let mut left = share;
    // One page at a time, round robin: when short, every category gets about
    // the same number of pages (and each its first before any its second),
    // in the order given: the caller puts the one walked longest ago first,
    // so that the categories left without a page take their turn next run.
    loop {
        let mut gave = false;
        for (g, w) in got.iter_mut().zip(&wants) {
            if left == 0 {
                break;
            }
            if *g < *w {
                *g += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave || left == 0 {
            break;
        }
    }
    let walks: Vec<DirectoryWalk> = categories
        .iter()
        .zip(&got)
        .filter(|(_, g)| **g > 0)
        .map(|(c, g)| walk(c, *g))
        .collect();
    WalkPlan {
        pages: walks.iter().map(|w| w.max_pages as usize).sum(),
        skipped: categories.len() - walks.len(),
        walks,
        covered: 0,
    }
}

/// Which channels a run leaves to its directory walks instead of id batches
/// (see the module's rules): live, with their stream in a walked category and
/// language (`live_in[i]`: the stored live stream's game id and language; the
/// caller gives None for a live stream whose last id check missed it, since a
/// walk that does not list it cannot confirm the end that
/// `offline_after_misses` > 1 waits for), within that walk's [`Reach`] by
/// their stored viewer count, and last checked less than their interval (or
/// the run period, if longer: a channel the last run's walk listed is a
/// period old) plus half a run period ago.
pub fn covered_by_walks(
    policy: &PollPolicy,
    channels: &[PolledChannel],
    live_in: &[Option<(String, String)>],
    walks: &[DirectoryWalk],
    now: f64,
    run_period: f64,
) -> Vec<bool> {
    let period = run_period.max(0.0);
    channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let Some((game, language)) = live_in.get(i).and_then(Option::as_ref) else {
                return false;
            };
            let Some(viewers) = c.live_viewers else {
                return false;
            };
            let walked = walks.iter().any(|w| {
                in_directory(&w.game_id, w.language.as_deref(), game, language)
                    && w.reach.includes(viewers)
            });
            let bound = policy.interval(policy.class(c), c.priority).max(period) + period / 2.0;
            walked && c.checked_at.is_some_and(|t| now - t < bound)
        })
        .collect()
}

/// Whether a stream in category `game` and language `stream_language` is in
/// the directory a walk of `game_id` lists (in `language`; None: every one).
fn in_directory(game_id: &str, language: Option<&str>, game: &str, stream_language: &str) -> bool {
    game == game_id && language.is_none_or(|l| l.eq_ignore_ascii_case(stream_language))
}

/// How a walk ended (serialized as [`WalkEnd::as_str`] spells it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// The last page (no cursor): the walk saw the whole directory.
    Complete,
    /// Its page allowance ran out with more pages left.
    Truncated,
    /// A page with no entries (but a cursor): stopped there.
    EmptyPage,
    /// A cursor seen before in this walk: stopped there.
    CursorLoop,
    /// A page failed (after retries): the pages before it are kept.
    Failed,
}

impl Serialize for WalkEnd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl WalkEnd {
    /// Its name, as run()'s document and `tracked_categories.last_end` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WalkEnd::Complete => "complete",
            WalkEnd::Truncated => "truncated",
            WalkEnd::EmptyPage => "empty_page",
            WalkEnd::CursorLoop => "cursor_loop",
            WalkEnd::Failed => "failed",
        }
    }

    /// The end named `name` (as [`WalkEnd::as_str`] spells it).
    pub fn parse(name: &str) -> Option<WalkEnd> {
        [
            WalkEnd::Complete,
            WalkEnd::Truncated,
            WalkEnd::EmptyPage,
            WalkEnd::CursorLoop,
            WalkEnd::Failed,
        ]
        .into_iter()
        .find(|e| e.as_str() == name)
    }
}

/// What one walk saw and did, for the run's result document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WalkReport {
    pub game_id: String,
    pub language: Option<String>,
    /// Get Streams requests of this walk that got an answer page (retries not counted).
    pub pages: u32,
    pub end: WalkEnd,
    /// When it ended [`WalkEnd::Truncated`]: the lowest viewer count among the
    /// entries of its last page in the asked category and language (the walk
    /// listed no stream below it); None otherwise.
    pub floor_viewers: Option<u32>,
    /// Live streams kept (one per broadcaster, checked), before the database
    /// decides which are new, tracked, or over the cap.
    pub streams: u32,
    /// Entries dropped: broadcasters this run checks by id.
    pub in_batches: u32,
    /// Entries dropped: not in the asked category or language.
    pub off_filter: u32,
    /// Channels this walk added to the tracked set (filled in by the database layer).
    pub discovered: u32,
    /// Tracked channels this walk's entries refreshed (filled in by the database layer).
    pub refreshed: u32,
    /// New channels left out because the category's cap was reached (filled in by the database layer).
    pub capped: u32,
    /// The failed page's error, secrets redacted.
    pub error: Option<String>,
}

/// One walk's merged, checked answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedDirectory {
    /// Live streams, one per broadcaster, in the order Helix first listed them
    /// (viewer count, most first): the cap admits new channels in this order.
    pub live: Vec<LiveStream>,
    pub in_batches: u32,
    pub off_filter: u32,
    pub stats: EntryStats,
}

/// Merges a walk's checked pages (see the module's rules). `in_batches`:
/// broadcasters this run checks by id. `claims`: stream ids listed so far by
/// directories in this run, and for whom (shared by the run's walks, not with
/// its id batches: the transition layer refuses a stream id stored under
/// another broadcaster, whichever source wrote it first).
pub fn merge_directory(
    game_id: &str,
    language: Option<&str>,
    pages: Vec<StreamsPage>,
    in_batches: &HashSet<String>,
    claims: &mut StreamClaims,
) -> MergedDirectory {
    let mut stats = EntryStats::default();
    let (mut n_in_batches, mut off_filter) = (0, 0);
    let mut rejected: HashSet<String> = HashSet::new();
    // entries of channels checked by id, once each (a repeat is a duplicate,
    // as for the others: it counted in `in_batches` and `last_streams` again)
    let mut seen_in_batches: HashSet<(String, String)> = HashSet::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_broadcaster: HashMap<String, LiveStream> = HashMap::new();
    for page in pages {
        stats.add(&page.stats);
        rejected.extend(page.rejected_broadcasters);
        for s in page.streams {
            if !in_directory(game_id, language, &s.game_id, &s.language) {
                off_filter += 1;
                continue;
            }
            if in_batches.contains(&s.broadcaster_id) {
                if seen_in_batches.insert((s.broadcaster_id, s.stream_id)) {
                    n_in_batches += 1;
                } else {
                    stats.duplicates += 1;
                }
                continue;
            }
            match claims.get(&s.stream_id) {
                Some(owner) if *owner != s.broadcaster_id => {
                    stats.bad.stream_id_conflict += 1;
                    continue;
                }
                Some(_) => {
                    stats.duplicates += 1;
                    continue;
                }
                None => {
                    claims.insert(s.stream_id.clone(), s.broadcaster_id.clone());
                }
            }
            match by_broadcaster.get(&s.broadcaster_id) {
                Some(prev) if prev.started_at >= s.started_at => {}
                Some(_) => {
                    by_broadcaster.insert(s.broadcaster_id.clone(), s);
                }
                None => {
                    order.push(s.broadcaster_id.clone());
                    by_broadcaster.insert(s.broadcaster_id.clone(), s);
                }
            }
        }
    }
    let live = order
        .into_iter()
        .filter(|b| !rejected.contains(b))
        .filter_map(|b| by_broadcaster.remove(&b))
        .collect();
    MergedDirectory {
        live,
        in_batches: n_in_batches,
        off_filter,
        stats,
    }
}

/// A walk's floor: the lowest viewer count among the entries of `last_page`
/// (the last page it read) in the asked category and language; None when it
/// holds none.
pub fn walk_floor(game_id: &str, language: Option<&str>, last_page: &StreamsPage) -> Option<u32> {
    last_page
        .streams
        .iter()
        .filter(|s| in_directory(game_id, language, &s.game_id, &s.language))
        .map(|s| s.viewer_count.max(0) as u32)
        .min()
}

/// What the run's walks add up to: the `discovery` key of run()'s document.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DiscoveryReport {
    /// Tracked categories.
    pub categories: usize,
    /// Categories not walked this run (cap reached with fixed polling, or no budget left).
    pub skipped: usize,
    /// Pages reserved for the walks (adaptive polling: out of the budget).
    pub pages_planned: usize,
    /// Live channels left to the walks instead of id batches (adaptive polling).
    pub covered: usize,
    /// Directory pages read, over all walks.
    pub pages: u32,
    pub streams: u32,
    pub discovered: u32,
    pub refreshed: u32,
    pub capped: u32,
    pub walks: Vec<WalkReport>,
}

impl DiscoveryReport {
    pub fn add(&mut self, w: WalkReport) {
        self.pages += w.pages;
        self.streams += w.streams;
        self.discovered += w.discovered;
        self.refreshed += w.refreshed;
        self.capped += w.capped;
        self.walks.push(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::parse_streams_page_at;
    use serde_json::json;
    use std::time::SystemTime;

    fn cat(game: &str, max: u32, room: u32, last: Option<u32>) -> Category {
        Category {
            game_id: game.into(),
            language: None,
            max_channels: max,
            room,
            last_pages: last,
            last_end: last.map(|_| WalkEnd::Complete),
            last_floor: None,
        }
    }

    #[test]
    fn a_walk_takes_the_pages_of_its_cap() {
        assert_eq!(pages_for_cap(1), 1);
        assert_eq!(pages_for_cap(100), 1);
        assert_eq!(pages_for_cap(101), 2);
        assert_eq!(pages_for_cap(5000), 50);
        assert_eq!(pages_for_cap(0), 1);
        assert_eq!(pages_for_cap(u32::MAX), MAX_WALK_PAGES);
    }

    #[test]
    fn fixed_polling_walks_every_category_with_room() {
        let plan = plan_walks(
            &[
                cat("1", 5000, 5000, None),
                cat("2", 300, 0, Some(3)),
                cat("3", 150, 1, Some(1)),
            ],
            None,
        );
        let pages: Vec<(String, u32)> = plan
            .walks
            .iter()
            .map(|w| (w.game_id.clone(), w.max_pages))
            .collect();
        assert_eq!(pages, vec![("1".into(), 50), ("3".into(), 2)]);
        assert_eq!((plan.pages, plan.skipped), (52, 1));
    }

    #[test]
    fn adaptive_polling_spends_at_most_half_the_budget_fairly() {
        // Plenty of budget: each gets its estimate (cap pages when never walked,
        // else twice the last walk plus one, within the cap).
        let cats = [
            cat("1", 5000, 0, None),
            cat("2", 5000, 10, Some(3)),
            cat("3", 200, 10, Some(9)),
        ];
        let plan = plan_walks(&cats, Some(760));
        let pages: Vec<u32> = plan.walks.iter().map(|w| w.max_pages).collect();
        assert_eq!(pages, vec![50, 7, 2], "a full category is still walked");
        assert_eq!(plan.pages, 59);
        // Short: half of 20 = 10 pages, round robin.
        let plan = plan_walks(&cats, Some(20));
        let pages: Vec<u32> = plan.walks.iter().map(|w| w.max_pages).collect();
        assert_eq!(pages, vec![4, 4, 2]);
        assert_eq!(plan.pages, 10);
        // Shorter than one page each: the first categories get one, the rest wait.
        let plan = plan_walks(&cats, Some(5));
        assert_eq!(plan.pages, 2);
        assert_eq!(plan.skipped, 1);
        assert_eq!(plan_walks(&cats, Some(1)).pages, 0);
        assert_eq!(plan_walks(&[], Some(760)), WalkPlan::default());
    }

    #[test]
    fn the_budget_is_never_exceeded_over_many_shapes() {
        let mut rng = crate::rng::SplitMix64(7);
        for _ in 0..2000 {
            let n = (rng.next_u64() % 12) as usize;
            let cats: Vec<Category> = (0..n)
                .map(|i| {
                    let max = 1 + (rng.next_u64() % 20_000) as u32;
                    let last = if rng.next_u64().is_multiple_of(3) {
                        None
                    } else {
                        Some((rng.next_u64() % 300) as u32)
                    };
                    cat(&i.to_string(), max, (rng.next_u64() % 3) as u32, last)
                })
                .collect();
            let budget = (rng.next_u64() % 1000) as usize;
            let plan = plan_walks(&cats, Some(budget));
            assert!(plan.pages <= budget / 2, "{plan:?} over {budget}");
            assert_eq!(plan.walks.len() + plan.skipped, n);
            for w in &plan.walks {
                let c = cats.iter().find(|c| c.game_id == w.game_id).unwrap();
                assert!(w.max_pages >= 1 && w.max_pages <= pages_for_cap(c.max_channels));
            }
            // Fair: a category held below its estimate got at least the most any got, less one.
            let hi = plan.walks.iter().map(|w| w.max_pages).max().unwrap_or(0);
            for c in &cats {
                let est = c
                    .last_pages
                    .map_or(pages_for_cap(c.max_channels), |p| {
                        (p * 2 + 1).min(pages_for_cap(c.max_channels))
                    })
                    .max(1);
                let got = plan
                    .walks
                    .iter()
                    .find(|w| w.game_id == c.game_id)
                    .map_or(0, |w| w.max_pages);
                assert!(got == est || got + 1 >= hi, "{plan:?}");
            }
        }
    }

    #[test]
    fn live_channels_in_walked_directories_wait_for_the_walk_at_most_one_period() {
        let policy = PollPolicy {
            hot_viewers: 1000,
            hot_interval: 60.0,
            live_interval: 120.0,
            ..PollPolicy::default()
        };
        let ch = |viewers: Option<u32>, checked: Option<f64>| PolledChannel {
            live_viewers: viewers,
            covered: false,
            priority: 0,
            checked_at: checked,
        };
        let now = 10_000.0;
        let channels = [
            ch(Some(5000), Some(now - 60.0)), // hot, listed by the last run
            ch(Some(5000), Some(now - 89.0)), // hot, not listed: still within 60 + 60/2
            ch(Some(5000), Some(now - 90.0)), // hot, not listed: checked by id now
            ch(Some(10), Some(now - 149.0)),  // live: 120 + 60/2
            ch(Some(10), Some(now - 60.0)),   // live, but in another language
            ch(Some(10), Some(now - 60.0)),   // live in a category not walked
            ch(None, Some(now - 60.0)),       // offline: never left to a walk
            ch(Some(10), None),               // never checked
        ];
        let g = |game: &str, lang: &str| Some((game.to_string(), lang.to_string()));
        let live_in = [
            g("1", "en"),
            g("1", "en"),
            g("1", "en"),
            g("2", "de"),
            g("2", "fr"),
            g("3", "en"),
            g("1", "en"),
            g("1", "en"),
        ];
        let walks = [
            DirectoryWalk {
                game_id: "1".into(),
                language: None,
                max_pages: 1,
                reach: Reach::All,
            },
            DirectoryWalk {
                game_id: "2".into(),
                language: Some("DE".into()),
                max_pages: 1,
                reach: Reach::All,
            },
        ];
        let covered = covered_by_walks(&policy, &channels, &live_in, &walks, now, 60.0);
        assert_eq!(
            covered,
            vec![true, true, false, true, false, false, false, false]
        );
        assert!(
            covered_by_walks(&policy, &channels, &live_in, &[], now, 60.0)
                .iter()
                .all(|c| !c)
        );
        // runs further apart than the interval: a channel the last run's walk
        // listed (a period ago) is still left to the walk, one listed two
        // runs ago is not (hot: 60 s, runs 150 s apart: 150 + 75)
        let two = [
            ch(Some(5000), Some(now - 150.0)),
            ch(Some(5000), Some(now - 225.0)),
        ];
        assert_eq!(
            covered_by_walks(&policy, &two, &live_in[..2], &walks, now, 150.0),
            vec![true, false]
        );
    }

    #[test]
    fn a_walk_reaches_what_its_category_s_last_walk_listed() {
        let c = |pages: Option<u32>, end: Option<WalkEnd>, floor: Option<u32>| Category {
            last_pages: pages,
            last_end: end,
            last_floor: floor,
            ..cat("1", 5000, 0, None)
        };
        use WalkEnd::*;
        // Never walked: nothing can be counted on.
        assert_eq!(Reach::of(&c(None, None, None), 50), Reach::Nothing);
        // Complete: the whole directory; truncated: down to its floor.
        assert_eq!(Reach::of(&c(Some(3), Some(Complete), None), 7), Reach::All);
        assert_eq!(
            Reach::of(&c(Some(3), Some(Truncated), Some(40)), 3),
            Reach::Above(40)
        );
        // A truncated walk without a floor (its last page held no entry of the category).
        assert_eq!(
            Reach::of(&c(Some(3), Some(Truncated), None), 7),
            Reach::Nothing
        );
        // Stopped early: at no predictable rank.
        for end in [Failed, EmptyPage, CursorLoop] {
            assert_eq!(
                Reach::of(&c(Some(3), Some(end), Some(40)), 7),
                Reach::Nothing
            );
        }
        // A shorter walk than the last one (short budget): its floor is unknown.
        assert_eq!(
            Reach::of(&c(Some(3), Some(Complete), None), 2),
            Reach::Nothing
        );
        assert_eq!(
            Reach::of(&c(Some(3), Some(Truncated), Some(40)), 2),
            Reach::Nothing
        );
        // plan_walks attaches it to each walk.
        let plan = plan_walks(&[c(Some(1), Some(Truncated), Some(40))], Some(760));
        assert_eq!(plan.walks[0].reach, Reach::Above(40));
        let plan = plan_walks(&[c(Some(4), Some(Truncated), Some(40))], Some(6));
        assert_eq!(plan.walks[0].max_pages, 3);
        assert_eq!(plan.walks[0].reach, Reach::Nothing);
    }

    #[test]
    fn only_channels_a_truncated_walk_reaches_are_left_to_it() {
        let policy = PollPolicy {
            hot_viewers: 1000,
            hot_interval: 60.0,
            live_interval: 120.0,
            ..PollPolicy::default()
        };
        let now = 10_000.0;
        let ch = |viewers: u32| PolledChannel {
            live_viewers: Some(viewers),
            covered: false,
            priority: 0,
            checked_at: Some(now - 60.0),
        };
        // Ranked below the walk's pages, tied with its floor, above it, hot.
        let channels = [ch(3), ch(40), ch(41), ch(5000)];
        let live_in = vec![Some(("1".to_string(), "en".to_string())); channels.len()];
        let walk = |reach: Reach| DirectoryWalk {
            game_id: "1".into(),
            language: None,
            max_pages: 1,
            reach,
        };
        let covered = |reach: Reach| {
            covered_by_walks(&policy, &channels, &live_in, &[walk(reach)], now, 60.0)
        };
        assert_eq!(
            covered(Reach::Above(40)),
            vec![false, false, true, true],
            "a channel below the floor, or tied with it, is checked by id"
        );
        assert_eq!(
            covered(Reach::All),
            vec![true; 4],
            "a complete walk lists them all"
        );
        assert_eq!(covered(Reach::Nothing), vec![false; 4]);
    }

    #[test]
    fn a_walk_s_floor_is_the_least_watched_entry_of_its_category_on_its_last_page() {
        let e = |user: &str, game: &str, lang: &str, viewers: i64| {
            let mut v = entry(
                user,
                &format!("9{user}"),
                game,
                lang,
                "2026-01-01T00:00:00Z",
            );
            v["viewer_count"] = json!(viewers);
            v
        };
        let p = page(json!([
            e("1", "77", "en", 90),
            e("2", "77", "de", 50),
            e("3", "78", "en", 1), // another category: not the walk's
            e("4", "77", "en", 60),
        ]));
        assert_eq!(walk_floor("77", None, &p), Some(50));
        assert_eq!(walk_floor("77", Some("EN"), &p), Some(60));
        assert_eq!(walk_floor("79", None, &p), None);
        assert_eq!(walk_floor("77", None, &page(json!([]))), None);
    }

    #[test]
    fn walk_ends_are_named_as_serde_names_them() {
        for end in [
            WalkEnd::Complete,
            WalkEnd::Truncated,
            WalkEnd::EmptyPage,
            WalkEnd::CursorLoop,
            WalkEnd::Failed,
        ] {
            assert_eq!(serde_json::to_value(end).unwrap(), json!(end.as_str()));
            assert_eq!(WalkEnd::parse(end.as_str()), Some(end));
        }
        assert_eq!(WalkEnd::parse("bogus"), None);
    }

    fn page(entries: serde_json::Value) -> StreamsPage {
        let body = json!({"data": entries, "pagination": {}}).to_string();
        parse_streams_page_at(body.as_bytes(), SystemTime::now()).unwrap()
    }

    fn entry(user: &str, stream: &str, game: &str, lang: &str, started: &str) -> serde_json::Value {
        json!({"id": stream, "user_id": user, "user_login": format!("u{user}"), "game_id": game,
               "game_name": "G", "language": lang, "viewer_count": 5, "title": "t",
               "started_at": started, "type": "live"})
    }

    #[test]
    fn merging_keeps_directory_order_and_drops_what_it_must() {
        let batches: HashSet<String> = ["30".to_string()].into();
        let mut claims = StreamClaims::new();
        claims.insert("900".into(), "1".into()); // an earlier walk listed 900 for broadcaster 1
        let p1 = page(json!([
            entry("20", "200", "77", "en", "2026-01-01T00:00:00Z"),
            entry("10", "100", "77", "EN", "2026-01-01T00:00:00Z"),
            entry("30", "300", "77", "en", "2026-01-01T00:00:00Z"), // checked by id
            entry("40", "400", "78", "en", "2026-01-01T00:00:00Z"), // another category
            entry("41", "410", "77", "de", "2026-01-01T00:00:00Z"), // another language
            entry("50", "900", "77", "en", "2026-01-01T00:00:00Z"), // stream id of broadcaster 1
            {"id": "x", "user_id": "60", "game_id": "77", "language": "en"}, // bad stream id
            "not an object",
        ]));
        let p2 = page(json!([
            entry("10", "100", "77", "en", "2026-01-01T00:00:00Z"), // again: duplicate
            entry("30", "300", "77", "en", "2026-01-01T00:00:00Z"), // checked by id, again: duplicate
            entry("20", "201", "77", "en", "2026-01-01T01:00:00Z"), // restarted: later wins
            entry("60", "600", "77", "en", "2026-01-01T00:00:00Z"), // named by a bad entry
            entry("70", "700", "77", "en", "2026-01-01T00:00:00Z"),
        ]));
        let m = merge_directory("77", Some("en"), vec![p1, p2], &batches, &mut claims);
        let got: Vec<(&str, &str)> = m
            .live
            .iter()
            .map(|s| (s.broadcaster_id.as_str(), s.stream_id.as_str()))
            .collect();
        assert_eq!(got, vec![("20", "201"), ("10", "100"), ("70", "700")]);
        assert_eq!((m.in_batches, m.off_filter), (1, 2));
        assert_eq!(m.stats.bad.stream_id_conflict, 1);
        assert_eq!(m.stats.bad.bad_stream_id, 1);
        assert_eq!(m.stats.bad.malformed, 1);
        assert_eq!(m.stats.duplicates, 2);
        // Without a language filter, every language of the category counts.
        let mut claims = StreamClaims::new();
        let p = page(json!([entry(
            "41",
            "410",
            "77",
            "de",
            "2026-01-01T00:00:00Z"
        )]));
        let m = merge_directory("77", None, vec![p], &HashSet::new(), &mut claims);
        assert_eq!(m.live.len(), 1);
    }
}
