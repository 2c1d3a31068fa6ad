use super::*;
use std::time::Duration;

/// 2026-01-01T00:00:00Z: every test parses "now" at this instant.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn parse(body: &[u8]) -> StreamsPage {
    parse_streams_page_at(body, now()).unwrap()
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| (1000 + i).to_string()).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// One batch's pages merged at once: [`BatchMerge`], fed every page, then
/// finished (the engine folds pages in as they arrive instead).
fn merge_batch(
    asked: &[String],
    pages: Vec<StreamsPage>,
    claims: &mut StreamClaims,
) -> MergedBatch {
    let mut merge = BatchMerge::new(asked);
    for page in pages {
        merge.add_page(page, claims);
    }
    merge.finish(claims)
}

/// A page with the given entries (JSON text) and no cursor.
fn page_of(entries: &[String]) -> Vec<u8> {
    format!(r#"{{"data":[{}],"pagination":{{}}}}"#, entries.join(",")).into_bytes()
}

fn entry(id: &str, user: &str) -> String {
    format!(
        r#"{{"id":"{id}","user_id":"{user}","user_login":"u{user}","viewer_count":5,"title":"t","game_id":"1","game_name":"g","language":"en","started_at":"2025-12-31T20:00:00Z"}}"#
    )
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
    let page = parse(body);
    assert_eq!(
        page.streams,
        vec![LiveStream {
            stream_id: "40952121085".into(),
            broadcaster_id: "101051819".into(),
            login: Some("afro".into()),
            viewer_count: 1490,
            title: "Jacob: Digital Den Laptops & Tablets".into(),
            game_id: "32982".into(),
            game_name: "Grand Theft Auto V".into(),
            language: "en".into(),
            started_at: Some(1_615_346_291_000_000),
        }]
    );
    assert_eq!(
        page.streams[0].started_at_rfc3339().as_deref(),
        Some("2021-03-10T03:18:11Z")
    );
    assert_eq!(page.stats, EntryStats::default());
    assert_eq!((page.entries, page.unattributed), (1, 0));
    assert!(page.cursor.as_deref().unwrap().starts_with("eyJiIjp7"));
}

#[test]
fn imperfect_answers_are_handled_deliberately() {
    let body = br#"{"data":[
        {"id":"1","user_id":"10","viewer_count":-5,"type":"","title":null,"extra":{"x":1}},
        {"id":"2","user_id":"11","viewer_count":1e12,"type":"rerun"},
        {"id":"3","viewer_count":7},
        {"user_id":"12"},
        {"id":4,"user_id":13,"viewer_count":"many"},
        {"id":"5","user_id":"14","viewer_count":12.7,"user_login":"","game_id":null}
    ],"pagination":{}}"#;
    let page = parse(body);
    assert_eq!(page.cursor, None);
    let counts: Vec<(&str, &str, i32)> = page
        .streams
        .iter()
        .map(|s| {
            (
                s.stream_id.as_str(),
                s.broadcaster_id.as_str(),
                s.viewer_count,
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("1", "10", 0),
            ("2", "11", i32::MAX),
            ("4", "13", 0),
            ("5", "14", 12)
        ]
    );
    assert_eq!(page.streams[0].title, "");
    assert_eq!(page.streams[3].login, None);
    assert_eq!(page.streams[3].game_id, "");
    // "3" has no user_id: cannot be tied to anyone; "12" has no stream id.
    assert_eq!(page.stats.bad.bad_broadcaster_id, 1);
    assert_eq!(page.stats.bad.bad_stream_id, 1);
    assert_eq!(page.rejected_broadcasters, strs(&["12"]));
    assert_eq!((page.entries, page.unattributed), (6, 1));
    // -5, 1e12, "many", 12.7 were clamped
    assert_eq!(page.stats.cleaned.viewer_count, 4);
    assert_eq!(page.stats.cleaned.total(), 4);

    // pagination missing altogether, or an empty or null cursor: last page
    // (a cursor or pagination of another type refuses the page:
    // unusable_cursors_refuse_the_page)
    for body in [
        &br#"{"data":[]}"#[..],
        br#"{"data":[],"pagination":{"cursor":""}}"#,
        br#"{"data":[],"pagination":{"cursor":null}}"#,
        br#"{"data":[],"pagination":null}"#,
    ] {
        assert_eq!(parse(body).cursor, None);
    }
    // not an answer at all
    for body in [
        &b"<html>"[..],
        br#"{"data":[{"id":"1""#,
        br#"{"error":"x"}"#,
        br#"{"data":null}"#,
        br#"{"data":{"id":"1"}}"#,
        br#"[]"#,
        b"",
        b"\xff\xfe",
    ] {
        assert!(parse_streams_page_at(body, now()).is_err(), "{body:?}");
    }
}

