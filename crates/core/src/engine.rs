//! One sync pass over plain values: token → batches → concurrent Get Streams
//! requests within the rate limit → merged results. No database in here: the
//! caller reads its state before and applies the outcome after.

use crate::client::{StreamsQuery, TwitchClient, Validation};
use crate::concurrency::{in_flight_limit, Protocol};
use crate::config::{SyncConfig, DEFAULT_PAGE_SIZE, PAGE_SIZE};
use crate::discovery::{merge_directory, walk_floor, DirectoryWalk, WalkEnd, WalkReport};
use crate::error::{redact, HelixError};
use crate::ratelimit::{Heard, RateLimitSnapshot, RateLimiter};
use crate::report::RunStatus;
use crate::streams::{
    plan_batches, BatchMerge, EntryStats, LiveStream, MergedBatch, StreamClaims, StreamsPage,
};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Debug shows the client id only: a `{:?}` of anything holding credentials
/// never prints the secret.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// The app access token as cached in the database (Debug hides the token).
#[derive(Clone, PartialEq)]
pub struct CachedToken {
    pub access_token: String,
    pub expires_at: SystemTime,
    pub validated_at: Option<SystemTime>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("validated_at", &self.validated_at)
            .finish()
    }
}

/// Pages an id batch may add to its first (see `fetch_batch`).
pub const MAX_EXTRA_PAGES: u32 = 10;

#[derive(Debug, Clone)]
pub struct SyncInput {
    pub config: SyncConfig,
    pub credentials: Credentials,
    pub token: Option<CachedToken>,
    /// Enabled tracked channels.
    pub broadcaster_ids: Vec<String>,
    /// Category directories to walk (discovery; crate::discovery).
    pub directories: Vec<DirectoryWalk>,
    /// The last `Ratelimit-*` headers seen, and when.
    pub rate_limit: Option<(RateLimitSnapshot, SystemTime)>,
    /// The channels stored live when the pass began, given once they are
    /// read (the extension reads them while the first requests are on the
    /// wire). Default: not known.
    pub live_before: LiveSet,
}

/// The channels stored live when a pass began, given to the pass once known
/// ([`LiveSet::channel`]). An id batch asks for a further page only for
/// these (see `fetch_batch`); not known ([`LiveSet::default`], or the sender
/// dropped unset), it asks as if every unlisted channel were live.
#[derive(Debug, Clone, Default)]
pub struct LiveSet(Option<tokio::sync::watch::Receiver<Option<Arc<HashSet<String>>>>>);

impl LiveSet {
    /// A set to be given later through the sender.
    pub fn channel() -> (
        tokio::sync::watch::Sender<Option<Arc<HashSet<String>>>>,
        LiveSet,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, LiveSet(Some(rx)))
    }

    /// A set known now.
    pub fn known(live: HashSet<String>) -> LiveSet {
        let (_, rx) = tokio::sync::watch::channel(Some(Arc::new(live)));
        LiveSet(Some(rx))
    }

    /// The set, once given (None: not known).
    async fn get(&self) -> Option<Arc<HashSet<String>>> {
        let mut rx = self.0.clone()?;
        let set = rx.wait_for(Option::is_some).await.ok()?.clone();
        set
    }
}

/// A batch whose request failed: its channels are left as they were.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchFailure {
    /// How many channels the batch held.
    pub channels: usize,
    /// The batch's channels (recorded as unchecked; not in the result document).
    #[serde(skip)]
    pub broadcaster_ids: Vec<String>,
    /// What went wrong, secrets redacted.
    pub error: String,
}

