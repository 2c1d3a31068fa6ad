//! Get Streams answers: checking every value that came from the network before
//! anything can reach the database, and the batches of broadcaster ids that the
//! requests carry.
//!
//! Rule: no string from Helix reaches SQL unchecked. Ids must match their
//! numeric rule or the entry is dropped ("bad entry"); free text loses NUL
//! characters and is cut to a cap; logins, game ids and start times that fail
//! their rule are replaced by NULL / `''` ("cleaned field") while the entry and
//! its viewer count are kept. Every drop and every repair is counted
//! ([`EntryStats`]) so the run report can show it.

use crate::config::MAX_IDS_PER_REQUEST;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest title kept, in characters. Twitch allows 140; more than twice that
/// leaves room for a changed limit while a NOTIFY payload (at most 8,000 bytes)
/// carrying title, game name and ids stays far below its limit (300 chars are at
/// most 1,200 bytes of UTF-8).
pub const MAX_TITLE_CHARS: usize = 300;
/// Longest game (category) name kept, in characters (Twitch's longest are about
/// 100); at most 800 bytes of UTF-8.
pub const MAX_GAME_NAME_CHARS: usize = 200;
/// Longest language kept, in characters. Helix sends ISO 639-1 codes (`en`) or
/// `other`; 16 leaves room for region tags (`zh-hk`).
pub const MAX_LANGUAGE_CHARS: usize = 16;
/// Longest pagination cursor accepted, in bytes (Twitch's are about 200). A
/// cursor is sent back in a URL; one that is longer or holds anything but
/// visible ASCII makes the page refused (the batch fails and its channels are
/// left as they were): dropping the cursor instead would read "last page" and
/// could end streams listed on later pages.
pub const MAX_CURSOR_BYTES: usize = 1024;
/// Earliest `started_at` accepted: 2007-01-01T00:00:00Z (Justin.tv, Twitch's
/// predecessor, launched in 2007), in microseconds since the Unix epoch.
/// Refuses the Unix epoch and other zero-like values.
pub const EARLIEST_STARTED_AT_MICROS: i64 = 1_167_609_600 * 1_000_000;
/// How far in the future a `started_at` may lie (clock skew): one day, in microseconds.
pub const STARTED_AT_MAX_AHEAD_MICROS: i64 = 86_400 * 1_000_000;

/// A live broadcast as twitch_sync stores it. Every field has been checked:
/// ids are ASCII digits, text holds no NUL and fits its cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// Twitch's stream id, one per broadcast: 1–20 ASCII digits.
    pub stream_id: String,
    /// 1–20 ASCII digits, no leading zero (the rule of `twitch_sync.channels`).
    pub broadcaster_id: String,
    /// Lowercase, `[a-z0-9_]{1,25}`; None when Helix sent none or an invalid one.
    pub login: Option<String>,
    /// Clamped to 0..=i32::MAX.
    pub viewer_count: i32,
    /// No NUL, at most [`MAX_TITLE_CHARS`] characters.
    pub title: String,
    /// 1–20 ASCII digits, or `''`.
    pub game_id: String,
    /// No NUL, at most [`MAX_GAME_NAME_CHARS`] characters.
    pub game_name: String,
    /// No NUL, at most [`MAX_LANGUAGE_CHARS`] characters.
    pub language: String,
    /// When the broadcast started, in microseconds since the Unix epoch (UTC),
    /// between 2007-01-01 and one day after the answer was parsed; None when
    /// Helix sent none or an invalid one.
    pub started_at: Option<i64>,
}

impl LiveStream {
    /// `started_at` as RFC 3339 in UTC (`2021-03-10T03:18:11Z`,
    /// `2021-03-10T03:18:11.5Z`), for Postgres' `::timestamptz`. The text is
    /// produced here from the checked value, never copied from Helix.
    pub fn started_at_rfc3339(&self) -> Option<String> {
        self.started_at.and_then(micros_to_rfc3339)
    }
}

/// Formats microseconds since the Unix epoch as RFC 3339 in UTC.
pub fn micros_to_rfc3339(micros: i64) -> Option<String> {
    let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    dt.format(&Rfc3339).ok()
}

