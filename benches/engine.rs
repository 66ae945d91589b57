//! Engine throughput per event: a day of traffic from 2,000 keys with a
//! heavy-tailed volume, through the engine alone (events already decoded)
//! and through decode + engine from canonical JSON lines; and the engine in
//! steady state over 100,000 keys beside its floor, measured in the same
//! run: a per-event hash map update keyed by key id over the same events
//! (the least any per-key stream processor does: find the key's state and
//! touch it). The floor is chosen over a JSON parse because these events
//! are already decoded: the JSON reference belongs to the decode and replay
//! benchmarks.
//!
//! `cargo bench --bench engine -- engine_100k` runs the 100,000-key pair.
//! Both sides of the pair are timed in CPU time of the measuring thread
//! (`CLOCK_THREAD_CPUTIME_ID`), not wall time: on a shared machine other
//! work stretches wall time by a factor of several from one sample to the
//! next, while the CPU time a batch takes moves far less (cache and memory
//! contention still reach it, on both sides alike).

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keywatch::decode::{Decoder, Format};
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::enrich::mmdb_build::{build_asn_db, build_city_db};
use keywatch::enrich::test_world::{synthetic_host, synthetic_world};
use keywatch::event::AccessEvent;
use keywatch::model::Model;
use support::BenchRng;

const KEYS: usize = 2_000;
const EVENTS: usize = 200_000;
const NETWORKS: usize = 2_000;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

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

fn events() -> Vec<AccessEvent<'static>> {
    let endpoints = [
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/customers/{id}",
        "/v1/invoices",
        "/v1/items",
        "/v2/search",
    ];
    let keys: Vec<String> = (0..KEYS).map(|index| format!("AKIABENCH{index:011}")).collect();
    let mut random = BenchRng::seeded(0x9e37_79b9_7f4a_7c15);
    let mut events = Vec::with_capacity(EVENTS);
    for index in 0..EVENTS {
        // Heavy tail: squaring a uniform pick favours low key indexes.
        let key = random.skewed_below(KEYS, 2);
        let ts = T0 + (index as i64) * 86_400_000 / EVENTS as i64;
        events.push(AccessEvent {
            ts_ms: ts,
            key_id: Cow::Owned(keys[key].clone()),
            ip: synthetic_host(key % NETWORKS, random.below(4) as u8 + 1),
            method: Cow::Borrowed("GET"),
            endpoint: Cow::Owned(
                endpoints[random.below(endpoints.len())].replace("{id}", &random.below(100_000).to_string()),
            ),
            status: if random.below(100) == 0 { 404 } else { 200 },
            user_agent: Cow::Borrowed("acme-sdk/1.4.2 python/3.11"),
            bytes_out: 1024,
            request_id: None,
        });
    }
    events
}