#[test]
fn id_rules() {
    for ok in [
        "1",
        "141981764",
        "10000000000000000000",
        "99999999999999999999",
    ] {
        assert!(is_broadcaster_id(ok), "{ok}");
        assert!(is_numeric_id(ok), "{ok}");
    }
    for bad in [
        "",
        "0",
        "0123",
        "-5",
        " 123",
        "123 ",
        "12a",
        "１２３", // full-width digits
        "100000000000000000000",
        "1\u{0}",
    ] {
        assert!(!is_broadcaster_id(bad), "{bad:?}");
    }
    // stream ids and game ids: digits, leading zeros allowed
    for ok in ["0", "0123", "40952121085", "00000000000000000000"] {
        assert!(is_numeric_id(ok), "{ok}");
    }
    for bad in [
        "",
        "abc",
        "1.5",
        "1e3",
        "-1",
        "123456789012345678901",
        "4\u{0}2",
    ] {
        assert!(!is_numeric_id(bad), "{bad:?}");
    }
    assert!(!is_numeric_id(&"1".repeat(6 * 1024)));
}

#[test]
fn login_rule() {
    assert_eq!(clean_login("TwitchDev").as_deref(), Some("twitchdev"));
    assert_eq!(clean_login("a_b_9").as_deref(), Some("a_b_9"));
    assert_eq!(clean_login(&"a".repeat(25)), Some("a".repeat(25)));
    for bad in [
        "",
        "a b",
        "a-b",
        "ä",
        "\u{212A}elvin", // KELVIN SIGN: Unicode-lowercases to 'k'; ASCII lowercasing keeps it out
        "x\u{0}",
        "'; DROP TABLE x;--",
    ] {
        assert_eq!(clean_login(bad), None, "{bad:?}");
    }
    assert_eq!(clean_login(&"a".repeat(26)), None);
}

#[test]
fn text_is_cleaned() {
    assert_eq!(clean_text("plain", 10), ("plain".into(), false));
    assert_eq!(clean_text("a\0b\0", 10), ("ab".into(), true));
    // caps count characters, not bytes: never cut inside a character
    assert_eq!(clean_text("ééééé", 3), ("ééé".into(), true));
    assert_eq!(clean_text("ééé", 3), ("ééé".into(), false));
    assert_eq!(clean_text("🎮🎮\0🎮🎮", 3), ("🎮🎮🎮".into(), true));
    let (long, changed) = clean_text(&"x".repeat(10_000), MAX_TITLE_CHARS);
    assert_eq!((long.chars().count(), changed), (MAX_TITLE_CHARS, true));
}