/// Entries of Get Streams answers dropped as bad: a broadcaster they name is
/// left exactly as it was (see [`MergedBatch::unknown`]). Keys of the run
/// report's `bad_entries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BadEntries {
    /// An entry of `data` that is not a JSON object, or whose fields twitch_sync
    /// reads cannot be parsed (a number beyond f64, nesting deeper than 128, a
    /// field given twice).
    pub malformed: u32,
    /// `id` missing or not 1–20 ASCII digits.
    pub bad_stream_id: u32,
    /// `user_id` missing or not a broadcaster id (1–20 ASCII digits, no leading zero).
    pub bad_broadcaster_id: u32,
    /// A stream id already listed earlier in the run for another broadcaster
    /// (the first listing wins).
    pub stream_id_conflict: u32,
    /// An entry for a broadcaster that request did not ask about.
    pub foreign_broadcaster: u32,
}

impl BadEntries {
    pub fn total(&self) -> u32 {
        self.malformed
            + self.bad_stream_id
            + self.bad_broadcaster_id
            + self.stream_id_conflict
            + self.foreign_broadcaster
    }
}

/// Fields repaired or replaced while their entry was kept. Keys of the run
/// report's `cleaned`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cleaned {
    /// `user_login` present but not `[a-z0-9_]{1,25}` after ASCII lowercasing: stored as NULL.
    pub login: u32,
    /// `title`, `game_name` or `language` that held NUL characters, exceeded its
    /// cap, or was not a string or number (stored as `''`).
    pub text: u32,
    /// `game_id` present but not 1–20 ASCII digits: stored as `''`.
    pub game_id: u32,
    /// `started_at` present but not RFC 3339, or outside 2007-01-01 .. now + 1 day: stored as NULL.
    pub started_at: u32,
    /// `viewer_count` present but not a number, negative, fractional or above 2^31-1: clamped.
    pub viewer_count: u32,
    /// Invalid UTF-8 sequences, unpaired UTF-16 surrogate escapes (`"\ud800"`)
    /// and raw control characters inside JSON strings, repaired in the answer's
    /// bytes before parsing (the first two become U+FFFD, the last its `\u00XX`
    /// escape) so that one such value cannot cost a whole page.
    pub encoding: u32,
}

impl Cleaned {
    pub fn total(&self) -> u32 {
        self.login + self.text + self.game_id + self.started_at + self.viewer_count + self.encoding
    }
}

/// What checking answers dropped and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EntryStats {
    pub bad: BadEntries,
    pub cleaned: Cleaned,
    /// Entries repeating a stream id already listed for the same broadcaster
    /// (Helix repeats entries across pages): dropped, not bad, counted apart.
    pub duplicates: u32,
}

impl EntryStats {
    pub fn add(&mut self, o: &EntryStats) {
        let (b, c) = (&mut self.bad, &mut self.cleaned);
        b.malformed += o.bad.malformed;
        b.bad_stream_id += o.bad.bad_stream_id;
        b.bad_broadcaster_id += o.bad.bad_broadcaster_id;
        b.stream_id_conflict += o.bad.stream_id_conflict;
        b.foreign_broadcaster += o.bad.foreign_broadcaster;
        c.login += o.cleaned.login;
        c.text += o.cleaned.text;
        c.game_id += o.cleaned.game_id;
        c.started_at += o.cleaned.started_at;
        c.viewer_count += o.cleaned.viewer_count;
        c.encoding += o.cleaned.encoding;
        self.duplicates += o.duplicates;
    }
}

/// One page of a Get Streams answer, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamsPage {
    /// Entries that passed every id rule (their other fields cleaned).
    pub streams: Vec<LiveStream>,
    /// Valid broadcaster ids of entries dropped because their stream id was bad:
    /// Helix says something about these channels that cannot be stored.
    pub rejected_broadcasters: Vec<String>,
    /// Entries dropped that cannot be tied to a broadcaster (malformed, bad `user_id`).
    pub unattributed: u32,
    /// How many entries `data` held, good or bad.
    pub entries: usize,
    pub stats: EntryStats,
    pub cursor: Option<String>,
}

/// Why a whole page was refused.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("pagination cursor is not a string, longer than {MAX_CURSOR_BYTES} bytes or not visible ASCII")]
    BadCursor,
    /// `pagination` that serde_json cannot read as a value (a number out of
    /// range, nesting past its limit), or that is neither an object nor null:
    /// its cursor is unknown, and reading it as "last page" could end streams
    /// listed on later pages.
    #[error("pagination is not an object that can be read, so neither can its cursor")]
    BadPagination,
}

