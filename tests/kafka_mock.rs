//! The Kafka pipeline against librdkafka's in-process mock cluster: the real
//! protocol, no broker to install. Covers outputs and dead letters, the
//! repartition stage, a crash and restart, a member dying while another
//! takes over its partitions, and exactly-once mode.
//!
//! The mock cluster keeps only the last 5 MiB / 100,000 message sets of a
//! partition, has no offset lookup by timestamp and drops offsets committed
//! inside a transaction; the scenarios stay far below those limits and the
//! pipeline does not depend on the other two.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use keywatch::alert::RevocationRequest;
use keywatch::config::Config;
use keywatch::pipeline::{Pipeline, Progress, RunSummary};
use rdkafka::mocking::MockCluster;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;
const CATCH_UP: Duration = Duration::from_secs(90);

fn mock_cluster(config: &Config) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in topics_of(config) {
        cluster.create_topic(&topic, PARTITIONS, 1).expect("topic");
    }
    cluster
}

fn start(
    config: &Config,
) -> (
    std::sync::Arc<Progress>,
    CancellationToken,
    JoinHandle<Result<RunSummary, keywatch::pipeline::PipelineError>>,
) {
    let pipeline = Pipeline::new(config.clone(), model(), geo()).expect("pipeline");
    let progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(pipeline.run(cancel.clone()));
    (progress, cancel, handle)
}

fn input_topic(config: &Config) -> String {
    config.kafka.as_ref().unwrap().input_topics[0].clone()
}

fn kafka(config: &Config) -> &keywatch::config::KafkaConfig {
    config.kafka.as_ref().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dead_letters_flow_through_the_keyed_pipeline() {
    let config = test_config("unused", "flow", true);
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    let mut config = config;
    config.kafka.as_mut().unwrap().brokers = brokers.clone();
    // The only test in this process that serves metrics: the recorder is global.
    let metrics_port = free_port();
    config.kafka.as_mut().unwrap().metrics_listen = Some(([127, 0, 0, 1], metrics_port).into());
    let input = input_topic(&config);

    let records = travel_scenario(8, 10, 10);
    let landed = produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let malformed: Vec<&Landed> = landed.iter().filter(|record| record.record.malformed).collect();
    assert!(malformed.len() >= 10, "the scenario has junk to reject");
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 4, "every travelling key is flagged: {expected:?}");

    let (progress, cancel, handle) = start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&progress], "keyed", &input, &ends, CATCH_UP).await;
    let valid = landed.len() - malformed.len();
    let events_line = format!("keywatch_events_total {valid}");
    wait_until("the metrics to show every event", CATCH_UP, || {
        scrape(metrics_port).is_some_and(|body| body.lines().any(|line| line == events_line))
    })
    .await;
    let body = scrape(metrics_port).unwrap();
    assert!(body.contains("keywatch_committed_offset{"), "{body}");
    assert!(!body.contains("AKIA"), "no raw key in metrics");
    cancel.cancel();
    let summary = handle.await.expect("task").expect("clean shutdown");

    let alerts = read_alerts(&brokers, &kafka(&config).alerts_topic);
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

    for message in read_topic(&brokers, &kafka(&config).revocations_topic) {
        let request: RevocationRequest = serde_json::from_slice(&message.payload).expect("a revocation request");
        assert_eq!(message.key.as_deref(), Some(request.key_fingerprint.as_str()));
        assert!(travellers.contains(&request.key_fingerprint));
    }

    let dead_letters = read_topic(&brokers, &kafka(&config).dead_letter_topic);
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

    let manifests: BTreeSet<String> = read_topic(&brokers, &kafka(&config).changelog_topic)
        .into_iter()
        .filter_map(|message| message.key)
        .filter(|key| key.matches('/').count() == 1)
        .collect();
    let used: BTreeSet<String> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(partition, _)| format!("{input}/{partition}"))
        .collect();
    assert_eq!(manifests, used, "a checkpoint per input partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_input_is_repartitioned_by_fingerprint() {
    let config = test_config("unused", "repart", false);
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    let mut config = config;
    config.kafka.as_mut().unwrap().brokers = brokers.clone();
    let input = input_topic(&config);
    let repartition = kafka(&config).repartition_topic.clone();

    let records = travel_scenario(6, 10, 15);
    let landed = produce(
        &brokers,
        &input,
        &records,
        Placement::Unkeyed { partitions: PARTITIONS },
    )
    .await;
    let expected = reference_alert_ids(&landed, true);
    assert!(!expected.is_empty());

    let (progress, cancel, handle) = start(&config);
    let input_ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&progress], "repartition", &input, &input_ends, CATCH_UP).await;
    let repartition_ends = end_offsets(&brokers, &repartition);
    wait_caught_up(&[&progress], "keyed", &repartition, &repartition_ends, CATCH_UP).await;
    cancel.cancel();
    let summary = handle.await.expect("task").expect("clean shutdown");

    let valid = landed.iter().filter(|record| !record.record.malformed).count();
    assert_eq!(summary.repartitioned, valid as u64);
    let repartitioned = read_topic(&brokers, &repartition);
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

    let alerts = read_alerts(&brokers, &kafka(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected);
    let dead_letters = read_topic(&brokers, &kafka(&config).dead_letter_topic);
    assert_eq!(
        dead_letters.len(),
        landed.len() - valid,
        "stage one dead-letters the junk"
    );
}

