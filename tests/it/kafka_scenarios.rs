//! The broker scenarios, each run by a test against librdkafka's mock
//! cluster (`kafka_mock`) and by a test against a real broker
//! (`kafka_tansu`), so both brokers are held to the same assertions: the
//! keyed pipeline's outputs, dead letters and checkpoints; unkeyed input
//! repartitioned by fingerprint and replayed from Kafka; a crash and restart
//! that loses no alert.

use std::collections::{BTreeMap, BTreeSet};

use keywatch::alert::RevocationRequest;
use keywatch::replay::kafka::ReplayKafkaOptions;

use crate::kafka_support::*;

/// Keyed input through the keyed pipeline: exactly the alerts of a
/// reference run, revocation requests for the travelling keys only, every
/// malformed record dead-lettered once with its source, the summary's
/// counts, and a checkpoint manifest per used input partition. With
/// `metrics_port`, also serves metrics there and checks them (the recorder
/// is process-wide: one test of the binary at most may pass it).
pub async fn keyed_flow(brokers: &Brokers, metrics_port: Option<u16>) {
    init_logging();
    let (mut config, input) = brokers.prepare("flow", true).await;
    kafka_of_mut(&mut config).metrics_listen = metrics_port.map(|port| ([127, 0, 0, 1], port).into());
    let kafka = kafka_of(&config).clone();
    let bootstrap = brokers.bootstrap_servers();

    let records = travel_scenario(8, 10, 10);
    let landed = produce(&bootstrap, &input, &records, Placement::KeyedByKeyId).await;
    let malformed: Vec<&Landed> = landed.iter().filter(|record| record.record.malformed).collect();
    assert!(malformed.len() >= 10, "the scenario has junk to reject");
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 4, "every travelling key is flagged: {expected:?}");

    let pipeline = RunningPipeline::start(&config);
    let ends = end_offsets(&bootstrap, &input);
    wait_caught_up(&[&pipeline.progress], "keyed", &input, &ends, brokers.catch_up()).await;
    let valid = landed.len() - malformed.len();
    if let Some(port) = metrics_port {
        let events_line = format!("keywatch_events_total {valid}");
        wait_until("the metrics to show every event", brokers.catch_up(), || {
            scrape(port).is_some_and(|body| body.lines().any(|line| line == events_line))
        })
        .await;
        // Lag is measured every 10 s by the consumer thread.
        wait_until("the metrics to show consumer lag", brokers.catch_up(), || {
            scrape(port).is_some_and(|body| body.contains("keywatch_consumer_lag{"))
        })
        .await;
        let body = scrape(port).unwrap();
        assert!(body.contains("keywatch_committed_offset{"), "{body}");
        for name in [
            "keywatch_dead_letters_total{reason=\"malformed_json\"}",
            "keywatch_event_time_lag_seconds{stage=\"keyed\"}",
            "keywatch_checkpoint_seconds",
            "keywatch_checkpoint_bytes_total",
            "keywatch_restore_seconds",
            "keywatch_late_events_total",
            "keywatch_source_view_late_total",
            "keywatch_source_view_forced_total",
            "keywatch_suppressed_total",
        ] {
            assert!(body.contains(name), "{name} missing from {body}");
        }
        assert!(!body.contains("AKIA"), "no raw key in metrics");
    }
    let summary = pipeline.stop().await;

    let alerts = read_alerts(&bootstrap, &kafka.alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(
        ids, expected,
        "the pipeline raises exactly the alerts of a reference run"
    );
    assert_eq!(alerts.len(), ids.len(), "an uninterrupted run repeats nothing");
    let travellers: BTreeSet<String> = (0..8)
        .filter(|index| index % 2 == 1)
        .map(|index| keywatch::event::key_fingerprint(&key_id(index)))
        .collect();
    let flagged: BTreeSet<String> = alerts.iter().map(|alert| alert.key_fingerprint.clone()).collect();
    assert!(travellers.is_subset(&flagged), "{travellers:?} not all in {flagged:?}");

    for message in read_topic(&bootstrap, &kafka.revocations_topic) {
        let request: RevocationRequest = serde_json::from_slice(&message.payload).expect("a revocation request");
        assert_eq!(message.key.as_deref(), Some(request.key_fingerprint.as_str()));
        assert!(travellers.contains(&request.key_fingerprint));
    }

    let dead_letters = read_topic(&bootstrap, &kafka.dead_letter_topic);
    assert_eq!(
        dead_letters.len(),
        malformed.len(),
        "every malformed record is dead-lettered once"
    );
    let by_position: BTreeMap<(i32, i64), &Landed> = malformed
        .iter()
        .map(|record| ((record.partition, record.offset), *record))
        .collect();
    for letter in &dead_letters {
        assert_eq!(letter.headers["source_topic"], input);
        let position: (i32, i64) = (
            letter.headers["source_partition"].parse().unwrap(),
            letter.headers["source_offset"].parse().unwrap(),
        );
        let original = by_position.get(&position).expect("points at a malformed input record");
        assert!(original.record.malformed);
        assert_eq!(letter.payload, original.record.payload.as_bytes(), "the original bytes");
        assert!(
            ["malformed_json", "bad_ip", "missing_field"].contains(&letter.headers["reason"].as_str()),
            "{:?}",
            letter.headers
        );
        assert!(letter.key.is_none(), "dead letters never carry the input key");
    }

    assert_eq!(summary.counts.events, valid as u64);
    assert_eq!(summary.counts.rejected, malformed.len() as u64);
    assert_eq!(summary.counts.records, landed.len() as u64);

    let changelog_keys: BTreeSet<String> = read_topic(&bootstrap, &kafka.changelog_topic)
        .into_iter()
        .filter_map(|message| message.key)
        .collect();
    let used: BTreeSet<String> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(partition, _)| format!("{input}/{partition}"))
        .collect();
    assert!(
        used.is_subset(&changelog_keys),
        "a checkpoint manifest per used partition: {changelog_keys:?}"
    );
    let manifests: BTreeSet<String> = changelog_keys
        .into_iter()
        .filter(|key| key.matches('/').count() == 1)
        .collect();
    assert_eq!(manifests, used, "a checkpoint per input partition");
}

