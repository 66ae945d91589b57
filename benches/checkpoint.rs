//! What a checkpoint costs the keyed stage, which writes it between batches
//! (nothing is judged meanwhile): encoding one partition of 10,000 keys
//! with a few days of history each, as a whole checkpoint (the reference,
//! measured in the same run) and as an incremental one with every key
//! changed (the first after an assignment) or 1% of them (a quiet
//! interval). Encoding only: serialising, compressing and cutting into
//! changelog messages, not producing them.
//!
//! `cargo bench --bench checkpoint`

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use keywatch::checkpoint::{Checkpoint, KeyLedger, PartitionId, encode_checkpoint, encode_incremental};
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::enrich::mmdb_build::{build_asn_db, build_city_db};
use keywatch::enrich::test_world::{synthetic_host, synthetic_world};
use keywatch::event::AccessEvent;
use keywatch::model::Model;
use support::BenchRng;

const KEYS: usize = 10_000;
const NETWORKS: usize = 500;
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;
const HOUR: i64 = 3_600_000;
const ENDPOINTS: [&str; 4] = ["/v1/orders", "/v1/orders/{id}", "/v1/invoices", "/v2/search"];

fn engine() -> Engine {
    let (cities, asns) = synthetic_world(NETWORKS);
    let geo = GeoIp::from_bytes(
        Some(build_city_db(&cities).unwrap()),
        Some(build_asn_db(&asns).unwrap()),
    )
    .unwrap();
    let mut engine = Engine::new(Arc::new(Model::default_model()), Arc::new(geo));
    let mut random = BenchRng::seeded(3);
    let mut outputs = Vec::new();
    let mut batch: Vec<AccessEvent<'static>> = Vec::with_capacity(10_000);
    // Three days, ten calls a day per key, from two networks of its own.
    for slot in 0..30i64 {
        let ts = T0 + slot * 2 * HOUR + (slot / 10) * 4 * HOUR;
        for key in 0..KEYS {
            let network = (key * 7 + random.below(2)) % NETWORKS;
            batch.push(AccessEvent {
                ts_ms: ts + key as i64,
                key_id: Cow::Owned(format!("AKIACKPT{key:012}")),
                ip: synthetic_host(network, 1 + random.below(4) as u8),
                method: Cow::Borrowed("GET"),
                endpoint: Cow::Borrowed(ENDPOINTS[(key + slot as usize) % 4]),
                status: 200,
                user_agent: Cow::Borrowed("acme-sdk/1.4.2 python/3.11"),
                bytes_out: 1024,
                request_id: None,
            });
            if batch.len() == batch.capacity() {
                engine.process(&batch, &mut outputs);
                batch.clear();
                outputs.clear();
            }
        }
    }
    engine.process(&batch, &mut outputs);
    engine.release_held(&mut outputs);
    engine
}

fn checkpoint(engine: &Engine, incremental: bool) -> Checkpoint {
    Checkpoint::of(engine, PartitionId::new("access", 0), 1, 1, Some(1), incremental)
}

fn bench_checkpoint(c: &mut Criterion) {
    let mut engine = engine();
    engine.track_changes();
    let all: Vec<_> = {
        let mut changed = Vec::new();
        engine.changed_keys(|bits, state| changed.push((bits, state.cloned())));
        changed
    };
    assert_eq!(all.len(), KEYS, "every key is new");
    let mut group = c.benchmark_group("checkpoint_10k_keys");
    group.sample_size(10);
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("whole (reference)", |b| {
        b.iter_batched(
            || checkpoint(&engine, false),
            |checkpoint| black_box(encode_checkpoint(&checkpoint).unwrap()),
            BatchSize::LargeInput,
        )
    });
    for (name, share) in [("incremental, every key changed", 1), ("incremental, 1% changed", 100)] {
        let changed: Vec<(u128, Option<&keywatch::baseline::KeyState>)> = all
            .iter()
            .step_by(share)
            .map(|(bits, state)| (*bits, state.as_ref()))
            .collect();
        group.bench_function(name, |b| {
            b.iter_batched(
                || (checkpoint(&engine, true), KeyLedger::default()),
                |(checkpoint, mut ledger)| black_box(encode_incremental(&checkpoint, &changed, &mut ledger).unwrap()),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_checkpoint);
criterion_main!(benches);
