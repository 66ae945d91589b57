//! `replay_from_kafka` against librdkafka's mock cluster: the same alerts as
//! a reference run, rejected records in `rejected.jsonl`, a time range, a
//! start from a snapshot saved by `keywatch run`, and producing replayed
//! alerts to a side topic but never to a live one. The mock cluster cannot
//! look offsets up by timestamp, which exercises the fallback scan.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use keywatch::alert::Alert;
use keywatch::checkpoint::read_snapshot_file;
use keywatch::config::Config;
use keywatch::pipeline::Pipeline;
use keywatch::replay::kafka::{ReplayKafkaError, ReplayKafkaOptions, replay_from_kafka};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::kafka_support::*;

fn cluster_for(
    config: &mut Config,
    extra_topics: &[&str],
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in topics_of(config)
        .iter()
        .map(String::as_str)
        .chain(extra_topics.iter().copied())
    {
        cluster.create_topic(topic, PARTITIONS, 1).expect("topic");
    }
    for topic in single_partition_topics_of(config) {
        cluster.create_topic(&topic, 1, 1).expect("topic");
    }
    config.kafka.as_mut().unwrap().brokers = cluster.bootstrap_servers();
    cluster
}

fn options(out_dir: &Path) -> ReplayKafkaOptions {
    ReplayKafkaOptions {
        start_ms: None,
        end_ms: None,
        out_dir: out_dir.to_path_buf(),
        snapshot: None,
        to_topic: None,
        batch_size: 64,
        owners: Default::default(),
    }
}