/// Unkeyed input through both stages: the repartition topic holds every
/// valid event once, keyed by fingerprint (never the raw key), one
/// partition per key; the alerts are those of a reference run; stage one
/// dead-letters the junk; and a replay from Kafka, reading the repartition
/// topic, raises the same alerts.
pub async fn repartition_and_replay(brokers: &Brokers) {
    init_logging();
    let (config, input) = brokers.prepare("repart", false).await;
    let kafka = kafka_of(&config).clone();
    let bootstrap = brokers.bootstrap_servers();
    let records = travel_scenario(6, 10, 15);
    let landed = produce(
        &bootstrap,
        &input,
        &records,
        Placement::Unkeyed { partitions: PARTITIONS },
    )
    .await;
    let expected = reference_alert_ids(&landed, true);
    assert!(!expected.is_empty());

    let pipeline = RunningPipeline::start(&config);
    let input_ends = end_offsets(&bootstrap, &input);
    wait_caught_up(
        &[&pipeline.progress],
        "repartition",
        &input,
        &input_ends,
        brokers.catch_up(),
    )
    .await;
    let repartition_ends = end_offsets(&bootstrap, &kafka.repartition_topic);
    wait_caught_up(
        &[&pipeline.progress],
        "keyed",
        &kafka.repartition_topic,
        &repartition_ends,
        brokers.catch_up(),
    )
    .await;
    let summary = pipeline.stop().await;

    let valid = landed.iter().filter(|record| !record.record.malformed).count();
    assert_eq!(summary.repartitioned, valid as u64);
    let repartitioned = read_topic(&bootstrap, &kafka.repartition_topic);
    assert_eq!(repartitioned.len(), valid);
    let mut partitions_of_key: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for message in &repartitioned {
        let key = message.key.clone().expect("keyed");
        assert!(
            key.starts_with("kf_") && !key.contains("AKIA"),
            "fingerprint, never the raw key: {key}"
        );
        partitions_of_key.entry(key).or_default().insert(message.partition);
    }
    assert!(
        partitions_of_key.values().all(|partitions| partitions.len() == 1),
        "one partition per key"
    );

    let ids: BTreeSet<String> = read_alerts(&bootstrap, &kafka.alerts_topic)
        .into_iter()
        .map(|alert| alert.id)
        .collect();
    assert_eq!(ids, expected);
    let dead_letters = read_topic(&bootstrap, &kafka.dead_letter_topic);
    assert_eq!(
        dead_letters.len(),
        landed.len() - valid,
        "stage one dead-letters the junk"
    );

    // Replay reads the repartition topic, whose partitions hold whole keys.
    let out = tempfile::tempdir().unwrap();
    let options = ReplayKafkaOptions {
        start_ms: Some(T0_MS),
        end_ms: None,
        out_dir: out.path().to_path_buf(),
        snapshot: None,
        to_topic: None,
        batch_size: 50,
        owners: Default::default(),
    };
    let replay = replay_kafka(&config, options, "replay").await;
    assert_eq!(replay.events_in_range as usize, valid);
    let replayed: BTreeSet<String> = std::fs::read_to_string(out.path().join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<keywatch::alert::Alert>(line).unwrap().id)
        .collect();
    assert_eq!(replayed, expected, "replay equals live");
}

/// Keyed input, the history first and the trips only after a crash, so the
/// alerts depend on state that came back from the changelog: the restart
/// resumes from checkpoints and raises every alert of an uninterrupted
/// run, no other.
pub async fn crash_and_restart(brokers: &Brokers) {
    init_logging();
    let (mut config, input) = brokers.prepare("crash", true).await;
    {
        let kafka = kafka_of_mut(&mut config);
        kafka.batch_max_events = 20;
        kafka.checkpoint_interval = std::time::Duration::from_millis(100);
    }
    let records = travel_scenario(12, 16, 25);
    let split = first_trip(&records);
    let mut landed = brokers
        .produce_resumable(&input, &records[..split], Placement::KeyedByKeyId)
        .await;
    let total = records.len() as u64;

    let first = RunningPipeline::start(&config);
    first.wait_for_records(split as u64 / 2, brokers.catch_up()).await;
    let before_crash = first.progress.clone();
    first.kill().await;
    assert!(
        before_crash.snapshot().checkpoints > 0,
        "some state was checkpointed before the crash"
    );

    landed.extend(
        brokers
            .produce_resumable(&input, &records[split..], Placement::KeyedByKeyId)
            .await,
    );
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 6);
    let second = RunningPipeline::start(&config);
    let ends = end_offsets(&brokers.bootstrap_servers(), &input);
    wait_caught_up(&[&second.progress], "keyed", &input, &ends, brokers.catch_up()).await;
    let after = second.stop().await;
    assert!(
        after.counts.records < total,
        "the restart resumed from checkpoints, it did not start over"
    );

    let alerts = read_alerts(&brokers.bootstrap_servers(), &kafka_of(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(
        ids, expected,
        "after dropping repeats, every alert of an uninterrupted run, no other"
    );
}