/// `T` read from a JSON object and nothing else. serde's derived
/// `Deserialize` also accepts a struct written as an array of its fields in
/// declaration order (`["1","2","login",...]`): an answer or entry shaped like
/// that is not what Helix sends, and must not be read as if it were.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Objects<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Objects<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Objects(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    pagination: Option<&'a RawValue>,
}

/// The fields of an entry twitch_sync reads. Unknown fields are skipped
/// without being parsed (any nesting, any number), so garbage in a field
/// twitch_sync does not use costs nothing; a duplicate known field makes the
/// entry malformed.
#[derive(Deserialize)]
struct RawEntry {
    id: Option<Value>,
    user_id: Option<Value>,
    user_login: Option<Value>,
    title: Option<Value>,
    game_id: Option<Value>,
    game_name: Option<Value>,
    language: Option<Value>,
    started_at: Option<Value>,
    viewer_count: Option<Value>,
}

impl RawEntry {
    /// As a JSON object holding the fields that were present and not null.
    fn into_object(self) -> Value {
        let fields = [
            ("id", self.id),
            ("user_id", self.user_id),
            ("user_login", self.user_login),
            ("title", self.title),
            ("game_id", self.game_id),
            ("game_name", self.game_name),
            ("language", self.language),
            ("started_at", self.started_at),
            ("viewer_count", self.viewer_count),
        ];
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect(),
        )
    }
}

/// `^[0-9]{1,20}$`: stream ids and game ids.
pub fn is_numeric_id(s: &str) -> bool {
    (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// `^[1-9][0-9]{0,19}$`: broadcaster ids, the rule of `twitch_sync.channels`.
pub fn is_broadcaster_id(s: &str) -> bool {
    is_numeric_id(s) && !s.starts_with('0')
}

/// A login after ASCII lowercasing, if it matches `^[a-z0-9_]{1,25}$`.
pub fn clean_login(s: &str) -> Option<String> {
    let l = s.to_ascii_lowercase();
    ((1..=25).contains(&l.len())
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    .then_some(l)
}

/// Free text: NUL characters removed, cut to `max_chars` characters. Returns
/// the text and whether anything changed. (Unpaired surrogates cannot occur in
/// a Rust string: [`repair_body`] replaced them before parsing.)
pub fn clean_text(s: &str, max_chars: usize) -> (String, bool) {
    let mut changed = false;
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut n = 0;
    for c in s.chars() {
        if c == '\0' {
            changed = true;
            continue;
        }
        if n == max_chars {
            changed = true;
            break;
        }
        out.push(c);
        n += 1;
    }
    (out, changed)
}

/// Parses an RFC 3339 timestamp (any number of fractional digits, `Z` or an
/// offset, `T`, `t` or a space between date and time) into microseconds since
/// the Unix epoch, if it lies between 2007-01-01T00:00:00Z and one day after
/// `now`. Refuses `infinity`, the epoch, and anything else.
pub fn parse_started_at(s: &str, now: SystemTime) -> Option<i64> {
    if !matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let micros = i64::try_from(dt.unix_timestamp_nanos().div_euclid(1000)).ok()?;
    let now_micros = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    (EARLIEST_STARTED_AT_MICROS..=now_micros.saturating_add(STARTED_AT_MAX_AHEAD_MICROS))
        .contains(&micros)
        .then_some(micros)
}

fn push_escape(out: &mut Vec<u8>, unit: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize]);
    }
}

