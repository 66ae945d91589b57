//! Resident memory of engine state, measured from the process's resident
//! set (`/proc/self/statm`, Linux only): bytes per tracked key at 100,000
//! and at 1,000,000 keys with a few days of ordinary history each, and the
//! resident set after a spray of 1,000,000 one-off key ids. Not a Criterion bench: each
//! scenario runs once in its own process, so the two do not share an
//! allocator's high-water mark.
//!
//! `cargo bench --bench state_memory -- keys`, `... -- keys-1m` and
//! `... -- spray` (release),
//! or `cargo test --bench state_memory -- keys` for a debug build, which
//! lays memory out the same way.

mod support;

use std::alloc::{GlobalAlloc, Layout};
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::enrich::mmdb_build::{build_asn_db, build_city_db};
use keywatch::enrich::test_world::{synthetic_host, synthetic_world};
use keywatch::event::AccessEvent;
use keywatch::model::Model;
use support::BenchRng;

const NETWORKS: usize = 2_000;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const HOUR: i64 = 3_600_000;
const ENDPOINTS: [&str; 6] = [
    "/v1/orders",
    "/v1/orders/{id}",
    "/v1/customers/{id}",
    "/v1/invoices",
    "/v1/items",
    "/v2/search",
];

/// The binary's allocator (mimalloc), counting live heap bytes and live allocations by
/// requested size (in 8-byte classes up to 4 KiB, larger ones together),
/// so the bench can say where the resident bytes go: how many allocations
/// a key costs (each is rounded up to a size class) and of what size.
struct Counting;

const SIZE_CLASSES: usize = 513;
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_BY_SIZE: [AtomicI64; SIZE_CLASSES] = [const { AtomicI64::new(0) }; SIZE_CLASSES];

fn size_class(size: usize) -> usize {
    size.div_ceil(8).min(SIZE_CLASSES - 1)
}

