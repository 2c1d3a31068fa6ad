//! What a pass holds in memory is bounded by the channels it checks, not by
//! what Helix sends: a batch answered with page after page of entries for its
//! broadcasters keeps one stream per broadcaster. Measured with a counting
//! allocator (this test binary holds this one test, so nothing else allocates
//! beside it but the simulator it talks to).

mod common;

use helix_sim::world::WorldConfig;
use helix_sim::{Config, Fault, FaultKind, Simulator};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use twitch_sync_core::{sync_streaming, BatchBuffer, BatchResult};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, l, new_size);
        if !q.is_null() {
            CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A cursor the simulator accepts (hex of `{"o":offset}`).
fn sim_cursor(offset: u64) -> String {
    format!("{{\"o\":{offset}}}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const MIB: usize = 1024 * 1024;

#[test]
fn pages_of_entries_for_asked_broadcasters_are_not_all_held() {
    let sim = Simulator::start(Config {
        world: WorldConfig {
            channels: 300,
            live_fraction: 0.0,
            ..Default::default()
        },
        ..Config::default()
    })
    .unwrap();
    let ids: Vec<String> = sim.world(|w| w.channels.iter().map(|c| c.id.clone()).collect());
    // The middle batch is answered with 11 pages (the first and 10 more, the
    // cap), each naming one more asked broadcaster (so paging goes on) and
    // holding 40,000 distinct stream ids for ids[100] (about 1.6 MB a page).
    const K: u64 = 40_000;
    let f = &ids[100];
    for p in 0..11u64 {
        let mut entries: Vec<String> = (0..K)
            .map(|i| format!(r#"{{"id":"{}","user_id":"{f}"}}"#, 800_000_000 + p * K + i))
            .collect();
        entries.push(format!(
            r#"{{"id":"{}","user_id":"{}"}}"#,
            900 + p,
            ids[101 + p as usize]
        ));
        let body = format!(
            r#"{{"data":[{}],"pagination":{{"cursor":"{}"}}}}"#,
            entries.join(","),
            sim_cursor(p + 1)
        );
        sim.add_fault(Fault::new(FaultKind::Body { body }).for_user(f).times(1));
    }
    let input = common::sim_input(&sim, ids.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<BatchResult>();
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let summary = runtime.block_on(sync_streaming(input, tx));
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let mut buffer = BatchBuffer::default();
    while let Ok(r) = rx.try_recv() {
        buffer.absorb(r);
    }
    println!(
        "11 pages x {K} entries: {} requests, peak heap growth {:.1} MiB",
        summary.helix_requests,
        peak as f64 / MIB as f64
    );
    assert_eq!(summary.failures, vec![]);
    assert_eq!(summary.helix_requests, 2 + 11, "every page was read");
    assert_eq!(buffer.checked.len(), 300);
    // ids[100] (its first stream) and the 11 broadcasters named one a page
    assert_eq!(buffer.live.len(), 12);
    assert!(buffer
        .live
        .iter()
        .any(|s| s.broadcaster_id == *f && s.stream_id == "800000000"));
    assert_eq!(summary.stats, Default::default());
    // Holding every page (440,000 parsed streams) and claiming every stream id
    // took well over 100 MiB; one page at a time is its body and its parse.
    assert!(
        peak < 40 * MIB,
        "peak heap growth {:.1} MiB",
        peak as f64 / MIB as f64
    );
}