/// The `\uXXXX` escape starting at `at` (at the backslash), if there is one.
fn escape_at(b: &[u8], at: usize) -> Option<u32> {
    if b.get(at) != Some(&b'\\') || b.get(at + 1) != Some(&b'u') {
        return None;
    }
    let hex = b.get(at + 2..at + 6)?;
    let s = std::str::from_utf8(hex).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Makes an answer's bytes parseable without losing its neighbours to one odd
/// value: invalid UTF-8 sequences become U+FFFD; inside JSON strings, an
/// unpaired surrogate escape (`\ud800` alone, or a lone `\udc00`) becomes
/// `\ufffd` and a raw control character (invalid JSON) its `\u00XX` escape.
/// An escaped backslash (`\\ud800`) is text, not an escape, and a high
/// surrogate escape followed by a low one is a valid pair: both stay.
/// Returns the text and how many repairs were made.
pub fn repair_body(body: &[u8]) -> (Cow<'_, str>, u32) {
    let mut repairs = 0;
    let text: Cow<'_, str> = match std::str::from_utf8(body) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut s = String::with_capacity(body.len() + 16);
            for chunk in body.utf8_chunks() {
                s.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    s.push('\u{FFFD}');
                    repairs += 1;
                }
            }
            Cow::Owned(s)
        }
    };
    let b = text.as_bytes();
    let needs_work = {
        let mut in_string = false;
        let mut escaped = false;
        let mut found = false;
        for (i, &c) in b.iter().enumerate() {
            if !in_string {
                in_string = c == b'"';
            } else if escaped {
                escaped = false;
                if c == b'u' && escape_at(b, i - 1).is_some_and(|u| (0xD800..0xE000).contains(&u)) {
                    found = true;
                    break;
                }
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            } else if c < 0x20 {
                found = true;
                break;
            }
        }
        found
    };
    if !needs_work {
        return (text, repairs);
    }
    // All bytes inspected and written below are ASCII; multi-byte UTF-8
    // sequences (bytes >= 0x80) are copied whole, so the output stays UTF-8.
    let mut out = Vec::with_capacity(b.len() + 16);
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if !in_string {
            in_string = c == b'"';
            out.push(c);
            i += 1;
        } else if c == b'"' {
            in_string = false;
            out.push(c);
            i += 1;
        } else if c == b'\\' {
            match escape_at(b, i) {
                Some(0xD800..=0xDBFF) => {
                    if escape_at(b, i + 6).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo)) {
                        out.extend_from_slice(&b[i..i + 12]);
                        i += 12;
                    } else {
                        push_escape(&mut out, 0xFFFD);
                        repairs += 1;
                        i += 6;
                    }
                }
                Some(0xDC00..=0xDFFF) => {
                    push_escape(&mut out, 0xFFFD);
                    repairs += 1;
                    i += 6;
                }
                _ => {
                    // Any other escape (or a broken one, for the parser to refuse):
                    // the backslash and the character it escapes stay together.
                    let end = (i + 2).min(b.len());
                    out.extend_from_slice(&b[i..end]);
                    i = end;
                }
            }
        } else if c < 0x20 {
            push_escape(&mut out, u32::from(c));
            repairs += 1;
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    let repaired = String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    (Cow::Owned(repaired), repairs)
}

/// An id as text: JSON strings as they are, integers in decimal.
fn id_text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A free-text field: strings and numbers as text; null or missing as `''`;
/// anything else as `''`, counted.
fn text_field(v: &Value, key: &str, max_chars: usize, cleaned: &mut Cleaned) -> String {
    let raw: Cow<'_, str> = match v.get(key) {
        None | Some(Value::Null) => return String::new(),
        Some(Value::String(s)) => Cow::Borrowed(s),
        Some(Value::Number(n)) => Cow::Owned(n.to_string()),
        Some(_) => {
            cleaned.text += 1;
            return String::new();
        }
    };
    let (text, changed) = clean_text(&raw, max_chars);
    if changed {
        cleaned.text += 1;
    }
    text
}

fn viewer_count(v: &Value, cleaned: &mut Cleaned) -> i32 {
    match v.get("viewer_count") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_u64().and_then(|u| i32::try_from(u).ok()) {
                return i;
            }
            cleaned.viewer_count += 1;
            let f = n.as_f64().unwrap_or(0.0);
            if f.is_nan() || f <= 0.0 {
                0
            } else if f >= i32::MAX as f64 {
                i32::MAX
            } else {
                f as i32
            }
        }
        Some(_) => {
            cleaned.viewer_count += 1;
            0
        }
    }
}