fn engine_throughput(criterion: &mut Criterion) {
    let geo = geo();
    let model = Arc::new(Model::default_model());
    let events = events();
    let lines: Vec<u8> = events
        .iter()
        .flat_map(|event| {
            let mut line = serde_json::to_vec(event).unwrap();
            line.push(b'\n');
            line
        })
        .collect();
    let mut group = criterion.benchmark_group("engine");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.bench_function("process_decoded_day_2000_keys", |bencher| {
        bencher.iter(|| {
            let mut engine = Engine::new(Arc::clone(&model), Arc::clone(&geo));
            let mut out = Vec::new();
            for chunk in events.chunks(4096) {
                engine.process(chunk, &mut out);
            }
            black_box(out.len())
        })
    });
    let decoder = Decoder::new(Format::Canonical, None, 1 << 20);
    group.bench_function("decode_and_process_json_lines", |bencher| {
        bencher.iter(|| {
            let mut engine = Engine::new(Arc::clone(&model), Arc::clone(&geo));
            let mut out = Vec::new();
            let mut batch = Vec::with_capacity(4096);
            let mut decoded = Vec::new();
            for line in lines.split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
                decoder.decode(line, &mut decoded);
                batch.extend(decoded.drain(..).filter_map(Result::ok));
                if batch.len() == 4096 {
                    engine.process(&batch, &mut out);
                    batch.clear();
                }
            }
            engine.process(&batch, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

/// Keys of the steady-state benchmark.
const MANY_KEYS: usize = 100_000;
/// Events per measured iteration of the steady-state benchmark.
const MANY_KEYS_BATCH: usize = 100_000;
/// Heavy-tailed batches the engine takes, untimed, before it is measured.
const SETTLING_BATCHES: usize = 10;

/// An endless, time-ordered stream of calls from `MANY_KEYS` keys: each key
/// keeps to its own two networks and a few endpoints, with a heavy-tailed
/// volume over keys, as in real API traffic.
struct ManyKeysTraffic {
    keys: Vec<String>,
    random: BenchRng,
    ts_ms: i64,
}

impl ManyKeysTraffic {
    fn new() -> ManyKeysTraffic {
        ManyKeysTraffic {
            keys: (0..MANY_KEYS).map(|index| format!("AKIAMANY{index:012}")).collect(),
            random: BenchRng::seeded(0x5eed_0100_0000),
            ts_ms: T0,
        }
    }

    /// The next `count` events; `every_key` visits the keys in turn instead
    /// of drawing them, so a warm-up gives every key state.
    fn next_batch(&mut self, count: usize, every_key: bool) -> Vec<AccessEvent<'static>> {
        const ENDPOINTS: [&str; 4] = ["/v1/orders", "/v1/invoices", "/v1/items", "/v2/search"];
        (0..count)
            .map(|index| {
                let key = if every_key {
                    index % MANY_KEYS
                } else {
                    self.random.skewed_below(MANY_KEYS, 2)
                };
                // About ten calls per key a day on average.
                self.ts_ms += 86;
                AccessEvent {
                    ts_ms: self.ts_ms,
                    key_id: Cow::Owned(self.keys[key].clone()),
                    ip: synthetic_host(
                        (key * 7 + self.random.below(2)) % NETWORKS,
                        1 + self.random.below(4) as u8,
                    ),
                    method: Cow::Borrowed("GET"),
                    endpoint: Cow::Borrowed(ENDPOINTS[(key + self.random.below(2)) % ENDPOINTS.len()]),
                    status: if self.random.below(200) == 0 { 404 } else { 200 },
                    user_agent: Cow::Borrowed("acme-sdk/1.4.2 python/3.11"),
                    bytes_out: 1024,
                    request_id: None,
                }
            })
            .collect()
    }
}

/// What the floor keeps per key: a count and the last time seen.
#[derive(Default)]
struct FloorState {
    events: u64,
    last_ts_ms: i64,
    bytes_out: u64,
}

/// CPU time the calling thread has used so far.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread's CPU clock is readable");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Times `work` (in the thread's CPU time) over fresh batches of the
/// stream, generating each batch outside the timed region.
fn time_batches(
    iterations: u64,
    traffic: &mut ManyKeysTraffic,
    mut work: impl FnMut(&[AccessEvent<'static>]),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        let batch = traffic.next_batch(MANY_KEYS_BATCH, false);
        let started = thread_cpu_time();
        work(&batch);
        total += thread_cpu_time() - started;
    }
    total
}

fn engine_many_keys(criterion: &mut Criterion) {
    let model = Arc::new(Model::default_model());
    let mut traffic = ManyKeysTraffic::new();
    let mut engine = Engine::new(Arc::clone(&model), geo());
    let mut out = Vec::new();
    // Warm-up, not timed: three days in which every key is seen, so the
    // measured events meet keys with baselines, as in steady state.
    for _ in 0..30 {
        let batch = traffic.next_batch(MANY_KEYS, true);
        for chunk in batch.chunks(4096) {
            engine.process(chunk, &mut out);
            out.clear();
        }
    }
    assert!(
        engine.keys_tracked() >= MANY_KEYS,
        "every key has state after the warm-up"
    );
    // Then the measured kind of traffic, untimed, until the cost per batch
    // has settled: the first heavy-tailed batches meet every key after the
    // round-robin days and cost up to twice a settled one.
    for _ in 0..SETTLING_BATCHES {
        let batch = traffic.next_batch(MANY_KEYS_BATCH, false);
        for chunk in batch.chunks(4096) {
            engine.process(chunk, &mut out);
            out.clear();
        }
    }
    // The floor draws the same stream from its own generator: drawing from
    // the engine's would move the engine's event time on by every batch the
    // floor took (hundreds, months of event time), and the engine would
    // then be measured on keys coming back from months of silence.
    let mut floor_traffic = ManyKeysTraffic::new();
    let mut floor: ahash::AHashMap<String, FloorState> = ahash::AHashMap::with_capacity(MANY_KEYS);

    let mut group = criterion.benchmark_group("engine_100k");
    group.throughput(Throughput::Elements(MANY_KEYS_BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    // The reference first and last would favour neither; Criterion runs
    // them in order, so the floor goes first while the machine is as loaded.
    group.bench_function("floor_hash_map_update_per_event", |bencher| {
        bencher.iter_custom(|iterations| {
            time_batches(iterations, &mut floor_traffic, |batch| {
                for event in batch {
                    let state = match floor.get_mut(event.key_id.as_ref()) {
                        Some(state) => state,
                        None => floor.entry(event.key_id.to_string()).or_default(),
                    };
                    state.events += 1;
                    state.last_ts_ms = state.last_ts_ms.max(event.ts_ms);
                    state.bytes_out += event.bytes_out;
                }
                black_box(floor.len());
            })
        })
    });
    group.bench_function("process_decoded_100000_keys", |bencher| {
        bencher.iter_custom(|iterations| {
            time_batches(iterations, &mut traffic, |batch| {
                for chunk in batch.chunks(4096) {
                    engine.process(chunk, &mut out);
                }
                black_box(out.len());
                out.clear();
            })
        })
    });
    group.finish();
}

criterion_group!(benches, engine_throughput, engine_many_keys);
criterion_main!(benches);
