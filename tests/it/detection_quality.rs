//! Detection quality as a test: generated traffic with labelled attacks runs
//! through the real engine and is scored by the evaluation code. A change
//! that costs recall or floods the SOC with false alerts fails here, long
//! before anyone reruns docs/EVALUATION.md. Scored the honest way: only a
//! scenario's own detectors detect it, and false alerts are per judged
//! key-day (after each key's learning period).

use std::sync::Arc;

use keywatch::alert::Output;
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::eval::{RunMeta, ScoreOptions, score};
use keywatch::generate::{GenerateConfig, Generation};
use keywatch::model::Model;

#[test]
fn default_model_on_generated_traffic_meets_the_targets() {
    let config = GenerateConfig::new(300, 10, 11, "2026-01-05T00:00:00Z").expect("valid generator config");
    let generation = Generation::new(config);
    let geo = GeoIp::from_bytes(
        Some(generation.city_database().unwrap()),
        Some(generation.asn_database().unwrap()),
    )
    .expect("generated databases open");
    let mut engine = Engine::new(Arc::new(Model::default_model()), Arc::new(geo));
    let mut batch = Vec::with_capacity(1024);
    let mut outputs = Vec::new();
    let counts = generation
        .for_each_event(|event| {
            batch.push(event.clone().into_owned());
            if batch.len() == 1024 {
                engine.process(&batch, &mut outputs);
                batch.clear();
            }
            Ok::<(), ()>(())
        })
        .unwrap();
    engine.process(&batch, &mut outputs);
    let alerts: Vec<_> = outputs
        .into_iter()
        .filter_map(|output| match output {
            Output::Alert(alert) => Some(alert),
            Output::Revocation(_) | Output::Digest(_) => None,
        })
        .collect();
    let meta = RunMeta {
        keys: 300,
        days: 10,
        seed: 11,
        start: "2026-01-05T00:00:00Z".into(),
        end: "2026-01-15T00:00:00Z".into(),
        events: counts.events,
        benign_key_days: counts.benign_key_days,
        judged_key_days: Some(counts.judged_key_days),
        incidents: generation.labels().len() as u64,
        benign_cases: generation.benign_cases().len() as u64,
        generator: String::new(),
    };
    let card = score(
        &alerts,
        generation.labels(),
        generation.benign_cases(),
        Some(&meta),
        &ScoreOptions::default(),
    );
    eprintln!("{}", keywatch::eval::render_table(&card));
    assert!(card.incidents >= 8, "every scenario is injected");
    assert!(card.recall.unwrap() >= 0.9, "recall {:?}", card.recall);
    assert!(
        card.false_alerts_per_1k_judged_key_days.unwrap() <= 2.0,
        "false alerts per 1,000 judged key-days {:?}",
        card.false_alerts_per_1k_judged_key_days
    );
    assert!(
        card.median_time_to_detect_s.unwrap() <= 300.0,
        "median time to detect {:?}",
        card.median_time_to_detect_s
    );
}