fn check_entry(entry: &Value, now: SystemTime, page: &mut StreamsPage) {
    let stats = &mut page.stats;
    if !entry.is_object() {
        stats.bad.malformed += 1;
        page.unattributed += 1;
        return;
    }
    let Some(broadcaster_id) = id_text(entry, "user_id").filter(|b| is_broadcaster_id(b)) else {
        stats.bad.bad_broadcaster_id += 1;
        page.unattributed += 1;
        return;
    };
    let Some(stream_id) = id_text(entry, "id").filter(|s| is_numeric_id(s)) else {
        stats.bad.bad_stream_id += 1;
        page.rejected_broadcasters.push(broadcaster_id);
        return;
    };
    let c = &mut stats.cleaned;
    let login = match entry.get("user_login") {
        Some(Value::String(s)) if s.is_empty() => None,
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let l = clean_login(s);
            if l.is_none() {
                c.login += 1;
            }
            l
        }
        Some(_) => {
            c.login += 1;
            None
        }
    };
    let game_id = match id_text(entry, "game_id") {
        None => {
            if entry.get("game_id").is_some_and(|g| !g.is_null()) {
                c.game_id += 1;
            }
            String::new()
        }
        Some(g) if g.is_empty() || is_numeric_id(&g) => g,
        Some(_) => {
            c.game_id += 1;
            String::new()
        }
    };
    let started_at = match entry.get("started_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            let t = parse_started_at(s, now);
            if t.is_none() {
                c.started_at += 1;
            }
            t
        }
        Some(_) => {
            c.started_at += 1;
            None
        }
    };
    let stream = LiveStream {
        stream_id,
        broadcaster_id,
        login,
        viewer_count: viewer_count(entry, c),
        title: text_field(entry, "title", MAX_TITLE_CHARS, c),
        game_id,
        game_name: text_field(entry, "game_name", MAX_GAME_NAME_CHARS, c),
        language: text_field(entry, "language", MAX_LANGUAGE_CHARS, c),
        started_at,
    };
    page.streams.push(stream);
}

fn cursor(pagination: Option<&RawValue>) -> Result<Option<String>, PageError> {
    let Some(p) = pagination else {
        return Ok(None);
    };
    let Ok(p) = serde_json::from_str::<Value>(p.get()) else {
        return Err(PageError::BadPagination);
    };
    // Twitch documents `pagination` as an object whose `cursor` is a string,
    // absent on the last page; null and "" are read as absent too. Any other
    // shape cannot say "last page": read as one, it would end the live
    // streams a next page lists.
    let p = match p {
        Value::Null => return Ok(None),
        Value::Object(p) => p,
        _ => return Err(PageError::BadPagination),
    };
    match p.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(c)) if c.is_empty() => Ok(None),
        Some(Value::String(c)) => {
            if c.len() <= MAX_CURSOR_BYTES && c.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(Some(c.clone()))
            } else {
                Err(PageError::BadCursor)
            }
        }
        Some(_) => Err(PageError::BadCursor),
    }
}

/// Parses and checks a Get Streams body; `started_at` is checked against the
/// clock. See [`parse_streams_page_at`].
pub fn parse_streams_page(body: &[u8]) -> Result<StreamsPage, PageError> {
    parse_streams_page_at(body, SystemTime::now())
}

/// Parses and checks a Get Streams body, entry by entry, `now` being the time
/// `started_at` may not lie more than a day beyond. Decisions:
/// - the body is repaired first ([`repair_body`]), so invalid UTF-8 or one
///   unpaired surrogate escape costs no entry;
/// - the page is refused (an error: the batch is retried, then fails and its
///   channels are left as they were) only when it is not a JSON object with a
///   `data` array (an array of its fields is no object), or its cursor is
///   unusable ([`MAX_CURSOR_BYTES`]);
/// - each entry is parsed on its own: one that is not an object (an array of
///   its fields included), or whose fields twitch_sync reads cannot be parsed
///   (a number beyond f64, nesting deeper than 128, a field given twice), is
///   dropped ([`BadEntries::malformed`]), its neighbours are kept;
/// - every entry is a live stream, whatever its `type` (Helix lists only live
///   streams; `type` is "" when Twitch had an error reading it);
/// - ids: `user_id` must be a broadcaster id, `id` 1–20 digits, else the entry
///   is dropped (JSON integers are read as their decimal text);
/// - other fields are cleaned (see [`LiveStream`] and [`Cleaned`]); missing or
///   null text becomes `''`; unknown fields are ignored;
/// - `viewer_count` is clamped to 0..=2^31-1 (non-numbers are 0);
/// - `pagination` may be absent, `{}`, not an object, or carry an empty or
///   non-string cursor: all mean "last page".
pub fn parse_streams_page_at(body: &[u8], now: SystemTime) -> Result<StreamsPage, PageError> {
    let (text, repairs) = repair_body(body);
    let ObjectOnly(raw) = serde_json::from_str::<ObjectOnly<RawPage<'_>>>(&text)?;
    let mut page = StreamsPage {
        cursor: cursor(raw.pagination)?,
        entries: raw.data.len(),
        ..Default::default()
    };
    page.stats.cleaned.encoding = repairs;
    for entry in raw.data {
        match serde_json::from_str::<ObjectOnly<RawEntry>>(entry.get()) {
            Ok(ObjectOnly(e)) => check_entry(&e.into_object(), now, &mut page),
            Err(_) => {
                page.stats.bad.malformed += 1;
                page.unattributed += 1;
            }
        }
    }
    Ok(page)
}