/// Everything a pass returns but the batches' answers (those arrive one by one
/// as [`BatchResult`]s while the pass runs; collect them in a [`BatchBuffer`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PassSummary {
    /// The token to cache after this pass (changed when minted or validated).
    pub token: Option<CachedToken>,
    pub token_changed: bool,
    /// Get Streams requests sent (pages and retries included).
    pub helix_requests: u32,
    pub retries: u32,
    /// 429s received.
    pub rate_limited: u32,
    /// The last `Ratelimit-*` headers seen.
    pub rate_limit: Option<RateLimitSnapshot>,
    /// Set when no request could be made at all (no token, say).
    pub fatal: Option<String>,
    /// Channels the pass set out to check by id (over its planned batches).
    pub planned: usize,
    /// Problems that did not stop the pass (a failed hourly validation, say).
    pub warnings: Vec<String>,
    /// Each failed batch (also sent as [`BatchResult::Failed`]).
    pub failures: Vec<BatchFailure>,
    /// Channels checked, over all batches (the `broadcaster_ids` sent).
    pub checked: usize,
    /// Live streams, over all batches.
    pub live: usize,
    /// Channels left as they were because an entry about them was dropped.
    pub unknown: usize,
    /// Entries dropped and fields cleaned, over all batches that got an answer.
    pub stats: EntryStats,
    /// The HTTP version Helix was spoken to in (Unknown: no connection to it).
    pub protocol: Option<Protocol>,
    /// Connections opened during the pass (each with a TLS handshake over https).
    pub connections: u32,
    /// Directory pages answered, over all walks (discovery).
    pub directory_pages: u32,
}

impl PassSummary {
    /// Channels in failed batches; when the pass was fatal (no request could
    /// be made), every channel it set out to check.
    pub fn failed_channels(&self) -> usize {
        let failed = self.failures.iter().map(|f| f.channels).sum();
        if self.fatal.is_some() {
            self.planned.max(failed)
        } else {
            failed
        }
    }
    /// The first error, for the run's one-line `error` column.
    pub fn first_error(&self) -> Option<String> {
        self.fatal.clone().or_else(|| {
            self.failures.first().map(|f| {
                if self.failures.len() > 1 {
                    format!(
                        "{} (and {} more failed batches)",
                        f.error,
                        self.failures.len() - 1
                    )
                } else {
                    f.error.clone()
                }
            })
        })
    }
    /// The run's status by [`RunStatus::of`], "anything checked" taken from
    /// `checked` and the directory pages answered.
    pub fn status(&self) -> RunStatus {
        RunStatus::of(self, self.checked > 0 || self.directory_pages > 0)
    }
}

/// Answers of batches not yet written: the extension fills it as
/// [`BatchResult`]s arrive, writes it, and clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchBuffer {
    /// Channels whose state is known: absent from `live` means not listed (offline).
    pub checked: Vec<String>,
    /// Live streams of checked channels, one per broadcaster.
    pub live: Vec<LiveStream>,
    /// Channels whose state is unknown this run (an entry about them was
    /// dropped): leave them exactly as they were. Never in `checked`.
    pub unknown: Vec<String>,
}

impl BatchBuffer {
    /// Adds one batch's answer. A failed batch adds nothing: its channels are
    /// left as they were, and the failure is in the [`PassSummary`].
    pub fn absorb(&mut self, result: BatchResult) {
        if let BatchResult::Checked {
            broadcaster_ids,
            live,
            unknown,
        } = result
        {
            self.checked.extend(broadcaster_ids);
            self.live.extend(live);
            self.unknown.extend(unknown);
        }
    }
    /// Nothing to write: no checked and no unknown channel.
    pub fn is_empty(&self) -> bool {
        self.checked.is_empty() && self.unknown.is_empty()
    }
    pub fn clear(&mut self) {
        self.checked.clear();
        self.live.clear();
        self.unknown.clear();
    }
}

/// The token in use and how many times it was replaced during this pass.
struct TokenState {
    token: CachedToken,
    generation: u64,
    renewed_after_401: bool,
    /// The token endpoint's error, when the one renewal after a 401 failed:
    /// every later 401 of the pass fails with it, without asking again.
    renewal_failed: Option<HelixError>,
}

