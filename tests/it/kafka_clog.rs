//! The changelog and dead-letter details of keyed runs, against librdkafka's
//! mock cluster: incremental checkpoints (one entry per changed key) that
//! carry the writer's group generation and read back whole, a far-future
//! event quarantined to the dead-letter topic, and the
//! start-up check of the changelog's partition count. The mock cluster cannot describe topic
//! configurations, so the `cleanup.policy` half of that check is covered by
//! the unit tests of `pipeline` and, on a real broker, by `kafka_tansu`.

use keywatch::checkpoint::{CheckpointAssembler, Manifest, PartitionId};
use keywatch::config::kafka::ChangelogFormat;

use crate::kafka_support::*;

/// 2099-01-01T00:00:00Z.
const FAR_FUTURE_MS: i64 = 4_070_908_800_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_run_reads_back_whole_records_its_group_generation_and_dead_letters_a_far_future_event() {
    init_logging();
    let brokers = Brokers::mock();
    let (mut config, input) = brokers.prepare("clog", true).await;
    kafka_of_mut(&mut config).changelog_format = ChangelogFormat::Incremental;
    let bootstrap = brokers.bootstrap_servers();
    let poisoned_key = key_id(0);
    // Halfway through, when each partition has seen several keys: a key
    // alone on its partition would be its own witness of a jump.
    let mut records = travel_scenario(12, 6, 1000);
    let halfway = records.len() / 2;
    records.insert(
        halfway,
        ScenarioRecord {
            key: Some(poisoned_key.clone()),
            payload: canonical(FAR_FUTURE_MS, &poisoned_key, &ip("london", 10), "/v1/orders", 200),
            malformed: false,
        },
    );
    let landed = produce(&bootstrap, &input, &records, Placement::KeyedByKeyId).await;
    let poisoned = landed
        .iter()
        .find(|landed| landed.record.payload.contains("2099-01-01"))
        .expect("produced")
        .clone();

    // The scenario's keys call in bursts 80 minutes apart: with the
    // default `max_ahead` (1 h) each burst is itself a confirmed jump of the
    // clock, and a row held ahead waits afresh after every jump, so the
    // far-future event would wait for a gap-free hour that never comes. With
    // `max_ahead` longer than the gaps, the clock moves on in order and the
    // event is quarantined once it has moved `max_ahead` past its arrival.
    let mut model = (*model()).clone();
    model.time.max_ahead = std::time::Duration::from_secs(2 * 3600);
    let pipeline = RunningPipeline::start_with_model(&config, std::sync::Arc::new(model));
    let ends = end_offsets(&bootstrap, &input);
    wait_caught_up(&[&pipeline.progress], "keyed", &input, &ends, brokers.catch_up()).await;
    let summary = pipeline.stop().await;
    assert_eq!(
        summary.counts.rejected_by_reason.get("future_event"),
        Some(&1),
        "{:?}",
        summary.counts
    );
    let letters: Vec<_> = read_topic(&bootstrap, &kafka_of(&config).dead_letter_topic)
        .into_iter()
        .filter(|message| message.headers.get("reason").map(String::as_str) == Some("future_event"))
        .collect();
    assert_eq!(letters.len(), 1, "one dead letter for the far-future event");
    assert_eq!(
        letters[0].headers.get("source_offset"),
        Some(&poisoned.offset.to_string()),
        "it names the record it came from: {:?}",
        letters[0].headers
    );
    assert!(
        !String::from_utf8_lossy(&letters[0].payload).contains(&poisoned_key),
        "no raw key id in the dead letter"
    );

    let changelog = read_topic(&bootstrap, &kafka_of(&config).changelog_topic);
    let manifests: Vec<Manifest> = changelog
        .iter()
        .filter(|message| {
            message
                .key
                .as_deref()
                .is_some_and(|key| PartitionId::parse(key).is_some())
        })
        .map(|message| serde_json::from_slice(&message.payload).expect("a manifest"))
        .collect();
    assert!(!manifests.is_empty());
    for manifest in &manifests {
        assert_eq!(manifest.version, 2, "incremental");
        assert!(
            manifest.group_generation.is_some_and(|generation| generation >= 1),
            "the writer's group generation: {manifest:?}"
        );
    }
    assert!(
        changelog
            .iter()
            .any(|message| message.key.as_deref().is_some_and(|key| key.contains("/k/"))),
        "key entries"
    );
    let partitions: Vec<PartitionId> = (0..PARTITIONS)
        .map(|partition| PartitionId::new(&input, partition))
        .collect();
    let mut assembler = CheckpointAssembler::new(partitions);
    for message in &changelog {
        assembler.push(
            message.key.as_deref().unwrap_or_default().as_bytes(),
            Some(&message.payload),
        );
    }
    let restored = assembler.finish();
    assert!(restored.fallbacks.is_empty(), "{:?}", restored.fallbacks);
    let keys: usize = restored
        .checkpoints
        .values()
        .map(|checkpoint| checkpoint.snapshot.keys.len())
        .sum();
    assert_eq!(keys, 12, "every key's state reads back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changelog_with_another_partition_count_stops_the_start_unless_the_check_is_skipped() {
    init_logging();
    let brokers = Brokers::mock();
    let (mut config, _input) = brokers.prepare("clogcheck", true).await;
    let Brokers::Mock(cluster) = &brokers else {
        unreachable!("a mock cluster")
    };
    let changelog = "clogcheck-changelog-one";
    cluster.create_topic(changelog, 1, 1).expect("topic");
    kafka_of_mut(&mut config).changelog_topic = changelog.to_string();

    let refused = RunningPipeline::start(&config);
    let error = refused
        .handle
        .await
        .expect("task")
        .expect_err("a changelog with 1 partition for 3 input partitions is refused");
    let text = error.to_string();
    assert!(
        text.contains("1 partitions") && text.contains("has 3") && text.contains("skip_changelog_check"),
        "{text}"
    );

    kafka_of_mut(&mut config).skip_changelog_check = true;
    let pipeline = RunningPipeline::start(&config);
    wait_until("the keyed stage to take partitions", brokers.catch_up(), || {
        pipeline
            .progress
            .snapshot()
            .assigned
            .get("keyed")
            .is_some_and(|partitions| !partitions.is_empty())
    })
    .await;
    pipeline.stop().await;
}