/// Splits the channels to check into Get Streams batches of at most 100 ids,
/// dropping duplicate ids, in the order given.
pub fn plan_batches(broadcaster_ids: &[String]) -> Vec<Vec<String>> {
    let mut seen = HashSet::with_capacity(broadcaster_ids.len());
    let unique: Vec<String> = broadcaster_ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect();
    unique
        .chunks(MAX_IDS_PER_REQUEST)
        .map(<[String]>::to_vec)
        .collect()
}

/// Which broadcaster each stream id was first kept for in this run. Only kept
/// entries are claimed (at most one per broadcaster checked, see
/// [`BatchMerge`]), so the map grows with the channels, never with what Helix
/// sends.
pub type StreamClaims = HashMap<String, String>;

/// One batch's checked answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergedBatch {
    /// Asked channels whose state is known: absent from `live` means not listed (offline).
    pub checked: Vec<String>,
    /// Live streams of checked channels, one per broadcaster, by broadcaster id.
    pub live: Vec<LiveStream>,
    /// Asked channels whose state is unknown this run, because an entry that
    /// may be about them was dropped: they must be left exactly as they were
    /// (neither live nor "not listed"). Never in `checked`.
    pub unknown: Vec<String>,
    pub stats: EntryStats,
}

/// One batch's answer, reduced page by page as the pages arrive, so that what
/// a batch holds is bounded by the broadcasters it asked about (at most one
/// kept stream each), not by how many pages or entries Helix sends: a page is
/// folded in by [`BatchMerge::add_page`] and dropped. Rules, in order, per entry:
/// - an entry for a broadcaster not asked in this batch is dropped
///   ([`BadEntries::foreign_broadcaster`]);
/// - a stream id claimed in this run by another broadcaster (the run's
///   `claims`, or an entry kept earlier in this batch) is dropped
///   ([`BadEntries::stream_id_conflict`]) and makes its broadcaster unknown:
///   the first claim wins;
/// - the stream id kept for the same broadcaster, again, is a plain duplicate
///   (dropped, counted in [`EntryStats::duplicates`]);
/// - of two streams of one broadcaster, the later-started is kept (no start
///   time counts as earliest), silently; the other is forgotten: its stream id
///   is not claimed, and listed again it is compared again (no duplicate).
///
/// [`BatchMerge::finish`] then claims the kept streams in the run's `claims`
/// (a stream id another batch claimed meanwhile is a conflict, as above) and
/// works out the unknown channels: asked broadcasters named by an entry
/// dropped for a bad stream id or a conflict; and, if any entry could not be
/// tied to a broadcaster (malformed, bad `user_id`), every asked broadcaster
/// without a good entry (the dropped one may have been theirs). Good entries of
/// unknown broadcasters are not reported live.
#[derive(Debug, Clone, Default)]
pub struct BatchMerge {
    asked: Vec<String>,
    asked_set: HashSet<String>,
    stats: EntryStats,
    /// Asked broadcasters left as they were (a subset of `asked`).
    unknown: HashSet<String>,
    unattributed: u32,
    /// The stream kept for each asked broadcaster.
    kept: HashMap<String, LiveStream>,
    /// Stream id -> broadcaster of the streams in `kept`.
    kept_ids: HashMap<String, String>,
    /// Asked broadcasters some entry named so far (a subset of `asked`).
    named: HashSet<String>,
}

impl BatchMerge {
    /// A batch asking about `asked` (distinct broadcaster ids).
    pub fn new(asked: &[String]) -> Self {
        BatchMerge {
            asked: asked.to_vec(),
            asked_set: asked.iter().cloned().collect(),
            ..Default::default()
        }
    }