struct Pass {
    client: TwitchClient,
    config: SyncConfig,
    secret: String,
    limiter: RateLimiter,
    token: Mutex<TokenState>,
    renewing: tokio::sync::Mutex<()>,
    deadline: Instant,
    requests: AtomicU32,
    retries: AtomicU32,
    rate_limited: AtomicU32,
    /// Stream ids listed so far in this pass, and for whom (first claim wins).
    claims: Mutex<StreamClaims>,
    /// The same for directory walks (kept apart: see crate::discovery::merge_directory).
    directory_claims: Mutex<StreamClaims>,
    /// The channels this pass checks by id: directory entries about them are dropped.
    batch_ids: HashSet<String>,
    /// The channels stored live when the pass began (SyncInput::live_before).
    live_before: LiveSet,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pass {
    fn current_token(&self) -> (String, u64) {
        let t = lock(&self.token);
        (t.token.access_token.clone(), t.generation)
    }

    /// After a 401 with token `generation`: mint a new token, once per pass,
    /// whether that succeeds or not (Twitch: mint a new one on 401, never
    /// loop). Concurrent batches that saw the same 401 share the one renewal,
    /// and its failure: a token endpoint that is down is asked once per pass,
    /// not once per batch.
    async fn renew_after_401(&self, generation: u64) -> Result<(), HelixError> {
        let _one_at_a_time = self.renewing.lock().await;
        {
            let t = lock(&self.token);
            if t.generation != generation {
                return Ok(());
            }
            if let Some(e) = &t.renewal_failed {
                return Err(e.clone());
            }
            if t.renewed_after_401 {
                return Err(HelixError::Unauthorized {
                    endpoint: "Helix Get Streams",
                    message:
                        "a freshly minted app access token was refused too; check the client id"
                            .into(),
                });
            }
        }
        let minted = mint(&self.client, &self.secret).await;
        let mut t = lock(&self.token);
        t.renewed_after_401 = true;
        match minted {
            Ok(fresh) => {
                t.token = fresh;
                t.generation += 1;
                Ok(())
            }
            Err(e) => {
                t.renewal_failed = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn sleep_or_deadline(&self, d: Duration) -> Result<(), HelixError> {
        if Instant::now() + d >= self.deadline {
            return Err(HelixError::Deadline);
        }
        tokio::time::sleep(d).await;
        Ok(())
    }

    /// One page, with the retries, token renewal and rate-limit waits it needs.
    async fn fetch_page(
        &self,
        by: &StreamsQuery<'_>,
        after: Option<&str>,
    ) -> Result<StreamsPage, HelixError> {
        let mut failures = 0u32;
        let mut renewed = false;
        loop {
            let ticket = self
                .limiter
                .acquire(self.deadline)
                .await
                .ok_or(HelixError::Deadline)?;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let (token, generation) = self.current_token();
            let answer = tokio::time::timeout_at(
                self.deadline.into(),
                self.client.get_streams_by(&token, by, after),
            )
            .await;
            let (result, snapshot) = match answer {
                Ok(a) => a,
                Err(_) => {
                    self.limiter.observe(ticket, Heard::Nothing, false);
                    return Err(HelixError::Deadline);
                }
            };
            let limited = matches!(result, Err(HelixError::RateLimited { .. }));
            let heard = match (&result, snapshot) {
                (Err(HelixError::Network { .. } | HelixError::Timeout { .. }), None) => {
                    Heard::Nothing
                }
                (_, snapshot) => Heard::Answer(snapshot),
            };
            self.limiter.observe(ticket, heard, limited);
            let err = match result {
                Ok(page) => return Ok(page),
                Err(e) => e,
            };
            match err {
                HelixError::Unauthorized { .. } if !renewed => {
                    renewed = true;
                    self.renew_after_401(generation).await?;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                HelixError::RateLimited { .. } if failures < self.config.max_retries => {
                    // The limiter now holds every request until Ratelimit-Reset.
                    failures += 1;
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                e if e.is_transient() && failures < self.config.max_retries => {
                    failures += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff = Duration::from_millis(100 * (1u64 << failures.min(5)));
                    self.sleep_or_deadline(backoff.min(Duration::from_secs(2)))
                        .await?;
                }
                e => {
                    if matches!(e, HelixError::RateLimited { .. }) {
                        self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// A batch of up to 100 ids: one request, and a further page only where
    /// it can matter. Each page is folded into the batch's answer as it
    /// arrives and dropped ([`BatchMerge`]): a batch holds at most one stream
    /// per asked broadcaster, however many pages and entries Helix sends.
    /// Twitch documents `first` (100 here) as a page's maximum, not a promise
    /// that an id query fits one page, and puts a cursor on a last page too
    /// (twitchdev/issues#2: "expected and valid"), so a cursor is followed
    /// only while
    /// - some asked channel stored live when the pass began has not been
    ///   named by an entry yet (a missing live channel would count as a miss;
    ///   a missing offline one changes nothing), or the page held exactly
    ///   Twitch's default page size of entries (a server not heeding `first`
    ///   pages by 20), and
    /// - the last page named an asked broadcaster no earlier page did (an
    ///   empty page, or a page of repeats or strangers, is no progress), and
    /// - the cursor is new, and at most [`MAX_EXTRA_PAGES`] pages were added.
    ///
    /// So a further request costs one per batch in which a live channel went
    /// unlisted (it ended, or Helix paged), not one per batch. The answer then
    /// counts as complete: an asked channel no page listed is "not listed"
    /// (one miss; `offline_after_misses` decides when it ends).
    async fn fetch_batch(&self, ids: &[String]) -> Result<MergedBatch, HelixError> {
        let mut merge = BatchMerge::new(ids);
        let mut seen_cursors = HashSet::new();
        let mut after: Option<String> = None;
        for page_no in 0..=MAX_EXTRA_PAGES {
            let page = self
                .fetch_page(&StreamsQuery::Ids(ids), after.as_deref())
                .await?;
            after = page
                .cursor
                .clone()
                .filter(|c| seen_cursors.insert(c.clone()));
            let default_sized = page.entries == DEFAULT_PAGE_SIZE;
            let progress = merge.add_page(page, &lock(&self.claims));
            if !progress || merge.all_named() || after.is_none() || page_no == MAX_EXTRA_PAGES {
                break;
            }
            let missing_live = match self.live_before.get().await {
                Some(live) => merge.misses_any_of(&live),
                None => true,
            };
            if !missing_live && !default_sized {
                break;
            }
        }
        // Under one lock, so that the first batch to finish with a stream id claims it whole.
        Ok(merge.finish(&mut lock(&self.claims)))
    }

    /// A category's directory, page after page (each paid for like any
    /// request), within the walk's allowance. Never fails: a failed page ends
    /// the walk with the pages read so far (crate::discovery has the rules).
    async fn walk_directory(&self, walk: &DirectoryWalk) -> (DirectoryResult, EntryStats) {
        let by = StreamsQuery::Directory {
            game_id: &walk.game_id,
            language: walk.language.as_deref(),
        };
        let mut pages = Vec::new();
        let mut seen_cursors = HashSet::new();
        let mut after: Option<String> = None;
        let mut end = WalkEnd::Truncated;
        let mut error = None;
        for _ in 0..walk.max_pages.max(1) {
            let page = match self.fetch_page(&by, after.as_deref()).await {
                Ok(p) => p,
                Err(e) => {
                    end = WalkEnd::Failed;
                    error = Some(e.to_string());
                    break;
                }
            };
            // Twitch pages hold at most `first` entries: a longer page is not
            // its answer, and a walk keeps its pages until it ends, so what it
            // holds is bounded by its allowance, not by what a server sends.
            if page.entries > PAGE_SIZE {
                end = WalkEnd::Failed;
                error = Some(format!(
                    "a page listed {} entries, more than the {PAGE_SIZE} asked for",
                    page.entries
                ));
                break;
            }
            let empty = page.entries == 0;
            let cursor = page.cursor.clone();
            pages.push(page);
            match cursor {
                // An empty last page (no cursor) ends the directory (Twitch's
                // cursor on a last page leads to one: twitchdev/issues#2); an
                // empty page with a cursor is a quirk.
                None if empty => {
                    end = WalkEnd::Complete;
                    break;
                }
                Some(_) if empty => {
                    end = WalkEnd::EmptyPage;
                    break;
                }
                None => {
                    end = WalkEnd::Complete;
                    break;
                }
                Some(c) => {
                    if !seen_cursors.insert(c.clone()) {
                        end = WalkEnd::CursorLoop;
                        break;
                    }
                    after = Some(c);
                }
            }
        }
        let n_pages = pages.len() as u32;
        let floor_viewers = match (end, pages.last()) {
            (WalkEnd::Truncated, Some(last)) => {
                walk_floor(&walk.game_id, walk.language.as_deref(), last)
            }
            _ => None,
        };
        let merged = merge_directory(
            &walk.game_id,
            walk.language.as_deref(),
            pages,
            &self.batch_ids,
            &mut lock(&self.directory_claims),
        );
        let report = WalkReport {
            game_id: walk.game_id.clone(),
            language: walk.language.clone(),
            pages: n_pages,
            end,
            floor_viewers,
            streams: merged.live.len() as u32,
            in_batches: merged.in_batches,
            off_filter: merged.off_filter,
            discovered: 0,
            refreshed: 0,
            capped: 0,
            error,
        };
        (
            DirectoryResult {
                live: merged.live,
                report,
            },
            merged.stats,
        )
    }
}

/// A new app access token, as cached (a fresh token counts as validated).
async fn mint(client: &TwitchClient, secret: &str) -> Result<CachedToken, HelixError> {
    let t = client.mint_token(secret).await?;
    let now = SystemTime::now();
    Ok(CachedToken {
        access_token: t.access_token,
        expires_at: now + t.expires_in,
        validated_at: Some(now),
    })
}

/// How long before its expiry a token is replaced: `renew_before_expiry`, or
/// half the life it had when it was minted or last validated if that is
/// shorter. Twitch's app tokens live for weeks, but it documents no lifetime:
/// a token issued for an hour is used for half an hour, not minted again by
/// every run.
fn renew_margin(token: &CachedToken, cfg: &SyncConfig) -> Duration {
    let life = token
        .validated_at
        .and_then(|v| token.expires_at.duration_since(v).ok());
    life.map_or(cfg.renew_before_expiry, |life| {
        cfg.renew_before_expiry.min(life / 2)
    })
}

/// Gets a usable token: the cached one if it is far from expiry and (hourly)
/// still valid, else a new one.
pub async fn prepare_token(
    client: &TwitchClient,
    cfg: &SyncConfig,
    secret: &str,
    cached: Option<CachedToken>,
    warnings: &mut Vec<String>,
) -> Result<(CachedToken, bool), HelixError> {
    let now = SystemTime::now();
    let mint = || mint(client, secret);
    let Some(mut token) = cached.filter(|t| t.expires_at > now + renew_margin(t, cfg)) else {
        return Ok((mint().await?, true));
    };
    let due = token
        .validated_at
        .and_then(|v| now.duration_since(v).ok())
        .is_none_or(|age| age >= cfg.validate_every);
    if !due {
        return Ok((token, false));
    }
    match client.validate_token(&token.access_token).await {
        Ok(Validation::Valid { expires_in }) => {
            token.expires_at = now + expires_in;
            token.validated_at = Some(now);
            if token.expires_at <= now + renew_margin(&token, cfg) {
                return Ok((mint().await?, true));
            }
            Ok((token, true))
        }
        Ok(Validation::Invalid) => Ok((mint().await?, true)),
        Err(e) => {
            // Validation is a courtesy Twitch asks for; its failure need not stop the pass.
            warnings.push(format!("token validation skipped: {e}"));
            Ok((token, false))
        }
    }
}

/// One batch's answer, sent as soon as the batch is complete.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchResult {
    /// The batch got a complete answer.
    Checked {
        /// Channels whose state is known: absent from `live` means not listed (offline).
        broadcaster_ids: Vec<String>,
        /// Live streams of those channels, one per broadcaster.
        live: Vec<LiveStream>,
        /// Asked channels whose state is unknown this run (an entry about them
        /// was dropped): leave them exactly as they were. Not in `broadcaster_ids`.
        unknown: Vec<String>,
    },
    /// The batch failed: its channels must be left as they were.
    Failed(BatchFailure),
    /// A category directory's walk ended (complete, cut short, or failed:
    /// its report says which).
    Directory(DirectoryResult),
}

/// One directory walk's answer: live streams to observe, nothing about
/// channels it did not list (absence from a directory is not "offline").
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryResult {
    /// Checked live streams, one per broadcaster, none of a channel this pass
    /// checks by id, in the order Helix listed them (viewer count, most first).
    pub live: Vec<LiveStream>,
    pub report: WalkReport,
}

/// What the batches added up to, kept by the pass for its summary.
#[derive(Default)]
struct Tally {
    failures: Vec<BatchFailure>,
    checked: usize,
    live: usize,
    unknown: usize,
    stats: EntryStats,
    directory_pages: u32,
}

/// The error of a batch whose task panicked (a bug) or was cancelled.
pub const INTERNAL_BATCH_ERROR: &str = "internal error in a batch";
/// The error of a category walk whose task panicked or was cancelled.
pub const INTERNAL_WALK_ERROR: &str = "internal error in a category walk";

/// Runs one sync pass, sending each batch's result to `results` as soon as it
/// is complete (so the caller can write while other requests are in flight).
/// The returned summary holds everything but the batches' answers: token,
/// counters, rate-limit state, warnings, failures, entry statistics, and
/// `fatal` when no request could be made. A stream id is listed once per pass:
/// the first batch to keep it claims it for its broadcaster (see
/// [`BatchMerge`]). Never panics on bad answers; every failure ends up in the
/// summary, with secrets redacted. A batch whose task panics (a bug) counts as
/// a failed batch ([`INTERNAL_BATCH_ERROR`]): its channels are sent as
/// [`BatchResult::Failed`] and left as they were.
pub async fn sync_streaming(
    input: SyncInput,
    results: tokio::sync::mpsc::UnboundedSender<BatchResult>,
) -> PassSummary {
    let mut outcome = PassSummary {
        token: input.token.clone(),
        ..Default::default()
    };
    let batches = plan_batches(&input.broadcaster_ids);
    outcome.planned = batches.iter().map(Vec::len).sum();
    if batches.is_empty() && input.directories.is_empty() {
        return outcome;
    }
    let deadline = Instant::now() + input.config.run_deadline;
    let client = match TwitchClient::new(&input.config, &input.credentials.client_id) {
        Ok(c) => c,
        Err(e) => {
            outcome.fatal = Some(e.to_string());
            return outcome;
        }
    };
    let mut warnings = Vec::new();
    let prepared = tokio::time::timeout_at(
        deadline.into(),
        prepare_token(
            &client,
            &input.config,
            &input.credentials.client_secret,
            input.token.clone(),
            &mut warnings,
        ),
    )
    .await
    .unwrap_or(Err(HelixError::Deadline));
    let (token, token_changed) = match prepared {
        Ok(t) => t,
        Err(e) => {
            let mut secrets = vec![input.credentials.client_secret.as_str()];
            secrets.extend(input.token.iter().map(|t| t.access_token.as_str()));
            outcome.fatal = Some(redact(
                &format!("could not get an app access token: {e}"),
                &secrets,
            ));
            outcome.warnings = warnings.iter().map(|w| redact(w, &secrets)).collect();
            outcome.protocol = Some(client.watch().helix_protocol());
            outcome.connections = client.watch().connections();
            return outcome;
        }
    };

    let first_token = token.access_token.clone();
    let pass = Arc::new(Pass {
        client,
        config: input.config.clone(),
        secret: input.credentials.client_secret.clone(),
        limiter: RateLimiter::new(input.rate_limit),
        token: Mutex::new(TokenState {
            token,
            generation: 0,
            renewed_after_401: false,
            renewal_failed: None,
        }),
        renewing: tokio::sync::Mutex::new(()),
        deadline,
        requests: AtomicU32::new(0),
        retries: AtomicU32::new(0),
        rate_limited: AtomicU32::new(0),
        claims: Mutex::new(StreamClaims::new()),
        directory_claims: Mutex::new(StreamClaims::new()),
        batch_ids: if input.directories.is_empty() {
            HashSet::new()
        } else {
            input.broadcaster_ids.iter().cloned().collect()
        },
        live_before: input.live_before.clone(),
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    // Requests in flight: crate::concurrency has the rule. One goes alone until
    // the protocol Helix speaks is known, then as many as it allows (each still
    // paid for by the rate limiter).
    let watch = pass.client.watch().clone();
    watch.start_helix_phase();
    let cap = input.config.max_concurrent_requests;
    let known = watch.helix_protocol();
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight_limit(cap, known)));
    let opener = (known == Protocol::Unknown).then(|| {
        let (watch, permits) = (watch.clone(), permits.clone());
        tokio::spawn(async move {
            let learnt = watch.helix_known().await;
            permits.add_permits(in_flight_limit(cap, learnt).saturating_sub(1));
        })
    });
    let mut tasks = tokio::task::JoinSet::new();
    // Each batch task's channels, so that a task that panics (a bug) or is
    // cancelled still counts as the failed batch it is.
    let mut batch_of_task: HashMap<tokio::task::Id, Arc<Vec<String>>> = HashMap::new();
    for ids in batches {
        let ids = Arc::new(ids);
        let task_ids = ids.clone();
        let pass = pass.clone();
        let permits = permits.clone();
        let results = results.clone();
        let first_token = first_token.clone();
        let tally = tally.clone();
        let task = tasks.spawn(async move {
            let ids = task_ids;
            let _permit = permits.acquire_owned().await;
            #[cfg(test)]
            tests_only::maybe_panic(&ids);
            let result = match pass.fetch_batch(&ids).await {
                Ok(m) => {
                    let mut t = lock(&tally);
                    t.checked += m.checked.len();
                    t.live += m.live.len();
                    t.unknown += m.unknown.len();
                    t.stats.add(&m.stats);
                    BatchResult::Checked {
                        broadcaster_ids: m.checked,
                        live: m.live,
                        unknown: m.unknown,
                    }
                }
                Err(e) => {
                    let (current, _) = pass.current_token();
                    let secrets = [pass.secret.as_str(), first_token.as_str(), current.as_str()];
                    let failure = BatchFailure {
                        channels: ids.len(),
                        broadcaster_ids: ids.to_vec(),
                        error: redact(&e.to_string(), &secrets),
                    };
                    lock(&tally).failures.push(failure.clone());
                    BatchResult::Failed(failure)
                }
            };
            // The receiver may be gone (the caller stopped listening): nothing to do then.
            let _ = results.send(result);
        });
        batch_of_task.insert(task.id(), ids);
    }
    for walk in input.directories.clone() {
        let pass = pass.clone();
        let permits = permits.clone();
        let results = results.clone();
        let first_token = first_token.clone();
        let tally = tally.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (mut result, stats) = pass.walk_directory(&walk).await;
            let mut t = lock(&tally);
            t.stats.add(&stats);
            t.directory_pages += result.report.pages;
            if let Some(e) = result.report.error.take() {
                let (current, _) = pass.current_token();
                let secrets = [pass.secret.as_str(), first_token.as_str(), current.as_str()];
                let error = redact(
                    &format!(
                        "category {} page {}: {e}",
                        walk.game_id,
                        result.report.pages + 1
                    ),
                    &secrets,
                );
                result.report.error = Some(error.clone());
                t.failures.push(BatchFailure {
                    channels: 0,
                    broadcaster_ids: Vec::new(),
                    error,
                });
            }
            drop(t);
            let _ = results.send(BatchResult::Directory(result));
        });
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        let Err(e) = joined else {
            continue;
        };
        // A task that panicked or was cancelled sent nothing (sending is its
        // last step): a batch's channels are unchecked, left as they were, like
        // those of any failed batch. What the panic said stays out of the
        // error: it is no message for users and may quote anything.
        match batch_of_task.remove(&e.id()) {
            Some(ids) => {
                let failure = BatchFailure {
                    channels: ids.len(),
                    broadcaster_ids: ids.to_vec(),
                    error: INTERNAL_BATCH_ERROR.into(),
                };
                outcome.failures.push(failure.clone());
                let _ = results.send(BatchResult::Failed(failure));
            }
            None => outcome.failures.push(BatchFailure {
                channels: 0,
                broadcaster_ids: Vec::new(),
                error: INTERNAL_WALK_ERROR.into(),
            }),
        }
    }
    drop(results);
    if let Some(opener) = opener {
        opener.abort();
    }
    outcome.protocol = Some(watch.helix_protocol());
    outcome.connections = watch.connections();
    {
        let mut t = lock(&tally);
        let mut failures = std::mem::take(&mut t.failures);
        failures.append(&mut outcome.failures);
        outcome.failures = failures;
        outcome.checked = t.checked;
        outcome.live = t.live;
        outcome.unknown = t.unknown;
        outcome.stats = t.stats;
        outcome.directory_pages = t.directory_pages;
    }

    let final_token = lock(&pass.token).token.clone();
    let mut secrets = vec![
        pass.secret.as_str(),
        first_token.as_str(),
        final_token.access_token.as_str(),
    ];
    secrets.extend(input.token.iter().map(|t| t.access_token.as_str()));
    outcome.warnings = warnings.iter().map(|w| redact(w, &secrets)).collect();
    outcome.token_changed = token_changed || input.token.as_ref() != Some(&final_token);
    outcome.token = Some(final_token);
    outcome.helix_requests = pass.requests.load(Ordering::Relaxed);
    outcome.retries = pass.retries.load(Ordering::Relaxed);
    outcome.rate_limited = pass.rate_limited.load(Ordering::Relaxed);
    outcome.rate_limit = pass.limiter.last_seen();
    outcome
}

#[cfg(test)]
mod debug_tests {
    use super::*;
    use crate::client::AppToken;

    #[test]
    fn debug_output_never_shows_a_secret() {
        let shown = format!(
            "{:?} {:?} {:?}",
            Credentials {
                client_id: "the-client-id".into(),
                client_secret: "s3cr3t-client".into(),
            },
            CachedToken {
                access_token: "s3cr3t-token".into(),
                expires_at: SystemTime::UNIX_EPOCH,
                validated_at: None,
            },
            AppToken {
                access_token: "s3cr3t-app".into(),
                expires_in: Duration::from_secs(60),
            }
        );
        assert!(shown.contains("the-client-id"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}

/// A way for this module's tests to make a batch task panic, as a bug would.
#[cfg(test)]
mod tests_only {
    use std::cell::RefCell;

    thread_local! {
        /// A batch asking about this broadcaster panics (tests run the pass on
        /// a current-thread runtime: its tasks run on the test's thread).
        pub static PANIC_IN_BATCH_OF: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    pub fn maybe_panic(ids: &[String]) {
        let hit = PANIC_IN_BATCH_OF.with(|p| p.borrow().as_ref().is_some_and(|b| ids.contains(b)));
        if hit {
            panic!("injected: attempt to multiply with overflow, token s3cr3t");
        }
    }
}

#[cfg(test)]
mod panic_tests {
    use super::*;
    use helix_sim::world::WorldConfig;
    use helix_sim::{Config, Simulator};

    #[test]
    fn a_batch_whose_task_panics_is_a_failed_batch() {
        let sim = Simulator::start(Config {
            world: WorldConfig {
                channels: 300,
                live_fraction: 0.3,
                ..Default::default()
            },
            ..Config::default()
        })
        .unwrap();
        let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
        tests_only::PANIC_IN_BATCH_OF.with(|p| *p.borrow_mut() = Some(ids[150].clone()));
        let input = SyncInput {
            config: SyncConfig {
                helix_url: sim.helix_url(),
                auth_url: sim.auth_url(),
                ..SyncConfig::default()
            },
            credentials: Credentials {
                client_id: sim.client_id(),
                client_secret: sim.client_secret(),
            },
            token: None,
            broadcaster_ids: ids.clone(),
            rate_limit: None,
            directories: Vec::new(),
            live_before: LiveSet::default(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let summary = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(sync_streaming(input, tx));
        tests_only::PANIC_IN_BATCH_OF.with(|p| *p.borrow_mut() = None);

        let batch = ids[100..200].to_vec();
        assert_eq!(
            summary.failures,
            vec![BatchFailure {
                channels: 100,
                broadcaster_ids: batch.clone(),
                error: INTERNAL_BATCH_ERROR.into(),
            }]
        );
        assert_eq!(summary.failed_channels(), 100);
        assert_eq!(summary.checked, 200);
        assert_eq!(summary.status(), RunStatus::Partial);
        let first = summary.first_error().unwrap();
        assert_eq!(first, "internal error in a batch");
        // the panic's words reach no result: they are no message for users
        assert!(!first.contains("panicked") && !first.contains("s3cr3t"));

        // the caller hears of the batch as failed, with its channels (recorded unchecked)
        let mut buffer = BatchBuffer::default();
        let mut failed = Vec::new();
        while let Ok(r) = rx.try_recv() {
            if let BatchResult::Failed(f) = &r {
                failed.push(f.broadcaster_ids.clone());
            }
            buffer.absorb(r);
        }
        assert_eq!(failed, vec![batch.clone()]);
        assert_eq!(buffer.checked.len(), 200);
        assert!(batch.iter().all(|b| !buffer.checked.contains(b)));
        assert!(buffer
            .live
            .iter()
            .all(|s| !batch.contains(&s.broadcaster_id)));
    }
}