fn alert_ids(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("alerts.jsonl")).expect("alerts.jsonl");
    text.lines()
        .map(|line| serde_json::from_str::<Alert>(line).expect("an alert per line").id)
        .collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).expect("file").lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_matches_a_reference_run_and_writes_the_three_files() {
    let mut config = test_config("unused", "replay", true);
    let _cluster = cluster_for(&mut config, &["replay-side"]);
    let brokers = config.kafka.as_ref().unwrap().brokers.clone();
    let input = config.kafka.as_ref().unwrap().input_topics[0].clone();
    let records = travel_scenario(8, 10, 12);
    let landed = produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 4);
    let malformed = landed.iter().filter(|record| record.record.malformed).count();

    let whole = tempfile::tempdir().unwrap();
    let mut side = options(whole.path());
    side.to_topic = Some("replay-side".into());
    let summary = replay_kafka(&config, side, "replay").await;
    assert_eq!(alert_ids(whole.path()), expected);
    assert_eq!(
        summary.counts.alerts as usize,
        lines(&whole.path().join("alerts.jsonl"))
    );
    assert_eq!(
        summary.counts.revocations as usize,
        lines(&whole.path().join("revocations.jsonl"))
    );
    assert_eq!(lines(&whole.path().join("rejected.jsonl")), malformed);
    assert_eq!(summary.counts.records as usize, landed.len());
    let rejected: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(whole.path().join("rejected.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        rejected["source"]["topic"],
        input.as_str(),
        "rejections say where the record is"
    );
    let produced: BTreeSet<String> = read_alerts(&brokers, "replay-side")
        .into_iter()
        .map(|alert| alert.id)
        .collect();
    assert_eq!(produced, expected, "alerts also produced to the side topic");
    assert!(
        read_topic(&brokers, &config.kafka.as_ref().unwrap().alerts_topic).is_empty(),
        "live topic untouched"
    );

    // A range: only the events in it reach the engine, however the start
    // offset was found.
    let start_ms = T0_MS + DAY_MS;
    let end_ms = T0_MS + 2 * DAY_MS;
    let in_range = landed
        .iter()
        .filter(|record| !record.record.malformed)
        .filter(|record| {
            let value: serde_json::Value = serde_json::from_str(&record.record.payload).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(value["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            (start_ms..end_ms).contains(&ts)
        })
        .count();
    let ranged = tempfile::tempdir().unwrap();
    let mut window = options(ranged.path());
    window.start_ms = Some(start_ms);
    window.end_ms = Some(end_ms);
    let summary = replay_kafka(&config, window, "replay of a range").await;
    assert_eq!(summary.events_in_range as usize, in_range);
    assert!(in_range > 0 && in_range < landed.len() - malformed);

    let mut live = options(ranged.path());
    live.to_topic = Some(config.kafka.as_ref().unwrap().alerts_topic.clone());
    let refused = replay_from_kafka(&config, model(), geo(), &live);
    assert!(matches!(refused, Err(ReplayKafkaError::LiveTopic(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_continues_from_a_snapshot_saved_by_run() {
    let mut config = test_config("unused", "snap", true);
    let _cluster = cluster_for(&mut config, &[]);
    let brokers = config.kafka.as_ref().unwrap().brokers.clone();
    let input = config.kafka.as_ref().unwrap().input_topics[0].clone();
    let records = travel_scenario(8, 10, 0);
    // The first two days, then the rest: the travel happens late on day three.
    let split = records
        .iter()
        .position(|record| record.payload.contains("2026-03-04T"))
        .expect("a third day");
    let first = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let snapshot_dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::new(config.clone(), model(), geo())
        .unwrap()
        .save_snapshot_to(snapshot_dir.path().to_path_buf());
    let progress = pipeline.progress();
    // The input's end, read before the pipeline starts: a blocking query of
    // the broker must not hold up the test runtime the pipeline runs on.
    let ends = end_offsets(&brokers, &input);
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(pipeline.run(cancel.clone()));
    wait_caught_up(&[&progress], "keyed", &input, &ends, Duration::from_secs(90)).await;
    cancel.cancel();
    handle.await.unwrap().expect("clean shutdown");
    let snapshot_path = snapshot_dir.path().join("snapshot.json");
    let snapshot = read_snapshot_file(&snapshot_path).expect("snapshot written on shutdown");
    for (partition, end) in ends.iter().filter(|(_, end)| **end > 0) {
        let saved = &snapshot[&keywatch::checkpoint::PartitionId::new(&input, *partition)];
        assert_eq!(saved.next_offset, *end, "the snapshot covers everything processed");
    }

    // The changelog holds the same state: exporting it gives the same offsets.
    let exported_path = snapshot_dir.path().join("exported.json");
    let exported_count = keywatch::pipeline::export_snapshot(config.kafka.as_ref().unwrap(), &exported_path)
        .expect("export from the changelog");
    let exported = read_snapshot_file(&exported_path).unwrap();
    assert_eq!(exported_count, snapshot.len());
    for (partition, saved) in &snapshot {
        assert_eq!(exported[partition].next_offset, saved.next_offset, "{partition}");
        assert_eq!(
            serde_json::to_string(&exported[partition].engine).unwrap(),
            serde_json::to_string(&saved.engine).unwrap(),
            "{partition}: the final checkpoint is the shutdown state"
        );
    }

    let mut all = first.clone();
    all.extend(produce(&brokers, &input, &records[split..], Placement::KeyedByKeyId).await);
    let expected: BTreeSet<String> = reference_alert_ids(&all, true)
        .difference(&reference_alert_ids(&first, true))
        .cloned()
        .collect();
    assert!(!expected.is_empty(), "the travel comes after the snapshot");

    let from_snapshot = tempfile::tempdir().unwrap();
    let mut resumed = options(from_snapshot.path());
    resumed.snapshot = Some(snapshot_path);
    let summary = replay_kafka(&config, resumed, "replay from a snapshot").await;
    assert_eq!(
        alert_ids(from_snapshot.path()),
        expected,
        "state carried over from the snapshot"
    );
    assert_eq!(
        summary.counts.records as usize,
        records.len() - split,
        "only what the snapshot had not seen"
    );

    let from_empty = tempfile::tempdir().unwrap();
    let mut cold = options(from_empty.path());
    cold.start_ms = Some(T0_MS + 2 * DAY_MS);
    replay_kafka(&config, cold, "replay from empty state").await;
    assert_ne!(
        alert_ids(from_empty.path()),
        expected,
        "without the snapshot the baseline is missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_dated_far_ahead_is_rejected_with_its_offset_in_one_order_at_any_batch_size() {
    let mut config = test_config("unused", "ahead", true);
    let _cluster = cluster_for(&mut config, &[]);
    let brokers = config.kafka.as_ref().unwrap().brokers.clone();
    let input = config.kafka.as_ref().unwrap().input_topics[0].clone();
    let mut records = travel_scenario(4, 10, 7);
    // One call of key 0 dated 2099 among the first records: other keys are
    // in the partition already, none confirms it, and the input's time
    // moves on for days, so it is quarantined.
    let far_ts = chrono::DateTime::parse_from_rfc3339("2099-01-01T00:00:00Z")
        .unwrap()
        .timestamp_millis();
    records.insert(
        20,
        ScenarioRecord {
            key: Some(key_id(0)),
            payload: canonical(far_ts, &key_id(0), &ip("london", 10), "/v1/orders", 200),
            malformed: false,
        },
    );
    let landed = produce(&brokers, &input, &records, Placement::Unkeyed { partitions: 1 }).await;
    let far = landed
        .iter()
        .find(|record| record.record.payload.contains("2099-"))
        .expect("the far event landed");
    let malformed = landed.iter().filter(|record| record.record.malformed).count();
    assert!(malformed > 0);

    let mut runs = Vec::new();
    for batch_size in [1, 5, 64, 4096] {
        let out = tempfile::tempdir().unwrap();
        let mut replay = options(out.path());
        replay.batch_size = batch_size;
        let summary = replay_kafka(&config, replay, "replay").await;
        let rejected = std::fs::read_to_string(out.path().join("rejected.jsonl")).unwrap();
        let future: Vec<serde_json::Value> = rejected
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|line| line["reason_kind"] == "future_event")
            .collect();
        assert_eq!(future.len(), 1, "batches of {batch_size}: {rejected}");
        assert_eq!(future[0]["source"]["topic"], input.as_str());
        assert_eq!(future[0]["source"]["partition"], far.partition);
        assert_eq!(future[0]["source"]["offset"], far.offset, "where the record is");
        assert!(!rejected.contains(&key_id(0)), "no raw key id in rejected.jsonl");
        assert_eq!(summary.counts.rejected_by_reason.get("future_event"), Some(&1));
        assert_eq!(lines(&out.path().join("rejected.jsonl")), malformed + 1);
        let alerts = std::fs::read_to_string(out.path().join("alerts.jsonl")).unwrap();
        runs.push((batch_size, rejected, alerts));
    }
    for (batch_size, rejected, alerts) in &runs[1..] {
        assert_eq!(rejected, &runs[0].1, "rejected.jsonl at batches of {batch_size}");
        assert_eq!(alerts, &runs[0].2, "alerts.jsonl at batches of {batch_size}");
    }
}