#[test]
fn started_at_rule() {
    let n = now();
    let p = |s: &str| parse_started_at(s, n);
    assert_eq!(p("2021-03-10T03:18:11Z"), Some(1_615_346_291_000_000));
    assert_eq!(p("2021-03-10T03:18:11.5Z"), Some(1_615_346_291_500_000));
    assert_eq!(
        p("2021-03-10T03:18:11.123456Z"),
        Some(1_615_346_291_123_456)
    );
    // fractional seconds of any length (beyond microseconds: truncated)
    assert_eq!(
        p("2021-03-10T03:18:11.1234567891234567890123Z"),
        Some(1_615_346_291_123_456)
    );
    assert_eq!(p("2021-03-10T05:18:11+02:00"), Some(1_615_346_291_000_000));
    assert_eq!(p("2021-03-10t03:18:11z"), Some(1_615_346_291_000_000));
    assert_eq!(p("2021-03-10 03:18:11Z"), Some(1_615_346_291_000_000));
    // the range: 2007-01-01 .. now + 1 day
    assert_eq!(p("2007-01-01T00:00:00Z"), Some(EARLIEST_STARTED_AT_MICROS));
    assert_eq!(p("2006-12-31T23:59:59.999Z"), None);
    assert_eq!(p("2026-01-02T00:00:00Z"), Some(1_767_312_000_000_000));
    assert_eq!(p("2026-01-02T00:00:00.000001Z"), None);
    for bad in [
        "",
        "infinity",
        "-infinity",
        "Infinity",
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2021-03-10",
        "2021-03-10T03:18:11",       // no offset
        "2021-03-10T03:18Z",         // no seconds
        "2021-13-10T03:18:11Z",      // month 13
        "2021-02-30T03:18:11Z",      // no such day
        "2021-03-10T25:18:11Z",      // hour 25
        "2021-03-10X03:18:11Z",      // separator
        "2021-03-10\u{0}03:18:11Z",  // NUL separator
        "2021-03-10T03:18:11Z\u{0}", // trailing NUL
        "2021-03-10T03:18:11Zjunk",
        "2021-03-10T03:18:11.Z",
        " 2021-03-10T03:18:11Z",
        "1615346291",
        "２０２１-03-10T03:18:11Z",
    ] {
        assert_eq!(p(bad), None, "{bad:?}");
    }
    // a clock before 1970 does not panic
    assert_eq!(parse_started_at("2021-03-10T03:18:11Z", UNIX_EPOCH), None);
    assert_eq!(
        micros_to_rfc3339(1_615_346_291_500_000).as_deref(),
        Some("2021-03-10T03:18:11.5Z")
    );
}

