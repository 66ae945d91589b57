//! Engine throughput per event: a day of traffic from 2,000 keys with a
//! heavy-tailed volume, through the engine alone (events already decoded)
//! and through decode + engine from canonical JSON lines.

mod support;

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

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

criterion_group!(benches, engine_throughput);
criterion_main!(benches);
