//! Get Streams answers: parsing them leniently but deliberately, and the
//! batches of broadcaster ids that the requests carry.

use crate::config::MAX_IDS_PER_REQUEST;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A live broadcast as twitch_sync stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// Twitch's stream id: one per broadcast.
    pub stream_id: String,
    pub broadcaster_id: String,
    pub login: Option<String>,
    /// Clamped to 0..=i32::MAX.
    pub viewer_count: i32,
    pub title: String,
    pub game_id: String,
    pub game_name: String,
    pub language: String,
    /// RFC 3339 as Helix sent it; Postgres parses it (None when missing).
    pub started_at: Option<String>,
}

/// One page of a Get Streams answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamsPage {
    pub streams: Vec<LiveStream>,
    /// Entries left out because they lacked `id` or `user_id`.
    pub skipped_entries: usize,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
struct RawPage {
    data: Vec<Value>,
    #[serde(default)]
    pagination: Option<Value>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn viewer_count(v: &Value) -> i32 {
    match v.get("viewer_count") {
        Some(Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.is_nan() || f <= 0.0 {
                0
            } else if f >= i32::MAX as f64 {
                i32::MAX
            } else {
                f as i32
            }
        }
        _ => 0,
    }
}

/// Parses a Get Streams body. Decisions for imperfect answers:
/// - every entry in `data` is a live stream, whatever its `type` (Helix lists
///   only live streams; `type` is "" when Twitch had an error reading it);
/// - an entry without `id` or `user_id` cannot be stored and is skipped (counted);
/// - other missing or null fields become empty strings; unknown fields are ignored;
/// - `viewer_count` is clamped to 0..=2^31-1;
/// - `pagination` may be absent, `{}`, or carry an empty cursor: all mean "last page".
pub fn parse_streams_page(body: &[u8]) -> Result<StreamsPage, serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    let mut page = StreamsPage {
        cursor: raw
            .pagination
            .as_ref()
            .and_then(|p| p.get("cursor"))
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        ..Default::default()
    };
    for entry in &raw.data {
        let (Some(stream_id), Some(broadcaster_id)) = (text(entry, "id"), text(entry, "user_id"))
        else {
            page.skipped_entries += 1;
            continue;
        };
        if stream_id.is_empty() || broadcaster_id.is_empty() {
            page.skipped_entries += 1;
            continue;
        }
        page.streams.push(LiveStream {
            stream_id,
            broadcaster_id,
            login: text(entry, "user_login").filter(|l| !l.is_empty()),
            viewer_count: viewer_count(entry),
            title: text(entry, "title").unwrap_or_default(),
            game_id: text(entry, "game_id").unwrap_or_default(),
            game_name: text(entry, "game_name").unwrap_or_default(),
            language: text(entry, "language").unwrap_or_default(),
            started_at: text(entry, "started_at").filter(|s| !s.is_empty()),
        });
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

/// Merges the pages of one batch: keeps only streams of the batch's own ids,
/// one per stream id (Helix repeats entries across pages), and one per
/// broadcaster (the most recently started, should Helix ever list two).
pub fn merge_batch(asked: &[String], pages: Vec<StreamsPage>) -> Vec<LiveStream> {
    let asked: HashSet<&str> = asked.iter().map(String::as_str).collect();
    let mut by_broadcaster: HashMap<String, LiveStream> = HashMap::new();
    let mut seen_streams = HashSet::new();
    for s in pages.into_iter().flat_map(|p| p.streams) {
        if !asked.contains(s.broadcaster_id.as_str()) || !seen_streams.insert(s.stream_id.clone()) {
            continue;
        }
        match by_broadcaster.get(&s.broadcaster_id) {
            Some(prev) if prev.started_at >= s.started_at => {}
            _ => {
                by_broadcaster.insert(s.broadcaster_id.clone(), s);
            }
        }
    }
    let mut out: Vec<LiveStream> = by_broadcaster.into_values().collect();
    out.sort_by(|a, b| a.broadcaster_id.cmp(&b.broadcaster_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| (1000 + i).to_string()).collect()
    }

    #[test]
    fn batches_hold_at_most_100_ids() {
        for (n, batches) in [(0, 0), (1, 1), (100, 1), (101, 2), (250, 3), (10_000, 100)] {
            let plan = plan_batches(&ids(n));
            assert_eq!(plan.len(), batches, "n={n}");
            assert!(plan.iter().all(|b| b.len() <= 100 && !b.is_empty()));
            assert_eq!(plan.iter().map(Vec::len).sum::<usize>(), n);
        }
        let mut dup = ids(3);
        dup.push("1000".into());
        assert_eq!(plan_batches(&dup), vec![ids(3)]);
    }

    #[test]
    fn parses_a_documented_answer() {
        let body = br#"{"data":[{"id":"40952121085","user_id":"101051819","user_login":"afro",
            "user_name":"Afro","game_id":"32982","game_name":"Grand Theft Auto V","type":"live",
            "title":"Jacob: Digital Den Laptops & Tablets","tags":["English"],"viewer_count":1490,
            "started_at":"2021-03-10T03:18:11Z","language":"en",
            "thumbnail_url":"https://static-cdn.jtvnw.net/previews-ttv/live_user_afro-{width}x{height}.jpg",
            "tag_ids":[],"is_mature":false}],
            "pagination":{"cursor":"eyJiIjp7IkN1cnNvciI6ImV5SnpJam8zT0RNMk5TNDBORFF4TlRjMU1UY3hOU3dpWkNJNlptRnNjMlVzSW5RaU9uUnlkV1Y5In0sImEiOnsiQ3Vyc29yIjoiZXlKeklqb3hOVGs0TkM0MU56RXhNekExTVRZNU1ESXNJbVFpT21aaGJITmxMQ0owSWpwMGNuVmxmUT09In19"}}"#;
        let page = parse_streams_page(body).unwrap();
        assert_eq!(page.streams.len(), 1);
        let s = &page.streams[0];
        assert_eq!(s.stream_id, "40952121085");
        assert_eq!(s.broadcaster_id, "101051819");
        assert_eq!(s.login.as_deref(), Some("afro"));
        assert_eq!(s.viewer_count, 1490);
        assert_eq!(s.game_name, "Grand Theft Auto V");
        assert_eq!(s.started_at.as_deref(), Some("2021-03-10T03:18:11Z"));
        assert!(page.cursor.is_some());
    }

    #[test]
    fn imperfect_answers_are_handled_deliberately() {
        let body = br#"{"data":[
            {"id":"1","user_id":"10","viewer_count":-5,"type":"","title":null,"extra":{"x":1}},
            {"id":"2","user_id":"11","viewer_count":1e12,"type":"rerun"},
            {"id":"3","viewer_count":7},
            {"user_id":"12"},
            {"id":4,"user_id":13,"viewer_count":"many"}
        ],"pagination":{}}"#;
        let page = parse_streams_page(body).unwrap();
        assert_eq!(page.cursor, None);
        assert_eq!(page.skipped_entries, 2);
        let counts: Vec<(String, i32)> = page
            .streams
            .iter()
            .map(|s| (s.stream_id.clone(), s.viewer_count))
            .collect();
        assert_eq!(
            counts,
            vec![("1".into(), 0), ("2".into(), i32::MAX), ("4".into(), 0)]
        );
        assert_eq!(page.streams[0].title, "");
        assert_eq!(page.streams[2].broadcaster_id, "13");
        // pagination missing altogether, or an empty cursor: last page
        assert_eq!(parse_streams_page(br#"{"data":[]}"#).unwrap().cursor, None);
        assert_eq!(
            parse_streams_page(br#"{"data":[],"pagination":{"cursor":""}}"#)
                .unwrap()
                .cursor,
            None
        );
        // not an answer at all
        assert!(parse_streams_page(b"<html>").is_err());
        assert!(parse_streams_page(br#"{"data":[{"id":"1""#).is_err());
        assert!(parse_streams_page(br#"{"error":"x"}"#).is_err());
    }

    #[test]
    fn merging_drops_duplicates_and_strangers() {
        let s = |sid: &str, bid: &str, started: &str| LiveStream {
            stream_id: sid.into(),
            broadcaster_id: bid.into(),
            login: None,
            viewer_count: 1,
            title: String::new(),
            game_id: String::new(),
            game_name: String::new(),
            language: String::new(),
            started_at: Some(started.into()),
        };
        let p1 = StreamsPage {
            streams: vec![s("a", "1", "t1"), s("b", "2", "t1")],
            ..Default::default()
        };
        let p2 = StreamsPage {
            streams: vec![s("b", "2", "t1"), s("x", "99", "t1"), s("c", "1", "t2")],
            ..Default::default()
        };
        let merged = merge_batch(&["1".into(), "2".into()], vec![p1, p2]);
        let got: Vec<(&str, &str)> = merged
            .iter()
            .map(|s| (s.broadcaster_id.as_str(), s.stream_id.as_str()))
            .collect();
        assert_eq!(got, vec![("1", "c"), ("2", "b")]);
    }
}
