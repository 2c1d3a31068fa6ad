//! One sync pass over plain values: token → batches → concurrent Get Streams
//! requests within the rate limit → merged results. No database in here: the
//! caller reads its state before and applies the outcome after.

use crate::client::{TwitchClient, Validation};
use crate::config::SyncConfig;
use crate::error::{redact, HelixError};
use crate::ratelimit::{RateLimitSnapshot, RateLimiter};
use crate::streams::{merge_batch, plan_batches, LiveStream, StreamsPage};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

/// The app access token as cached in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedToken {
    pub access_token: String,
    pub expires_at: SystemTime,
    pub validated_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct SyncInput {
    pub config: SyncConfig,
    pub credentials: Credentials,
    pub token: Option<CachedToken>,
    /// Enabled tracked channels.
    pub broadcaster_ids: Vec<String>,
    /// The last `Ratelimit-*` headers seen, and when.
    pub rate_limit: Option<(RateLimitSnapshot, SystemTime)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchFailure {
    pub channels: usize,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncOutcome {
    /// Channels whose batch got a complete answer: absent from `live` means offline.
    pub checked: Vec<String>,
    /// Live streams of checked channels, one per broadcaster.
    pub live: Vec<LiveStream>,
    pub failures: Vec<BatchFailure>,
    pub helix_requests: u32,
    pub retries: u32,
    pub rate_limited: u32,
    /// Entries Helix listed without the fields needed to store them.
    pub skipped_entries: usize,
    /// The token to cache after this pass (changed when minted or validated).
    pub token: Option<CachedToken>,
    pub token_changed: bool,
    pub rate_limit: Option<RateLimitSnapshot>,
    /// Set when nothing could be checked at all (no token, say).
    pub fatal: Option<String>,
    /// Problems that did not stop the pass (a failed hourly validation, say).
    pub warnings: Vec<String>,
}

impl SyncOutcome {
    pub fn failed_channels(&self) -> usize {
        self.failures.iter().map(|f| f.channels).sum()
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
}

/// The token in use and how many times it was replaced during this pass.
struct TokenState {
    token: CachedToken,
    generation: u64,
    renewed_after_401: bool,
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
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pass {
    fn current_token(&self) -> (String, u64) {
        let t = lock(&self.token);
        (t.token.access_token.clone(), t.generation)
    }

    async fn mint(&self) -> Result<CachedToken, HelixError> {
        let t = self.client.mint_token(&self.secret).await?;
        let now = SystemTime::now();
        Ok(CachedToken {
            access_token: t.access_token,
            expires_at: now + t.expires_in,
            validated_at: Some(now),
        })
    }

    /// After a 401 with token `generation`: mint a new token, once per pass.
    /// Concurrent batches that saw the same 401 share the one renewal.
    async fn renew_after_401(&self, generation: u64) -> Result<(), HelixError> {
        let _one_at_a_time = self.renewing.lock().await;
        {
            let t = lock(&self.token);
            if t.generation != generation {
                return Ok(());
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
        let fresh = self.mint().await?;
        let mut t = lock(&self.token);
        t.token = fresh;
        t.generation += 1;
        t.renewed_after_401 = true;
        Ok(())
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
        ids: &[String],
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
                self.client.get_streams(&token, ids, after),
            )
            .await;
            let (result, snapshot) = match answer {
                Ok(a) => a,
                Err(_) => {
                    self.limiter.observe(ticket, None, false);
                    return Err(HelixError::Deadline);
                }
            };
            let limited = matches!(result, Err(HelixError::RateLimited { .. }));
            self.limiter.observe(ticket, snapshot, limited);
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

    /// A batch of up to 100 ids: the first page and any further pages Helix
    /// really has, stopping on an empty page, a cursor seen before, or the cap.
    async fn fetch_batch(&self, ids: &[String]) -> Result<(Vec<LiveStream>, usize), HelixError> {
        let mut pages = Vec::new();
        let mut seen_cursors = HashSet::new();
        let mut after: Option<String> = None;
        for page_no in 0..=self.config.max_pages_per_batch {
            let page = self.fetch_page(ids, after.as_deref()).await?;
            let empty = page.streams.is_empty() && page.skipped_entries == 0;
            after = page
                .cursor
                .clone()
                .filter(|c| seen_cursors.insert(c.clone()));
            pages.push(page);
            if empty || after.is_none() || page_no == self.config.max_pages_per_batch {
                break;
            }
        }
        let skipped = pages.iter().map(|p| p.skipped_entries).sum();
        Ok((merge_batch(ids, pages), skipped))
    }
}

/// Gets a usable token: the cached one if it is far from expiry and (hourly)
/// still valid, else a new one.
async fn prepare_token(
    client: &TwitchClient,
    cfg: &SyncConfig,
    secret: &str,
    cached: Option<CachedToken>,
    warnings: &mut Vec<String>,
) -> Result<(CachedToken, bool), HelixError> {
    let now = SystemTime::now();
    let mint = || async {
        let t = client.mint_token(secret).await?;
        Ok::<_, HelixError>(CachedToken {
            access_token: t.access_token,
            expires_at: now + t.expires_in,
            validated_at: Some(now),
        })
    };
    let Some(mut token) = cached.filter(|t| t.expires_at > now + cfg.renew_before_expiry) else {
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
            if token.expires_at <= now + cfg.renew_before_expiry {
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

/// Runs one sync pass. Never panics on bad answers; every failure ends up in
/// the outcome, with secrets redacted.
pub async fn sync(input: SyncInput) -> SyncOutcome {
    let secrets_of = |token: Option<&CachedToken>| -> Vec<String> {
        let mut s = vec![input.credentials.client_secret.clone()];
        if let Some(t) = token {
            s.push(t.access_token.clone());
        }
        s
    };
    let mut outcome = SyncOutcome {
        token: input.token.clone(),
        ..Default::default()
    };
    let batches = plan_batches(&input.broadcaster_ids);
    if batches.is_empty() {
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
            let secrets = secrets_of(input.token.as_ref());
            let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
            outcome.fatal = Some(redact(
                &format!("could not get an app access token: {e}"),
                &refs,
            ));
            outcome.warnings = warnings;
            return outcome;
        }
    };

    let pass = Arc::new(Pass {
        client,
        config: input.config.clone(),
        secret: input.credentials.client_secret.clone(),
        limiter: RateLimiter::new(input.rate_limit),
        token: Mutex::new(TokenState {
            token,
            generation: 0,
            renewed_after_401: false,
        }),
        renewing: tokio::sync::Mutex::new(()),
        deadline,
        requests: AtomicU32::new(0),
        retries: AtomicU32::new(0),
        rate_limited: AtomicU32::new(0),
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(
        input.config.max_concurrent_requests.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for ids in batches {
        let pass = pass.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = pass.fetch_batch(&ids).await;
            (ids, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => outcome.failures.push(BatchFailure {
                channels: 0,
                error: format!("internal error in a batch: {e}"),
            }),
        }
    }

    let state = lock(&pass.token);
    let final_token = state.token.clone();
    drop(state);
    let secrets = {
        let mut s = secrets_of(Some(&final_token));
        s.extend(input.token.iter().map(|t| t.access_token.clone()));
        s
    };
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    results.sort_by(|a, b| a.0.first().cmp(&b.0.first()));
    for (ids, result) in results {
        match result {
            Ok((streams, skipped)) => {
                outcome.checked.extend(ids);
                outcome.live.extend(streams);
                outcome.skipped_entries += skipped;
            }
            Err(e) => outcome.failures.push(BatchFailure {
                channels: ids.len(),
                error: redact(&e.to_string(), &refs),
            }),
        }
    }
    outcome.token_changed = token_changed || input.token.as_ref() != Some(&final_token);
    outcome.token = Some(final_token);
    outcome.helix_requests = pass.requests.load(Ordering::Relaxed);
    outcome.retries = pass.retries.load(Ordering::Relaxed);
    outcome.rate_limited = pass.rate_limited.load(Ordering::Relaxed);
    outcome.rate_limit = pass.limiter.last_seen();
    outcome.warnings = warnings.iter().map(|w| redact(w, &refs)).collect();
    if outcome.checked.is_empty() && outcome.fatal.is_none() {
        outcome.fatal = outcome.first_error();
    }
    outcome
}