// SAFETY: every call is passed on to mimalloc unchanged; the
// counters are only read by this bench.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[size_class(layout.size())].fetch_add(1, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[size_class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        LIVE_BY_SIZE[size_class(layout.size())].fetch_sub(1, Ordering::Relaxed);
        LIVE_BY_SIZE[size_class(new_size)].fetch_add(1, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live allocations per size class, to subtract a "before" from an "after".
fn live_by_size() -> Vec<i64> {
    LIVE_BY_SIZE.iter().map(|count| count.load(Ordering::Relaxed)).collect()
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn geo() -> Arc<GeoIp> {
    let (cities, asns) = synthetic_world(NETWORKS);
    Arc::new(
        GeoIp::from_bytes(
            Some(build_city_db(&cities).unwrap()),
            Some(build_asn_db(&asns).unwrap()),
        )
        .unwrap(),
    )
}

fn call(ts_ms: i64, key_id: String, ip: std::net::IpAddr, endpoint: String, status: u16) -> AccessEvent<'static> {
    AccessEvent {
        ts_ms,
        key_id: Cow::Owned(key_id),
        ip,
        method: Cow::Borrowed("GET"),
        endpoint: Cow::Owned(endpoint),
        status,
        user_agent: Cow::Borrowed("acme-sdk/1.4.2 python/3.11"),
        bytes_out: 1024,
        request_id: None,
    }
}

/// `keys` keys (100,000 or 1,000,000), each used from its own two networks
/// on four endpoints, 10 calls a day for 3 days, in time order, fed in small
/// batches so the events themselves never take much memory.
fn keys_scenario(engine: &mut Engine, keys: usize) -> usize {
    let mut random = BenchRng::seeded(7);
    let mut outputs = Vec::new();
    let mut batch = Vec::with_capacity(10_000);
    for slot in 0..30i64 {
        let ts = T0 + slot * 2 * HOUR + (slot / 10) * 4 * HOUR;
        for key in 0..keys {
            let network = (key * 7 + random.below(2)) % NETWORKS;
            let endpoint = ENDPOINTS[(key + slot as usize) % 4].replace("{id}", &random.below(1_000).to_string());
            batch.push(call(
                ts + key as i64,
                format!("AKIAMEM{key:013}"),
                synthetic_host(network, 1 + random.below(4) as u8),
                endpoint,
                200,
            ));
            if batch.len() == batch.capacity() {
                engine.process(&batch, &mut outputs);
                batch.clear();
                outputs.clear();
            }
        }
    }
    engine.process(&batch, &mut outputs);
    keys
}

/// 1,000,000 key ids tried once each (refused with 401) from a few hundred
/// networks over a day.
fn spray_scenario(engine: &mut Engine) -> usize {
    const IDS: usize = 1_000_000;
    let mut random = BenchRng::seeded(11);
    let mut outputs = Vec::new();
    let mut batch = Vec::with_capacity(10_000);
    for attempt in 0..IDS {
        let key_id = format!("AKIA{:016X}", random.next_u64());
        batch.push(call(
            T0 + attempt as i64 * 80,
            key_id,
            synthetic_host(random.below(300), 1 + random.below(200) as u8),
            "/v1/orders".to_string(),
            401,
        ));
        if batch.len() == batch.capacity() {
            engine.process(&batch, &mut outputs);
            batch.clear();
            outputs.clear();
        }
    }
    engine.process(&batch, &mut outputs);
    IDS
}

fn main() {
    let scenario = std::env::args()
        .skip(1)
        .find(|arg| arg == "keys" || arg == "keys-1m" || arg == "spray")
        .unwrap_or_else(|| "keys".to_string());
    let geo = geo();
    let mut engine = Engine::new(Arc::new(Model::default_model()), geo);
    let before = resident_bytes();
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    let sizes_before = live_by_size();
    let started = std::time::Instant::now();
    let count = match scenario.as_str() {
        "spray" => spray_scenario(&mut engine),
        "keys-1m" => keys_scenario(&mut engine, 1_000_000),
        _ => keys_scenario(&mut engine, 100_000),
    };
    let after = resident_bytes();
    let grown = after.saturating_sub(before);
    println!(
        "scenario {scenario}: {count} ids, {} keys with state, {} dormant records; resident {:.1} MB before, {:.1} MB after ({:.1} MB grown, {:.0} bytes per id) in {:.1} s",
        engine.keys_tracked(),
        engine.dormant_keys(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        grown as f64 / 1e6,
        grown as f64 / count as f64,
        started.elapsed().as_secs_f64(),
    );
    let heap_grown = LIVE_BYTES.load(Ordering::Relaxed) - heap_before;
    let grown_by_size: Vec<i64> = live_by_size()
        .iter()
        .zip(&sizes_before)
        .map(|(after, before)| after - before)
        .collect();
    let allocations: i64 = grown_by_size.iter().sum();
    println!(
        "heap: {:.0} bytes requested and {:.2} allocations live per id; {} events held for ordering",
        heap_grown as f64 / count as f64,
        allocations as f64 / count as f64,
        engine.held_events(),
    );
    let mut classes: Vec<(usize, i64)> = grown_by_size
        .into_iter()
        .enumerate()
        .filter(|(_, live)| *live > 0)
        .collect();
    classes.sort_by_key(|(class, live)| std::cmp::Reverse(*live * (*class as i64 * 8).max(1)));
    let top: Vec<String> = classes
        .iter()
        .take(12)
        .map(|(class, live)| {
            let size = if *class == SIZE_CLASSES - 1 {
                "large".to_string()
            } else {
                format!("{}", class * 8)
            };
            format!("{size} B x {:.2}", *live as f64 / count as f64)
        })
        .collect();
    println!("live allocations per id by size (up to): {}", top.join(", "));
    print_layout();
}

/// The fixed part of a key's state and its biggest parts, in bytes: what
/// every tracked key costs before its tables' entries.
fn print_layout() {
    use keywatch::baseline::{AlertMemory, KeyState, TopK, geo, rate, topk, volume};
    use std::mem::size_of;
    println!(
        "layout: KeyState {} (geo {}, rate {}, volume {}, alerts {}, one top-K table {}); entry {}, place {}",
        size_of::<KeyState>(),
        size_of::<geo::GeoBaseline>(),
        size_of::<rate::RateBaseline>(),
        size_of::<volume::VolumeBaseline>(),
        size_of::<AlertMemory>(),
        size_of::<TopK>(),
        size_of::<topk::Entry>(),
        size_of::<geo::Place>(),
    );
}