#[test]
fn body_repairs() {
    let r = |s: &[u8]| {
        let (t, n) = repair_body(s);
        (t.into_owned(), n)
    };
    // nothing to do: borrowed, untouched
    let (t, n) = repair_body(br#"{"a":"x\n\u00e9"}"#);
    assert!(matches!(t, Cow::Borrowed(r#"{"a":"x\n\u00e9"}"#)), "{t}");
    assert_eq!(n, 0);
    // a valid pair stays
    assert_eq!(
        r(br#"{"a":"x\ud83c\udfae\n"}"#),
        (r#"{"a":"x\ud83c\udfae\n"}"#.into(), 0)
    );
    // lone high, lone low, high followed by a non-surrogate escape, high at the end
    assert_eq!(r(br#"["\ud800"]"#), (r#"["\ufffd"]"#.into(), 1));
    assert_eq!(r(br#"["a\udc00b"]"#), (r#"["a\ufffdb"]"#.into(), 1));
    assert_eq!(r(br#"["\ud800\u0041"]"#), (r#"["\ufffd\u0041"]"#.into(), 1));
    assert_eq!(
        r(br#"["\uD800\uD800\uDC00"]"#),
        (r#"["\ufffd\uD800\uDC00"]"#.into(), 1)
    );
    assert_eq!(r(br#"["\udc00\ud800"]"#), (r#"["\ufffd\ufffd"]"#.into(), 2));
    // an escaped backslash followed by text: not an escape
    assert_eq!(r(br#"["\\ud800"]"#), (r#"["\\ud800"]"#.into(), 0));
    // an escaped backslash, then a real lone escape
    assert_eq!(r(br#"["\\\ud800"]"#), (r#"["\\\ufffd"]"#.into(), 1));
    // outside strings nothing is touched
    assert_eq!(r(b"[1,\n2]"), ("[1,\n2]".into(), 0));
    // raw control characters inside strings become escapes
    assert_eq!(r(b"[\"a\0b\tc\"]"), (r#"["a\u0000b\u0009c"]"#.into(), 2));
    // invalid UTF-8: each bad sequence becomes U+FFFD
    assert_eq!(
        r(b"[\"a\xffb\xc3\"]"),
        ("[\"a\u{FFFD}b\u{FFFD}\"]".into(), 2)
    );
    // a truncated escape is left for the parser to refuse
    assert_eq!(r(br#"["\ud8"]"#), (r#"["\ud8"]"#.into(), 0));
    assert_eq!(r(b"[\"\\"), ("[\"\\".into(), 0));
    // the repaired text parses, and means what it should
    let v: Vec<String> =
        serde_json::from_str(&r(br#"["\ud800x","\\ud800","\ud83c\udfae"]"#).0).unwrap();
    assert_eq!(v, vec!["\u{FFFD}x", "\\ud800", "🎮"]);
}

#[test]
fn one_odd_title_does_not_cost_its_neighbours() {
    let mut entries: Vec<String> = (0..99)
        .map(|i| entry(&(500 + i).to_string(), &(100 + i).to_string()))
        .collect();
    entries.push(
        r#"{"id":"9","user_id":"9","title":"cut in UTF-16 \ud83c","game_name":"\udfae","viewer_count":3}"#
            .into(),
    );
    let page = parse(&page_of(&entries));
    assert_eq!(page.streams.len(), 100);
    let odd = &page.streams[99];
    assert_eq!(odd.title, "cut in UTF-16 \u{FFFD}");
    assert_eq!(odd.game_name, "\u{FFFD}");
    assert_eq!(odd.viewer_count, 3);
    assert_eq!(page.stats.cleaned.encoding, 2);
    assert_eq!(page.stats.bad, BadEntries::default());
}

#[test]
fn hostile_bodies_have_exact_outcomes() {
    let huge_id = "7".repeat(6 * 1024);
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let entries = vec![
        // 0: NUL in the stream id: refused, broadcaster 201 unknown
        r#"{"id":"42\u0000","user_id":"201","viewer_count":1}"#.to_string(),
        // 1: a 6 KB stream id: refused
        format!(r#"{{"id":"{huge_id}","user_id":"202"}}"#),
        // 2: NUL in the broadcaster id: refused, not attributable
        r#"{"id":"43","user_id":"203\u0000","viewer_count":1}"#.to_string(),
        // 3: raw NUL byte in the title (invalid JSON, repaired), NUL escapes in the game
        "{\"id\":\"44\",\"user_id\":\"204\",\"title\":\"a\0b\",\"game_name\":\"g\\u0000\\u0000\"}"
            .to_string(),
        // 4: a lone surrogate in the title and a bad login, a bad game id, a bad start
        r#"{"id":"45","user_id":"205","user_login":"Bad Login","title":"x\udbff","game_id":"12a","started_at":"infinity","viewer_count":10}"#.to_string(),
        // 5: the epoch as start, a 1 MB-ish title, a huge language, a login with NUL
        format!(
            r#"{{"id":"46","user_id":"206","user_login":"ok\u0000","started_at":"1970-01-01T00:00:00Z","title":"{}","language":"{}"}}"#,
            "é".repeat(5000),
            "l".repeat(100)
        ),
        // 6, 7, 8, 9: not objects
        "null".to_string(),
        "\"207\"".to_string(),
        "[\"id\",\"208\"]".to_string(),
        "12".to_string(),
        // 10: nested garbage deeper than the parser's limit in a field read: malformed
        format!(r#"{{"id":"47","user_id":"209","title":{deep}}}"#),
        // 11: nesting far deeper, in a field not read: skipped, the entry is kept
        format!(r#"{{"id":"48","user_id":"210","x":{very_deep}}}"#),
        // 12: a number beyond f64 in the viewer count: malformed
        r#"{"id":"49","user_id":"211","viewer_count":1e400}"#.to_string(),
        // 13: wrong types everywhere but the ids
        r#"{"id":50,"user_id":212,"user_login":["x"],"title":{"a":1},"game_id":3.5,"game_name":true,"language":7,"started_at":12345,"viewer_count":{"n":1}}"#.to_string(),
        // 14: ids of the wrong type
        r#"{"id":true,"user_id":"213"}"#.to_string(),
        r#"{"id":"51","user_id":1.5}"#.to_string(),
        r#"{"id":"52","user_id":-214}"#.to_string(),
        // 17: a good entry, with a start a day and a minute ahead
        r#"{"id":"53","user_id":"215","user_login":"Good_One","started_at":"2026-01-02T00:01:00Z","viewer_count":7}"#.to_string(),
    ];
    let page = parse(&page_of(&entries));
    assert_eq!(page.entries, 18);
    let kept: Vec<(&str, &str)> = page
        .streams
        .iter()
        .map(|s| (s.stream_id.as_str(), s.broadcaster_id.as_str()))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("44", "204"),
            ("45", "205"),
            ("46", "206"),
            ("48", "210"),
            ("50", "212"),
            ("53", "215")
        ]
    );
    let by = |b: &str| page.streams.iter().find(|s| s.broadcaster_id == b).unwrap();
    assert_eq!(
        (by("204").title.as_str(), by("204").game_name.as_str()),
        ("ab", "g")
    );
    let s = by("205");
    assert_eq!(
        (
            s.login.clone(),
            s.title.as_str(),
            s.game_id.as_str(),
            s.started_at,
            s.viewer_count
        ),
        (None, "x\u{FFFD}", "", None, 10)
    );
    let s = by("206");
    assert_eq!((s.login.clone(), s.started_at), (None, None));
    assert_eq!(s.title, "é".repeat(MAX_TITLE_CHARS));
    assert_eq!(s.language, "l".repeat(MAX_LANGUAGE_CHARS));
    let s = by("212");
    assert_eq!(
        (
            s.login.clone(),
            s.title.as_str(),
            s.game_id.as_str(),
            s.game_name.as_str(),
            s.language.as_str(),
            s.started_at,
            s.viewer_count
        ),
        (None, "", "", "", "7", None, 0)
    );
    let s = by("215");
    assert_eq!((s.login.as_deref(), s.started_at), (Some("good_one"), None));
    assert_eq!(page.rejected_broadcasters, strs(&["201", "202", "213"]));
    assert_eq!(page.unattributed, 9);
    assert_eq!(
        page.stats.bad,
        BadEntries {
            malformed: 6,
            bad_stream_id: 3,
            bad_broadcaster_id: 3,
            stream_id_conflict: 0,
            foreign_broadcaster: 0,
        }
    );
    assert_eq!(
        page.stats.cleaned,
        Cleaned {
            login: 3,        // 205, 206, 212
            text: 6, // 204 title + game, 206 title + language, 212 title + game name (language 7 is a number, kept as text)
            game_id: 2, // 205, 212
            started_at: 4, // 205, 206, 212, 215
            viewer_count: 1, // 212
            encoding: 2, // 204's raw NUL, 205's lone surrogate
        }
    );
    // nothing stored holds a NUL
    assert!(page.streams.iter().all(|s| ![
        &s.stream_id,
        &s.broadcaster_id,
        &s.title,
        &s.game_id,
        &s.game_name,
        &s.language
    ]
    .iter()
    .any(|t| t.contains('\0'))));
}

#[test]
fn an_entry_or_a_page_written_as_an_array_is_not_read_as_an_object() {
    // serde's derived Deserialize takes a struct written as an array of its fields:
    // this entry would read as id 7000000099 of broadcaster 100000002, live.
    let array_entry =
        r#"["7000000099","100000002","arrayman","array title",null,null,"en",null,5]"#;
    let page = parse(&page_of(&[entry("10", "1"), array_entry.to_string()]));
    assert_eq!(pairs(&page.streams), vec![("1", "10")]);
    assert_eq!(page.stats.bad.malformed, 1);
    assert_eq!(page.stats.bad.total(), 1);
    assert_eq!((page.entries, page.unattributed), (2, 1));
    // an empty array, or one of a single id, is no object either
    let page = parse(&page_of(&["[]".to_string(), r#"["11"]"#.to_string()]));
    assert!(page.streams.is_empty());
    assert_eq!((page.stats.bad.malformed, page.unattributed), (2, 2));

    // a whole answer as an array of its fields [data, pagination]: refused like any
    // answer that is not an object with a `data` array
    for body in [
        format!(r#"[[{}], null]"#, entry("10", "1")),
        format!(r#"[[{}], {{"cursor":"abc"}}]"#, entry("10", "1")),
        format!(r#"[[{}]]"#, entry("10", "1")),
    ] {
        assert!(
            parse_streams_page_at(body.as_bytes(), now()).is_err(),
            "{body}"
        );
    }
    // the object form of the same still reads, fields in any order
    let body = format!(r#"{{"pagination":{{}},"data":[{}]}}"#, entry("10", "1"));
    assert_eq!(pairs(&parse(body.as_bytes()).streams), vec![("1", "10")]);
}

#[test]
fn unusable_cursors_refuse_the_page() {
    let long = format!(
        r#"{{"data":[],"pagination":{{"cursor":"{}"}}}}"#,
        "c".repeat(MAX_CURSOR_BYTES + 1)
    );
    let ok = format!(
        r#"{{"data":[],"pagination":{{"cursor":"{}"}}}}"#,
        "c".repeat(MAX_CURSOR_BYTES)
    );
    assert!(matches!(
        parse_streams_page_at(long.as_bytes(), now()),
        Err(PageError::BadCursor)
    ));
    assert_eq!(
        parse(ok.as_bytes()).cursor.map(|c| c.len()),
        Some(MAX_CURSOR_BYTES)
    );
    // a sibling serde_json cannot read makes the cursor unknown, not absent
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for sibling in ["1e999", deep.as_str()] {
        let body = format!(r#"{{"data":[],"pagination":{{"cursor":"abc","x":{sibling}}}}}"#);
        assert!(
            matches!(
                parse_streams_page_at(body.as_bytes(), now()),
                Err(PageError::BadPagination)
            ),
            "{sibling}"
        );
    }
    // a pagination or cursor of another JSON type than Twitch documents is
    // no "last page" either (it was, and ended the live streams of later pages)
    for (pagination, refused_as) in [
        (r#""p2""#, "pagination"),
        ("12345", "pagination"),
        ("[]", "pagination"),
        (r#"{"cursor":12345}"#, "cursor"),
        (r#"{"cursor":{"a":1}}"#, "cursor"),
        (r#"{"cursor":true}"#, "cursor"),
    ] {
        let body = format!(r#"{{"data":[],"pagination":{pagination}}}"#);
        let got = parse_streams_page_at(body.as_bytes(), now());
        assert!(
            match refused_as {
                "pagination" => matches!(got, Err(PageError::BadPagination)),
                _ => matches!(got, Err(PageError::BadCursor)),
            },
            "{pagination}: {got:?}"
        );
    }
    // and the documented ways of saying "no next page" still say it
    for pagination in ["null", "{}", r#"{"cursor":null}"#, r#"{"cursor":""}"#] {
        let body = format!(r#"{{"data":[],"pagination":{pagination}}}"#);
        assert_eq!(parse(body.as_bytes()).cursor, None, "{pagination}");
    }
    for c in [r#"a\u0000b"#, "a b", "a\\nb", "é"] {
        let body = format!(r#"{{"data":[],"pagination":{{"cursor":"{c}"}}}}"#);
        assert!(
            matches!(
                parse_streams_page_at(body.as_bytes(), now()),
                Err(PageError::BadCursor)
            ),
            "{c}"
        );
    }
}

fn stream(sid: &str, bid: &str, started: Option<i64>) -> LiveStream {
    LiveStream {
        stream_id: sid.into(),
        broadcaster_id: bid.into(),
        login: None,
        viewer_count: 1,
        title: String::new(),
        game_id: String::new(),
        game_name: String::new(),
        language: String::new(),
        started_at: started,
    }
}

fn pairs(live: &[LiveStream]) -> Vec<(&str, &str)> {
    live.iter()
        .map(|s| (s.broadcaster_id.as_str(), s.stream_id.as_str()))
        .collect()
}

#[test]
fn merging_drops_duplicates_and_strangers() {
    let p1 = StreamsPage {
        streams: vec![stream("10", "1", Some(1)), stream("20", "2", Some(1))],
        ..Default::default()
    };
    let p2 = StreamsPage {
        streams: vec![
            stream("20", "2", Some(1)),
            stream("99", "99", Some(1)),
            stream("30", "1", Some(2)),
            stream("31", "1", None),
        ],
        ..Default::default()
    };
    let mut claims = StreamClaims::new();
    let m = merge_batch(&strs(&["1", "2", "3"]), vec![p1, p2], &mut claims);
    assert_eq!(pairs(&m.live), vec![("1", "30"), ("2", "20")]);
    assert_eq!(m.checked, strs(&["1", "2", "3"]));
    assert_eq!(m.unknown, Vec::<String>::new());
    assert_eq!(m.stats.duplicates, 1);
    assert_eq!(m.stats.bad.foreign_broadcaster, 1);
    assert_eq!(m.stats.bad.total(), 1);
    // only kept streams are claimed: 10 was superseded by 30, 31 lost to 30
    assert_eq!(claims.len(), 2);
    assert_eq!((claims["30"].as_str(), claims["20"].as_str()), ("1", "2"));
}

/// A page of `n` distinct stream ids from `first_id` on, all for `broadcaster`,
/// started at `started`.
fn flood(broadcaster: &str, first_id: u64, n: u64, started: Option<i64>) -> StreamsPage {
    StreamsPage {
        streams: (first_id..first_id + n)
            .map(|i| stream(&i.to_string(), broadcaster, started))
            .collect(),
        entries: n as usize,
        ..Default::default()
    }
}

#[test]
fn a_batch_holds_one_stream_per_asked_broadcaster_whatever_helix_sends() {
    // 11 pages of 20,000 distinct stream ids each for asked broadcaster 1 (an id
    // query lists at most one live stream per broadcaster), and the same for a
    // broadcaster nobody asked about
    let mut claims = StreamClaims::new();
    let mut merge = BatchMerge::new(&strs(&["1", "2", "3"]));
    for p in 0..11u64 {
        let mut page = flood("1", 1_000_000 + p * 20_000, 20_000, Some(5));
        page.streams
            .extend(flood("99", 9_000_000 + p * 20_000, 20_000, Some(5)).streams);
        merge.add_page(page, &claims);
        assert_eq!(merge.kept_len(), 1, "page {p}");
    }
    // broadcaster 2: one stream on a page of its own, listed twice
    merge.add_page(flood("2", 20, 1, Some(1)), &claims);
    merge.add_page(flood("2", 20, 1, Some(1)), &claims);
    assert_eq!(merge.kept_len(), 2);
    let m = merge.finish(&mut claims);
    // the first listed of equal start times is kept, the others forgotten
    assert_eq!(pairs(&m.live), vec![("1", "1000000"), ("2", "20")]);
    assert_eq!(m.checked, strs(&["1", "2", "3"]));
    assert_eq!(claims.len(), 2, "claims hold kept streams only");
    assert_eq!(m.stats.bad.foreign_broadcaster, 220_000);
    assert_eq!(m.stats.duplicates, 1);
    assert_eq!(m.stats.bad.total(), 220_000);

    // the same through merge_batch: claims stay bounded by the channels
    let mut claims = StreamClaims::new();
    let pages = (0..11u64)
        .map(|p| flood("1", 1_000_000 + p * 5_000, 5_000, Some(p as i64)))
        .collect();
    let m = merge_batch(&strs(&["1"]), pages, &mut claims);
    // later-started wins: the first stream of the last page
    assert_eq!(pairs(&m.live), vec![("1", "1050000")]);
    assert_eq!(claims.len(), 1);
    assert_eq!(m.stats, EntryStats::default());
}

#[test]
fn conflicts_and_duplicates_count_against_kept_streams() {
    let mut claims = StreamClaims::new();
    // an earlier batch kept stream 10 for broadcaster 1
    merge_batch(&strs(&["1"]), vec![flood("1", 10, 1, Some(1))], &mut claims);
    let mut merge = BatchMerge::new(&strs(&["5", "6", "7", "8"]));
    assert!(merge.add_page(
        StreamsPage {
            streams: vec![
                stream("10", "5", Some(1)), // claimed by 1 in the run: conflict, 5 unknown
                stream("11", "6", Some(1)), // kept for 6
                stream("11", "7", Some(1)), // kept for 6 in this batch: conflict, 7 unknown
                stream("11", "6", Some(1)), // duplicate
                stream("12", "6", Some(2)), // later-started: replaces 11 for 6
                stream("11", "8", Some(1)), // 11 was forgotten: 8 keeps it
            ],
            ..Default::default()
        },
        &claims,
    ));
    assert!(merge.all_named());
    // a page naming nobody new makes no progress
    assert!(!merge.add_page(flood("6", 500, 3, Some(0)), &claims));
    assert!(!merge.add_page(StreamsPage::default(), &claims));
    // another batch claims 11 for someone else before this one finishes
    claims.insert("11".into(), "42".into());
    let m = merge.finish(&mut claims);
    assert_eq!(pairs(&m.live), vec![("6", "12")]);
    assert_eq!(m.checked, strs(&["6"]));
    assert_eq!(m.unknown, strs(&["5", "7", "8"]));
    assert_eq!(m.stats.bad.stream_id_conflict, 3);
    assert_eq!(m.stats.duplicates, 1);
    assert_eq!(claims.len(), 3);
    assert_eq!(claims["12"], "6");
    assert_eq!(claims["10"], "1");
}

#[test]
fn a_stream_id_belongs_to_the_first_broadcaster_listing_it() {
    let mut claims = StreamClaims::new();
    let first = merge_batch(
        &strs(&["1", "2"]),
        vec![StreamsPage {
            streams: vec![stream("10", "1", Some(1))],
            ..Default::default()
        }],
        &mut claims,
    );
    assert_eq!(pairs(&first.live), vec![("1", "10")]);
    // a later batch lists stream 10 for broadcaster 5, and again within the batch for 6
    let second = merge_batch(
        &strs(&["5", "6", "7"]),
        vec![StreamsPage {
            streams: vec![
                stream("10", "5", Some(1)),
                stream("11", "6", Some(1)),
                stream("11", "7", Some(1)),
                stream("11", "6", Some(1)),
            ],
            ..Default::default()
        }],
        &mut claims,
    );
    assert_eq!(pairs(&second.live), vec![("6", "11")]);
    assert_eq!(second.checked, strs(&["6"]));
    // 5 and 7 are neither live nor offline this run: left as they were
    assert_eq!(second.unknown, strs(&["5", "7"]));
    assert_eq!(second.stats.bad.stream_id_conflict, 2);
    assert_eq!(second.stats.duplicates, 1);
    assert_eq!(claims["10"], "1");
    assert_eq!(claims["11"], "6");
}

#[test]
fn dropped_entries_leave_their_broadcasters_unknown() {
    let mut claims = StreamClaims::new();
    // broadcaster 2's entry had a bad stream id; 3 also has a good entry, but a
    // bad one too: both unknown. 9 was not asked: nothing to leave alone.
    let page = StreamsPage {
        streams: vec![stream("10", "1", Some(1)), stream("30", "3", Some(1))],
        rejected_broadcasters: strs(&["2", "3", "9"]),
        ..Default::default()
    };
    let m = merge_batch(&strs(&["1", "2", "3", "4"]), vec![page], &mut claims);
    assert_eq!(pairs(&m.live), vec![("1", "10")]);
    assert_eq!(m.checked, strs(&["1", "4"]));
    assert_eq!(m.unknown, strs(&["2", "3"]));

    // an entry that cannot be tied to anyone: every asked channel without a good
    // entry is unknown (it may have been theirs); listed ones stay checked
    let page = StreamsPage {
        streams: vec![stream("50", "5", Some(1))],
        unattributed: 1,
        stats: EntryStats {
            bad: BadEntries {
                malformed: 1,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let m = merge_batch(&strs(&["5", "6", "7"]), vec![page], &mut claims);
    assert_eq!(pairs(&m.live), vec![("5", "50")]);
    assert_eq!(m.checked, strs(&["5"]));
    assert_eq!(m.unknown, strs(&["6", "7"]));
    assert_eq!(m.stats.bad.malformed, 1);
}

#[test]
fn a_hostile_page_end_to_end() {
    // parse then merge: what the engine does with one page
    let entries = vec![
        entry("100", "1"),
        r#"{"id":"1\u0000","user_id":"2"}"#.to_string(),
        entry("300", "3"),
        entry("300", "4"),
        entry("500", "55"),
    ];
    let page = parse(&page_of(&entries));
    let mut claims = StreamClaims::new();
    let m = merge_batch(&strs(&["1", "2", "3", "4", "6"]), vec![page], &mut claims);
    assert_eq!(pairs(&m.live), vec![("1", "100"), ("3", "300")]);
    assert_eq!(m.checked, strs(&["1", "3", "6"]));
    assert_eq!(m.unknown, strs(&["2", "4"]));
    assert_eq!(
        m.stats.bad,
        BadEntries {
            malformed: 0,
            bad_stream_id: 1,
            bad_broadcaster_id: 0,
            stream_id_conflict: 1,
            foreign_broadcaster: 1,
        }
    );
    assert_eq!(m.live[0].login.as_deref(), Some("u1"));
    assert_eq!(
        m.live[0].started_at_rfc3339().as_deref(),
        Some("2025-12-31T20:00:00Z")
    );
}
