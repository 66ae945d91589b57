//! The Kafka pipeline against librdkafka's in-process mock cluster: the real
//! protocol, no broker to install. Runs the broker scenarios of
//! [`crate::kafka_scenarios`] (outputs and dead letters, the repartition
//! stage and replay, a crash and restart), and the two that only the mock
//! cluster can hold: a member dying while another takes over its
//! partitions, and exactly-once mode.
//!
//! The mock cluster keeps only the last 5 MiB / 100,000 message sets of a
//! partition, has no offset lookup by timestamp and drops offsets committed
//! inside a transaction; the scenarios stay far below those limits and the
//! pipeline does not depend on the other two.

use std::collections::BTreeSet;

use keywatch::pipeline::Progress;

use crate::kafka_scenarios;
use crate::kafka_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dead_letters_flow_through_the_keyed_pipeline() {
    // The only test in this binary that serves metrics: the recorder is global.
    kafka_scenarios::keyed_flow(&Brokers::mock(), Some(free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_input_is_repartitioned_by_fingerprint_and_replays_like_live() {
    kafka_scenarios::repartition_and_replay(&Brokers::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_loses_no_alert() {
    kafka_scenarios::crash_and_restart(&Brokers::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_member_takes_over_partitions_with_their_state() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (mut config, input) = cluster.prepare("takeover", true).await;
    kafka_of_mut(&mut config).batch_max_events = 20;
    // Three parts: shared by both members, then some for the member that
    // dies, then the trips, which only the survivor sees.
    let records = travel_scenario(12, 16, 0);
    let trips = first_trip(&records);
    let split = trips * 2 / 3;
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let mut config_a = config.clone();
    kafka_of_mut(&mut config_a).instance_id = Some("a".into());
    let mut config_b = config.clone();
    kafka_of_mut(&mut config_b).instance_id = Some("b".into());
    let survivor = RunningPipeline::start(&config_a);
    let victim = RunningPipeline::start(&config_b);

    let first_ends = end_offsets(&brokers, &input);
    wait_until("both members to share the first part", catch_up, || {
        let owned = |progress: &Progress| {
            progress
                .snapshot()
                .assigned
                .get("keyed")
                .is_some_and(|partitions| !partitions.is_empty())
        };
        owned(&survivor.progress)
            && owned(&victim.progress)
            && first_ends.iter().all(|(partition, end)| {
                *end == 0
                    || committed_anywhere(&[&survivor.progress, &victim.progress], "keyed", &input, *partition)
                        == Some(*end)
            })
    })
    .await;
    let victim_partitions = victim.progress.snapshot().assigned["keyed"].clone();
    let victim_records = victim.progress.snapshot().counts.records;
    assert!(victim_records > 0, "the member to be stopped did work");

    landed.extend(produce(&brokers, &input, &records[split..trips], Placement::KeyedByKeyId).await);
    victim.wait_for_records(victim_records + 5, catch_up).await;
    victim.kill().await;
    landed.extend(produce(&brokers, &input, &records[trips..], Placement::KeyedByKeyId).await);

    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&survivor.progress], "keyed", &input, &ends, catch_up).await;
    let owned_at_end = survivor.progress.snapshot().assigned["keyed"].clone();
    survivor.stop().await;
    for partition in &victim_partitions {
        assert!(owned_at_end.contains(partition), "{partition} moved to the survivor");
    }

    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 6);
    let alerts = read_alerts(&brokers, &kafka_of(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected, "no alert lost or invented across the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_mode_repeats_nothing_across_a_crash() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (mut config, input) = cluster.prepare("eos", true).await;
    {
        let kafka = kafka_of_mut(&mut config);
        kafka.batch_max_events = 20;
        kafka.exactly_once = true;
        kafka.instance_id = Some("eos-1".into());
    }
    let records = travel_scenario(10, 16, 30);
    let split = first_trip(&records);
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let first = RunningPipeline::start(&config);
    first.wait_for_records(split as u64 / 2, catch_up).await;
    first.kill().await;
    landed.extend(produce(&brokers, &input, &records[split..], Placement::KeyedByKeyId).await);
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 5);

    // The same instance id: the restart fences the dead producer and aborts
    // its open transaction.
    let second = RunningPipeline::start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&second.progress], "keyed", &input, &ends, catch_up).await;
    second.stop().await;

    let alerts = read_alerts(&brokers, &kafka_of(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(alerts.len(), ids.len(), "committed outputs hold no repeat");
    let dead_letters = read_topic(&brokers, &kafka_of(&config).dead_letter_topic);
    let malformed = landed.iter().filter(|record| record.record.malformed).count();
    assert_eq!(
        dead_letters.len(),
        malformed,
        "each malformed record dead-lettered exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_spraying_keys_over_every_partition_is_one_incident_out_of_run() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (config, input) = cluster.prepare("spray", true).await;
    // 40 guessed key ids, three refused calls each, from one address over
    // four minutes; the keys spread over every partition of the input. A
    // few calls later, on every key (so on every partition), let the
    // engines' and the source view's reorder waits pass.
    let guessed: Vec<String> = (0..40).map(|guess| format!("AKIAKWSPRAY{guess:09}")).collect();
    let mut records = Vec::new();
    for round in 0..3i64 {
        for (index, key) in guessed.iter().enumerate() {
            let ts = T0_MS + round * 80_000 + index as i64 * 2_000;
            records.push(ScenarioRecord {
                key: Some(key.clone()),
                payload: canonical(ts, key, &ip("saopaulo", 40), "/v1/orders", 401),
                malformed: false,
            });
        }
    }
    for later in 0..3i64 {
        for (index, key) in guessed.iter().enumerate() {
            let ts = T0_MS + 10 * 60_000 + later * 60_000 + index as i64 * 100;
            records.push(ScenarioRecord {
                key: Some(key.clone()),
                payload: canonical(ts, key, &ip("saopaulo", 40), "/v1/orders", 401),
                malformed: false,
            });
        }
    }
    produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;

    let running = RunningPipeline::start(&config);
    let alerts_topic = kafka_of(&config).alerts_topic.clone();
    let sprays = || -> Vec<keywatch::alert::Alert> {
        read_alerts(&brokers, &alerts_topic)
            .into_iter()
            .filter(|alert| alert.detector.as_str() == "source_spray")
            .collect()
    };
    wait_until("the spray to be judged", catch_up, || {
        sprays().iter().any(|alert| alert.keys.len() == guessed.len())
    })
    .await;
    running.stop().await;

    let sprays = sprays();
    assert!((1..=3).contains(&sprays.len()), "{sprays:#?}");
    assert!(sprays.iter().all(|alert| alert.incident_id == sprays[0].incident_id));
    assert!(
        sprays
            .iter()
            .all(|alert| alert.severity == keywatch::alert::Severity::High)
    );
    // Alerts go to the partition of their key: read back, the incident's
    // alerts need not come in the order they were raised. Its fullest lists
    // every key.
    let listed: BTreeSet<String> = sprays
        .iter()
        .max_by_key(|alert| alert.keys.len())
        .map(|alert| alert.keys.iter().cloned().collect())
        .unwrap_or_default();
    let expected: BTreeSet<String> = guessed
        .iter()
        .map(|key| keywatch::event::key_fingerprint(key))
        .collect();
    assert_eq!(listed, expected, "the incident lists every sprayed key");
    let text = serde_json::to_string(&sprays).unwrap_or_default();
    assert!(!text.contains("AKIAKWSPRAY"), "no raw key");
    let by_source = read_topic(&brokers, &kafka_of(&config).source_topic);
    // The last minutes of each partition wait for its event time to move
    // on (the engines' reorder bound); every call of the spray is out.
    assert!(
        by_source.len() >= 3 * guessed.len(),
        "every refused call of the spray was repartitioned by source"
    );
    assert!(
        by_source
            .iter()
            .all(|message| !String::from_utf8_lossy(&message.payload).contains("AKIAKWSPRAY")),
        "the source topic holds fingerprints, never raw keys"
    );
}

/// The kill switch on the control topic, read from its start: the model
/// says enforce, the newest control message says shadow, so the pipeline
/// sends no request and writes each to the shadow topic, in the request
/// format; then `off` drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_topic_overrides_the_model_mode_and_shadow_mode_sends_nothing() {
    use rdkafka::producer::FutureRecord;
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let (config, input) = cluster.prepare("killswitch", true).await;
    let kafka = kafka_of(&config).clone();
    let control = producer(&brokers, false);
    for mode in ["off", "shadow"] {
        let payload = format!(r#"{{"mode":"{mode}","at":"2026-01-01T00:00:00Z","by":"test"}}"#);
        control
            .send(
                FutureRecord::<str, str>::to(&kafka.control_topic).payload(&payload),
                std::time::Duration::from_secs(5),
            )
            .await
            .expect("control message");
    }
    let records = travel_scenario(8, 16, 0);
    produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let pipeline = RunningPipeline::start(&config);
    wait_until("shadow requests", cluster.catch_up(), || {
        pipeline.progress.snapshot().counts.revocations_shadow > 0
    })
    .await;
    let ends = end_offsets(&brokers, &input);
    wait_until("the input to be consumed", cluster.catch_up(), || {
        ends.iter().all(|(partition, end)| {
            *end == 0 || committed_anywhere(&[&pipeline.progress], "keyed", &input, *partition) == Some(*end)
        })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let summary = pipeline.stop().await;
    assert_eq!(summary.counts.revocations, 0);
    assert!(
        read_topic(&brokers, &kafka.revocations_topic).is_empty(),
        "shadow mode sends nothing"
    );
    let shadow = read_topic(&brokers, &kafka.revocations_shadow_topic);
    assert_eq!(shadow.len() as u64, summary.counts.revocations_shadow);
    for message in &shadow {
        let request: keywatch::alert::RevocationRequest =
            serde_json::from_slice(&message.payload).expect("the request format");
        assert_eq!(message.key.as_deref(), Some(request.key_fingerprint.as_str()));
    }
}