/// Waits, polling often, until an instance has processed at least `records`.
async fn wait_for_records(progress: &Progress, records: u64) {
    let deadline = std::time::Instant::now() + CATCH_UP;
    while progress.snapshot().counts.records < records {
        assert!(std::time::Instant::now() < deadline, "the pipeline made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Stops a pipeline task without a clean shutdown: no final batch, no
/// final checkpoint, no final commit.
async fn kill(handle: JoinHandle<Result<RunSummary, keywatch::pipeline::PipelineError>>) {
    handle.abort();
    let _ = handle.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_loses_no_alert() {
    init_logging();
    let mut config = test_config("unused", "crash", true);
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    {
        let kafka = config.kafka.as_mut().unwrap();
        kafka.brokers = brokers.clone();
        kafka.batch_max_events = 20;
        kafka.checkpoint_interval = Duration::from_millis(100);
    }
    let input = input_topic(&config);
    // The history first; the trips only after the crash, so the alerts
    // depend on state that came back from the changelog.
    let records = travel_scenario(12, 16, 25);
    let split = first_trip(&records);
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;
    let total = records.len() as u64;

    let (first, _first_cancel, first_handle) = start(&config);
    wait_for_records(&first, split as u64 / 2).await;
    kill(first_handle).await;
    let before_crash = first.snapshot();
    assert!(
        before_crash.checkpoints > 0,
        "some state was checkpointed before the crash"
    );

    landed.extend(produce(&brokers, &input, &records[split..], Placement::KeyedByKeyId).await);
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 6);
    let (second, cancel, handle) = start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&second], "keyed", &input, &ends, CATCH_UP).await;
    cancel.cancel();
    let after = handle.await.expect("task").expect("clean shutdown");
    assert!(
        after.counts.records < total,
        "the restart resumed from checkpoints, it did not start over"
    );

    let alerts = read_alerts(&brokers, &kafka(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(
        ids, expected,
        "after dropping repeats, every alert of an uninterrupted run, no other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_member_takes_over_partitions_with_their_state() {
    let mut config = test_config("unused", "takeover", true);
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    {
        let kafka = config.kafka.as_mut().unwrap();
        kafka.brokers = brokers.clone();
        kafka.batch_max_events = 20;
    }
    let input = input_topic(&config);
    // Three parts: shared by both members, then some for the member that
    // dies, then the trips, which only the survivor sees.
    let records = travel_scenario(12, 16, 0);
    let trips = first_trip(&records);
    let split = trips * 2 / 3;
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let mut config_a = config.clone();
    config_a.kafka.as_mut().unwrap().instance_id = Some("a".into());
    let mut config_b = config.clone();
    config_b.kafka.as_mut().unwrap().instance_id = Some("b".into());
    let (survivor, survivor_cancel, survivor_handle) = start(&config_a);
    let (victim, _victim_cancel, victim_handle) = start(&config_b);

    let first_ends = end_offsets(&brokers, &input);
    wait_until("both members to share the first part", CATCH_UP, || {
        let owned = |progress: &Progress| {
            progress
                .snapshot()
                .assigned
                .get("keyed")
                .is_some_and(|partitions| !partitions.is_empty())
        };
        owned(&survivor)
            && owned(&victim)
            && first_ends.iter().all(|(partition, end)| {
                *end == 0 || committed_anywhere(&[&survivor, &victim], "keyed", &input, *partition) == Some(*end)
            })
    })
    .await;
    let victim_partitions = victim.snapshot().assigned["keyed"].clone();
    let victim_records = victim.snapshot().counts.records;
    assert!(victim_records > 0, "the member to be stopped did work");

    landed.extend(produce(&brokers, &input, &records[split..trips], Placement::KeyedByKeyId).await);
    wait_for_records(&victim, victim_records + 5).await;
    kill(victim_handle).await;
    landed.extend(produce(&brokers, &input, &records[trips..], Placement::KeyedByKeyId).await);

    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&survivor], "keyed", &input, &ends, CATCH_UP).await;
    let owned_at_end = survivor.snapshot().assigned["keyed"].clone();
    survivor_cancel.cancel();
    survivor_handle.await.expect("task").expect("clean shutdown");
    for partition in &victim_partitions {
        assert!(owned_at_end.contains(partition), "{partition} moved to the survivor");
    }

    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 6);
    let alerts = read_alerts(&brokers, &kafka(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected, "no alert lost or invented across the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_mode_repeats_nothing_across_a_crash() {
    let mut config = test_config("unused", "eos", true);
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    {
        let kafka = config.kafka.as_mut().unwrap();
        kafka.brokers = brokers.clone();
        kafka.batch_max_events = 20;
        kafka.exactly_once = true;
        kafka.instance_id = Some("eos-1".into());
    }
    let input = input_topic(&config);
    let records = travel_scenario(10, 16, 30);
    let split = first_trip(&records);
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let (first, _first_cancel, first_handle) = start(&config);
    wait_for_records(&first, split as u64 / 2).await;
    kill(first_handle).await;
    landed.extend(produce(&brokers, &input, &records[split..], Placement::KeyedByKeyId).await);
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 5);

    // The same instance id: the restart fences the dead producer and aborts
    // its open transaction.
    let (second, cancel, handle) = start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&second], "keyed", &input, &ends, CATCH_UP).await;
    cancel.cancel();
    handle.await.expect("task").expect("clean shutdown");

    let alerts = read_alerts(&brokers, &kafka(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(alerts.len(), ids.len(), "committed outputs hold no repeat");
    let dead_letters = read_topic(&brokers, &kafka(&config).dead_letter_topic);
    let malformed = landed.iter().filter(|record| record.record.malformed).count();
    assert_eq!(
        dead_letters.len(),
        malformed,
        "each malformed record dead-lettered exactly once"
    );
}