    /// Folds one page in (see the type's rules), `claims` being the stream ids
    /// other batches of this run have claimed so far. Returns whether the page
    /// named an asked broadcaster no earlier page had named: a page that did
    /// not taught nothing a later page could need (see [`Self::all_named`]).
    pub fn add_page(&mut self, page: StreamsPage, claims: &StreamClaims) -> bool {
        self.stats.add(&page.stats);
        self.unattributed += page.unattributed;
        let mut news = false;
        for b in page.rejected_broadcasters {
            if self.asked_set.contains(&b) {
                news |= self.named.insert(b.clone());
                self.unknown.insert(b);
            }
        }
        for s in page.streams {
            if !self.asked_set.contains(&s.broadcaster_id) {
                self.stats.bad.foreign_broadcaster += 1;
                continue;
            }
            if !self.named.contains(&s.broadcaster_id) {
                self.named.insert(s.broadcaster_id.clone());
                news = true;
            }
            let owner = claims
                .get(&s.stream_id)
                .or_else(|| self.kept_ids.get(&s.stream_id));
            match owner {
                Some(owner) if *owner != s.broadcaster_id => {
                    self.stats.bad.stream_id_conflict += 1;
                    self.unknown.insert(s.broadcaster_id);
                    continue;
                }
                Some(_) => {
                    self.stats.duplicates += 1;
                    continue;
                }
                None => {}
            }
            match self.kept.get(&s.broadcaster_id) {
                Some(prev) if prev.started_at >= s.started_at => {}
                prev => {
                    if let Some(prev) = prev {
                        self.kept_ids.remove(&prev.stream_id);
                    }
                    self.kept_ids
                        .insert(s.stream_id.clone(), s.broadcaster_id.clone());
                    self.kept.insert(s.broadcaster_id.clone(), s);
                }
            }
        }
        news
    }

    /// Every asked broadcaster has been named by an entry (kept, duplicate,
    /// conflicting or dropped for a bad stream id): Helix lists at most one live
    /// stream per broadcaster asked by id, so later pages can only repeat or
    /// contradict what is known.
    pub fn all_named(&self) -> bool {
        self.named.len() == self.asked_set.len()
    }

    /// Whether some asked broadcaster in `live` (stored live when the pass
    /// began) has not been named by an entry yet: the one thing a further
    /// page of an id query could change (a missing live channel counts as a
    /// miss; an offline one missing changes nothing).
    pub fn misses_any_of(&self, live: &HashSet<String>) -> bool {
        self.asked
            .iter()
            .any(|b| live.contains(b) && !self.named.contains(b))
    }

    /// Streams held: at most one per asked broadcaster.
    pub fn kept_len(&self) -> usize {
        self.kept.len()
    }

    /// The batch's answer; its kept streams are claimed in `claims` (a stream
    /// id claimed there for another broadcaster since its page was folded in is
    /// a conflict).
    pub fn finish(mut self, claims: &mut StreamClaims) -> MergedBatch {
        // the kept stream ids are distinct, so the order they are claimed in
        // does not matter
        let mut live = Vec::with_capacity(self.kept.len());
        for (broadcaster, s) in self.kept {
            match claims.get(&s.stream_id) {
                Some(owner) if *owner != broadcaster => {
                    self.stats.bad.stream_id_conflict += 1;
                    self.unknown.insert(broadcaster);
                    continue;
                }
                Some(_) => {}
                None => {
                    claims.insert(s.stream_id.clone(), broadcaster);
                }
            }
            live.push(s);
        }
        if self.unattributed > 0 {
            let listed: HashSet<&str> = live.iter().map(|s| s.broadcaster_id.as_str()).collect();
            for b in &self.asked {
                if !listed.contains(b.as_str()) {
                    self.unknown.insert(b.clone());
                }
            }
        }
        let unknown_set = self.unknown;
        live.retain(|s| !unknown_set.contains(&s.broadcaster_id));
        live.sort_by(|a, b| a.broadcaster_id.cmp(&b.broadcaster_id));
        let (unknown, checked) = self
            .asked
            .into_iter()
            .partition(|b| unknown_set.contains(b));
        MergedBatch {
            checked,
            live,
            unknown,
            stats: self.stats,
        }
    }
}

#[cfg(test)]
mod tests;
